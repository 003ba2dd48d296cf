"""`bench gate` end to end on a throwaway git repository whose `python -m bench run` is a fake.

The fake writes the same three files the real harness writes, with per-process luck and a
speed per (case, metric) read from its own tree's speed.json: changing speed.json in the
working tree plants a real slowdown of the code under test, without torch (each run ~50 ms).
"""

import argparse
import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from bench.judge import gate

FAKE_MAIN = textwrap.dedent('''
    import argparse, csv, json, os, random, sys
    from pathlib import Path

    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--suite")
    p.add_argument("--out")
    p.add_argument("--only")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    speed = json.loads(Path("speed.json").read_text())
    log_path = Path(os.environ["FAKE_BENCH_LOG"])
    seen = len(log_path.read_text().splitlines()) if log_path.exists() else 0
    with open(log_path, "a") as log:
        log.write(f"{Path.cwd().name} {a.only or '-'}\\n")
    if speed.get("crash") or (speed.get("crash_in_confirmation") and a.only):
        sys.exit("fake bench: crashed")
    cases = ["yoco-gret-tiny", "yoco-swa-tiny", "transformer-tiny"]
    if a.only:
        cases = [c for c in cases if c in a.only.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True)
    rng = random.Random(seen)  # deterministic: the n-th process of a test gets seed n
    luck = 1 + 0.03 * rng.gauss(0, 1)  # this process's luck, shared by its repeats
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "metric", "repeat", "value", "calibration_ms", "normalized"])
        for case in cases:
            for metric, center in (("prefill_ms", 20.0), ("decode_ms_per_step", 2.0)):
                factor = speed.get(f"{case}/{metric}", 1.0)
                if speed.get("first_pass_only") and a.only:
                    factor = 1.0  # a fluke: gone when the flagged cases are re-run
                for r in range(a.repeats):
                    jitter = luck * (1 + 0.01 * rng.gauss(0, 1))
                    # the calibration shares the process's luck but has its own noise, as a real one
                    value, calibration = center * factor * jitter, 5.0 * luck * (1 + 0.01 * rng.gauss(0, 1))
                    w.writerow([case, metric, r, value, calibration, value / calibration])
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "kv_cache_bytes", "params", "status", "error"])
        for case in cases:
            failed = speed.get("fail_in_confirmation") == case and a.only
            w.writerow([case, speed.get(f"{case}/kv_cache_bytes", 4096), 1000, "error" if failed else "ok",
                        "RuntimeError: boom" if failed else ""])
    command = os.environ.get("FAKE_BENCH_COMMAND", " ".join(sys.argv))  # argv[0]: this __main__.py
    (out / "env.json").write_text(json.dumps({"suite": a.suite, "device": "cpu", "device_name": "fake",
                                              "command": command, "no_report": os.environ.get("BENCH_NO_REPORT"),
                                              "no_ceilings": os.environ.get("BENCH_NO_CEILINGS")}))
''')


def sh(*args, cwd):
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def commit_all(repo, message):
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message, cwd=repo)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """Two commits: a README, then the fake bench with its smoke suite. cwd is the repo."""
    root = tmp_path / "repo"
    root.mkdir()
    sh("git", "init", "-q", cwd=root)
    (root / "README.md").write_text("fake\n")
    (root / ".gitignore").write_text("results/\n")
    commit_all(root, "first")
    (root / "bench" / "suites").mkdir(parents=True)
    (root / "bench" / "__init__.py").write_text("")
    (root / "bench" / "__main__.py").write_text(FAKE_MAIN)
    (root / "bench" / "suites" / "smoke.toml").write_text("")
    (root / "speed.json").write_text("{}")
    commit_all(root, "fake bench")
    monkeypatch.chdir(root)
    monkeypatch.setenv("FAKE_BENCH_LOG", str(tmp_path / "invocations.log"))
    return root


RUNS, CONFIRM = 6, 4  # 6 a side is the fewest that can decide 6 timings at alpha 0.01: fast tests


def run_gate(*argv):
    parser = argparse.ArgumentParser()
    gate.add_arguments(parser)
    return gate.main(parser.parse_args(["--runs", str(RUNS), "--confirm-runs", str(CONFIRM), *argv]))


def set_speed(repo, **speed):
    (repo / "speed.json").write_text(json.dumps({k.replace("__", "/"): v for k, v in speed.items()}))


def invocations(repo):
    return (repo.parent / "invocations.log").read_text().splitlines()


def assert_no_worktree_left(repo):
    listing = sh("git", "worktree", "list", "--porcelain", cwd=repo)
    assert listing.count("worktree ") == 1, listing


def test_identical_code_passes_and_removes_its_worktree(repo, capsys):
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 0
    out = capsys.readouterr().out
    assert "OK: no regression" in out and "re-run; failing: none" in out
    runs = invocations(repo)
    first = runs[:2 * RUNS]
    # alternating: base (worktree dir "base") then the working tree (dir "repo")
    assert [r.split()[0] for r in first[:4]] == ["base", "repo", "base", "repo"]
    assert all(r.endswith(" -") for r in first)  # the whole suite
    env = json.loads((repo.parent / "out" / "first" / "new" / "run-00" / "env.json").read_text())
    assert env["no_report"] == "1"  # CSVs only
    assert env["no_ceilings"] == "1"  # and no ceilings measured
    assert len(runs) in (2 * RUNS, 2 * (RUNS + CONFIRM))  # a timing may lean worse by chance
    assert_no_worktree_left(repo)


def test_planted_slowdown_is_rerun_and_decided_on_all_runs(repo, capsys):
    set_speed(repo, **{"yoco-swa-tiny__decode_ms_per_step": 1.25})  # uncommitted: the working tree
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out"), "--format", "json") == 1
    report = json.loads(capsys.readouterr().out)
    [row] = [r for r in report["rows"] if r["status"] == "regressed"]
    assert (row["case_id"], row["metric"]) == ("yoco-swa-tiny", "decode_ms_per_step")
    assert row["runs"] == f"{RUNS + CONFIRM}/{RUNS + CONFIRM}" and row["note"].startswith("decided on the first")
    assert row["p"] < 0.01 and row["ratio_low"] < 1.25 < row["ratio_high"]
    assert "yoco-swa-tiny/decode_ms_per_step" in report["gate"]["rerun"]
    confirm = invocations(repo)[2 * RUNS:]
    assert len(confirm) == 2 * CONFIRM and all("yoco-swa-tiny" in r.split()[1].split(",") for r in confirm)
    assert confirm[0].startswith("repo")  # the re-run starts with the other side
    assert_no_worktree_left(repo)


def test_speedup_is_an_improvement(repo, capsys):
    set_speed(repo, **{"yoco-gret-tiny__prefill_ms": 0.75})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 0
    out = capsys.readouterr().out
    assert "improved" in out and "OK: no regression" in out


def test_a_fluke_that_does_not_repeat_is_decided_on_all_runs(repo, capsys):
    set_speed(repo, first_pass_only=True, **{"transformer-tiny__decode_ms_per_step": 1.3})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out"), "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    [row] = [r for r in report["rows"] if (r["case_id"], r["metric"]) == ("transformer-tiny", "decode_ms_per_step")]
    assert row["status"] == "unchanged" and row["note"].startswith("decided on the first and the confirmation")
    assert row["runs"] == f"{RUNS + CONFIRM}/{RUNS + CONFIRM}" and not report["failed"]
    assert len(invocations(repo)) == 2 * (RUNS + CONFIRM)


def test_a_case_that_fails_in_the_confirmation_fails_the_gate(repo, capsys):
    set_speed(repo, fail_in_confirmation="yoco-swa-tiny", **{"yoco-swa-tiny__decode_ms_per_step": 1.25})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 1
    out = capsys.readouterr().out
    assert "missing: lost in the confirmation runs: error in" in out and "RuntimeError: boom" in out
    assert "failing: yoco-swa-tiny -" in out
    # the confirmation process itself crashes: the working tree could not run the suite
    set_speed(repo, crash_in_confirmation=True, **{"yoco-swa-tiny__decode_ms_per_step": 1.25})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out2")) == 1
    assert "wrote no results" in capsys.readouterr().err
    assert_no_worktree_left(repo)


def test_changed_cache_bytes_fails(repo, capsys):
    set_speed(repo, **{"yoco-gret-tiny__kv_cache_bytes": 8192})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out"), "--format", "json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["gate"]["runs"] == RUNS and report["gate"]["confirm_runs"] == CONFIRM
    assert [(r["case_id"], r["metric"]) for r in report["rows"] if r["status"] == "regressed"] == \
        [("yoco-gret-tiny", "kv_cache_bytes")]
    smaller = json.loads((repo.parent / "out" / "benchmark-smaller-is-better.json").read_text())
    assert {"name": "yoco-gret-tiny/kv_cache_bytes", "unit": "bytes", "value": 8192.0} in \
        [{k: e[k] for k in ("name", "unit", "value")} for e in smaller]


def test_too_few_runs_are_inconclusive_or_likely(repo, capsys):
    parser = argparse.ArgumentParser()
    gate.add_arguments(parser)
    args = parser.parse_args(["--base", "HEAD", "--runs", "2", "--confirm-runs", "1", "--out",
                              str(repo.parent / "out")])
    assert gate.main(args) == 0
    assert "INCONCLUSIVE: too few runs to decide timings; 6 runs a side would decide" in capsys.readouterr().out


def test_any_revision_is_a_base(repo, capsys):
    commit = sh("git", "rev-parse", "HEAD", cwd=repo).strip()
    sh("git", "branch", "-f", "main", "HEAD", cwd=repo)
    sh("git", "tag", "v1", cwd=repo)
    for rev in (commit, commit[:10], "main", "v1", "HEAD~0", "main^{commit}"):
        assert gate.resolve_base(repo, rev) == commit
    assert run_gate("--base", "v1", "--out", str(repo.parent / "out")) == 0
    assert "OK: no regression" in capsys.readouterr().out


def test_working_tree_that_cannot_run_fails_and_cleans_up(repo, capsys):
    set_speed(repo, crash=True)
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 1
    err = capsys.readouterr().err
    assert "wrote no results" in err and "fake bench: crashed" in err
    assert_no_worktree_left(repo)


def test_a_run_that_imported_another_tree_is_refused(repo, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_BENCH_COMMAND", "/elsewhere/bench/__main__.py run --suite smoke")
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 2
    assert "imported bench from /elsewhere/bench/__main__.py" in capsys.readouterr().err
    assert_no_worktree_left(repo)


def test_base_that_cannot_run_is_skipped(repo, capsys):
    set_speed(repo, crash=True)
    commit_all(repo, "broken bench")
    set_speed(repo)
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 0
    assert "skipped: the base revision could not run the suite" in capsys.readouterr().out
    assert_no_worktree_left(repo)


def test_base_without_bench_or_suite_is_skipped(repo, capsys):
    assert run_gate("--base", "HEAD~1", "--out", str(repo.parent / "out")) == 0
    assert "skipped: the base revision has no `python -m bench`" in capsys.readouterr().out
    (repo / "bench" / "suites" / "ci.toml").write_text("")
    assert run_gate("--base", "HEAD", "--suite", "ci", "--out", str(repo.parent / "out")) == 0
    assert "base revision has no suite 'ci'" in capsys.readouterr().out
    assert run_gate("--base", "HEAD", "--suite", "nope", "--out", str(repo.parent / "out")) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert_no_worktree_left(repo)


def test_first_commit_shallow_clone_and_unknown_revision(repo, tmp_path, capsys, monkeypatch):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    sh("git", "init", "-q", cwd=lonely)
    (lonely / "a").write_text("a")
    commit_all(lonely, "only")
    monkeypatch.chdir(lonely)
    assert run_gate("--base", "HEAD~1") == 0
    assert "first commit" in capsys.readouterr().out

    shallow = tmp_path / "shallow"
    sh("git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow), cwd=tmp_path)
    monkeypatch.chdir(shallow)
    assert run_gate("--base", "HEAD~1") == 0
    assert "shallow clone" in capsys.readouterr().out

    monkeypatch.chdir(repo)
    assert run_gate("--base", "no-such-branch") == 2
    assert "unknown revision 'no-such-branch'" in capsys.readouterr().err

    monkeypatch.chdir(tmp_path)  # not a checkout at all
    assert run_gate("--base", "HEAD~1") == 0
    assert "not inside a git checkout" in capsys.readouterr().out


def test_a_bad_noise_file_is_bad_usage(repo, capsys):
    (repo.parent / "noise.json").write_text("{}")
    assert run_gate("--base", "HEAD", "--noise-file", str(repo.parent / "noise.json")) == 2
    assert "not an A/A calibration" in capsys.readouterr().err
    assert_no_worktree_left(repo)


def test_bad_arguments_exit_2(repo, capsys):
    for argv in (["--base", "HEAD", "--runs", "0"], ["--base", "HEAD", "--confirm-runs", "x"], ["--runs", "3"]):
        with pytest.raises(SystemExit) as e:
            run_gate(*argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--base" in err and "'0' must be >= 1" in err and "'x' is not an integer" in err


def test_worktree_is_removed_when_interrupted(repo, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(gate.tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(gate, "run_suite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_gate("--base", "HEAD", "--out", str(repo.parent / "out"))
    assert_no_worktree_left(repo)
    assert list(scratch.iterdir()) == []


def ci_gate(repo, **env):
    """.ci/gate.sh in `repo` with a Python that only echoes its arguments: which base it picks."""
    (repo / ".ci").mkdir(exist_ok=True)
    script = repo / ".ci" / "gate.sh"
    script.write_text((gate_sh := Path(__file__).resolve().parent.parent / ".ci" / "gate.sh").read_text())
    assert gate_sh.is_file()
    result = subprocess.run(["bash", str(script), "--runs", "3"], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": "echo", **env}, check=True)
    words = result.stdout.split()
    assert words[:3] == ["-m", "bench", "gate"] and words[-2:] == ["--runs", "3"]
    return words[words.index("--base") + 1]


def test_ci_compares_with_the_merge_base_of_main(repo):
    first = sh("git", "rev-parse", "HEAD~1", cwd=repo).strip()
    # no main: the previous commit
    sh("git", "branch", "-m", "work", cwd=repo)
    assert ci_gate(repo) == "HEAD~1"
    # a branch two commits past main's fork point: the fork point, not HEAD~1
    sh("git", "branch", "main", first, cwd=repo)
    (repo / "a.txt").write_text("a")
    sh("git", "add", "a.txt", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "two", cwd=repo)
    assert ci_gate(repo) == first
    # on main's tip itself: the previous commit
    sh("git", "checkout", "-q", "main", cwd=repo)
    assert ci_gate(repo) == "HEAD~1"
    # only a remote main (a CI checkout): its merge base
    sh("git", "checkout", "-q", "work", cwd=repo)
    sh("git", "update-ref", "refs/remotes/origin/main", first, cwd=repo)
    sh("git", "branch", "-D", "main", cwd=repo)
    assert ci_gate(repo) == first
    assert ci_gate(repo, GATE_BASE="v0") == "v0"


class StubModel:
    """A model whose decode step busy-waits a known CPU time and records how long it took."""

    def __init__(self, seconds=0.002):
        self.seconds, self.took = seconds, []

    def decode_step(self, token, cache):
        t0 = time.thread_time()
        while time.thread_time() - t0 < self.seconds:
            pass
        self.took.append(time.thread_time() - t0)
        return token + 1


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_slow_decode_hook_adds_work_proportional_to_the_step(monkeypatch, one_thread):
    from bench.measure import runner

    case = "yoco-swa-tiny-b1-s512-g36-w64-none-float32-torch-eager"
    monkeypatch.setenv(runner.SLOW_DECODE_ENV, f"{case}:1.5")
    model = runner.slow_decode_for_test(StubModel(), case, "cpu")
    for _ in range(5):
        t0 = time.thread_time()
        assert model.decode_step(1, None) == 2  # the step's own result
        total = time.thread_time() - t0
        assert total >= 1.5 * model.took[-1]  # at least FACTOR times the step's own CPU time
        assert total < 1.5 * model.took[-1] + 0.001
    other = StubModel()
    assert runner.slow_decode_for_test(other, "transformer-tiny", "cpu").decode_step.__func__ is \
        StubModel.decode_step
    monkeypatch.delenv(runner.SLOW_DECODE_ENV)
    plain = StubModel()
    assert runner.slow_decode_for_test(plain, case, "cpu").decode_step.__func__ is StubModel.decode_step
    monkeypatch.setattr(runner, "TEST_SLOW_DECODE", f"{case}:1.25")  # the campaign's code change
    assert runner.slow_decode_for_test(StubModel(), case, "cpu").decode_step.__name__ == "slowed_step"
    for bad in ("1.25", f"{case}:0.5", f"{case}:fast"):
        monkeypatch.setenv(runner.SLOW_DECODE_ENV, bad)
        with pytest.raises(ValueError, match="expected CASE_ID:FACTOR with FACTOR >= 1"):
            runner.slow_decode_for_test(StubModel(), case, "cpu")


def test_gate_runs_write_the_csvs_only(tmp_path, monkeypatch, capsys):
    """The gate's runs set BENCH_NO_REPORT and BENCH_NO_CEILINGS: results, samples and env, no
    summary or plots, no ceilings (so no MFU or MBU), the device facts still recorded."""
    import math

    import pandas as pd

    from bench import cli
    from bench import run as bench_run

    assert (bench_run.NO_REPORT_ENV, bench_run.NO_CEILINGS_ENV) == ("BENCH_NO_REPORT", "BENCH_NO_CEILINGS")
    monkeypatch.setenv(bench_run.NO_REPORT_ENV, "1")
    monkeypatch.setenv(bench_run.NO_CEILINGS_ENV, "1")
    out = tmp_path / "run"
    case = "yoco-swa-tiny-b1-s128-g36-w64-none-float32-torch-eager"
    assert cli.main(["run", "--suite", "smoke", "--only", case, "--device", "cpu", "--repeats", "1",
                     "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["env.json", "results.csv", "samples.csv", "suite.toml"]
    assert "no summary or plots" in capsys.readouterr().out
    env = json.loads((out / "env.json").read_text())
    assert "BENCH_NO_CEILINGS" in env["ceilings"]
    assert math.isnan(env["copy_bandwidth_bytes_s"]) and env["matmul_flops_s_by_dtype"] == {}
    assert "ceiling_drift" not in env  # nothing to measure again
    assert env["device_name"] and env["threads"] == 1
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["status"] == "ok" and row["prefill_ms"] > 0
    assert math.isnan(row["decode_mbu"]) and math.isnan(row["prefill_mfu"])
