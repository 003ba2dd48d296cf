"""What a quality run shows, from quality.csv alone: the frontier plot (accuracy against
KV-cache bytes, one point per model), accuracy against needle distance (one line per model, the
windows marked), summary.md with a section in words, and the console table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.show import units  # noqa: E402
from bench.show.plots import STYLE, _HumanLogFormatter  # noqa: E402

KEPT = 0.9  # accuracy at or above which a model "keeps recall" at a point
NEAR_CHANCE = 3  # accuracy below this many times chance counts as "at chance"
KIB = 1024


def read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for col in ("window", "receptive_field", "pairs", "distance"):
        df[col] = df[col].astype("Int64")
    return df


def label(row) -> str:
    text = row["arch"]
    if not pd.isna(row["window"]):
        text += f" w{int(row['window'])}"
    if row["bitnet"] != "none":
        text += f" {row['bitnet']}"
    return text


def per_model(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: its cache and weights, mean and worst accuracy per task, and the
    needle distances where it was near chance."""
    out = []
    for model_id, g in df.groupby("model_id", sort=False):
        first = g.iloc[0]
        row = dict(model_id=model_id, label=label(first), arch=first["arch"], window=first["window"],
                   bitnet=first["bitnet"], kv_cache_bytes=int(first["kv_cache_bytes"]),
                   weight_bytes=int(first["weight_bytes"]), params=int(first["params"]),
                   receptive_field=first["receptive_field"], chance=first["chance"],
                   train_seconds=first["train_seconds"], final_loss=first["final_loss"],
                   worst=g["accuracy"].min(), mean=g["accuracy"].mean())
        for task in ("mqar", "needle"):
            t = g[g["task"] == task]
            row[f"{task}_mean"] = t["accuracy"].mean() if len(t) else float("nan")
        needle = g[g["task"] == "needle"].sort_values("distance")
        at_chance = needle[needle["accuracy"] < NEAR_CHANCE * first["chance"]]
        row["chance_distances"] = [int(d) for d in at_chance["distance"]]
        out.append(row)
    return pd.DataFrame(out)


# ---- plots ----

def _style(arch: str, bitnet: str) -> dict:
    style = dict(STYLE.get(arch, dict(color="tab:gray", marker="x")))
    if bitnet != "none":
        style["markerfacecolor"] = "white"
    return style


def _title(what: str, df: pd.DataFrame, env: dict) -> str:
    first = df.iloc[0]
    return (f"{what}\nsuite {env.get('suite', '?')}: d_model {first['d_model']}, {first['n_layers']} layers, "
            f"seq_len {first['seq_len']}, {int(first['train_steps'])} steps")


def plot_frontier(df: pd.DataFrame, env: dict, out: Path) -> Path:
    """Mean accuracy per task against KV-cache bytes (log x): one point per model, and the
    frontier (the best accuracy at or below each cache size)."""
    models = per_model(df)
    tasks = [t for t in ("mqar", "needle") if models[f"{t}_mean"].notna().any()]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        column = f"{task}_mean"
        for _, m in models.iterrows():
            style = _style(m["arch"], m["bitnet"])
            ax.plot(m["kv_cache_bytes"] / KIB, m[column], linestyle="none", markersize=9, **style)
            ax.annotate(m["label"], (m["kv_cache_bytes"] / KIB, m[column]), textcoords="offset points",
                        xytext=(6, 4), fontsize=7)
        best = models.sort_values(["kv_cache_bytes", column], ascending=[True, False])
        frontier_x, frontier_y, top = [], [], -1.0
        for _, m in best.iterrows():
            if m[column] > top:
                top = m[column]
                frontier_x.append(m["kv_cache_bytes"] / KIB)
                frontier_y.append(top)
        ax.step(frontier_x, frontier_y, where="post", color="black", alpha=0.35, linewidth=1, label="frontier")
        ax.axhline(models["chance"].iloc[0], color="gray", linestyle=":", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_HumanLogFormatter())  # 2, 4, 10 KiB, not 2 x 10^0
        ax.xaxis.set_minor_formatter(_HumanLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel(f"KV cache at seq_len {int(df['seq_len'].iloc[0])}, batch 1, fp32 (KiB, log)")
        what = "MQAR, mean over pair counts" if task == "mqar" else "needle, mean over distances"
        ax.set_ylabel(f"accuracy ({what})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(_title("Recall against cache size (hollow: BitNet)", df, env), fontsize=10)
    return _save(fig, out, "quality_frontier")


def plot_needle(df: pd.DataFrame, env: dict, out: Path) -> Path | None:
    """Needle accuracy against distance, one line per model; each window W (dotted) and each
    transformer-swa receptive field (dashed, the arch's colour) marked."""
    needle = df[df["task"] == "needle"]
    if needle.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for _, g in needle.groupby("model_id", sort=False):
        g = g.sort_values("distance")
        first = g.iloc[0]
        style = _style(first["arch"], first["bitnet"])
        ax.plot(g["distance"], g["accuracy"], label=label(first),
                linestyle="--" if first["bitnet"] != "none" else "-", **style)
    for w in sorted(needle["window"].dropna().unique()):
        ax.axvline(int(w), color="gray", linestyle=":", linewidth=1)
        ax.annotate(f"W={int(w)}", (int(w), 1.02), fontsize=7, color="gray", ha="center")
    fields = needle.dropna(subset=["receptive_field"]).drop_duplicates("receptive_field")
    for _, r in fields.iterrows():
        color = STYLE.get(r["arch"], {}).get("color", "gray")
        ax.axvline(int(r["receptive_field"]), color=color, linestyle="--", linewidth=1, alpha=0.6)
        ax.annotate(f"{r['arch']} w{int(r['window'])} reach {int(r['receptive_field'])}",
                    (int(r["receptive_field"]), 0.5), rotation=90, fontsize=7, color=color, ha="right")
    ax.axhline(needle["chance"].iloc[0], color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: units.sig(v)))  # 16, not 2^4
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel("needle distance: query position minus the needle key's position (tokens, log)")
    ax.set_ylabel("accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(_title("Needle recall against distance (dashed lines: BitNet)", df, env), fontsize=10)
    return _save(fig, out, "quality_needle")


def _save(fig, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(df: pd.DataFrame, env: dict, out: Path) -> list[Path]:
    if df.empty:
        return []
    return [p for p in (plot_frontier(df, env, out), plot_needle(df, env, out)) if p is not None]


# ---- words and tables ----

def _kib(n) -> str:
    return f"{n / KIB:.1f} KiB"


def findings(df: pd.DataFrame) -> list[str]:
    """The run in sentences: who kept recall and at what cache size, who lost it and where."""
    models = per_model(df)
    if models.empty:
        return []
    chance = models["chance"].iloc[0]
    lines = []
    kept = models[models["worst"] >= KEPT].sort_values("kv_cache_bytes")
    if len(kept):
        lines.append("Kept recall (accuracy >= 0.9 at every task point): " + ", ".join(
            f"{m['label']} ({_kib(m['kv_cache_bytes'])})" for _, m in kept.iterrows()) +
            f"; the smallest cache that kept it is {kept.iloc[0]['label']}'s, {_kib(kept.iloc[0]['kv_cache_bytes'])}.")
    else:
        lines.append("No model kept recall (accuracy >= 0.9) at every task point.")
    lost = models[models["worst"] < KEPT].sort_values("kv_cache_bytes")
    for _, m in lost.iterrows():
        g = df[df["model_id"] == m["model_id"]]
        below = g[g["accuracy"] < KEPT]
        where = ", ".join(f"{r['task']} {'pairs' if r['task'] == 'mqar' else 'distance'} "
                          f"{int(r['pairs'] if r['task'] == 'mqar' else r['distance'])}: {r['accuracy']:.2f}"
                          for _, r in below.iterrows())
        text = f"{m['label']} ({_kib(m['kv_cache_bytes'])}) fell below 0.9 at {where}"
        if m["chance_distances"]:
            text += (f"; near chance (< {NEAR_CHANCE} x {chance:.3f}) at needle distance(s) "
                     f"{', '.join(map(str, m['chance_distances']))}")
            if not pd.isna(m["receptive_field"]):
                text += f" (its receptive field is {int(m['receptive_field'])} tokens)"
        lines.append(text + ".")
    # Windowing alone against YOCO's global cache, window for window, past the window's reach.
    for _, t in models[(models["arch"] == "transformer-swa") & (models["bitnet"] == "none")].iterrows():
        reach = int(t["receptive_field"])
        far = df[(df["task"] == "needle") & (df["distance"] > reach)]
        if far.empty:
            continue
        distances = ", ".join(map(str, sorted(far["distance"].unique())))
        far_mean = far.groupby("model_id")["accuracy"].mean()
        mean = far_mean.get  # noqa: E731
        text = (f"Past transformer-swa w{int(t['window'])}'s receptive field ({reach} tokens; needle distances "
                f"{distances}) it scored {mean(t['model_id']):.2f} (chance {chance:.3f})")
        twin = models[(models["arch"] == "yoco-swa") & (models["window"] == t["window"]) & (models["bitnet"] == "none")]
        if len(twin):
            y = twin.iloc[0]
            text += (f"; yoco-swa with the same window scored {mean(y['model_id']):.2f}, with "
                     f"{_kib(y['kv_cache_bytes'])} of cache against {_kib(t['kv_cache_bytes'])}")
            if mean(y["model_id"]) >= KEPT and mean(t["model_id"]) < NEAR_CHANCE * chance:
                text += (": the window alone loses the needle, YOCO's cross-decoder (reading the whole global cache) "
                         "keeps it")
        lines.append(text + ".")
    # The same arch with and without BitNet: what ternary weights cost in accuracy, and save in weights.
    for _, m in models[models["bitnet"] != "none"].iterrows():
        twin = models[(models["arch"] == m["arch"]) & (models["bitnet"] == "none") &
                      (models["window"].fillna(-1) == (-1 if pd.isna(m["window"]) else m["window"]))]
        if len(twin):
            t = twin.iloc[0]
            lines.append(f"{m['label']}: mean accuracy {m['mean']:.2f} against {t['mean']:.2f} in full precision "
                         f"({m['mean'] - t['mean']:+.2f}), same cache ({_kib(m['kv_cache_bytes'])}), weights "
                         f"{_kib(m['weight_bytes'])} packed against {_kib(t['weight_bytes'])}.")
    base = models[(models["arch"] == "transformer") & (models["bitnet"] == "none")]
    if len(base):
        b = base.iloc[0]
        for _, m in models[models["arch"].str.startswith("yoco-") & (models["bitnet"] == "none")].iterrows():
            lines.append(f"{m['label']} against the transformer: mean accuracy {m['mean']:.2f} vs {b['mean']:.2f}, "
                         f"with {b['kv_cache_bytes'] / m['kv_cache_bytes']:.1f}x less cache "
                         f"({_kib(m['kv_cache_bytes'])} vs {_kib(b['kv_cache_bytes'])}).")
    return lines


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Models down, task points across (accuracy), with cache bytes."""
    df = df.assign(point=[f"mqar {int(p)}p" if t == "mqar" else f"needle d{int(d)}"
                          for t, p, d in zip(df["task"], df["pairs"], df["distance"])])
    wide = df.pivot_table(index="model_id", columns="point", values="accuracy", sort=False)
    order = list(dict.fromkeys(df["point"]))
    models = per_model(df).set_index("model_id")
    table = pd.DataFrame({"model": models["label"], "KV cache KiB": (models["kv_cache_bytes"] / KIB).round(1),
                          "train s": models["train_seconds"].round(0).astype(int),
                          "final loss": models["final_loss"].round(3)})
    return table.join(wide[order].round(2)).reset_index(drop=True)


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def summary_markdown(df: pd.DataFrame, env: dict) -> str:
    if df.empty:
        return "# Quality run\n\nNo model finished.\n"
    first = df.iloc[0]
    seconds = df.drop_duplicates("model_id")["train_seconds"].sum()
    lines = [f"# Quality run: suite `{env.get('suite', '?')}` on {env.get('device_name', 'cpu')} "
             f"(threads: {env.get('threads', '?')})", "",
             f"git commit `{env.get('git_commit')}`, torch {env.get('versions', {}).get('torch')}. "
             f"{df['model_id'].nunique()} models (d_model {first['d_model']}, {first['n_layers']} layers, fp32, "
             f"{int(first['train_steps'])} steps each, {seconds / 60:.1f} min of training in all), evaluated at "
             f"seq_len {first['seq_len']} on {int(df['answers'].min())}+ answers per point; chance is "
             f"{first['chance']:.3f}.", "",
             "## What the savings cost", ""]
    lines += [f"- {line}" for line in findings(df)]
    lines += ["", "## Accuracy per task point", "",
              "`mqar Np`: multi-query associative recall with N key-value pairs; `needle dD`: one pair, its key "
              "D tokens before the query. KV cache: at seq_len, batch 1, fp32.", "",
              markdown_table(accuracy_table(df)), "",
              "Plots: `plots/quality_frontier.png` (accuracy against KV-cache bytes, one point per model), "
              "`plots/quality_needle.png` (accuracy against needle distance, windows marked).", ""]
    return "\n".join(lines)


def console_table(df: pd.DataFrame) -> str:
    return accuracy_table(df).to_string(index=False) if len(df) else "no rows"
