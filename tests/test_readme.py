"""Every Python block in README.md runs as written, each in a fresh interpreter at the repository
root (tiny presets, short sequences: seconds each)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3  # the models, BitNet, your own arch


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}:{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS)])
def test_readme_python_block_runs(code, tmp_path):
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README block failed:\n{code}\n---\n{done.stderr[-3000:]}"


def test_in_place_methods_return_none_so_the_prompt_prints_no_model():
    import baselines
    import yoco

    assert yoco.from_preset("tiny").compile_decode() is None  # compiles lazily: costs nothing here
    assert baselines.from_preset("tiny", bitnet="1.58bit").pack_bitnet() is None
