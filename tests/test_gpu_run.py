"""The GPU run (scripts/gpu_run.sh, scripts/gpu_run.py) without a GPU: its suites cover the
sections, the dry run plans every case with an estimate, bad usage exits 2, and at tiny size on
the CPU (--device cpu) a section cut by its budget and a run killed mid-section both leave every
finished row in the output folder, which never holds more than the files the device returns."""

import csv
import importlib.util
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from bench import run as bench_run
from bench.suite import load_suite, parse_suite

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_run.sh"
spec = importlib.util.spec_from_file_location("gpu_run", REPO / "scripts" / "gpu_run.py")
gpu_run = importlib.util.module_from_spec(spec)
sys.modules["gpu_run"] = gpu_run  # dataclasses look their module up there
spec.loader.exec_module(gpu_run)

ARCHS = {"transformer", "hf-llama", "yoco-gret", "yoco-swa"}
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def test_section_suites_cover_the_headline_figures():
    decode = load_suite("gpu-decode").cases
    assert {c.arch for c in decode} == ARCHS
    assert {(c.preset, c.seq_len, c.batch, c.dtype, c.bitnet) for c in decode} == {("3b", 4096, 1, "bfloat16", "none")}
    prefill = load_suite("gpu-prefill").cases
    assert {(c.arch, c.seq_len) for c in prefill} == {(a, n) for a in ARCHS for n in (8192, 32768)}
    long = load_suite("gpu-long")
    assert long.memory_cap_bytes == 80e9  # "3b at 1M within 80 GB", under a real cap
    first = long.cases[:2]
    assert {(c.arch, c.seq_len) for c in first} == {("yoco-gret", 1 << 20), ("yoco-swa", 1 << 20)}  # first
    for arch in ("yoco-gret", "yoco-swa"):
        assert len({c.seq_len for c in long.cases if c.arch == arch and c.seq_len >= 32768}) >= 2  # an exponent
    base = [c.seq_len for c in long.cases if c.arch == "transformer"]
    assert max(base) == 1 << 20 and min(base) > 32768  # up to where it stops fitting
    bitnet = load_suite("gpu-bitnet").cases
    assert [(c.preset, c.bitnet, c.seq_len) for c in bitnet] == [("3b", "1.58bit", 4096)]
    for name in ("gpu-decode", "gpu-prefill", "gpu-long", "gpu-bitnet"):
        assert load_suite(name).devices == ("cuda",)


@pytest.mark.parametrize("name", ["gpu-decode", "gpu-prefill", "gpu-long", "gpu-bitnet"])
def test_tiny_suites_keep_each_sections_shape(name):
    suite = load_suite(name)
    tiny = parse_suite(gpu_run.shrink_suite(suite.text), Path(f"{name}-tiny.toml"))
    # lengths, windows and excludes all mapped alike; graph decode (CUDA only) runs eager and the
    # split-KV cases decode with SDPA (CUDA only), which merges cases the GPU suite times both ways
    eager = list(dict.fromkeys((c.arch, c.seq_len, c.window, gpu_run.without_split_kv(c.backend))
                               for c in suite.cases))
    assert len(tiny.cases) == len(eager)
    assert [c.arch for c in tiny.cases] == [key[0] for key in eager]
    assert {c.decode_mode for c in tiny.cases} == {"eager"}
    assert {(c.preset, c.dtype) for c in tiny.cases} == {("tiny", "float32")} and tiny.devices == ("cpu",)
    assert tiny.memory_cap_gb == suite.memory_cap_gb


def run_script(*args, env=None, timeout=300):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_dry_run_plans_every_case_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    done = run_script("--dry-run", str(out))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for section in ("smoke", "decode", "prefill", "long", "bitnet", "probe"):
        assert re.search(rf"^{section}: ~\d+ s needed, limit \d+ s \(\d+ s budget", text, re.M), section
    assert "tests:" not in text  # only when named
    for name in ("gpu-decode", "gpu-prefill", "gpu-long", "gpu-bitnet"):
        for case in load_suite(name).cases:
            assert re.search(rf"{re.escape(case.case_id)}\s+\d+\.\d s", text), case.case_id
    assert "790 TFLOP/s" in text and "4.3 TB/s" in text and re.search(r"^total ~\d+ s of 450 s", text, re.M)
    assert "skipped at once: weights + cache exceed the cap" in text  # the baseline at 1M under 80 GB
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--sections", "decode,warp"], "unknown section 'warp'"),
    (["--budget", "0"], "--budget must be >= 1"),
])
def test_bad_usage_exits_2(tmp_path, args, message):
    done = run_script(str(tmp_path / "out"), *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_out_folder_holding_a_run_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "STATUS.md").write_text("# an earlier run\n")
    done = run_script(str(out), "--device", "cpu")
    assert done.returncode == 2 and "already holds a run" in done.stderr
    (tmp_path / "file").write_text("x")
    assert run_script(str(tmp_path / "file"), "--device", "cpu").returncode == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_no_gpu_is_a_usage_error(tmp_path):
    done = run_script(str(tmp_path / "out"))
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr and not (tmp_path / "out").exists()


def check_out_folder(out: Path):
    """What the device returns: at most 8 files, none in a subfolder, plain names."""
    entries = list(out.iterdir())
    assert all(p.is_file() and SAFE_NAME.match(p.name) for p in entries), entries
    assert len(entries) <= 8 and {p.name for p in entries} <= {"STATUS.md", "targets.txt", "gpu-run.log",
                                                               "gpu-run.tar.gz"}


def tar_text(out: Path, member: str) -> str:
    with tarfile.open(out / "gpu-run.tar.gz") as tar:
        return tar.extractfile(f"gpu-run/{member}").read().decode()


def tar_rows(out: Path, member: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(tar_text(out, member))))


@pytest.mark.slow
def test_a_section_cut_by_its_budget_keeps_its_rows_and_says_so(tmp_path):
    """The decode section at tiny size on the CPU with its second case hung: the run's budget
    stops it; the finished row, plots drawn from it and the cut are all in OUT."""
    out, work = tmp_path / "out", tmp_path / "work"
    cases = parse_suite(gpu_run.shrink_suite(load_suite("gpu-decode").text), Path("t.toml")).cases
    done = run_script(str(out), "--device", "cpu", "--sections", "decode", "--budget", "40", "--work", str(work),
                      env={bench_run.INJECT_ENV: f"hang:{cases[1].case_id}"})
    assert done.returncode == 0, done.stderr  # cut by the budget is not a failure
    check_out_folder(out)
    status = (out / "STATUS.md").read_text()
    assert re.search(rf"\| decode \| CUT \| \d+ \| \d+ \| stopped by its \d+ s limit after 1 of {len(cases)} cases",
                     status)
    assert f"`{cases[0].case_id}`: ok" in status and f"not run: `{cases[1].case_id}`" in status
    assert [r["case_id"] for r in tar_rows(out, "decode/results.csv")] == [cases[0].case_id]
    with tarfile.open(out / "gpu-run.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu-run/decode/summary.md" in names and any(n.startswith("gpu-run/decode/plots/") for n in names)
    assert (out / "targets.txt").read_text().strip().endswith("not measured")  # CPU rows count for nothing


@pytest.mark.slow
def test_a_killed_run_leaves_every_finished_row_in_the_tarball(tmp_path):
    """SIGKILL while the decode section's last case hangs: the tarball refreshed on its own
    clock holds every finished row and a STATUS.md saying the section was running, and no
    process of the run lives on."""
    out, work = tmp_path / "out", tmp_path / "work"
    cases = parse_suite(gpu_run.shrink_suite(load_suite("gpu-decode").text), Path("t.toml")).cases
    proc = subprocess.Popen(["bash", str(SCRIPT), str(out), "--device", "cpu", "--sections", "decode", "--work",
                             str(work)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHON": sys.executable, "GPU_RUN_TAR_EVERY_S": "1",
                                 bench_run.INJECT_ENV: f"hang:{cases[-1].case_id}"})
    try:
        deadline = time.time() + 180
        rows = []
        finished = len(cases) - 1
        while time.time() < deadline and len(rows) < finished:
            time.sleep(0.5)
            try:
                rows = tar_rows(out, "decode/results.csv")
            except (OSError, KeyError, tarfile.TarError, EOFError):
                rows = []
        assert len(rows) == finished, "the tarball never held the finished rows"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    check_out_folder(out)
    assert [r["case_id"] for r in tar_rows(out, "decode/results.csv")] == [c.case_id for c in cases[:-1]]
    assert "**decode is running.**" in tar_text(out, "STATUS.md")
    deadline = time.time() + 20
    while time.time() < deadline and _processes_mentioning(str(work)):
        time.sleep(0.2)
    assert _processes_mentioning(str(work)) == []


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


FAKE_PYTEST = """#!/usr/bin/env bash
# Stands in for python: a pytest run whose one gpu_smoke test fails (writes its JUnit XML).
for arg in "$@"; do
  case "$arg" in --junitxml=*) xml="${arg#--junitxml=}" ;; esac
done
[[ -n "${xml:-}" ]] || exit 0
cat > "$xml" <<XML
<testsuites><testsuite><testcase classname="tests.test_flex_attention" name="test_cuda_compiled[4096-1024]">
<failure message="mismatch"/></testcase></testsuite></testsuites>
XML
echo "1 failed, 10 passed in 31.2s"
exit 1
"""


def test_failed_smoke_tests_stop_the_run_with_their_names(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTEST)
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    run = gpu_run.Run(out, tmp_path / "work", gpu_run.select_sections("smoke,decode,probe"), 60, "cpu", str(fake),
                      smoke=True)
    assert run.go() == 1
    status = (out / "STATUS.md").read_text()
    assert re.search(r"\| smoke \| FAILED \| .*1 failed, 10 passed in 31.2s\. The run STOPS here", status)
    assert "- failed: `tests.test_flex_attention::test_cuda_compiled[4096-1024]`" in status
    assert re.search(r"\| decode \| skipped \| .*the smoke tests failed", status)
    assert re.search(r"\| probe \| skipped \|", status)
    check_out_folder(out)
