"""What a run writes: results.csv and samples.csv (appended and flushed case by case),
env.json, summary.md (verdicts in words first, then tables in human units), and the short
table printed at the end."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.show import columns, paper, spread, units

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
    """Append rows (with a header if the file is new) and flush them to disk. A key that is not
    a column of the schema (bench.show.columns) is not dropped in silence: it is kept beside the
    CSV (unlisted_path) and named in a warning."""
    unknown = sorted({k for r in rows for k in r} - set(columns))
    if unknown:
        keep_unlisted(path, rows, unknown)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows({k: _cell(r.get(k)) for k in columns} for r in rows)
        f.flush()
        os.fsync(f.fileno())


def unlisted_path(path: Path) -> Path:
    return path.with_name(path.stem + ".unlisted.jsonl")


def keep_unlisted(path: Path, rows: list[dict], keys: list[str]):
    """Values under keys the schema lacks: one JSON line per row in unlisted_path, and a warning."""
    with open(unlisted_path(path), "a") as f:
        for r in rows:
            f.write(json.dumps({"case_id": r.get("case_id"), **{k: r[k] for k in keys if k in r}}, default=str) + "\n")
    print(f"warning: {path.name}: {', '.join(keys)} not in the column schema (bench/show/columns.py): kept in "
          f"{unlisted_path(path)}; document them there", file=sys.stderr)


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

@dataclass
class Table:
    """Raw values (for sorting and plots) and how each column is written (human units)."""

    frame: pd.DataFrame
    formats: dict[str, Callable] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)  # columns written row by row (mixed units)

    def text(self, column: str, value) -> str:
        if column in self.formats:
            return self.formats[column](value)
        return _fmt(value)

    def rows_text(self) -> list[list[str]]:
        cols = list(self.frame.columns)
        return [[self.texts[c][i] if c in self.texts else self.text(c, v) for c, v in zip(cols, row, strict=True)]
                for i, row in enumerate(self.frame.itertuples(index=False))]


def markdown_table(table: Table | pd.DataFrame) -> str:
    """A plain GitHub table (pandas' to_markdown needs the optional tabulate package)."""
    table = table if isinstance(table, Table) else Table(table)
    cols = [str(c) for c in table.frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows_text()]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, float | np.floating):
        return units.sig(float(v))
    if v is None:
        return "-"
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
RATIO_KEYS = ["preset", "batch", "seq_len", "dtype", "backend", "decode_mode"]


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (preset, batch, seq_len, dtype): how many times YOCO beats the baseline; > 1 favours YOCO."""
    df = main_slice(df).copy()
    # Peak memory above what the process held before the model was built (on CPU that
    # leaves out Python and torch themselves; on CUDA it is ~0).
    before = df["mem_before_model_bytes"].fillna(0) if "mem_before_model_bytes" in df else 0
    df["model_mem_decode_bytes"] = df["peak_mem_decode_bytes"] - before
    keys = RATIO_KEYS
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


def ratio_formats(frame: pd.DataFrame) -> dict:
    return {c: units.ratio for c in frame.columns if ":" in str(c) and "[CI]" not in str(c)} | {"seq_len": units.sig}


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
                    "KV per token": g["kv_cache_bytes_per_token"].iloc[-1],
                    "KV fixed": g["kv_cache_fixed_bytes"].iloc[-1],
                    f"prefill growth exponent ({int(long['seq_len'].min())}-{int(long['seq_len'].max())})": slope,
                    f"decode at {int(g['seq_len'].iloc[0])} tokens": g["decode_tok_s"].iloc[0],
                    f"decode at {int(g['seq_len'].iloc[-1])} tokens": g["decode_tok_s"].iloc[-1]})
    return pd.DataFrame(out)


def trend_formats(frame: pd.DataFrame) -> dict:
    out = {"KV per token": units.size, "KV fixed": units.size}
    for c in frame.columns:
        if c.startswith("prefill growth"):
            out[c] = lambda v: "-" if not math.isfinite(v) else f"{v:.2f}"
        elif c.startswith("decode at"):
            out[c] = units.tok_s
    return out


CASE_COLUMNS = {"prefill": "prefill_ms", "decode": "decode_tok_s", "decode peak memory": "peak_mem_decode_bytes",
                "KV cache": "kv_cache_bytes", "weights": "weight_bytes", "prefill MFU": "prefill_mfu",
                "decode MBU": "decode_mbu"}


def cases_table(df: pd.DataFrame) -> Table:
    """Every measured case: medians with their spread, memory, efficiency."""
    ok = df[df["status"] == "ok"]
    frame = pd.DataFrame({"case_id": ok["case_id"]})
    formats = {}
    for label, col in CASE_COLUMNS.items():
        frame[label] = ok[col].astype(float) if col in ok else math.nan
        formats[label] = lambda v, c=col: units.value(c, v)
        found = spread.bounds(ok, col) if col in ("prefill_ms", "decode_tok_s") and col in ok else None
        if found:
            low, high, _ = found
            fmt = units.ms if col == "prefill_ms" else units.tok_s
            frame[f"{label} spread"] = [f"{fmt(a).split()[0]}-{fmt(b)}" if math.isfinite(a) else "-"
                                        for a, b in zip(low, high, strict=True)]
    return Table(frame.reset_index(drop=True), formats)


def env_facts(env: dict) -> list[tuple[str, str]]:
    """The environment in a few human lines (env.json holds everything)."""
    versions = env.get("versions") or {}
    rates = env.get("matmul_flops_s_by_dtype") or {}
    rate = ", ".join(f"{d} {units.sig(v / 1e9)} GFLOP/s" for d, v in rates.items() if v == v) or "-"
    threads = env.get("threads")
    facts = [("suite", f"{env.get('suite', '?')}: {env.get('description') or ''}".rstrip(": ")),
             ("device", f"{env.get('device', '?')} ({env.get('device_name') or '?'})"
                        + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")),
             ("git commit", str(env.get("git_commit") or "?")),
             ("when", str(env.get("timestamp") or "?")),
             ("torch", str(versions.get("torch") or "?")),
             ("copy bandwidth", f"{units.sig(env.get('copy_bandwidth_bytes_s', math.nan) / 1e9)} GB/s"),
             ("matmul rate", rate),
             ("repeats", f"{env.get('repeats', '?')} timed per phase after {env.get('warmup', '?')} warm-up"),
             ("memory", str(env.get("memory_measurement") or "?"))]
    if env.get("device_memory_bytes"):
        facts.insert(2, ("device memory", units.size(env["device_memory_bytes"])))
    if env.get("merged_from"):
        facts.append(("merged from", ", ".join(map(str, env["merged_from"]))))
    return facts


def case_counts(df: pd.DataFrame, env: dict) -> str:
    counts = df["status"].value_counts()
    text = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    missing = env.get("missing_cases") or []
    if missing:
        text += f", **{len(missing)} missing** (in the suite, not in this run): " + ", ".join(missing)
    return text


PLOTS_SHOWN = ["prefill_latency", "decode_throughput", "kv_cache", "peak_memory", "window_effect", "bitnet_effect"]


def summary_markdown(df: pd.DataFrame, env: dict, samples: pd.DataFrame | None = None,
                     plots: list[Path] | None = None, html: str | None = None) -> str:
    """summary.md: the verdicts in words first, then plots and tables in human units. `plots`:
    paths relative to summary.md's directory; `html`: the interactive page's file name."""
    from bench.show import verdicts

    device = f"{env.get('device', '?')} ({env.get('device_name', '?')}, threads: {env.get('threads', '?')})"
    lines = [f"# Benchmark summary: suite `{env.get('suite', '?')}` on {device}", "",
             f"git commit `{env.get('git_commit', '?')}`, torch {(env.get('versions') or {}).get('torch', '?')}; "
             f"copy bandwidth {dict(env_facts(env))['copy bandwidth']}, matmul {dict(env_facts(env))['matmul rate']}; "
             f"{env.get('repeats', '?')} timed repeats per phase.", "",
             "Cases: " + case_counts(df, env) + "."]
    drifted = env.get("ceiling_drifted") or []
    if drifted:
        drift = env.get("ceiling_drift", {})
        lines += ["", "**Warning: this machine's ceilings moved by more than 5% between the start and the end of the "
                  "run** (" + ", ".join(f"{k} {drift.get(k, math.nan):+.1%}" for k in drifted) + "): MBU and MFU "
                  "rest on the ceilings measured at the start."]
    if "gpu_throttled" in df:
        throttled = df[df["gpu_throttled"].astype(str).str.lower() == "true"]
        if len(throttled):
            lines += ["", f"**Warning: {len(throttled)} case(s) ran with the GPU's clocks pulled down** (NVML throttle "
                      "reasons): " + ", ".join(f"{r.case_id} ({r.gpu_throttle_reasons})"
                                              for r in throttled.itertuples())]
    if html:
        lines += ["", f"The same with sortable tables and interactive plots: [{html}]({html})."]
    found = verdicts.verdicts(df, samples)
    lines += ["", "## Does YOCO's saving hold here?",
              "Each claim checked on this run's rows: the measured value [its interval], what is expected, and "
              "whether it **holds**, **does not hold** or one **cannot tell** (the interval straddles the line, "
              "or rows are missing).", "", verdicts.markdown(found), ""]
    if plots:
        order = {name: i for i, name in enumerate(PLOTS_SHOWN)}
        lines += ["## Plots", ""]
        for p in sorted(plots, key=lambda p: order.get(Path(p).stem, 99)):
            lines += [f"![{Path(p).stem.replace('_', ' ')}]({Path(p).as_posix()})", ""]
    trends = trend_table(df)
    if len(trends):
        lines += ["## Trends", "The cache grows by `KV per token` on top of `KV fixed`; prefill time "
                  "grows as seq_len to the power shown (fitted over the longer half of the prompts).", "",
                  markdown_table(Table(trends, trend_formats(trends))), ""]
    ratios = ratio_table(df)
    if len(ratios):
        lines += ["## YOCO against the Transformer baseline",
                  "Ratios > 1 favour YOCO (bitnet none; prefill and decode medians; decode memory: "
                  f"{_memory_words(env)} during decode, less what was held before the model was built).", "",
                  markdown_table(Table(ratios, ratio_formats(ratios))), ""]
    lines += ["## The paper's figures",
              "The YOCO paper's headline ratios (3B, one H100-80GB) beside this run's; per cell whether both "
              "sides were measured or the baseline, which did not fit or did not run there, came from a formula "
              "(bench/show/paper.py).", "",
              paper.markdown(df, env.get("device_name") or env.get("device", "?")), ""]
    if (df["status"] == "ok").any():
        table = cases_table(df)
        what = spread.words(df[df["status"] == "ok"], "prefill_ms") or "no spread recorded"
        lines += ["## All measured cases", f"Medians; spread: {what}.", "", markdown_table(table), ""]
    bad = df[df["status"] != "ok"]
    if len(bad):
        lines += ["## Cases not measured", "", markdown_table(bad[["case_id", "status", "error"]]), ""]
    return "\n".join(lines)


def _memory_words(env: dict) -> str:
    if env.get("device") == "cuda":
        return "the CUDA allocator's peak"
    return "the peak resident set size (VmHWM) of the case's own process"


def read_samples(path: Path) -> pd.DataFrame | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None


CONSOLE = ["arch", "preset", "seq_len", "window", "bitnet", "status", "prefill_ms", "decode_tok_s", "kv_cache_bytes"]


def console_table(df: pd.DataFrame) -> str:
    """The short table printed after a run, in human units."""
    view = pd.DataFrame({c: [units.value(c, v) if c in ("prefill_ms", "decode_tok_s", "kv_cache_bytes") else v
                             for v in df[c]] for c in CONSOLE})
    view["window"] = df["window"].map(lambda w: "-" if w is None or w != w else str(int(float(w))))
    with pd.option_context("display.width", 160, "display.max_rows", 400):
        return view.to_string(index=False)
