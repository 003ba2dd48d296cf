"""One self-contained HTML page for one or several runs: verdicts, environment, plots, sortable
tables and, given several runs, a comparison and a history over commits (as asv's pages).

Nothing is fetched: the plots are the matplotlib figures of bench.show.plots written inline as
SVG (text kept as text, both y scales where a toggle helps, a tooltip on every point), the
history's trend charts are small SVGs written here, and a short script sorts tables, shows
tooltips and switches scales. A page of the CPU reference run weighs a few hundred KB, where a
plotting library's bundled JS would add megabytes to every committed report."""

from __future__ import annotations

import html
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from bench.show import paper, plots, report, spread, units, verdicts

HISTORY_METRICS = {"prefill_ms": units.ms, "decode_tok_s": units.tok_s, "peak_mem_decode_bytes": units.size,
                   "kv_cache_bytes": units.size}
LOWER_IS_BETTER = {"prefill_ms": True, "decode_tok_s": False, "peak_mem_decode_bytes": True, "kv_cache_bytes": True}


@dataclass
class Run:
    path: Path
    env: dict
    results: pd.DataFrame
    samples: pd.DataFrame | None

    @property
    def commit(self) -> str:
        return str(self.env.get("git_commit") or "unknown")

    @property
    def when(self) -> str:
        return str(self.env.get("timestamp") or "")

    @property
    def label(self) -> str:
        return f"{self.commit[:10]} {self.when[:16].replace('T', ' ')}".strip()


def load(path: Path) -> Run:
    env_path = path / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    return Run(path, env, report.read_results(path / "results.csv"), report.read_samples(path / "samples.csv"))


def run_dirs(path: Path) -> list[Path]:
    """A run directory, or a directory of them (results/runs, a gate's runs)."""
    if (path / "results.csv").is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "results.csv").is_file()) if path.is_dir() else []


# ---- figures as SVG ----

def to_svg(fig, prefix: str) -> str:
    """The figure as an inline <svg>: ids made unique on the page, hover targets tagged with their
    tooltip, no XML prologue, no metadata, sized by the page."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="figure" role="img"', text, count=1)
    for gid, tip in getattr(fig, "tips", {}).items():
        text = text.replace(f'<g id="{gid}">', f'<g id="{prefix}-{gid}" class="tip" data-tip="{html.escape(tip)}">', 1)
    return text


@dataclass
class Rendered:
    spec: plots.Figure
    svgs: dict[str, str]  # "log" / "linear" -> svg
    png: Path | None = None


def render(df: pd.DataFrame, env: dict, png_dir: Path | None = None) -> list[Rendered]:
    """Every figure the data allows: its PNG (at the default scale) under png_dir, and SVGs."""
    out = []
    for spec in plots.FIGURES:
        fig = plots.draw(spec, df, env)
        if fig is None:
            continue
        default = "log" if spec.log else "linear"
        png = None
        if png_dir is not None:
            png_dir.mkdir(parents=True, exist_ok=True)
            png = png_dir / f"{spec.name}.png"
            fig.savefig(png, dpi=110)
        svgs = {default: to_svg(fig, f"{spec.name}-{default}")}
        if spec.toggle:
            other = "linear" if spec.log else "log"
            plots.rescale(fig, spec.log is False)
            svgs[other] = to_svg(fig, f"{spec.name}-{other}")
        plt.close(fig)
        out.append(Rendered(spec, svgs, png))
    return out


# ---- pieces of the page ----

def esc(v) -> str:
    return html.escape(str(v))


def sort_key(v) -> str:
    """data-v: a number where the cell holds one (sorted numerically), else the text."""
    if isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
        return repr(f) if math.isfinite(f) else ""
    except (TypeError, ValueError):
        return str(v)


def table(t: report.Table | pd.DataFrame, table_id: str = "", cls: str = "sortable") -> str:
    t = t if isinstance(t, report.Table) else report.Table(t)
    cols = list(t.frame.columns)
    head = "".join(f'<th scope="col" title="sort by {esc(c)}">{esc(c)}</th>' for c in cols)
    body = []
    for raw, text in zip(t.frame.itertuples(index=False), t.rows_text(), strict=True):
        cells = "".join(f'<td data-v="{esc(sort_key(v))}">{esc(s)}</td>' for v, s in zip(raw, text, strict=True))
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return (f'<div class="scroll"><table{ident} class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


BADGE = {verdicts.HOLDS: "holds", verdicts.FAILS: "fails", verdicts.UNKNOWN: "unknown"}


def verdicts_section(run: Run) -> str:
    found = verdicts.verdicts(run.results, run.samples)
    if not found:
        return "<p>No verdicts: no YOCO case finished beside the baseline.</p>"
    parts, setting = [], None
    rows = []
    for v in found:
        if v.setting != setting:
            if rows:
                parts.append(_verdict_table(rows))
                rows = []
            setting = v.setting
            parts.append(f'<p class="setting">{esc(setting)}</p>')
        rows.append(v)
    parts.append(_verdict_table(rows))
    return "".join(parts)


def _verdict_table(rows: list[verdicts.Verdict]) -> str:
    body = "".join(
        f'<tr><td><span class="badge {BADGE[v.verdict]}">{esc(v.verdict)}</span></td><td>{esc(v.claim)}'
        f'<div class="detail">{esc(v.detail)}</div></td><td>{esc(v.measured())}</td><td>{esc(v.expected)}</td></tr>'
        for v in rows)
    return ('<div class="scroll"><table class="verdicts"><thead><tr><th>verdict</th><th>claim</th>'
            f"<th>measured [interval]</th><th>expected</th></tr></thead><tbody>{body}</tbody></table></div>")


def env_section(run: Run) -> str:
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in report.env_facts(run.env))
    full = esc(json.dumps(run.env, indent=2, sort_keys=True, default=str))
    return (f'<table class="facts">{facts}</table><details><summary>env.json, all of it</summary>'
            f"<pre>{full}</pre></details>")


def plots_section(rendered: list[Rendered]) -> str:
    parts = []
    for r in rendered:
        default = "log" if r.spec.log else "linear"
        buttons = ""
        if len(r.svgs) > 1:
            buttons = '<div class="scales">y axis: ' + "".join(
                f'<button type="button" data-scale="{s}" aria-pressed="{str(s == default).lower()}">'
                f'{"log" if s == "log" else "linear from 0"}</button>' for s in ("linear", "log")) + "</div>"
        variants = "".join(f'<div class="variant" data-scale="{s}"{"" if s == default else " hidden"}>{svg}</div>'
                           for s, svg in r.svgs.items())
        parts.append(f'<figure class="plot" id="plot-{r.spec.name}"><figcaption>{esc(r.spec.caption)}</figcaption>'
                     f"{buttons}{variants}</figure>")
    return "".join(parts) or "<p>No plot: no case finished.</p>"


def tables_section(run: Run) -> str:
    df = run.results
    parts = []
    trends = report.trend_table(df)
    if len(trends):
        parts += ["<h3>Trends</h3><p>The cache grows by <em>KV per token</em> on top of <em>KV fixed</em>; prefill "
                  "time grows as seq_len to the power shown (longer half of the prompts).</p>",
                  table(report.Table(trends, report.trend_formats(trends)))]
    ratios = report.ratio_table(df)
    if len(ratios):
        parts += ["<h3>YOCO against the Transformer baseline</h3><p>Ratios above 1 favour YOCO.</p>",
                  table(report.Table(ratios, report.ratio_formats(ratios)))]
    found = paper.cells(df)
    if found:
        frame = pd.DataFrame([{"figure (YOCO's advantage)": c.figure.label, "paper (3B, H100)": c.figure.paper,
                               "YOCO": c.arch, "here": c.ratio, "how": c.how, "detail": c.detail} for c in found])
        parts += ["<h3>The paper's figures</h3><p>The YOCO paper's headline ratios beside this run's; per cell "
                  "whether both sides were measured or the baseline's came from a formula (bench/show/paper.py)."
                  "</p>", table(report.Table(frame, {"paper (3B, H100)": units.ratio, "here": units.ratio}))]
    if (df["status"] == "ok").any():
        what = spread.words(df[df["status"] == "ok"], "prefill_ms") or "no spread recorded"
        parts += [f"<h3>All measured cases</h3><p>Medians; spread: {esc(what)}. Click a column to sort.</p>",
                  table(report.cases_table(df), "cases")]
    bad = df[df["status"] != "ok"]
    if len(bad):
        parts += ["<h3>Cases not measured</h3>", table(bad[["case_id", "status", "error"]])]
    return "".join(parts)


# ---- several runs ----

def runs_section(runs: list[Run]) -> str:
    frame = pd.DataFrame([{"run": str(r.path), "suite": r.env.get("suite"), "device": r.env.get("device"),
                           "commit": r.commit[:12], "when": r.when[:19].replace("T", " "),
                           "ok cases": int((r.results["status"] == "ok").sum()), "cases": len(r.results)}
                          for r in runs])
    return table(frame, "runs")


def comparison_section(base: Run, new: Run) -> str:
    """The first run given against the last, decided by bench.judge.compare (one run a side
    cannot flag a timing: compare says so in its notes)."""
    from bench.judge import compare

    try:
        result = compare.compare_runs([compare.load_run(base.path)], [compare.load_run(new.path)],
                                      compare.Options(allow_mismatch=True))
    except compare.UnusableInput as e:
        return f"<p>No comparison: {esc(e)}</p>"
    rows = []
    for r in result.rows:
        fmt = {"ms": units.ms, "tok/s": units.tok_s, "bytes": units.size, "fraction": units.percent}.get(
            r.unit, units.sig)
        rows.append({"case_id": r.case_id, "metric": r.metric, "status": r.status, "base": r.base, "new": r.new,
                     "new / base": r.ratio, "note": r.note, "_fmt": fmt})
    if not rows:
        return "<p>No case in common.</p>"
    frame = pd.DataFrame(rows)
    fmts = frame.pop("_fmt")
    # base and new each in their metric's own unit
    t = report.Table(frame, {"new / base": units.ratio},
                     {side: [f(v) for f, v in zip(fmts, frame[side], strict=True)] for side in ("base", "new")})
    notes = "".join(f"<li>{esc(n)}</li>" for n in result.notes)
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items())
    return (f"<p>Base <code>{esc(base.path)}</code> ({esc(base.label)}) against new <code>{esc(new.path)}</code> "
            f"({esc(new.label)}), by <code>python -m bench compare</code>'s rules: {esc(counts)}.</p>"
            f"<ul>{notes}</ul>{table(t, 'comparison')}")


def history(runs: list[Run]) -> pd.DataFrame:
    """One point per (case, metric, commit): the median over that commit's runs, and a spread: the
    runs' range where there are several, else the one run's spread columns."""
    order = sorted(runs, key=lambda r: r.when)
    commits: list[str] = []
    for r in order:
        if r.commit not in commits:
            commits.append(r.commit)
    points = []
    for r in order:
        ok = r.results[r.results["status"] == "ok"]
        for metric in HISTORY_METRICS:
            if metric not in ok:
                continue
            found = spread.bounds(ok, metric)
            for i, (_, row) in enumerate(ok.iterrows()):
                low, high = (found[0].iloc[i], found[1].iloc[i]) if found else (math.nan, math.nan)
                points.append(dict(case_id=row["case_id"], metric=metric, commit=r.commit,
                                   position=commits.index(r.commit), label=r.label, value=float(row[metric]),
                                   low=float(low), high=float(high)))
    frame = pd.DataFrame(points)
    if frame.empty:
        return frame
    out = []
    for (case, metric, position), g in frame.groupby(["case_id", "metric", "position"]):
        value = float(g["value"].median())
        low, high = ((float(g["value"].min()), float(g["value"].max())) if len(g) > 1
                     else (float(g["low"].iloc[0]), float(g["high"].iloc[0])))
        out.append(dict(case_id=case, metric=metric, position=position, commit=g["commit"].iloc[0],
                        label=g["label"].iloc[-1], runs=len(g), value=value, low=low, high=high))
    return pd.DataFrame(out)


def trend_svg(points: pd.DataFrame, fmt, n_commits: int, width: int = 300, height: int = 84) -> str:
    """A small trend chart: one point per commit, bars for the spread, the y axis from zero."""
    left, right, top, bottom = 52, 8, 8, 16
    top_value = max(points[["value", "high"]].max(skipna=True).max(), 1e-300) * 1.1
    x = lambda p: left + (width - left - right) * (p / max(n_commits - 1, 1))  # noqa: E731
    y = lambda v: top + (height - top - bottom) * (1 - v / top_value)  # noqa: E731
    parts = [f'<svg class="trend" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y(0):.1f}" class="axis"/>',
             f'<text x="{left - 3}" y="{top + 8}" class="tick" text-anchor="end">{esc(fmt(top_value))}</text>',
             f'<text x="{left - 3}" y="{y(0):.1f}" class="tick" text-anchor="end">0</text>',
             f'<text x="{left}" y="{height - 3}" class="tick">{esc(points["commit"].iloc[0][:7])}</text>',
             f'<text x="{width - right}" y="{height - 3}" class="tick" text-anchor="end">'
             f'{esc(points["commit"].iloc[-1][:7])}</text>']
    line = " ".join(f"{x(p):.1f},{y(v):.1f}" for p, v in zip(points["position"], points["value"], strict=True))
    parts.append(f'<polyline points="{line}" class="line"/>')
    for p in points.itertuples(index=False):
        if math.isfinite(p.low) and math.isfinite(p.high):
            parts.append(f'<line x1="{x(p.position):.1f}" y1="{y(p.low):.1f}" x2="{x(p.position):.1f}" '
                         f'y2="{y(p.high):.1f}" class="bar"/>')
        spread_text = (f" ({fmt(p.low)} to {fmt(p.high)}{', range of ' + str(p.runs) + ' runs' if p.runs > 1 else ''})"
                       if math.isfinite(p.low) else "")
        tip = f"{p.label}: {fmt(p.value)}{spread_text}"
        parts.append(f'<circle cx="{x(p.position):.1f}" cy="{y(p.value):.1f}" r="3.5" class="tip point" '
                     f'data-tip="{esc(tip)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def history_section(runs: list[Run]) -> str:
    points = history(runs)
    if points.empty:
        return "<p>No finished case to follow.</p>"
    n_commits = int(points["position"].max()) + 1
    if n_commits < 2:
        return "<p>All these runs are of one commit: no history over commits (see the comparison).</p>"
    rows = []
    for (case, metric), g in points.groupby(["case_id", "metric"], sort=True):
        g = g.sort_values("position")
        if len(g) < 2:
            continue
        fmt = HISTORY_METRICS[metric]
        change = g["value"].iloc[-1] / g["value"].iloc[0] if g["value"].iloc[0] else math.nan
        worse = (change > 1) == LOWER_IS_BETTER[metric] and change != 1
        moved = abs(math.log(change)) if change > 0 else math.inf  # NaN (no change known) sorts last
        rows.append((-moved if moved == moved else math.inf,
                     f'<tr><td data-v="{esc(case)}">{esc(case)}</td><td data-v="{metric}">{esc(metric)}</td>'
                     f"<td>{trend_svg(g, fmt, n_commits)}</td>"
                     f'<td data-v="{sort_key(g["value"].iloc[0])}">{esc(fmt(g["value"].iloc[0]))}</td>'
                     f'<td data-v="{sort_key(g["value"].iloc[-1])}">{esc(fmt(g["value"].iloc[-1]))}</td>'
                     f'<td data-v="{sort_key(change)}" class="{"worse" if worse else ""}">{esc(units.ratio(change))}'
                     f"</td></tr>"))
    if not rows:
        return "<p>No case ran at two commits.</p>"
    rows = [html_row for _, html_row in sorted(rows, key=lambda r: r[0])]  # what moved most, first
    return ('<p>Each case and metric over the commits of these runs, oldest first (runs of one commit pooled: '
            "the median, bars the runs' range; a single run's bars are its spread), what moved most first. "
            'Hover a point for its value. <label>Filter: <input id="history-filter" type="search" '
            'placeholder="case or metric"></label>'
            '</p><div class="scroll"><table id="history" class="sortable"><thead><tr><th>case_id</th><th>metric</th>'
            "<th>trend (axis from 0)</th><th>first</th><th>last</th><th>last / first</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


# ---- the page ----

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#fff}
header{background:#1d2430;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c8d0dc}nav{padding:8px 24px;background:#f1f4f8;border-bottom:1px solid #dde3ea}
nav a{margin-right:14px;color:#24528a;text-decoration:none}main{padding:8px 24px 40px;max-width:1400px}
h2{margin-top:28px;border-bottom:1px solid #dde3ea;padding-bottom:4px}h3{margin-top:22px}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:6px 0}th,td{padding:4px 8px;text-align:left;
border-bottom:1px solid #e6eaef;vertical-align:top}thead th{background:#f5f7fa;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#9aa5b4}
table.sortable th[aria-sort=ascending]:after{content:" \\25B2";color:#24528a}
table.sortable th[aria-sort=descending]:after{content:" \\25BC";color:#24528a}
td[data-v]{font-variant-numeric:tabular-nums}.facts th{width:160px;color:#4a5668}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;white-space:nowrap}
.holds{background:#d9f2df;color:#17612b}.fails{background:#fbdcdc;color:#8a1c1c}
.unknown{background:#eceff3;color:#4a5668}.detail{color:#5b6676;font-size:12px}.setting{font-style:italic}
figure.plot{margin:18px 0;padding:8px;border:1px solid #e6eaef;border-radius:6px;max-width:1000px}
figure.plot svg.figure{width:100%;height:auto}figcaption{font-weight:600}.scales{margin:4px 0}
.scales button{margin-left:4px;border:1px solid #b8c2cf;background:#fff;border-radius:4px;padding:1px 8px;
cursor:pointer}.scales button[aria-pressed=true]{background:#24528a;color:#fff}
svg .tip{cursor:crosshair}svg.trend .axis{stroke:#9aa5b4}svg.trend .line{fill:none;stroke:#24528a}
svg.trend .bar{stroke:#24528a;stroke-width:2;opacity:.45}svg.trend .point{fill:#24528a}
svg.trend .tick{font-size:10px;fill:#5b6676}td.worse{color:#8a1c1c;font-weight:600}
#tooltip{position:fixed;pointer-events:none;background:#1d2430;color:#fff;padding:4px 8px;border-radius:4px;
font-size:12px;max-width:420px;z-index:10}pre{background:#f5f7fa;padding:8px;overflow-x:auto}
"""

SCRIPT = """
(function(){
  function cellValue(row, i){var c=row.cells[i];var v=c.getAttribute('data-v');return v===null?c.textContent:v;}
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('thead th').forEach(function(th, i){
      th.addEventListener('click', function(){
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        t.querySelectorAll('thead th').forEach(function(o){o.removeAttribute('aria-sort');});
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = cellValue(a, i), y = cellValue(b, i), nx = parseFloat(x), ny = parseFloat(y);
          var r = (!isNaN(nx) && !isNaN(ny) && String(nx) !== 'NaN') ? nx - ny : x.localeCompare(y);
          if (x === '' && y !== '') return 1; if (y === '' && x !== '') return -1;
          return asc ? r : -r;
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.querySelectorAll('figure.plot').forEach(function(f){
    f.querySelectorAll('.scales button').forEach(function(b){
      b.addEventListener('click', function(){
        f.querySelectorAll('.variant').forEach(function(v){v.hidden = v.dataset.scale !== b.dataset.scale;});
        f.querySelectorAll('.scales button').forEach(function(o){o.setAttribute('aria-pressed', o === b);});
      });
    });
  });
  var tip = document.getElementById('tooltip');
  document.addEventListener('mouseover', function(e){
    var t = e.target.closest ? e.target.closest('[data-tip]') : null;
    if (!t) { tip.hidden = true; return; }
    tip.textContent = t.getAttribute('data-tip'); tip.hidden = false;
  });
  document.addEventListener('mousemove', function(e){
    tip.style.left = (e.clientX + 12) + 'px'; tip.style.top = (e.clientY + 12) + 'px';
  });
  var filter = document.getElementById('history-filter');
  if (filter) filter.addEventListener('input', function(){
    var q = filter.value.toLowerCase();
    document.querySelectorAll('#history tbody tr').forEach(function(r){
      r.hidden = q && r.cells[0].textContent.toLowerCase().indexOf(q) < 0 &&
                 r.cells[1].textContent.toLowerCase().indexOf(q) < 0;
    });
  });
})();
"""


def page(runs: list[Run], rendered: list[Rendered] | None = None) -> str:
    """The page: the last run given in full; with several, their comparison and history too."""
    run = runs[-1]
    env = run.env
    if rendered is None:
        rendered = render(run.results, env)
    title = f"yoco-bench: suite {env.get('suite', '?')} on {env.get('device', '?')} ({env.get('device_name') or '?'})"
    counts = report.case_counts(run.results, env).replace("**", "")
    sections = [("verdicts", "Does YOCO's saving hold here?", verdicts_section(run)),
                ("environment", "Environment", env_section(run)),
                ("plots", "Plots", plots_section(rendered)),
                ("tables", "Tables", tables_section(run))]
    if len(runs) > 1:
        sections += [("runs", f"The {len(runs)} runs", runs_section(runs)),
                     ("comparison", "Comparison: first run given against the last",
                      comparison_section(runs[0], run)),
                     ("history", "History over commits", history_section(runs))]
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t, _ in sections)
    body = "".join(f'<section id="{k}"><h2>{esc(t)}</h2>{content}</section>' for k, t, content in sections)
    # nothing of the moment it was written: the same runs give the same page (committed reports)
    subtitle = (f"{esc(run.path)}: commit {esc(run.commit[:12])}, {esc(run.when[:19].replace('T', ' '))}; "
                f"cases: {esc(counts)}.")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{subtitle}</p></header>"
            f'<nav>{nav}</nav><main>{body}</main><div id="tooltip" hidden></div><script>{SCRIPT}</script>'
            "</body></html>\n")


def write(path: Path, runs: list[Run], rendered: list[Rendered] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(runs, rendered))
    return path
