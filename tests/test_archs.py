"""The arch registry: built-in archs, and a user's own arch added from outside the package."""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import archs
from bench.suite import UsageError, parse_suite

REPO = Path(__file__).resolve().parent.parent

# A toy arch, defined outside the package: our transformer with its FFN halved.
TOY = textwrap.dedent('''
    from bench.archs import Arch, register

    def build(preset, *, device, dtype, window, **overrides):
        import baselines
        from yoco.config import PRESETS

        return baselines.from_preset(preset, device=device, dtype=dtype,
                                     ffn_dim=PRESETS[preset]["base_ffn_dim"] // 2, **overrides)

    register(Arch("toy-half-ffn", build, bitnet=False))
''')


def test_builtin_archs_and_their_rules():
    assert {"yoco-gret", "yoco-swa", "transformer", "hf-llama"} <= set(archs.ARCHS)
    assert archs.get("yoco-swa").windowed and not archs.get("transformer").windowed
    assert not archs.get("hf-llama").bitnet and archs.get("hf-llama").sized_as == "transformer"
    assert archs.get("yoco-gret").self_decoder == "gret" and archs.get("transformer").self_decoder is None


def test_unknown_arch_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown arch 'nope'.*yoco-gret.*transformer"):
        archs.get("nope")


def test_register_rejects_bad_input():
    with pytest.raises(TypeError, match="bench.archs.Arch"):
        archs.register("transformer")
    with pytest.raises(ValueError, match="no spaces"):
        archs.register(archs.Arch("my arch", lambda *a, **k: None))


def test_a_module_that_does_not_import_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="arch module 'no_such_module_xyz' does not import"):
        parse_suite('[suite]\narch_modules = ["no_such_module_xyz"]\n[axes]\narch = ["transformer"]\n',
                    tmp_path / "s.toml")
    with pytest.raises(UsageError, match="arch_modules must be a list"):
        parse_suite('[suite]\narch_modules = "x"\n[axes]\narch = ["transformer"]\n', tmp_path / "s.toml")


def test_a_users_arch_runs_through_a_suite(tmp_path):
    """The toy arch, named in a suite file, is expanded like a built-in (no window, no BitNet)
    and measured in its own case process, which imports the module itself."""
    (tmp_path / "my_archs.py").write_text(TOY)
    suite = tmp_path / "toy.toml"
    suite.write_text(textwrap.dedent('''
        [suite]
        repeats = 2
        threads = 1
        arch_modules = ["my_archs"]

        [axes]
        arch = ["toy-half-ffn", "transformer"]
        preset = ["tiny"]
        seq_len = [32]
        gen_len = [4]
        window = [16, 32]
        bitnet = ["none", "1.58bit"]
    '''))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", str(suite), "--device", "cpu",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    with open(out / "results.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    toy = [r for r in rows.values() if r["arch"] == "toy-half-ffn"]
    assert len(toy) == 1 and toy[0]["bitnet"] == "none" and toy[0]["window"] == ""  # no window, no BitNet
    assert toy[0]["status"] == "ok", toy[0]["error"]
    twin = next(r for r in rows.values() if r["arch"] == "transformer" and r["bitnet"] == "none")
    assert int(toy[0]["params"]) < int(twin["params"])  # really the toy model, not a fallback


def test_arch_module_on_the_command_line(tmp_path):
    (tmp_path / "toy_archs.py").write_text(TOY)
    suite = tmp_path / "toy.toml"
    suite.write_text('[suite]\nrepeats = 1\n[axes]\narch = ["toy-half-ffn"]\npreset = ["tiny"]\nseq_len = [16]\n'
                     'gen_len = [2]\n')
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", str(suite), "--dry-run",
                           "--arch-module", str(tmp_path / "toy_archs.py")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "toy-half-ffn-tiny" in done.stdout
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", str(suite), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown arch value 'toy-half-ffn'" in done.stderr
