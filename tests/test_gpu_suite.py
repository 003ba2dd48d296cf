"""The GPU suite's dry parts: the gpu-quick suite covers the targets, and scripts/gpu_suite.sh
parses, refuses bad usage and lists the cases in a dry run (no GPU needed, nothing measured)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from bench.suite import load_suite

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_suite.sh"


def test_gpu_quick_covers_the_targets():
    suite = load_suite("gpu-quick")
    cases = suite.cases
    assert suite.devices == ("cuda",)
    assert {c.dtype for c in cases} == {"bfloat16"} and {c.batch for c in cases} == {1}
    assert {c.preset for c in cases} == {"1.4b", "3b"}
    assert {c.window for c in cases if c.arch == "yoco-swa"} == {1024}
    for preset in ("1.4b", "3b"):
        for arch in ("transformer", "yoco-gret", "yoco-swa"):
            # decode MBU at a 4K context, compiled (CUDA graphs), bf16 and BitNet 1.58bit
            for bitnet in ("none", "1.58bit"):
                assert any(c.arch == arch and c.preset == preset and c.seq_len == 4096 and c.compile
                           and c.bitnet == bitnet for c in cases), (arch, preset, bitnet)
            # prefill at 8K and 32K
            eager = {c.seq_len for c in cases if c.arch == arch and c.preset == preset and not c.compile}
            assert eager == {8192, 32768}


def _run(args, env_extra=None, timeout=180):
    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_bad_usage_exits_2_and_writes_nothing(tmp_path):
    assert _run([]).returncode == 2
    out = tmp_path / "out"
    result = _run([str(out)], {"GPU_SUITE_BUDGET_S": "25min"})
    assert result.returncode == 2 and "whole seconds" in result.stderr
    assert _run([str(out)], {"GPU_SUITE_DEVICE": "tpu"}).returncode == 2
    assert _run([str(out)], {"PAPER_REPEATS": "0"}).returncode == 2
    assert not out.exists()
    (out / "paper").mkdir(parents=True)
    (out / "paper" / "results.csv").write_text("case_id\n")
    result = _run([str(out)])
    assert result.returncode == 2 and "--resume" in result.stderr


def test_dry_run_lists_cases_and_measures_nothing(tmp_path):
    """The plumbing, on the small smoke suite (gpu-quick's own listing is checked above)."""
    out = tmp_path / "dry"
    result = _run(["--dry-run", str(out)], {"GPU_SUITE_SUITES": "smoke"})
    assert result.returncode == 0, result.stderr
    status = (out / "STATUS.md").read_text()
    assert re.search(r"smoke: dry run, exit 0: suite smoke \(.*\): \d+ cases for cuda", status)
    assert "tests: not run (dry run)" in status and "targets: not checked" in status
    listing = (out / "logs" / "20-smoke.log").read_text()
    assert re.search(r"^transformer-tiny-b1-s\d+-", listing, re.M)  # the smoke suite is the harness's to change
    assert "torch" in (out / "logs" / "00-environment.log").read_text()
    assert not (out / "smoke").exists()  # no run directory, no numbers
