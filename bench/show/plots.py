"""Plots from a results.csv alone (no model is built). Each figure function draws one matplotlib
figure on a linear or a logarithmic y axis and returns it; `plot_all` saves every one the data
allows as PNG, bench.show.html embeds the same figures as SVG (both scales, values on hover).

So that no plot misleads: every timing has error bars (bench.show.spread: a confidence interval
where the run has one, else p25-p75 of the repeats), a linear axis starts at zero and a log
axis says so, decode throughput is drawn as points (its run-to-run noise is not a trend), the
window plot shows the baseline as a reference line, and BitNet on a CPU is labelled as the
reference (unoptimized) path it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.show import spread, units  # noqa: E402
from bench.show.report import main_slice  # noqa: E402
from yoco.config import BITNET_MODES  # noqa: E402

MB = 2**20
STYLE = {"transformer": dict(color="tab:red", marker="o"), "yoco-gret": dict(color="tab:blue", marker="s"),
         "yoco-swa": dict(color="tab:green", marker="^"), "hf-llama": dict(color="tab:orange", marker="D"),
         "transformer-swa": dict(color="tab:purple", marker="v")}
ONE_MILLION = 1 << 20
BASELINE = "transformer"


def _title(what: str, df: pd.DataFrame, env: dict) -> str:
    device = env.get("device_name") or (df["device_name"].iloc[0] if len(df) and "device_name" in df else "?")
    return f"{what}\nsuite {env.get('suite', '?')} on {env.get('device', '?')}: {device}"


def _series(df: pd.DataFrame):
    """Lines to draw along seq_len: one per architecture and per other axis that varies."""
    varying = [c for c in ("preset", "batch", "dtype", "backend", "decode_mode", "gen_len")
               if c in df and df[c].nunique() > 1]
    for key, group in df.groupby(["arch", *varying], sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = key[0]
        if group["window"].notna().any():  # a windowed arch
            label += f" w{int(group['window'].iloc[0])}"
        label += "".join(f" {c}={v}" for c, v in zip(varying, key[1:], strict=True))
        yield key[0], label, group.sort_values("seq_len")


def add_tips(ax, xs, ys, tips, color=None):
    """Invisible hover targets, one per point: bench.show.html turns each into a tooltip
    (matplotlib writes an artist's gid as the id of its SVG group)."""
    fig = ax.figure
    store = fig.__dict__.setdefault("tips", {})
    for x, y, tip in zip(xs, ys, tips, strict=True):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        gid = f"tip{len(store)}"
        ax.plot([x], [y], linestyle="none", marker="o", markersize=11, alpha=0.0, color=color or "k", gid=gid,
                zorder=10)  # above every line and bar: the pointer finds it first
        store[gid] = tip


class _HumanLogFormatter(matplotlib.ticker.LogFormatter):
    """Log-axis ticks as plain numbers (200, 1,000), labelled where matplotlib would label them."""

    def __call__(self, x, pos=None):
        return units.sig(x) if super().__call__(x, pos) else ""


def _scale_y(ax, log: bool, what: str):
    """A log axis or a linear one from zero, and the label says which."""
    ax.yoco_what = what  # for rescale()
    ax.set_yscale("log" if log else "linear")
    ax.relim()
    ax.autoscale(axis="y")
    if log:
        ax.yaxis.set_major_formatter(_HumanLogFormatter())
        ax.yaxis.set_minor_formatter(_HumanLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.set_ylabel(f"{what} (log scale)")
    else:
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-12))
        ax.set_ylabel(f"{what} (axis from 0)")


def rescale(fig, log: bool):
    """The same figure on the other y scale (the page offers both)."""
    for ax in fig.axes:
        if hasattr(ax, "yoco_what"):
            _scale_y(ax, log, ax.yoco_what)
    fig.tight_layout()


def _tokens_axis(ax, what: str):
    """A log2 axis of token counts written as numbers (4,096, not 2^12)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: units.sig(v)))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(what, fontsize=8)


def _bars_note(df: pd.DataFrame, metric: str) -> str:
    words = spread.words(df, metric)
    return f"bars: {words}" if words else "no spread recorded: no error bars"


def _timing_vs_seq_len(df, env, log, column, what, title, unit_fmt, join=True):
    data = main_slice(df).dropna(subset=[column])
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for arch, label, group in _series(data):
        style = STYLE.get(arch, {})
        yerr = spread.error_bars(group, column)
        ax.errorbar(group["seq_len"], group[column], yerr=yerr, label=label, capsize=3, elinewidth=1,
                    linestyle="-" if join else "none", **style)
        lows = spread.bounds(group, column)
        tips = []
        for i, (_, r) in enumerate(group.iterrows()):
            text = f"{label}, prompt {units.sig(r['seq_len'])} tokens: {unit_fmt(r[column])}"
            if lows is not None:
                text += f" ({unit_fmt(lows[0].iloc[i])} to {unit_fmt(lows[1].iloc[i])})"
            tips.append(text)
        add_tips(ax, group["seq_len"].to_numpy(float), group[column].to_numpy(float), tips, style.get("color"))
    _tokens_axis(ax, f"prompt length seq_len (tokens, log scale)\n{_bars_note(data, column)}")
    _scale_y(ax, log, what)
    ax.set_title(_title(title, data, env), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def prefill_latency(df, env, log=True):
    return _timing_vs_seq_len(df, env, log, "prefill_ms", "prefill latency (ms, median)",
                              "Prefill latency vs prompt length", units.ms)


def decode_throughput(df, env, log=False):
    """Points with their spread, not joined: between neighbouring lengths the medians move by
    about their own noise, and a line through them draws that noise as a trend."""
    fig = _timing_vs_seq_len(df, env, log, "decode_tok_s", "decode throughput (tokens/s)",
                             "Decode throughput at context seq_len (points not joined: overlapping bars are "
                             "noise)", units.tok_s, join=False)
    return fig


def peak_memory(df, env, log=False):
    data = main_slice(df).dropna(subset=["peak_mem_decode_bytes"])
    if data.empty:
        return None
    if env.get("device") == "cuda":
        source = "CUDA allocator peak"
    else:  # the process's own footprint (Python, torch) would hide the model's
        source = "peak RSS of the case process above its RSS before the model was built"
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for arch, label, group in _series(data):
        style = STYLE.get(arch, {})
        base = group["mem_before_model_bytes"].fillna(0) if "mem_before_model_bytes" in group else 0
        for phase, line in (("decode", "-"), ("prefill", ":")):
            y = (group[f"peak_mem_{phase}_bytes"] - base) / MB
            ax.plot(group["seq_len"], y, label=f"{label} {phase}", linestyle=line, color=style.get("color"),
                    marker=style.get("marker"), fillstyle="full" if phase == "decode" else "none")
            add_tips(ax, group["seq_len"].to_numpy(float), y.to_numpy(float),
                     [f"{label} {phase}, prompt {units.sig(s)} tokens: {units.size(v * MB)}"
                      for s, v in zip(group["seq_len"], y, strict=True)], style.get("color"))
    _tokens_axis(ax, f"prompt length seq_len (tokens, log scale)\n{source}")
    _scale_y(ax, log, "peak memory (MiB)")
    ax.set_title(_title("Peak memory", data, env), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def kv_cache(df, env, log=True):
    """Measured cache bytes as points, the formula as lines, extended to 1M tokens dashed."""
    data = main_slice(df).dropna(subset=["kv_cache_bytes"])
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for arch, label, group in _series(data):
        style = STYLE.get(arch, {})
        tokens = group["seq_len"] + group["gen_len"]
        ax.plot(tokens, group["kv_cache_bytes"] / MB, linestyle="none", label=f"{label} measured", **style)
        add_tips(ax, tokens.to_numpy(float), (group["kv_cache_bytes"] / MB).to_numpy(float),
                 [f"{label}, {units.sig(t)} tokens: {units.size(b)}"
                  for t, b in zip(tokens, group["kv_cache_bytes"], strict=True)], style.get("color"))
        ax.plot(tokens, group["kv_cache_bytes_formula"] / MB, color=style.get("color"), linewidth=1)
        # Beyond the last point the cache is affine in its length (an SWA ring is full by then).
        fixed, per_token = group["kv_cache_fixed_bytes"].iloc[-1], group["kv_cache_bytes_per_token"].iloc[-1]
        hi = tokens.max()
        if hi < ONE_MILLION and not (np.isnan(fixed) or np.isnan(per_token)):
            ext = np.geomspace(hi, ONE_MILLION, 50)
            ax.plot(ext, (fixed + per_token * ext) / MB, color=style.get("color"), linestyle="--", linewidth=1,
                    label=f"{label} formula (extrapolated)")
    _tokens_axis(ax, "tokens held in the cache (seq_len + gen_len, log scale)")
    _scale_y(ax, log, "KV cache (MiB)")
    ax.set_title(_title("KV-cache size: measured (points), formula (lines)", data, env), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def window_effect(df, env, log=False):
    ok = df[df["status"] == "ok"]
    if "none" in set(ok["bitnet"]):
        ok = ok[ok["bitnet"] == "none"]
    data = ok[ok["arch"] == "yoco-swa"].dropna(subset=["window"])
    # Only prompt lengths measured at several windows make a line.
    data = data.groupby(["seq_len", "preset"]).filter(lambda g: g["window"].nunique() > 1)
    if data.empty:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    panels = [("prefill_ms", "prefill latency (ms)", 1, units.ms),
              ("decode_tok_s", "decode throughput (tokens/s)", 1, units.tok_s),
              ("kv_cache_bytes", "KV cache (MiB)", 1 / MB, lambda v: units.size(v * MB))]
    baseline_seen = False
    for ax, (column, ylabel, scale, fmt) in zip(axes, panels, strict=True):
        for i, ((seq_len, preset), group) in enumerate(data.groupby(["seq_len", "preset"])):
            color = f"C{i}"
            group = group.sort_values("window")
            yerr = spread.error_bars(group, column, scale) if column != "kv_cache_bytes" else None
            label = f"yoco-swa {preset}, seq_len {seq_len}"
            ax.errorbar(group["window"], group[column] * scale, yerr=yerr, marker="^", capsize=3, color=color,
                        label=label)
            add_tips(ax, group["window"].to_numpy(float), (group[column] * scale).to_numpy(float),
                     [f"{label}, window {int(w)}: {fmt(v)}" for w, v in zip(group["window"], group[column] * scale,
                                                                          strict=True)], color)
            base = ok[(ok["arch"] == BASELINE) & (ok["seq_len"] == seq_len) & (ok["preset"] == preset)]
            if len(base):
                value = float(base[column].iloc[0]) * scale
                ax.axhline(value, color=color, linestyle="--", linewidth=1,
                           label=f"{BASELINE} {preset}, seq_len {seq_len} (no window): {fmt(value)}")
                baseline_seen = True
        _tokens_axis(ax, "sliding window W (tokens, log scale)")
        _scale_y(ax, log, ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    note = "dashed: the baseline at the same prompt" if baseline_seen else "no baseline row at these prompts"
    fig.suptitle(_title(f"Effect of the SWA window (yoco-swa; {note}; {_bars_note(data, 'prefill_ms')})",
                        data, env), fontsize=10)
    return fig


def bitnet_effect(df, env, log=False):
    data = df[df["status"] == "ok"]
    if data["bitnet"].nunique() < 2:
        return None
    # One prompt length (the longest measured in every BitNet mode) and the default window.
    modes = [m for m in BITNET_MODES if m in set(data["bitnet"])]
    common = [s for s, g in data.groupby("seq_len") if g["bitnet"].nunique() == len(modes)]
    if common:
        data = data[data["seq_len"] == max(common)]
    data = data.drop_duplicates(subset=["arch", "preset", "bitnet"])
    pairs = list(data[["arch", "preset"]].drop_duplicates().itertuples(index=False))
    labels = [f"{a}\n{p}" for a, p in pairs]
    x = np.arange(len(pairs))
    width = 0.8 / len(modes)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, mode in enumerate(modes):
        rows = data[data["bitnet"] == mode].set_index(["arch", "preset"])
        for ax, column, scale, fmt in ((axes[0], "weight_bytes", 1 / MB, lambda v: units.size(v * MB)),
                                       (axes[1], "decode_tok_s", 1, units.tok_s)):
            values = np.array([rows[column].get(tuple(p), np.nan) * scale for p in pairs], float)
            yerr = None
            if column == "decode_tok_s":
                picked = rows.reindex([tuple(p) for p in pairs])
                yerr = spread.error_bars(picked.reset_index(), column)
            pos = x + (i - (len(modes) - 1) / 2) * width
            ax.bar(pos, values, width, yerr=yerr, capsize=3, label=f"bitnet {mode}", color=f"C{i}")
            add_tips(ax, pos, values, [f"{a} {p}, bitnet {mode}: {fmt(v)}" for (a, p), v in
                                      zip(pairs, values, strict=True)], f"C{i}")
    for ax, ylabel in ((axes[0], "weight bytes as stored (MiB)"), (axes[1], "decode throughput (tokens/s)")):
        ax.set_xticks(x, labels, fontsize=8)
        _scale_y(ax, log, ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    seq = f" at seq_len {int(data['seq_len'].iloc[0])}" if data["seq_len"].nunique() == 1 else ""
    if env.get("device") == "cuda":
        path = "packed weights; decode through the Triton W2A8/W1A8 kernel"
    else:
        path = ("CPU: the packed forward is the REFERENCE path (unpack, then an exact float32 matmul), "
                "not a fast kernel:\nits decode speed says nothing about BitNet kernels; the weight bytes are real")
        axes[1].set_title("reference (unoptimized) path on a CPU", fontsize=9, color="tab:red")
    fig.suptitle(_title(f"Effect of BitNet{seq} ({path})", data, env), fontsize=9)
    return fig


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    caption: str
    draw: object  # (df, env, log) -> matplotlib figure or None
    log: bool  # the scale of the saved PNG
    toggle: bool = True  # the page offers the other scale too


FIGURES = [
    Figure("prefill_latency", "Prefill latency against prompt length", prefill_latency, log=True),
    Figure("decode_throughput", "Decode throughput against context length", decode_throughput, log=False),
    Figure("kv_cache", "KV-cache size: measured and by formula, extended to 1M tokens", kv_cache, log=True),
    Figure("peak_memory", "Peak memory during prefill and decode", peak_memory, log=False),
    Figure("window_effect", "What the SWA window costs, against the baseline", window_effect, log=False),
    Figure("bitnet_effect", "BitNet: packed weight bytes and decode speed", bitnet_effect, log=False),
]


def draw(spec: Figure, df: pd.DataFrame, env: dict, log: bool | None = None):
    fig = spec.draw(df, env, spec.log if log is None else log)
    if fig is not None:
        fig.tight_layout()
    return fig


def save(fig, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(df: pd.DataFrame, env: dict, out: Path) -> list[Path]:
    """Every figure the data allows, at its default scale, as PNG under `out`."""
    paths = []
    for spec in FIGURES:
        fig = draw(spec, df, env)
        if fig is not None:
            paths.append(save(fig, out, spec.name))
    return paths

