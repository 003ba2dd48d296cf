"""`bench gate` end to end on a throwaway git repository whose `python -m bench run` is a fake.

The fake writes the same three files the real harness writes, with per-process luck and a
speed per (case, metric) read from its own tree's speed.json: changing speed.json in the
working tree plants a real slowdown of the code under test, without torch (each run ~50 ms).
"""

import argparse
import json
import subprocess
import textwrap

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
    if speed.get("crash"):
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
                    value, calibration = center * factor * jitter, 5.0 * jitter
                    w.writerow([case, metric, r, value, calibration, value / calibration])
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "kv_cache_bytes", "params", "status", "error"])
        for case in cases:
            w.writerow([case, speed.get(f"{case}/kv_cache_bytes", 4096), 1000, "ok", ""])
    command = os.environ.get("FAKE_BENCH_COMMAND", " ".join(sys.argv))  # argv[0]: this __main__.py
    (out / "env.json").write_text(json.dumps({"suite": a.suite, "device": "cpu", "device_name": "fake",
                                              "command": command}))
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
    monkeypatch.delenv(gate.PLANT_VARIABLE, raising=False)
    return root


def run_gate(*argv):
    parser = argparse.ArgumentParser()
    gate.add_arguments(parser)
    return gate.main(parser.parse_args(["--runs", "5", *argv]))  # the fewest that can flag: fast tests


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
    assert "OK: no regression" in out and "first pass flagged 0" in out
    runs = invocations(repo)
    assert len(runs) == 10
    # alternating: base (worktree dir "base") then the working tree (dir "repo")
    assert [r.split()[0] for r in runs[:4]] == ["base", "repo", "base", "repo"]
    assert_no_worktree_left(repo)


def test_planted_slowdown_is_flagged_and_confirmed(repo, capsys):
    set_speed(repo, **{"yoco-swa-tiny__decode_ms_per_step": 1.25})  # uncommitted: the working tree
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 1
    out = capsys.readouterr().out
    assert "confirmed by re-run" in out and "FAIL: regression" in out
    assert "first pass flagged 1 timing(s), 1 confirmed" in out
    confirm = invocations(repo)[10:]
    assert len(confirm) == 10 and all(r.endswith("yoco-swa-tiny") for r in confirm)
    assert confirm[0].startswith("repo")  # the re-run starts with the other side
    assert_no_worktree_left(repo)


def test_speedup_is_an_improvement(repo, capsys):
    set_speed(repo, **{"yoco-gret-tiny__prefill_ms": 0.75})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 0
    out = capsys.readouterr().out
    assert "improved" in out and "OK: no regression" in out
    assert len(invocations(repo)) == 10  # nothing to confirm


def test_a_fluke_that_does_not_repeat_is_unconfirmed(repo, capsys):
    set_speed(repo, first_pass_only=True, **{"transformer-tiny__decode_ms_per_step": 1.3})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 0
    out = capsys.readouterr().out
    assert "unconfirmed" in out and "first pass flagged 1 timing(s), 0 confirmed" in out


def test_changed_cache_bytes_fails_without_a_retry(repo, capsys):
    set_speed(repo, **{"yoco-gret-tiny__kv_cache_bytes": 8192})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out"), "--format", "json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["gate"]["first_pass_flagged"] == 0 and report["gate"]["runs"] == 5
    assert [(r["case_id"], r["metric"]) for r in report["rows"] if r["status"] == "regressed"] == \
        [("yoco-gret-tiny", "kv_cache_bytes")]
    assert len(invocations(repo)) == 10
    smaller = json.loads((repo.parent / "out" / "benchmark-smaller-is-better.json").read_text())
    assert {"name": "yoco-gret-tiny/kv_cache_bytes", "unit": "bytes", "value": 8192.0} in \
        [{k: e[k] for k in ("name", "unit", "value")} for e in smaller]


def test_plant_variable_scales_the_working_tree_samples(repo, capsys, monkeypatch):
    monkeypatch.setenv(gate.PLANT_VARIABLE, "yoco-gret-tiny:decode_ms_per_step:1.25")
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out")) == 1
    assert "1 confirmed" in capsys.readouterr().out
    # planted in one case, a real slowdown flagged in another: the confirmation of that other
    # case runs without the planted one
    set_speed(repo, **{"yoco-swa-tiny__prefill_ms": 1.4})
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out1")) == 1
    assert "2 confirmed" in capsys.readouterr().out
    monkeypatch.setenv(gate.PLANT_VARIABLE, "yoco-gret-tiny:prefill_ms:1.0")
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out3")) == 1
    out = capsys.readouterr().out
    assert "1 confirmed" in out and "yoco-swa-tiny" in out
    set_speed(repo)
    monkeypatch.setenv(gate.PLANT_VARIABLE, "no-such-case:decode_ms_per_step:1.25")
    assert run_gate("--base", "HEAD", "--out", str(repo.parent / "out2")) == 2
    assert "no samples" in capsys.readouterr().err
    assert_no_worktree_left(repo)


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


def test_bad_arguments_exit_2(repo, capsys):
    for argv in (["--base", "HEAD", "--runs", "0"], ["--runs", "3"]):
        with pytest.raises(SystemExit) as e:
            run_gate(*argv)
        assert e.value.code == 2
    assert "--base" in capsys.readouterr().err


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
