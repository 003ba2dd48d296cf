"""report.html in a real headless browser (Debian's chromium driven by Playwright): the page loads
offline with no console error and no request beyond itself, every plot renders (both scales),
hovering a point shows its value, sorting a table sorts it, the history filters; a screenshot is
kept (results/artifacts/, or $BENCH_ARTIFACTS) and its path printed.

Skipped where chromium or playwright is absent, unless BENCH_REQUIRE_BROWSER=1 (CI sets it, and
.ci/run installs chromium): there the absence fails the test."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.show import html, report

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "results" / "reference" / "cpu"
CHROMIUM = os.environ.get("BENCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def browser_or_skip():
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why, sync_playwright = "the playwright package is not installed (pip install -e '.[test]')", None
    if why is None and not Path(CHROMIUM).is_file():
        why = f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    if why:
        if os.environ.get("BENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BENCH_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return sync_playwright


def two_commits(tmp_path: Path) -> list[html.Run]:
    """The committed CPU reference run and a later 'commit' of it whose decode is 10% slower."""
    old = html.load(REFERENCE)
    new_dir = tmp_path / "later"
    shutil.copytree(REFERENCE, new_dir, ignore=shutil.ignore_patterns("plots", "report.html"))
    env = dict(old.env, git_commit="f00dfeed" * 5, timestamp="2099-01-01T00:00:00+00:00")
    (new_dir / "env.json").write_text(json.dumps(env))
    df = pd.read_csv(new_dir / "results.csv")
    df["decode_tok_s"] *= 0.9
    df.to_csv(new_dir / "results.csv", index=False)
    return [old, html.load(new_dir)]


def artifacts() -> Path:
    path = Path(os.environ.get("BENCH_ARTIFACTS") or REPO / "results" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_report_page_in_a_headless_browser(tmp_path):
    sync_playwright = browser_or_skip()
    page_path = html.write(tmp_path / "report.html", two_commits(tmp_path))
    url = page_path.resolve().as_uri()
    problems, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")

            # hover a point of the prefill plot: its value appears
            page.locator("#plot-prefill_latency .variant:not([hidden]) g.tip").first.hover(force=True)
            tip = page.locator("#tooltip")
            assert tip.is_visible() and " ms" in tip.inner_text() and "prompt" in tip.inner_text()

            # every plot renders: each figure's visible SVG has a size and drawn paths; the other scale too
            figures = page.locator("figure.plot")
            assert figures.count() == 6  # the reference run has all six: trends, memory, window, BitNet
            for i in range(figures.count()):
                fig = figures.nth(i)
                shown = fig.locator(".variant:not([hidden]) svg")
                box = shown.bounding_box()
                assert box and box["width"] > 300 and box["height"] > 150, fig.get_attribute("id")
                assert shown.locator("path").count() > 20
                buttons = fig.locator(".scales button[aria-pressed=false]")
                if buttons.count():
                    scale = buttons.first.get_attribute("data-scale")
                    buttons.first.click()
                    assert fig.locator(".variant:not([hidden])").get_attribute("data-scale") == scale
                    other = fig.locator(".variant:not([hidden]) svg")
                    assert other.bounding_box()["height"] > 150 and other.locator("path").count() > 20

            # sort the cases table by prefill time, both ways
            table = page.locator("#cases")
            header = table.locator("thead th", has_text="prefill").first
            column = [h.strip() for h in table.locator("thead th").all_inner_texts()].index("prefill")

            def values():
                return [float(v) for v in table.locator(f"tbody tr td:nth-child({column + 1})").evaluate_all(
                    "cells => cells.map(c => c.dataset.v)")]

            assert values() != sorted(values())  # the run's order is not the sorted one
            header.click()
            assert values() == sorted(values())
            header.click()
            assert values() == sorted(values(), reverse=True)

            # the history has a trend per case and metric, and filters
            rows = page.locator("#history tbody tr")
            total = rows.count()
            assert total == 25 * len(html.HISTORY_METRICS)
            page.fill("#history-filter", "transformer-small-b1-s4096")
            assert page.locator("#history tbody tr:not([hidden])").count() == len(html.HISTORY_METRICS)
            page.fill("#history-filter", "")

            shot = artifacts() / "report-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of report.html: {shot}")
        finally:
            browser.close()
    assert not problems, problems
    assert set(requests) == {url}, f"the page fetched more than itself: {sorted(set(requests) - {url})}"
    assert shot.stat().st_size > 50_000


def test_the_reference_run_has_its_page():
    """results/reference/cpu/report.html is the page of the committed rows (regenerated with
    `python -m bench report results/reference/cpu`)."""
    page = (REFERENCE / "report.html").read_text()
    assert report.read_results(REFERENCE / "results.csv")["case_id"].iloc[-1] in page
