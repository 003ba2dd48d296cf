"""The paper's headline figures beside ours: the YOCO paper (arXiv 2405.05254, 3B on one
H100-80GB) reports memory at 1M and 32K, prefill at 1M and 32K and decode throughput at 512K
(at the largest batch that fits), each as how many times YOCO beats the Transformer.

Per figure and YOCO variant, our ratio from a run's rows, labelled how it was obtained:
- measured: both archs have an ok row at that length;
- formula: YOCO measured, the baseline did not fit (oom / skipped) or did not run there: its
  memory is its weights + KV cache (no activations, so the ratio is if anything understated),
  its prefill time c * N^k through its own rows at 32K and above;
- not measured: YOCO has no row there (or the baseline has neither a row nor a curve).
scripts/check_targets.py judges the same cells against the paper's values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

ONE_M = 1 << 20
YOCO_ARCHS = ("yoco-gret", "yoco-swa")
BASELINE = "transformer"
MEASURED, FORMULA, NOT_MEASURED = "measured", "formula", "not measured"


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    target: str  # its name as a target (scripts/check_targets.py)
    seq_len: int
    paper: float  # baseline / YOCO (memory, prefill time) or YOCO / baseline (throughput)


FIGURES = (
    Figure("memory_1m", "memory at 1M tokens", "memory ratio", ONE_M, 9.4),
    Figure("memory_32k", "memory at 32K tokens", "memory ratio at 32K", 32768, 2.0),  # "about 2x"
    Figure("prefill_1m", "prefill time at 1M tokens", "prefill ratio at 1M", ONE_M, 71.8),
    Figure("prefill_32k", "prefill time at 32K tokens", "prefill ratio at 32K", 32768, 2.87),
    Figure("throughput_512k", "decode throughput at 512K, largest batch that fits", "throughput ratio at 512K",
           524288, 9.6),
)


@dataclass(frozen=True)
class Cell:
    figure: Figure
    arch: str
    ratio: float
    how: str  # MEASURED, FORMULA or NOT_MEASURED
    detail: str


def peak_bytes(row) -> float:
    """The memory a case held at its peak, prefill or decode: on CUDA what the caching allocator
    reserved (what the process occupies on the card, as the paper's GB are), else what it allocated;
    on a CPU the peak resident set less what the process held before the model."""
    values = []
    for phase in ("prefill", "decode"):
        reserved, allocated = row.get(f"peak_mem_{phase}_reserved_bytes"), row.get(f"peak_mem_{phase}_bytes")
        values.append(reserved if reserved is not None and reserved == reserved else allocated)
    values = [v for v in np.asarray(values, dtype=float) if v == v]
    peak = max(values) if values else math.nan
    if row.get("device") == "cpu":
        peak -= row.get("mem_before_model_bytes", 0) or 0
    return peak


def preset_for(df: pd.DataFrame) -> str | None:
    """The paper's 3b where the run has it, else the largest preset with both a YOCO and a baseline row."""
    both = set(df[df["arch"] == BASELINE]["preset"]) & set(df[df["arch"].isin(YOCO_ARCHS)]["preset"])
    if not both:
        return None
    if "3b" in both:
        return "3b"
    sizes = df[df["preset"].isin(both)].groupby("preset")["params"].max()
    return str(sizes.idxmax())


def cells(df: pd.DataFrame) -> list[Cell]:
    """Every (figure, YOCO arch) cell for one run's rows (or several runs' rows pooled)."""
    preset = preset_for(df)
    if preset is None:
        return [Cell(f, a, math.nan, NOT_MEASURED, "no YOCO and baseline rows of one preset") for f in FIGURES
                for a in YOCO_ARCHS]
    df = df[(df["preset"] == preset) & (df["bitnet"] == "none")]
    is_max = df["max_batch_search"].notna() if "max_batch_search" in df else pd.Series(False, index=df.index)
    fixed, max_batch = df[~is_max], df[is_max]
    out = []
    for arch in YOCO_ARCHS:
        for figure in FIGURES:
            rows = max_batch if figure.key.startswith("throughput") else fixed[fixed["batch"] == 1]
            out.append(_cell(figure, arch, rows, preset))
    return out


def _cell(figure: Figure, arch: str, rows: pd.DataFrame, preset: str) -> Cell:
    at = rows[rows["seq_len"] == figure.seq_len]
    yoco = at[(at["arch"] == arch) & (at["status"] == "ok")]
    base = at[(at["arch"] == BASELINE) & (at["status"] == "ok")]
    where = f"{preset}, {_length(figure.seq_len)}"
    if yoco.empty:
        return Cell(figure, arch, math.nan, NOT_MEASURED, f"no ok {arch} row at {where}")
    if figure.key.startswith("memory"):
        y = max(peak_bytes(r) for _, r in yoco.iterrows())
        if len(base):
            b = min(peak_bytes(r) for _, r in base.iterrows())
            return Cell(figure, arch, b / y, MEASURED, f"peaks {_gb(b)} / {_gb(y)}")
        est = at[at["arch"] == BASELINE]["estimated_bytes"].dropna()
        if est.empty:
            return Cell(figure, arch, math.nan, NOT_MEASURED, f"no {BASELINE} row at {where}")
        b = float(est.min())
        return Cell(figure, arch, b / y, FORMULA, f"{BASELINE} weights + KV cache {_gb(b)} (did not fit); "
                                                   f"{arch} peak {_gb(y)}")
    if figure.key.startswith("prefill"):
        y = float(yoco["prefill_ms"].max())
        if len(base):
            b = float(base["prefill_ms"].min())
            return Cell(figure, arch, b / y, MEASURED, f"{b:.4g} ms / {y:.4g} ms")
        curve = (rows[(rows["arch"] == BASELINE) & (rows["status"] == "ok") & (rows["seq_len"] >= 32768)]
                 .groupby("seq_len")["prefill_ms"].median().sort_index())
        if len(curve) < 2:
            return Cell(figure, arch, math.nan, NOT_MEASURED, f"no {BASELINE} row at {where}, and fewer than "
                                                              f"two from 32K up to extrapolate from")
        slope = float(np.polyfit(np.log(curve.index.astype(float)), np.log(curve.values), 1)[0])
        b = float(curve.iloc[-1]) * (figure.seq_len / float(curve.index[-1])) ** slope
        return Cell(figure, arch, b / y, FORMULA, f"{BASELINE} {b:.4g} ms = c * N^{slope:.2f} through its rows at "
                                                   f"{_length(curve.index[0])}-{_length(curve.index[-1])}; "
                                                   f"{arch} {y:.4g} ms measured")
    y = float(yoco["decode_tok_s"].min())  # throughput: tokens/s summed over the largest batch
    if base.empty:
        return Cell(figure, arch, math.nan, NOT_MEASURED, f"no ok {BASELINE} largest-batch row at {where}")
    b = float(base["decode_tok_s"].max())
    return Cell(figure, arch, y / b, MEASURED, f"{y:.4g} tok/s (batch {_batches(yoco)}) / {b:.4g} tok/s "
                                               f"(batch {_batches(base)})")


def markdown(df: pd.DataFrame, device: str) -> str:
    """A table: each paper figure, the paper's ratio and ours per YOCO variant, with how."""
    found = cells(df)
    lines = ["| figure (YOCO's advantage) | paper (3B, H100) | " + " | ".join(YOCO_ARCHS) + " |",
             "|---|---|" + "---|" * len(YOCO_ARCHS)]
    for figure in FIGURES:
        row = [c for c in found if c.figure == figure]
        shown = []
        for c in row:
            if c.how == NOT_MEASURED:
                shown.append("not measured")
            else:
                shown.append(f"{c.ratio:.2f}x ({c.how}, {device})")
        lines.append(f"| {figure.label} | {figure.paper:g}x | " + " | ".join(shown) + " |")
    details = [f"- {c.figure.label}, {c.arch}: {c.detail}" for c in found if c.how != NOT_MEASURED]
    return "\n".join(lines + ([""] + details if details else []))


def _length(n) -> str:
    n = int(n)
    return f"{n // ONE_M}M" if n % ONE_M == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _batches(rows: pd.DataFrame) -> str:
    return "/".join(str(int(b)) for b in sorted(set(rows["batch"].astype(float))))
