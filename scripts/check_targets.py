"""Check a GPU run against its targets: `python scripts/check_targets.py RUN_DIR [RUN_DIR ...]`.

Reads results.csv and env.json of each run directory (a `python -m bench run` output; the GPU
run, scripts/gpu_run.py, passes its sections' runs) and prints every target as met / not met /
not measured, with the measured value and the rows it came from. It computes nothing the runs
did not measure, except where a value says "(formula)" and its detail says which formula.

Rows count when status is ok (for "fits", a row that ran out of memory or was skipped as too
big counts too), batch 1, bfloat16, bitnet none and (unless --any-device) device cuda: the
targets are for a GPU in bf16. Where several rows match one figure (two runs, or eager and
graph-captured), the least favourable one is reported.

Targets:
- decode MBU >= 0.7 at 3b with a 4K context, for transformer, hf-llama, yoco-gret and yoco-swa,
  one verdict per backend (SDPA's decode and the split-KV kernel are different figures; rows whose
  decode ran as CUDA graphs, decode_mode graph or compile, where there are any, else eager);
- prefill MFU >= 0.5 for transformer at 8K..32K tokens;
- YOCO prefill linear in N: least-squares slope of log(prefill_ms) on log(seq_len) over the
  lengths >= 32K (at least two; rows of all the runs given, the median where a length repeats)
  under 1.2;
- 3b YOCO at 1M tokens fits in 80 GB: the case ran under a memory cap of at most 80e9 bytes
  (memory_cap_bytes: an allocation past it fails), or ran uncapped with a reserved peak <= 80e9;
  an out-of-memory error under such a cap is a "not met";
- our transformer at least as fast as hf-llama (medians, prefill and decode, same run and case but
  the backend: each of ours against hf-llama's backend "torch" row, HF's own attention);
- the packed BitNet kernel at least 4x bf16 F.linear at M = 1, K = N = 8192 (--bitlinear-json:
  pytest-benchmark's JSON of tests/benchmarks/test_bitlinear_bench.py, timed on CUDA);
- the paper's ratios on 3b, met when ours reach the paper's figure: memory at 1M (9.4x; the
  transformer by formula, weights + KV cache, where it was not measured), prefill at 1M (71.8x;
  the transformer's time by formula, c * N^b fitted to its rows >= 32K, where it was not
  measured) and at 32K (2.87x).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.show import paper

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
YOCO_ARCHS = ("yoco-gret", "yoco-swa")
MBU_TARGET, MFU_TARGET, SLOPE_TARGET, KERNEL_TARGET = 0.7, 0.5, 1.2, 4.0
FIT_BYTES = 80e9  # "fits in 80 GB"
ONE_M = 1 << 20


@dataclass
class Result:
    target: str
    scope: str
    status: str
    value: str
    detail: str = ""


def load_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    frames, envs = [], []
    for d in run_dirs:
        csv_path, env_path = d / "results.csv", d / "env.json"
        if not csv_path.is_file() or not env_path.is_file():
            raise ValueError(f"{d} is not a run directory: it needs results.csv and env.json")
        env = json.loads(env_path.read_text())
        df = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
        df["run"] = str(d)
        df["decode_mode"] = decode_modes(df)
        frames.append(df)
        envs.append(env)
    return pd.concat(frames, ignore_index=True), envs


def in_scope(df: pd.DataFrame, any_device: bool) -> pd.DataFrame:
    """The rows the targets speak of, whatever their status (see the module docstring)."""
    keep = (df["batch"] == 1) & (df["dtype"] == "bfloat16") & (df["bitnet"] == "none")
    if not any_device:
        keep &= df["device"] == "cuda"
    return df[keep]


def decode_modes(df: pd.DataFrame) -> pd.Series:
    """Each row's decode_mode (a run from before that column: its boolean `compile`)."""
    if "decode_mode" in df:
        return df["decode_mode"].fillna("eager").astype(str)
    if "compile" in df:
        return df["compile"].astype(str).str.lower().isin(("true", "1")).map({True: "compile", False: "eager"})
    return pd.Series("eager", index=df.index)


def _mode_words(mode) -> str:
    return "" if str(mode) == "eager" else f" {mode}"


def _fmt_len(n) -> str:
    n = int(n)
    return f"{n // ONE_M}M" if n % ONE_M == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _where(rows: pd.DataFrame) -> str:
    return "; ".join(f"{r.case_id} in {r.run}" for r in rows.itertuples())


def decode_mbu(df: pd.DataFrame) -> list[Result]:
    out = []
    for preset in ("3b",):
        for arch in ("transformer", "hf-llama", *YOCO_ARCHS):
            of_arch = df[(df["arch"] == arch) & (df["preset"] == preset) & (df["seq_len"] == 4096)]
            of_arch = of_arch[of_arch["decode_mbu"].notna()]
            if of_arch.empty:
                out.append(Result("decode MBU >= 0.7", f"{arch} {preset} 4K", NOT_MEASURED, "-"))
                continue
            # One verdict per backend: SDPA's decode and the split-KV kernel's are different figures.
            for backend, rows in of_arch.groupby("backend", sort=True):
                ours = "" if backend == "torch" else f" {backend}"
                out.append(_worst_decode_mbu(rows, f"{arch} {preset} 4K{ours}"))
    return out


def _worst_decode_mbu(rows: pd.DataFrame, scope: str) -> Result:
    """The worst of one arch and backend's rows, of the graph or compiled ones where there are any."""
    compiled = rows[rows["decode_mode"] != "eager"]
    rows = compiled if len(compiled) else rows
    worst = rows.loc[rows["decode_mbu"].idxmin()]
    mode = f"decode_mode {worst['decode_mode']}" if len(compiled) else "eager only"
    return Result("decode MBU >= 0.7", scope, MET if worst["decode_mbu"] >= MBU_TARGET else NOT_MET,
                  f"{worst['decode_mbu']:.3f}", f"{mode}; {worst['case_id']} in {worst['run']}")


def prefill_mfu(df: pd.DataFrame) -> list[Result]:
    rows = df[(df["arch"] == "transformer") & df["seq_len"].between(8192, 32768) & df["prefill_mfu"].notna()]
    if rows.empty:
        return [Result("prefill MFU >= 0.5", "transformer 8K-32K", NOT_MEASURED, "-")]
    out = []
    for (preset, seq_len), group in rows.groupby(["preset", "seq_len"]):
        worst = group.loc[group["prefill_mfu"].idxmin()]
        out.append(Result("prefill MFU >= 0.5", f"transformer {preset} {_fmt_len(seq_len)}",
                          MET if worst["prefill_mfu"] >= MFU_TARGET else NOT_MET, f"{worst['prefill_mfu']:.3f}",
                          f"{worst['case_id']} in {worst['run']}"))
    return out


def loglog_slope(seq_lens, times) -> float:
    """Least-squares slope of log(time) against log(length)."""
    slope, _ = np.polyfit(np.log(np.asarray(seq_lens, dtype=float)), np.log(np.asarray(times, dtype=float)), 1)
    return float(slope)


def prefill_curve(rows: pd.DataFrame) -> pd.Series:
    """Median prefill_ms per seq_len (rows of several runs pooled), lengths ascending."""
    return rows.groupby("seq_len")["prefill_ms"].median().sort_index()


def yoco_prefill_slope(df: pd.DataFrame) -> list[Result]:
    out = []
    rows = df[df["arch"].isin(YOCO_ARCHS) & (df["seq_len"] >= 32768) & df["prefill_ms"].notna()]
    keys = ["arch", "preset", "window", "backend", "decode_mode"]
    for key, group in rows.groupby(keys, dropna=False):
        curve = prefill_curve(group)
        if len(curve) < 2:
            continue
        arch, preset, window, backend, compiled = key
        slope = loglog_slope(curve.index, curve.values)
        w = f" w{int(window)}" if arch == "yoco-swa" and not pd.isna(window) else ""
        scope = (f"{arch}{w} {preset} {backend}{_mode_words(compiled)}, "
                 f"{_fmt_len(curve.index.min())}-{_fmt_len(curve.index.max())}")
        out.append(Result("YOCO prefill slope < 1.2", scope, MET if slope < SLOPE_TARGET else NOT_MET,
                          f"{slope:.3f}", f"{len(curve)} lengths from {', '.join(sorted(set(group['run'])))}"))
    if not out:
        out.append(Result("YOCO prefill slope < 1.2", "yoco >= 32K", NOT_MEASURED, "-",
                          "needs two or more lengths >= 32K for one YOCO arch"))
    return out


def _cap(row) -> float:
    value = row.get("memory_cap_bytes")
    return math.nan if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fits_1m(df: pd.DataFrame, scoped: pd.DataFrame) -> list[Result]:
    out = []
    name = "3b at 1M fits in 80 GB"
    for arch in YOCO_ARCHS:
        scope = f"{arch} 3b 1M"
        rows = df[(df["arch"] == arch) & (df["preset"] == "3b") & (df["seq_len"] == ONE_M)]
        if rows.empty:
            tried = scoped[(scoped["arch"] == arch) & (scoped["preset"] == "3b") & (scoped["seq_len"] == ONE_M)]
            verdicts = tried[tried["status"].isin(["oom", "skipped"])]
            if len(verdicts):  # out of memory, or skipped because weights + cache exceed the memory
                r = verdicts.iloc[0]
                cap = _cap(r)
                under = f" (cap {cap / 1e9:g} GB)" if cap <= FIT_BYTES else ""
                out.append(Result(name, scope, NOT_MET, f"{r['status']}{under}", f"{r.get('error', '')}"[:160]))
            elif len(tried):
                r = tried.iloc[0]
                out.append(Result(name, scope, NOT_MEASURED, str(r["status"]), f"{r.get('error', '')}"[:160]))
            else:
                out.append(Result(name, scope, NOT_MEASURED, "-"))
            continue
        worst = max((paper.peak_bytes(r) for _, r in rows.iterrows()), default=math.nan)
        caps = [_cap(r) for _, r in rows.iterrows()]
        capped = all(c <= FIT_BYTES for c in caps)  # nan compares False: uncapped
        status = MET if capped else NOT_MEASURED if math.isnan(worst) else MET if worst <= FIT_BYTES else NOT_MET
        how = (f"ran under a memory cap of {max(caps) / 1e9:g} GB (a real limit)" if capped
               else "no memory cap: judged by the peak")
        out.append(Result(name, scope, status, f"{worst / 1e9:.1f} GB",
                          f"{how}; peak reserved (allocator), prefill or decode; " + _where(rows)))
    return out


def ours_vs_hf(df: pd.DataFrame) -> list[Result]:
    # Each of our backends (SDPA's decode, the split-KV kernel) against hf-llama as HF runs it.
    keys = ["run", "preset", "seq_len", "decode_mode"]
    cols = keys + ["backend", "prefill_ms", "decode_ms_per_step"]
    hf = df[(df["arch"] == "hf-llama") & (df["backend"] == "torch")][cols].drop(columns="backend")
    joined = pd.merge(df[df["arch"] == "transformer"][cols], hf, on=keys,
                      suffixes=("_ours", "_hf")).set_index(keys + ["backend"])
    if joined.empty:
        return [Result("transformer at least as fast as hf-llama", "same run and case", NOT_MEASURED, "-",
                       "needs transformer and hf-llama rows of the same case in one run")]
    out = []
    for key, r in joined.iterrows():
        run, preset, seq_len, compiled, backend = key
        for col, label in (("prefill_ms", "prefill"), ("decode_ms_per_step", "decode")):
            a, b = r[f"{col}_hf"], r[f"{col}_ours"]
            ours = "" if backend == "torch" else f", ours {backend}"
            scope = f"{label} {preset} {_fmt_len(seq_len)}{_mode_words(compiled)}{ours}"
            if not (a > 0 and b > 0):
                out.append(Result("transformer at least as fast as hf-llama", scope, NOT_MEASURED, "-"))
                continue
            out.append(Result("transformer at least as fast as hf-llama", scope, MET if b <= a else NOT_MET,
                              f"hf/ours {a / b:.3f}", f"ours {b:.4g} ms, hf-llama {a:.4g} ms, medians; {run}"))
    return out


def paper_ratios(rows: pd.DataFrame) -> list[Result]:
    """The paper's figures (bench.show.paper: the one place they are computed), judged against the
    paper's values: met where our ratio reaches the paper's, whether measured or by formula."""
    out = []
    for cell in paper.cells(rows):
        f = cell.figure
        name = f.target
        scope = f"3b {_fmt_len(f.seq_len)}, transformer / {cell.arch}"
        if cell.how == paper.NOT_MEASURED:
            out.append(Result(f"{name} (paper {f.paper:g}x)", scope, NOT_MEASURED, "-", cell.detail))
            continue
        value = f"{cell.ratio:.2f}x" + (" (formula)" if cell.how == paper.FORMULA else "")
        out.append(Result(f"{name} (paper {f.paper:g}x)", scope, MET if cell.ratio >= f.paper else NOT_MET, value,
                          f"{cell.how}: {cell.detail}"))
    return out


def packed_kernel(bitlinear_json: Path | None) -> list[Result]:
    """From pytest-benchmark's JSON of tests/benchmarks/test_bitlinear_bench.py (timed on CUDA)."""
    name, scope = "packed BitNet kernel >= 4x bf16", "W2A8 1.58bit, M=1, K=N=8192"
    if bitlinear_json is None or not bitlinear_json.is_file():
        return [Result(name, scope, NOT_MEASURED, "-", "no microbenchmark JSON (--bitlinear-json)")]
    if bitlinear_json.stat().st_size == 0:  # pytest-benchmark writes it at the end: the run was cut before
        why = f"{bitlinear_json} is empty (the microbenchmark did not finish)"
        return [Result(name, scope, NOT_MEASURED, "-", why)]
    try:
        benchmarks = json.loads(bitlinear_json.read_text()).get("benchmarks", [])
    except json.JSONDecodeError as e:
        raise ValueError(f"{bitlinear_json} is not pytest-benchmark JSON: {e}") from None
    found = [b for b in benchmarks if (b.get("extra_info") or {}).get("rows") == 1
             and (b.get("extra_info") or {}).get("in_features") == 8192 and "1.58bit" in b.get("name", "")
             and "speedup_vs_bf16" in (b.get("extra_info") or {})]
    if not found:
        return [Result(name, scope, NOT_MEASURED, "-", f"no timed M=1, K=N=8192 case in {bitlinear_json}")]
    worst = min(found, key=lambda b: b["extra_info"]["speedup_vs_bf16"])
    info = worst["extra_info"]
    return [Result(name, scope, MET if info["speedup_vs_bf16"] >= KERNEL_TARGET else NOT_MET,
                   f"{info['speedup_vs_bf16']:.2f}x", f"packed {info['us_per_call']:.2f} us/call, bf16 F.linear "
                   f"{info['bf16_linear_us']:.2f} us (CUDA graphs, weights cycled past L2); {worst['name']}")]


def check(run_dirs: list[Path], any_device: bool = False,
          bitlinear_json: Path | None = None) -> tuple[list[Result], list[dict]]:
    all_rows, envs = load_runs(run_dirs)
    scoped = in_scope(all_rows, any_device)
    df = scoped[scoped["status"] == "ok"]
    results = (decode_mbu(df) + prefill_mfu(df) + yoco_prefill_slope(df) + fits_1m(df, scoped)
               + ours_vs_hf(df) + packed_kernel(bitlinear_json)
               + paper_ratios(all_rows if any_device else all_rows[all_rows["device"] == "cuda"]))
    return results, envs


def render(results: list[Result], envs: list[dict], run_dirs: list[Path]) -> str:
    lines = []
    for d, env in zip(run_dirs, envs):
        bw = env.get("copy_bandwidth_bytes_s") or math.nan
        mm = (env.get("matmul_flops_s_by_dtype") or {}).get("bfloat16", math.nan)
        lines.append(f"run {d}: suite {env.get('suite')}, {env.get('device')} ({env.get('device_name')}), "
                     f"commit {env.get('git_commit')}, torch {(env.get('versions') or {}).get('torch')}; "
                     f"measured copy bandwidth {bw / 1e9:.1f} GB/s, bf16 matmul {mm / 1e12:.1f} TFLOP/s")
        if env.get("memory_cap_gb"):
            lines.append(f"  cases ran under a memory cap of {env['memory_cap_gb']:g} GB "
                         "(set_per_process_memory_fraction)")
        if env.get("device") != "cuda":
            lines.append("  (not a CUDA run: the targets are for a GPU; its rows count only with --any-device)")
    width = max(len(r.target) for r in results)
    scope_w = max(len(r.scope) for r in results)
    for r in results:
        lines.append(f"{r.target:<{width}}  {r.scope:<{scope_w}}  {r.status:<12}  {r.value:<14}  {r.detail}".rstrip())
    counts = {s: sum(r.status == s for r in results) for s in (MET, NOT_MET, NOT_MEASURED)}
    lines.append(f"{counts[MET]} met, {counts[NOT_MET]} not met, {counts[NOT_MEASURED]} not measured")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories of `python -m bench run`")
    parser.add_argument("--any-device", action="store_true", help="count non-CUDA rows too (checking the checker)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--bitlinear-json", type=Path, default=None,
                        help="pytest-benchmark JSON of tests/benchmarks/test_bitlinear_bench.py, timed on CUDA")
    args = parser.parse_args(argv)
    try:
        results, envs = check(args.run_dirs, args.any_device, args.bitlinear_json)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(results, envs, args.run_dirs))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
