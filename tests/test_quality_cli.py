"""`python -m bench quality` end to end: the smoke suite's pipeline and file schema (not its
accuracy: it trains 6 steps), kill and resume, replotting, and every usage error."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import cli
from bench.quality import sweep
from bench.quality.suite import load
from bench.show import columns

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def bench(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """The CI quality suite, once, as a user runs it."""
    out = tmp_path_factory.mktemp("quality") / "run"
    done = bench("quality", "--suite", "smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_smoke_suite_writes_every_output_with_its_schema(smoke_run):
    suite = load("smoke")
    table = rows(smoke_run / "quality.csv")
    with open(smoke_run / "quality.csv") as f:
        assert f.readline().strip().split(",") == columns.QUALITY_NAMES
    points = suite.points()
    assert len(table) == len(suite.models) * len(points)
    assert [r["model_id"] for r in table[::len(points)]] == [s.model_id for s in suite.models]
    assert {r["arch"] for r in table} == {"transformer", "transformer-swa", "yoco-swa", "yoco-gret"}
    assert {r["bitnet"] for r in table} == {"none", "1.58bit"}
    for r in table:
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["chance"]) == pytest.approx(1 / 16)
        assert (r["pairs"] != "") == (r["task"] == "mqar") and (r["distance"] != "") == (r["task"] == "needle")
        assert int(r["train_steps"]) == 6 and float(r["train_seconds"]) > 0 and float(r["final_loss"]) > 0
        assert (r["window"] != "") == r["arch"].endswith("-swa")
        assert (r["receptive_field"] != "") == (r["arch"] == "transformer-swa")
    # Cache bytes are the model's own formula at the evaluation length, batch 1, fp32.
    for spec in suite.models:
        from bench.quality.suite import build

        model = build(suite, spec, device="meta")
        got = {int(r["kv_cache_bytes"]) for r in table if r["model_id"] == spec.model_id}
        assert got == {model.kv_cache_bytes(1, suite.train.seq_len)}
    swa = next(r for r in table if r["arch"] == "transformer-swa")
    assert int(swa["receptive_field"]) == 2 * (4 - 1) + 1
    for name in ("quality_frontier", "quality_needle"):
        assert (smoke_run / "plots" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    summary = (smoke_run / "summary.md").read_text()
    assert "## What the savings cost" in summary and "yoco-gret 1.58bit" in summary
    assert {p.name for p in (smoke_run / "checkpoints").iterdir()} == {f"{s.model_id}.pt" for s in suite.models}
    assert (smoke_run / "suite.toml").read_text() == suite.text


def test_killed_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path, smoke_run):
    """SIGKILL right after yoco-swa's checkpoint at step 3 of 6: the models before it are in
    quality.csv, yoco-swa resumes from step 3, and the finished run equals the uninterrupted one."""
    out = tmp_path / "run"
    killed = bench("quality", "--suite", "smoke", "--out", str(out), env={sweep.KILL_ENV: "yoco-swa:3"})
    assert killed.returncode == -9, killed.stderr
    before = rows(out / "quality.csv")
    assert {r["model_id"] for r in before} == {"transformer-tiny-wna-none", "transformer-swa-tiny-w4-none"}
    assert torch.load(out / "checkpoints" / "yoco-swa-tiny-w4-none.pt", weights_only=True)["step"] == 3

    assert bench("quality", "--suite", "smoke", "--out", str(out)).returncode == 2  # holds a run: needs --resume
    resumed = bench("quality", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "3 of 5 models to train" in resumed.stderr
    after, expected = rows(out / "quality.csv"), rows(smoke_run / "quality.csv")
    assert after[:len(before)] == before  # finished rows kept as they were
    drop = lambda r: {k: v for k, v in r.items() if k != "train_seconds"}  # noqa: E731
    assert [drop(r) for r in after] == [drop(r) for r in expected]  # bitwise the same training and accuracy


def test_plot_redraws_a_quality_run(tmp_path, smoke_run, capsys):
    assert cli.main(["plot", str(smoke_run), "--out", str(tmp_path / "p")]) == 0
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"quality_frontier.png", "quality_needle.png"}


def test_dry_run_lists_models_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["quality", "--suite", "default", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert all(s.model_id in text for s in load("default").models) and not (tmp_path / "o").exists()


def test_columns_and_list_name_the_quality_parts(capsys):
    assert cli.main(["columns", "--quality"]) == 0
    assert "`kv_cache_bytes`" in capsys.readouterr().out
    assert cli.main(["list"]) == 0
    assert "quality suites" in capsys.readouterr().out


def quality_suite(window=4, **quality) -> str:
    table = {"seq_len": "32", "mqar_pairs": "[2]", "needle_distances": "[8]", **quality}
    return ("[suite]\nthreads = 1\n[quality]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()) +
            f'[axes]\narch = ["transformer-swa"]\nwindow = [{window}]\n')


@pytest.mark.parametrize("window, quality, message", [
    (0, {}, "window values must be integers >= 1 (tokens attended, the current one included), got 0"),
    (-4, {}, "got -4"),
    (4, {"tasks": '["mqar", "recall"]'}, "unknown task 'recall': valid tasks are 'mqar', 'needle', 'copy'"),
    (4, {"tasks": '["copy"]'}, "train nothing that is evaluated: include 'mqar' or 'needle'"),
    (4, {"needle_distances": "[8, 40]"}, "needle distance 40 does not fit seq_len=32"),
    (4, {"mqar_pairs": "[11]"}, "pairs=11 does not fit seq_len=32"),
    (4, {"stepz": "3"}, "unknown [quality] key(s) ['stepz']"),
    (4, {"schedule": '"linear"'}, "unknown schedule 'linear'"),
    (4, {"model": "{windw = 3}"}, "cannot be built: unknown config field(s) ['windw']"),
])
def test_bad_suites_are_usage_errors(tmp_path, capsys, window, quality, message):
    path = tmp_path / "q.toml"
    path.write_text(quality_suite(window, **quality))
    assert cli.main(["quality", "--suite", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["quality", "--suite", "nope"], "unknown quality suite 'nope': valid suites are default, smoke"),
    (["quality", "--suite", "smoke", "--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["quality", "--out", "a", "--resume", "b"], "give either --out or --resume, not both"),
    (["quality", "--resume", "/nonexistent/run"], "not a quality run directory"),
    (["quality", "--suite", "bench/suites/smoke.toml"], "needs a [quality] table"),
    (["run", "--suite", "bench/quality/suites/smoke.toml"], "is a quality suite ([quality] table): run it with"),
])
def test_usage_errors_exit_2_with_one_line(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_error_from_the_command_line_has_no_traceback():
    done = bench("quality", "--suite", "nope")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "unknown quality suite" in done.stderr
