"""What a run writes: results.csv and samples.csv (appended and flushed case by case),
env.json, summary.md, and the short table printed at the end."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench.show import columns, paper

# The header of results.csv and samples.csv: bench.show.columns documents every column.
COLUMNS = columns.RESULT_NAMES
SAMPLE_COLUMNS = columns.SAMPLE_NAMES
# With --processes N, each process's own row (results.csv's columns and its index): what a
# resumed run needs to combine a case's processes; results.csv holds the combined row.
PROCESSES_FILE = "processes.csv"
PROCESS_COLUMNS = COLUMNS + ["process"]
TIMING_METRICS = ["prefill_ms", "decode_ms_per_step"]
STATUSES = ("ok", "oom", "skipped", "timeout", "error")


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def append_rows(path: Path, columns: list[str], rows: list[dict]):
    """Append rows (with a header if the file is new) and flush them to disk."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows({k: _cell(r.get(k)) for k in columns} for r in rows)
        f.flush()
        os.fsync(f.fileno())


def repair(run_dir: Path) -> tuple[set[str], dict[str, list[tuple[dict, list[dict]]]]]:
    """Make a run directory consistent after a kill: drop a torn last line, drop samples of
    processes with no row (the case in flight). Returns the case ids already done and, for
    the cases measured in several processes (processes.csv) but not done, the (row, samples)
    of each process finished, in process order."""
    results, samples, processes = run_dir / "results.csv", run_dir / "samples.csv", run_dir / PROCESSES_FILE
    done: set[str] = set()
    for path in (results, samples, processes):
        if path.exists():
            text = path.read_text()
            if text and not text.endswith("\n"):
                path.write_text(text[: text.rfind("\n") + 1])
    if results.exists() and results.stat().st_size:
        with open(results, newline="") as f:
            done = {r["case_id"] for r in csv.DictReader(f)}
    finished: dict[tuple[str, str], dict] = {}
    if processes.exists() and processes.stat().st_size:
        with open(processes, newline="") as f:
            finished = {(r["case_id"], r["process"]): r for r in csv.DictReader(f) if r["case_id"] not in done}
    kept = []
    if samples.exists() and samples.stat().st_size:
        with open(samples, newline="") as f:
            kept = [r for r in csv.DictReader(f)
                    if r["case_id"] in done or (r["case_id"], r.get("process", "0")) in finished]
        samples.unlink()
        append_rows(samples, SAMPLE_COLUMNS, kept)
    partial: dict[str, list[tuple[dict, list[dict]]]] = {}
    for (case_id, process), row in sorted(finished.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
        mine = [_typed(s) for s in kept if s["case_id"] == case_id and s.get("process") == process]
        partial.setdefault(case_id, []).append((_typed(row), mine))
    for case_id, measured in list(partial.items()):  # only an unbroken run of processes 0, 1, ...
        if [int(r["process"]) for r, _ in measured] != list(range(len(measured))):
            del partial[case_id]
    return done, partial


def _typed(record: dict) -> dict:
    """A CSV record with its numbers as numbers (empty cells NaN, true/false as booleans)."""
    out = {}
    for key, value in record.items():
        if value in ("True", "False"):
            out[key] = value == "True"
            continue
        try:
            out[key] = float(value) if value != "" else math.nan
            if out[key].is_integer() and "." not in value and "e" not in value.lower():
                out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def read_results(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "decode_mode" not in df and "compile" in df:  # a run from before decode_mode replaced compile
        df["decode_mode"] = df["compile"].astype(str).str.lower().isin(("true", "1")).map(
            {True: "compile", False: "eager"})
    for col in ("window", "self_decoder", "error", "backends_present"):
        if col in df:
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


def write_env(path: Path, env: dict):
    path.write_text(json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")


# ---- summary ----

def markdown_table(df: pd.DataFrame) -> str:
    """A plain GitHub table (pandas' to_markdown needs the optional tabulate package)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def main_slice(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that compare architectures along seq_len: ok rows, bitnet 'none' if present,
    and for yoco-swa the window measured at the most lengths."""
    df = df[df["status"] == "ok"]
    if "none" in set(df["bitnet"]):
        df = df[df["bitnet"] == "none"]
    swa = df[df["arch"] == "yoco-swa"]
    if len(swa):
        window = swa.groupby("window")["seq_len"].nunique().idxmax()
        df = df[(df["arch"] != "yoco-swa") | (df["window"] == window)]
    return df


RATIOS = [("kv_cache_bytes", "KV cache", "baseline / YOCO"),
          ("model_mem_decode_bytes", "decode memory", "baseline / YOCO"),
          ("prefill_ms", "prefill time", "baseline / YOCO"),
          ("decode_tok_s", "decode tokens/s", "YOCO / baseline")]


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (preset, batch, seq_len, dtype): how many times YOCO beats the baseline; > 1 favours YOCO."""
    df = main_slice(df).copy()
    # Peak memory above what the process held before the model was built (on CPU that
    # leaves out Python and torch themselves; on CUDA it is ~0).
    before = df["mem_before_model_bytes"].fillna(0) if "mem_before_model_bytes" in df else 0
    df["model_mem_decode_bytes"] = df["peak_mem_decode_bytes"] - before
    keys = ["preset", "batch", "seq_len", "dtype", "backend", "decode_mode"]
    base = df[df["arch"] == "transformer"].set_index(keys)
    out = []
    for arch in ("yoco-gret", "yoco-swa"):
        yoco = df[df["arch"] == arch].set_index(keys)
        joined = yoco.reset_index().merge(base.reset_index(), on=keys, suffixes=("_yoco", "_base"))
        for _, r in joined.iterrows():
            entry = {k: r[k] for k in keys}
            entry["yoco"] = arch if arch != "yoco-swa" else f"yoco-swa (w{int(r['window_yoco'])})"
            for col, label, direction in RATIOS:
                a, b = r[f"{col}_base"], r[f"{col}_yoco"]
                ratio = b / a if direction.startswith("YOCO") else a / b
                entry[f"{label}: {direction}"] = ratio if a and b else math.nan
                low, high = _ratio_interval(r, col, direction)
                if not (math.isnan(low) and math.isnan(high)):
                    entry[f"{label}: {direction} [CI]"] = f"[{low:.3g}, {high:.3g}]"
            out.append(entry)
    if not out:
        return pd.DataFrame()
    return pd.DataFrame(out).sort_values(["preset", "batch", "seq_len", "yoco"]).reset_index(drop=True)


def _ratio_interval(r, col: str, direction: str) -> tuple[float, float]:
    """The interval of a ratio from both sides' 95% intervals (--processes N), the extreme
    corners: it holds whenever both intervals do, so with probability >= 90%. NaN without them."""
    names = [f"{col}_ci_low_base", f"{col}_ci_high_base", f"{col}_ci_low_yoco", f"{col}_ci_high_yoco"]
    if not all(n in r for n in names):
        return math.nan, math.nan
    base_low, base_high, yoco_low, yoco_high = (float(r[n]) for n in names)
    if direction.startswith("YOCO"):
        return yoco_low / base_high, yoco_high / base_low
    return base_low / yoco_high, base_high / yoco_low


def trend_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per arch: cache bytes per token and fixed, and how prefill time grows with the prompt
    (the slope of log time against log seq_len over the longer half of the prompts: 1 is
    linear, 2 quadratic)."""
    df = main_slice(df)
    out = []
    for (arch, preset, batch, dtype), g in df.groupby(["arch", "preset", "batch", "dtype"], sort=False):
        g = g.sort_values("seq_len")
        long = g[g["seq_len"] >= g["seq_len"].median()]
        slope = math.nan
        if long["seq_len"].nunique() >= 2:
            slope = float(np.polyfit(np.log(long["seq_len"]), np.log(long["prefill_ms"]), 1)[0])
        out.append({"arch": arch, "preset": preset, "batch": batch, "dtype": dtype,
                    "KV bytes per token": g["kv_cache_bytes_per_token"].iloc[-1],
                    "KV fixed bytes": g["kv_cache_fixed_bytes"].iloc[-1],
                    f"prefill growth exponent ({int(long['seq_len'].min())}-{int(long['seq_len'].max())})": slope,
                    "decode tok/s, shortest -> longest": f"{g['decode_tok_s'].iloc[0]:.3g} -> "
                                                         f"{g['decode_tok_s'].iloc[-1]:.3g}"})
    return pd.DataFrame(out)


def summary_markdown(df: pd.DataFrame, env: dict) -> str:
    device = f"{env.get('device', '?')} ({env.get('device_name', '?')}, threads: {env.get('threads', '?')})"
    lines = [f"# Benchmark summary: suite `{env.get('suite', '?')}` on {device}", "",
             f"git commit `{env.get('git_commit', '?')}`, torch {env.get('versions', {}).get('torch', '?')}; "
             f"copy bandwidth {env.get('copy_bandwidth_bytes_s', math.nan) / 1e9:.1f} GB/s, "
             f"fp32 matmul {env.get('matmul_flops_s_by_dtype', {}).get('float32', math.nan) / 1e9:.1f} GFLOP/s.", ""]
    counts = df["status"].value_counts()
    lines += ["Cases: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES), ""]
    drifted = env.get("ceiling_drifted") or []
    if drifted:
        drift = env.get("ceiling_drift", {})
        lines += ["**Warning: this machine's ceilings moved by more than 5% between the start and the end of the "
                  "run** (" + ", ".join(f"{k} {drift.get(k, math.nan):+.1%}" for k in drifted) + "): MBU and MFU "
                  "rest on the ceilings measured at the start.", ""]
    if "gpu_throttled" in df:
        throttled = df[df["gpu_throttled"].astype(str).str.lower() == "true"]
        if len(throttled):
            lines += [f"**Warning: {len(throttled)} case(s) ran with the GPU's clocks pulled down** (NVML throttle "
                      "reasons): " + ", ".join(f"{r.case_id} ({r.gpu_throttle_reasons})"
                                              for r in throttled.itertuples()), ""]
    trends = trend_table(df)
    if len(trends):
        lines += ["## Trends", "The cache grows by `KV bytes per token` on top of `KV fixed bytes`; prefill time "
                  "grows as seq_len to the power shown (fitted over the longer half of the prompts).", "",
                  markdown_table(trends), ""]
    ratios = ratio_table(df)
    if len(ratios):
        lines += ["## YOCO against the Transformer baseline",
                  "Ratios > 1 favour YOCO (bitnet none; prefill and decode medians; decode memory: "
                  f"{_memory_words(env)} during decode, less what was held before the model was built).", "",
                  markdown_table(ratios), ""]
    lines += ["## The paper's figures",
              "The YOCO paper's headline ratios (3B, one H100-80GB) beside this run's; per cell whether both "
              "sides were measured or the baseline, which did not fit or did not run there, came from a formula "
              "(bench/show/paper.py).", "",
              paper.markdown(df, env.get("device_name") or env.get("device", "?")), ""]
    ok = df[df["status"] == "ok"]
    if len(ok):
        cols = ["case_id", "prefill_ms", "decode_tok_s", "peak_mem_decode_bytes", "kv_cache_bytes", "prefill_mfu",
                "decode_mbu"]
        lines += ["## All measured cases", "", markdown_table(ok[cols]), ""]
    bad = df[df["status"] != "ok"]
    if len(bad):
        lines += ["## Cases not measured", "", markdown_table(bad[["case_id", "status", "error"]]), ""]
    return "\n".join(lines)


def _memory_words(env: dict) -> str:
    if env.get("device") == "cuda":
        return "the CUDA allocator's peak"
    return "the peak resident set size (VmHWM) of the case's own process"


def console_table(df: pd.DataFrame) -> str:
    """The short table printed after a run."""
    cols = ["arch", "preset", "seq_len", "window", "bitnet", "status", "prefill_ms", "decode_tok_s",
            "kv_cache_bytes"]
    view = df[cols].copy()
    view["window"] = view["window"].map(lambda w: "-" if w is None or w != w else str(int(float(w))))
    with pd.option_context("display.width", 160, "display.max_rows", 400):
        return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")
