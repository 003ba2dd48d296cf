"""scripts/decode_profile.py on a CPU (the plumbing: aten ops stand in for kernels): one profile
per backend, rows whose shares add up, the markdown, and bad usage exits 2."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "decode_profile.py"
spec = importlib.util.spec_from_file_location("decode_profile", SCRIPT)
decode_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decode_profile)


def test_profiles_each_backend_kernel_by_kernel(tmp_path):
    assert decode_profile.main([str(tmp_path), "--device", "cpu", "--preset", "tiny", "--seq-len", "64",
                                "--dtype", "float32", "--steps", "3", "--arch", "yoco-swa", "--window", "16",
                                "--backend", "torch"]) == 0
    rows = pd.read_csv(tmp_path / "decode-profile.csv")
    assert set(rows["backend"]) == {"torch"}
    assert abs(rows["share"].sum() - 1) < 1e-9 and (rows["us_per_step"] > 0).all()
    assert rows["us_per_step"].is_monotonic_decreasing  # heaviest first
    assert "aten::mm" in set(rows["kernel"])  # the step's matmuls, noted 3 steps over
    text = (tmp_path / "decode-profile.md").read_text()
    assert "## `yoco-swa-tiny-b1-s64-g3-w16-none-float32-torch-eager`" in text
    assert "captured step (CUDA graph): - (CUDA only)" in text


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps and --seq-len must be >= 1"),
                                           (["--dtype", "int8"], "invalid choice: 'int8'")])
def test_bad_usage_exits_2(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--device", "cpu", *args],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
