"""Plots from a results.csv alone (no model is built): each function draws one figure and
returns its path; `plot_all` draws every one the data allows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.show.report import main_slice  # noqa: E402
from yoco.config import BITNET_MODES  # noqa: E402

MB = 2**20
STYLE = {"transformer": dict(color="tab:red", marker="o"), "yoco-gret": dict(color="tab:blue", marker="s"),
         "yoco-swa": dict(color="tab:green", marker="^"), "hf-llama": dict(color="tab:orange", marker="D"),
         "transformer-swa": dict(color="tab:purple", marker="v")}
ONE_MILLION = 1 << 20


def _title(what: str, df: pd.DataFrame, env: dict) -> str:
    device = env.get("device_name") or (df["device_name"].iloc[0] if len(df) else "?")
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


def _save(fig, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_vs_seq_len(df, env, out, name, column, ylabel, what, logy=True, scale=1.0):
    data = main_slice(df).dropna(subset=[column])
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch, label, group in _series(data):
        style = STYLE.get(arch, {})
        ax.plot(group["seq_len"], group[column] * scale, label=label, **style)
        low, high = f"{column}_ci_low", f"{column}_ci_high"
        if low in group and group[low].notna().any():  # --processes N: the 95% interval of the median
            ax.errorbar(group["seq_len"], group[column] * scale,
                        yerr=[(group[column] - group[low]) * scale, (group[high] - group[column]) * scale],
                        fmt="none", ecolor=style.get("color"), capsize=3, alpha=0.8)
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("prompt length seq_len (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(_title(what, data, env))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, name)


def plot_peak_memory(df, env, out):
    data = main_slice(df).dropna(subset=["peak_mem_decode_bytes"])
    if data.empty:
        return None
    if env.get("device") == "cuda":
        source = "CUDA allocator peak"
    else:  # the process's own footprint (Python, torch) would hide the model's
        source = "peak RSS of the case process above its RSS before the model was built"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch, label, group in _series(data):
        style = STYLE.get(arch, {})
        base = group["mem_before_model_bytes"].fillna(0) if "mem_before_model_bytes" in group else 0
        ax.plot(group["seq_len"], (group["peak_mem_decode_bytes"] - base) / MB, label=f"{label} decode", **style)
        ax.plot(group["seq_len"], (group["peak_mem_prefill_bytes"] - base) / MB, label=f"{label} prefill",
                linestyle=":", color=style.get("color"), marker=style.get("marker"), fillstyle="none")
    ax.set_xscale("log", base=2)
    ax.set_ylabel("peak memory (MiB)")
    ax.set_xlabel(f"prompt length seq_len (tokens)\n{source}", fontsize=8)
    ax.set_title(_title("Peak memory", data, env))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, "peak_memory")


def plot_kv_cache(df, env, out):
    """Measured cache bytes as points, the formula as lines, extended to 1M tokens dashed."""
    data = main_slice(df).dropna(subset=["kv_cache_bytes"])
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch, label, group in _series(data):
        style = STYLE.get(arch, {})
        tokens = group["seq_len"] + group["gen_len"]
        ax.plot(tokens, group["kv_cache_bytes"] / MB, linestyle="none", label=f"{label} measured", **style)
        ax.plot(tokens, group["kv_cache_bytes_formula"] / MB, color=style.get("color"), linewidth=1)
        # Beyond the last point the cache is affine in its length (an SWA ring is full by then).
        fixed, per_token = group["kv_cache_fixed_bytes"].iloc[-1], group["kv_cache_bytes_per_token"].iloc[-1]
        hi = tokens.max()
        if hi < ONE_MILLION and not (np.isnan(fixed) or np.isnan(per_token)):
            ext = np.geomspace(hi, ONE_MILLION, 50)
            ax.plot(ext, (fixed + per_token * ext) / MB, color=style.get("color"), linestyle="--", linewidth=1,
                    label=f"{label} formula (extrapolated)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens held in the cache (seq_len + gen_len)")
    ax.set_ylabel("KV cache (MiB)")
    ax.set_title(_title("KV-cache size: measured (points), formula (lines)", data, env))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, "kv_cache")


def plot_window(df, env, out):
    data = df[(df["status"] == "ok") & (df["arch"] == "yoco-swa")].dropna(subset=["window"])
    if "none" in set(data["bitnet"]):
        data = data[data["bitnet"] == "none"]
    # Only prompt lengths measured at several windows make a line.
    data = data.groupby(["seq_len", "preset"]).filter(lambda g: g["window"].nunique() > 1)
    if data.empty:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    panels = [("prefill_ms", "prefill latency (ms)"), ("decode_tok_s", "decode throughput (tokens/s)"),
              ("kv_cache_bytes", "KV cache (MiB)")]
    for ax, (column, ylabel) in zip(axes, panels, strict=True):
        for (seq_len, preset), group in data.groupby(["seq_len", "preset"]):
            group = group.sort_values("window")
            scale = 1 / MB if column == "kv_cache_bytes" else 1
            ax.plot(group["window"], group[column] * scale, marker="^", label=f"{preset} seq_len {seq_len}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sliding window W (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(_title("Effect of the SWA window (yoco-swa)", data, env))
    return _save(fig, out, "window_effect")


def plot_bitnet(df, env, out):
    data = df[df["status"] == "ok"]
    if data["bitnet"].nunique() < 2:
        return None
    # One prompt length (the longest measured in every BitNet mode) and the default window.
    modes = [m for m in BITNET_MODES if m in set(data["bitnet"])]
    common = [s for s, g in data.groupby("seq_len") if g["bitnet"].nunique() == len(modes)]
    if common:
        data = data[data["seq_len"] == max(common)]
    data = data.drop_duplicates(subset=["arch", "preset", "bitnet"])
    labels = [f"{a}\n{p}" for a, p in data[["arch", "preset"]].drop_duplicates().itertuples(index=False)]
    pairs = list(data[["arch", "preset"]].drop_duplicates().itertuples(index=False))
    x = np.arange(len(pairs))
    width = 0.8 / len(modes)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, mode in enumerate(modes):
        rows = data[data["bitnet"] == mode].set_index(["arch", "preset"])
        for ax, column, scale in ((axes[0], "weight_bytes", 1 / MB), (axes[1], "decode_tok_s", 1)):
            values = [rows[column].get(tuple(p), np.nan) * scale for p in pairs]
            ax.bar(x + (i - (len(modes) - 1) / 2) * width, values, width, label=f"bitnet {mode}")
    for ax, ylabel in ((axes[0], "weight bytes as stored (MiB)"), (axes[1], "decode throughput (tokens/s)")):
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    seq = f" at seq_len {int(data['seq_len'].iloc[0])}" if data["seq_len"].nunique() == 1 else ""
    fig.suptitle(_title(f"Effect of BitNet (packed weights){seq}", data, env))
    return _save(fig, out, "bitnet_effect")


def plot_all(df: pd.DataFrame, env: dict, out: Path) -> list[Path]:
    paths = [
        plot_vs_seq_len(df, env, out, "prefill_latency", "prefill_ms", "prefill latency (ms, median)",
                        "Prefill latency vs prompt length (log-log)"),
        plot_vs_seq_len(df, env, out, "decode_throughput", "decode_tok_s", "decode throughput (tokens/s)",
                        "Decode throughput at context seq_len", logy=False),
        plot_peak_memory(df, env, out),
        plot_kv_cache(df, env, out),
        plot_window(df, env, out),
        plot_bitnet(df, env, out),
    ]
    return [p for p in paths if p is not None]
