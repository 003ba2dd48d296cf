"""`python -m bench` end to end on tiny suites: outputs and their schema, kill and resume,
injected failures, shards and merge, plots from a CSV, and every usage error."""

import argparse
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import cli
from bench import run as bench_run
from bench.show import report
from bench.suite import load_suite

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Tiny and quick: 4 cases, short prompts and generations.
MINI = """
[suite]
description = "test suite"
repeats = 2
warmup = 1
threads = 1

[axes]
arch = ["yoco-gret", "yoco-swa", "transformer"]
preset = ["tiny"]
seq_len = [32]
gen_len = [4]
window = [16]

[[sweep]]
[[sweep]]
arch = ["transformer"]
seq_len = [64]
"""


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def bench(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=kwargs.pop("cwd", REPO), capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=240, **kwargs)


@pytest.fixture(scope="module")
def mini_suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "mini.toml"
    path.write_text(MINI)
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The CI suite, once, exactly as a user runs it."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    done = bench("run", "--suite", "smoke", "--device", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, mini_suite) -> Path:
    out = tmp_path_factory.mktemp("mini") / "run"
    assert cli.main(["run", "--suite", str(mini_suite), "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_smoke_end_to_end(smoke_run):
    out, done = smoke_run
    results = rows(out / "results.csv")
    assert list(results[0]) == report.COLUMNS
    assert {r["case_id"] for r in results} == {c.case_id for c in load_suite("smoke").cases}
    assert {r["status"] for r in results} == {"ok"}, [r["error"] for r in results]
    for r in results:
        assert int(r["kv_cache_bytes"]) == int(r["kv_cache_bytes_formula"]) > 0
        assert float(r["prefill_ms_p25"]) <= float(r["prefill_ms"]) <= float(r["prefill_ms_p75"])
        step = [float(r[f"decode_ms_per_step{q}"]) for q in ("_p25", "", "_p75")]
        assert step[0] <= step[1] <= step[2]
        assert float(r["decode_tok_s"]) > 0 and float(r["prefill_tok_s"]) > 0
        assert 0 < float(r["prefill_mfu"]) < 1.5 and 0 < float(r["decode_mbu"]) < 1.5
        assert float(r["peak_mem_decode_bytes"]) > float(r["mem_before_model_bytes"]) > 0
        assert r["device"] == "cpu" and r["memory_source"].startswith("cpu_vmhwm")
        assert int(r["weight_bytes"]) > 0 and int(r["params"]) > 0
    # The baseline's cache grows with the prompt, L-fold faster per token than YOCO's global cache.
    base = sorted((int(r["seq_len"]), int(r["kv_cache_bytes"])) for r in results if r["arch"] == "transformer")
    gret = sorted((int(r["seq_len"]), int(r["kv_cache_bytes"])) for r in results if r["arch"] == "yoco-gret")
    slope = lambda pts: (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])  # noqa: E731
    assert slope(base) == pytest.approx(4 * slope(gret))  # tiny: 4 layers, same K/V heads and width

    samples = rows(out / "samples.csv")
    assert list(samples[0]) == report.SAMPLE_COLUMNS
    repeats = load_suite("smoke").repeats
    assert len(samples) == len(results) * 2 * repeats
    assert {s["metric"] for s in samples} == set(report.TIMING_METRICS)
    for s in samples:
        assert float(s["normalized"]) == pytest.approx(float(s["value"]) / float(s["calibration_ms"]))

    env = json.loads((out / "env.json").read_text())
    for key in ("suite", "device", "device_name", "git_commit", "versions", "threads", "backends",
                "copy_bandwidth_bytes_s", "read_bandwidth_bytes_s", "matmul_flops_s", "memory_measurement",
                "timing", "calibration", "datasheet", "ceilings_after", "ceiling_drift", "ceiling_drifted"):
        assert key in env, key
    assert env["suite"] == "smoke" and env["copy_bandwidth_bytes_s"] > 0 and env["matmul_flops_s"] > 0
    assert env["read_bandwidth_bytes_s"] > 0 and env["ceilings_after"]["read_bandwidth_bytes_s"] > 0
    assert env["datasheet"]["name"] is None  # a CPU has no data-sheet peak
    assert {r["processes"] for r in results} == {"1"} and {r["prefill_ms_ci_low"] for r in results} == {""}
    assert {s["process"] for s in samples} == {"0"}
    assert {r["decode_mode"] for r in results} == {"eager"}

    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem for p in pngs} >= {"prefill_latency", "decode_throughput", "peak_memory", "kv_cache"}
    assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000 for p in pngs)
    summary = (out / "summary.md").read_text()
    assert env["device_name"] in summary and "KV cache: baseline / YOCO" in summary and "## Trends" in summary
    assert "transformer" in done.stdout and str(out / "results.csv") in done.stdout  # table and paths printed
    # answers in words, first: the L-fold cache claim is exact, so it holds on any machine
    assert summary.index("## Does YOCO's saving hold here?") < summary.index("## Trends")
    assert "**holds**: KV cache growth per token, transformer / yoco-gret: 4.00x" in summary
    assert "Does YOCO's saving hold here?" in done.stdout
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="cases"' in page and page.count("<svg") >= 4


def test_every_key_the_harness_writes_is_in_the_schema(smoke_run):
    """The rows of a real run: a key outside bench/show/columns.py would be named on stderr and
    kept in results.unlisted.jsonl (never dropped in silence)."""
    out, done = smoke_run
    assert "not in the column schema" not in done.stderr
    assert not list(out.glob("*.unlisted.jsonl"))


def test_progress_off_a_terminal_is_one_line_per_case(smoke_run):
    out, done = smoke_run
    lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == len(load_suite("smoke").cases)
    assert all(" elapsed, ETA " in line and ": ok in " in line for line in lines)
    assert lines[-1].startswith(f"[{len(lines)}/{len(lines)}]")


def test_kill_then_resume_loses_nothing_and_doubles_nothing(tmp_path, mini_suite):
    out = tmp_path / "run"
    cases = load_suite(str(mini_suite)).cases
    # The second case hangs, so the kill lands while it is in flight, after the first was written.
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", str(mini_suite), "--device", "cpu",
                             "--out", str(out)],
                            cwd=REPO, env={**os.environ, bench_run.INJECT_ENV: f"hang:{cases[1].case_id}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "results.csv").exists() and len(rows(out / "results.csv")) >= 1):
            time.sleep(0.05)
        time.sleep(0.3)
        group = processes_in_group(proc.pid)
        assert len(group) >= 3  # the CLI, the case server, the hanging case
        os.kill(proc.pid, signal.SIGKILL)  # the CLI alone: its server and case must follow
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and processes_in_group(proc.pid):
            time.sleep(0.1)
        assert processes_in_group(proc.pid) == set()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert len(rows(out / "results.csv")) == 1
    # A torn half-line, as a kill during a write would leave.
    with open(out / "samples.csv", "a") as f:
        f.write(f"{cases[1].case_id},prefill_ms,0,1.2")

    assert cli.main(["run", "--resume", str(out)]) == 0
    results = rows(out / "results.csv")
    assert sorted(r["case_id"] for r in results) == sorted(c.case_id for c in cases)
    assert {r["status"] for r in results} == {"ok"}
    samples = rows(out / "samples.csv")
    per_case = {c.case_id: sum(s["case_id"] == c.case_id for s in samples) for c in cases}
    assert set(per_case.values()) == {2 * 2}  # prefill + decode, 2 repeats each, once
    assert (out / "summary.md").exists()


def processes_in_group(pgid: int) -> set[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def test_injected_oom_and_crash_record_rows_and_the_sweep_goes_on(tmp_path, mini_suite, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(bench_run.INJECT_ENV, "oom:transformer-tiny-b1-s32,crash:yoco-swa")
    assert cli.main(["run", "--suite", str(mini_suite), "--device", "cpu", "--out", str(out)]) == 0
    status = {r["case_id"].split("-tiny")[0] + "-" + r["seq_len"]: r for r in rows(out / "results.csv")}
    assert status["transformer-32"]["status"] == "oom" and "OutOfMemoryError" in status["transformer-32"]["error"]
    assert status["yoco-swa-32"]["status"] == "oom" and "SIGKILL" in status["yoco-swa-32"]["error"]
    assert status["yoco-gret-32"]["status"] == "ok" and status["transformer-64"]["status"] == "ok"
    # The failed rows still name their case and carry its estimate.
    assert int(status["transformer-32"]["kv_cache_bytes_formula"]) > 0
    assert status["yoco-swa-32"]["arch"] == "yoco-swa"


def test_shards_merged_equal_the_unsharded_run(tmp_path, mini_suite, mini_run):
    shards = [tmp_path / "s1", tmp_path / "s2"]
    for i, d in enumerate(shards, start=1):
        assert cli.main(["run", "--suite", str(mini_suite), "--shard", f"{i}/2", "--device", "cpu",
                         "--out", str(d)]) == 0
    sizes = [len(rows(d / "results.csv")) for d in shards]
    assert sizes == [2, 2]
    merged = tmp_path / "merged"
    assert cli.main(["merge", *map(str, shards), "--out", str(merged)]) == 0
    whole = {r["case_id"] for r in rows(mini_run / "results.csv")}
    assert {r["case_id"] for r in rows(merged / "results.csv")} == whole
    assert len(rows(merged / "results.csv")) == len(whole)
    assert len(rows(merged / "samples.csv")) == len(rows(mini_run / "samples.csv"))
    assert (merged / "summary.md").exists() and list((merged / "plots").glob("*.png"))
    # Merging a shard twice would double cases: refused.
    assert cli.main(["merge", str(shards[0]), str(shards[0]), "--out", str(tmp_path / "m2")]) == 2


def test_merge_of_one_shard_names_what_is_missing(tmp_path, mini_suite, capsys):
    shard = tmp_path / "s1"
    assert cli.main(["run", "--suite", str(mini_suite), "--shard", "1/2", "--device", "cpu", "--repeats", "1",
                     "--out", str(shard)]) == 0
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert cli.main(["merge", str(shard), "--out", str(merged)]) == 0
    err = capsys.readouterr().err
    ids = [c.case_id for c in load_suite(str(mini_suite)).cases]
    absent = [c for c in ids if c not in {r["case_id"] for r in rows(shard / "results.csv")}]
    assert len(absent) == 2
    assert "2 of 4 cases" in err and "shard 2/2 not given" in err and all(c in err for c in absent)
    assert json.loads((merged / "env.json").read_text())["missing_cases"] == absent
    summary = (merged / "summary.md").read_text()
    assert "**2 missing**" in summary and all(c in summary for c in absent)


def test_report_of_several_runs_has_comparison_and_history(tmp_path, mini_run, capsys):
    other = tmp_path / "other"
    shutil.copytree(mini_run, other)
    env = json.loads((other / "env.json").read_text())
    env.update(git_commit="f" * 40, timestamp="2099-01-01T00:00:00")
    (other / "env.json").write_text(json.dumps(env))
    page = tmp_path / "page" / "both.html"
    assert cli.main(["report", str(mini_run), str(other), "--html", str(page)]) == 0
    assert str(page) in capsys.readouterr().out
    text = page.read_text()
    assert '<section id="comparison">' in text and '<section id="history">' in text and "fffffff" in text
    assert cli.main(["report", str(mini_run)]) == 0  # one run: the page goes inside it
    assert (mini_run / "report.html").is_file()


@pytest.mark.parametrize("args, message", [
    (["report", "/nonexistent/run"], "is not a run directory"),
])
def test_report_usage_errors(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_report_of_several_runs_needs_a_page_name(mini_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(mini_run, other)
    assert cli.main(["report", str(mini_run), str(other)]) == 2
    assert "--html" in capsys.readouterr().err


def test_every_argument_explains_itself():
    """`python -m bench COMMAND --help` says what each argument is (compare and gate: bench.judge)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        if name in ("compare", "gate"):
            continue
        assert summaries.get(name), f"{name}: no one-line help in `python -m bench --help`"
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"


def test_stdout_closed_early_ends_quietly():
    done = subprocess.run(f"{sys.executable} -m bench list | head -1", shell=True, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.startswith("suites") and done.stderr == ""


def test_only_runs_just_the_named_cases(tmp_path, mini_suite):
    wanted = [c.case_id for c in load_suite(str(mini_suite)).cases][::3]
    out = tmp_path / "only"
    assert cli.main(["run", "--suite", str(mini_suite), "--only", ",".join(wanted), "--device", "cpu",
                     "--out", str(out), "--repeats", "1"]) == 0
    assert [r["case_id"] for r in rows(out / "results.csv")] == wanted
    assert {r["repeats"] for r in rows(out / "results.csv")} == {"1"}


def test_processes_interleave_and_combine(tmp_path, mini_suite):
    """--processes 2: each case in two processes, every case once before any twice; one
    combined row per case, each process's own row in processes.csv, samples tagged."""
    wanted = [c.case_id for c in load_suite(str(mini_suite)).cases][:2]
    out = tmp_path / "procs"
    assert cli.main(["run", "--suite", str(mini_suite), "--only", ",".join(wanted), "--device", "cpu",
                     "--out", str(out), "--repeats", "1", "--processes", "2"]) == 0
    per_process = rows(out / "processes.csv")
    assert [(r["case_id"], r["process"]) for r in per_process] == [(wanted[0], "0"), (wanted[1], "0"),
                                                                    (wanted[0], "1"), (wanted[1], "1")]
    results = rows(out / "results.csv")
    assert [r["case_id"] for r in results] == wanted and {r["processes"] for r in results} == {"2"}
    for r in results:
        mine = [float(p["decode_ms_per_step"]) for p in per_process if p["case_id"] == r["case_id"]]
        assert float(r["decode_ms_per_step"]) == pytest.approx(sum(mine) / 2)  # the median of two
        assert r["decode_ms_per_step_ci_low"] == ""  # two processes: no 95% interval
    assert sorted(s["process"] for s in rows(out / "samples.csv")) == ["0"] * 4 + ["1"] * 4
    assert json.loads((out / "env.json").read_text())["processes"] == 2


def test_repair_keeps_finished_processes_of_an_unfinished_case(tmp_path):
    """After a kill with --processes: the case in flight loses only its unfinished process."""
    report.append_rows(tmp_path / "results.csv", report.COLUMNS, [dict(case_id="done", status="ok")])
    report.append_rows(tmp_path / report.PROCESSES_FILE, report.PROCESS_COLUMNS,
                       [dict(case_id="done", status="ok", process=0), dict(case_id="done", status="ok", process=1),
                        dict(case_id="half", status="ok", process=0, prefill_ms=2.5, cuda_graph_replayed=False)])
    samples = [dict(case_id=c, metric="prefill_ms", repeat=0, value=1.0, process=p)
               for c, p in (("done", 0), ("done", 1), ("half", 0), ("half", 1))]
    report.append_rows(tmp_path / "samples.csv", report.SAMPLE_COLUMNS, samples)
    with open(tmp_path / "samples.csv", "a") as f:
        f.write("half,prefill_ms,1,0.5")  # torn by the kill
    done, partial = report.repair(tmp_path)
    assert done == {"done"} and list(partial) == ["half"]
    (row, kept), = partial["half"]
    assert row["prefill_ms"] == 2.5 and row["cuda_graph_replayed"] is False and row["process"] == 0
    assert [(s["case_id"], s["process"]) for s in kept] == [("half", 0)]
    assert [(s["case_id"], s["process"]) for s in rows(tmp_path / "samples.csv")] == [
        ("done", "0"), ("done", "1"), ("half", "0")]


def test_plot_regenerates_from_csv_alone(tmp_path, mini_run):
    csv_copy = tmp_path / "results.csv"
    csv_copy.write_bytes((mini_run / "results.csv").read_bytes())
    assert cli.main(["plot", str(csv_copy), "--out", str(tmp_path / "p")]) == 0
    pngs = list((tmp_path / "p").glob("*.png"))
    assert {p.stem for p in pngs} >= {"prefill_latency", "kv_cache", "peak_memory", "decode_throughput"}
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)


def test_list_names_suites_presets_modes_backends(capsys):
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    for word in ("smoke", "default", "paper", "tiny", "3b", "1.58bit", "backends: torch"):
        assert word in text


def test_paper_dry_run_on_cpu_lists_cases_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["run", "--suite", "paper", "--dry-run", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    cases = load_suite("paper").cases
    assert all(c.case_id in text for c in cases) and "cannot build" not in text
    assert "GiB" in text and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["run", "--suite", "nope"], "unknown suite 'nope'"),
    (["run", "--suite", "smoke", "--shard", "3/2"], "bad --shard '3/2'"),
    (["run", "--suite", "smoke", "--only", "nope"], "--only names case id 'nope'"),
    (["run", "--suite", "smoke", "--repeats", "0"], "--repeats must be >= 1"),
    (["run", "--suite", "paper", "--device", "cpu"], "suite 'paper' runs on cuda only"),
    (["run", "--suite", "smoke", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "--resume", "/nonexistent/run"], "not a run directory"),
    (["plot", "/nonexistent/results.csv"], "neither a run directory"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors_exit_2_with_one_message(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_errors_write_nothing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert cli.main(["run", "--suite", "smoke", "--out", str(blocker / "run")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err
    # access() says yes to root here, the filesystem says no: the check must try for real
    assert cli.main(["run", "--suite", "smoke", "--out", "/proc/yoco-bench-run"]) == 2
    assert "cannot write to --out /proc/yoco-bench-run" in capsys.readouterr().err
    created = tmp_path / "new" / "deeper"
    assert cli.main(["run", "--suite", str(tmp_path / "missing.toml"), "--out", str(created)]) == 2
    capsys.readouterr()
    assert not (tmp_path / "new").exists()  # the probe left nothing behind
    bad = tmp_path / "bad.toml"
    bad.write_text("[axes]\nseq_len = [1,\narch = 3\n")
    out = tmp_path / "out"
    assert cli.main(["run", "--suite", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line" in err and not out.exists()
    for text, message in (('[axes]\npreset = ["huge"]\n', "unknown preset value 'huge'"),
                          ('[axes]\nwindow = [-1]\n', "window values must be integers >= 1"),
                          ('[axes]\nheads = [2]\n', "unknown axis 'heads'")):
        bad.write_text(text)
        assert cli.main(["run", "--suite", str(bad), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()


def test_bare_command_picks_the_suite_for_the_device():
    assert cli.default_suite("cpu") == "default"
    assert cli.default_suite("cuda") == "gpu-decode"
    args = cli.build_parser().parse_args(["run"])
    assert args.suite is None and args.device is None and not args.dry_run


def test_hf_llama_without_transformers_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from baselines import hf_llama

    monkeypatch.setattr(hf_llama, "available", lambda: False)
    suite = tmp_path / "hf.toml"
    suite.write_text('[axes]\narch = ["hf-llama"]\n')
    assert cli.main(["run", "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    assert "needs HF transformers" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert cli.main(["run", "--suite", str(suite), "--dry-run"]) == 0  # sized as its twin: still listed
    assert "hf-llama-tiny" in capsys.readouterr().out


def test_existing_run_dir_needs_resume(mini_run, capsys):
    assert cli.main(["run", "--suite", "smoke", "--out", str(mini_run)]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_usage_error_from_the_command_line(tmp_path):
    done = bench("run", "--suite", "smoke", "--device", "cuda", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_failed_rows_have_nan_free_identity(mini_run):
    for r in rows(mini_run / "results.csv"):
        assert r["case_id"] and r["arch"] and r["preset"] == "tiny" and r["device_name"]
        assert not math.isnan(float(r["kv_cache_bytes"]))


def test_a_backend_that_cannot_run_here_skips_only_its_own_cases(tmp_path):
    """fla asked for on a CPU run: that case is skipped with the reason, never run on torch; the
    others run, and every row says which backend really ran."""
    suite = tmp_path / "backends.toml"
    suite.write_text('[suite]\nrepeats = 1\nthreads = 1\n[axes]\narch = ["yoco-gret"]\npreset = ["tiny"]\n'
                     'seq_len = [16]\ngen_len = [2]\nbackend = ["torch", "fla", "auto"]\n')
    out = tmp_path / "run"
    assert cli.main(["run", "--suite", str(suite), "--device", "cpu", "--out", str(out)]) == 0
    by_backend = {r["backend"]: r for r in rows(out / "results.csv")}
    assert by_backend["fla"]["status"] == "skipped" and "needs --device cuda" in by_backend["fla"]["error"]
    for name in ("torch", "auto"):
        assert by_backend[name]["status"] == "ok" and by_backend[name]["backend_used"] == "torch"


def test_a_hung_case_is_killed_at_the_timeout_and_the_sweep_goes_on(tmp_path, mini_suite, monkeypatch):
    cases = load_suite(str(mini_suite)).cases
    monkeypatch.setenv(bench_run.INJECT_ENV, f"hang:{cases[0].case_id}")
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert cli.main(["run", "--suite", str(mini_suite), "--device", "cpu", "--only",
                     f"{cases[0].case_id},{cases[1].case_id}", "--case-timeout", "8", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 120  # not the injected 600 s
    by_id = {r["case_id"]: r for r in rows(out / "results.csv")}
    assert by_id[cases[0].case_id]["status"] == "timeout" and "within 8 s" in by_id[cases[0].case_id]["error"]
    assert by_id[cases[1].case_id]["status"] == "ok"
    assert json.loads((out / "env.json").read_text())["case_timeout_s"] == 8
    assert cli.main(["run", "--suite", str(mini_suite), "--case-timeout", "0", "--out", str(tmp_path / "x")]) == 2
