"""scripts/gpu_probe.py on CPU shapes: the cases it derives from suites, and the calls it reports."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_probe", REPO / "scripts" / "gpu_probe.py")
gpu_probe = importlib.util.module_from_spec(spec)
sys.modules["gpu_probe"] = gpu_probe  # dataclasses look their module up there
spec.loader.exec_module(gpu_probe)

TINY = """
[suite]
repeats = 1
[axes]
arch = ["transformer", "yoco-gret", "yoco-swa"]
preset = ["tiny"]
seq_len = [40, 100]
gen_len = [4]
window = [32]
bitnet = ["none", "1.58bit"]
"""


@pytest.fixture
def suite(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_cases_come_from_the_suites_bitnet_aside(suite):
    cases = gpu_probe.probe_cases([str(suite)])
    assert len(cases) == 3 * 2 and {c.bitnet for c in cases} == {"none"}  # attention is the same packed
    assert [c.seq_len for c in gpu_probe.probe_cases([str(suite)], max_seq_len=64)] == [40] * 3
    # the packed 1.58-bit case attends exactly as the decode section's bf16 yoco-gret case: probed once
    # decode: the four archs (ours with the split-KV decode), our three with SDPA's decode, and yoco-gret
    # on torch (hf-llama's eager case is its graph case's twin); prefill: the four at two lengths and
    # yoco-gret on torch at 32K
    assert len(gpu_probe.probe_cases(["gpu-decode", "gpu-prefill", "gpu-bitnet"])) == (4 + 3 + 1) + (8 + 1)


def test_each_case_is_probed_at_its_real_attention_shapes():
    case = gpu_probe.probe_cases(["gpu-decode"])[0]  # transformer 3b at 4K: 24 query heads on 8 KV heads
    small = case.__class__(**{**case.axes(), "preset": "tiny", "seq_len": 40, "gen_len": 4, "dtype": "float32"})
    calls = {(c.phase, c.call): c for c in gpu_probe.probe_case(small, "cpu")}
    prefill = calls[("prefill", "SDPA q 4x40 kv 2x40 d16 float32 causal gqa")]
    # the whole static cache, the 2 query heads of each KV head folded into the query length
    decode = calls[("decode", "SDPA q 2x2 kv 2x44 d16 float32 mask(bool)")]
    assert prefill.kernel in ("flash", "math") and decode.kernel in ("flash", "math")
    assert set(decode.refusals) == {"flash", "efficient", "cudnn"}  # on CPU: "not on CUDA" for each


def test_command_line_merges_calls_across_cases(suite, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert gpu_probe.main(["--device", "cpu", "--suites", str(suite), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 cases" in text and "distinct attention calls" in text
    records = json.loads(out.read_text())
    assert {r["phase"] for r in records} == {"prefill", "decode"}
    swa = [r for r in records if r["call"] == "FlexAttention (sliding window)"]
    assert swa == []  # on a CPU the SWA prefill takes the blocked SDPA form, not FlexAttention
    gret = [r for r in records if r["call"].startswith("gRet torch chunk")]
    assert len(gret) == 1 and len(gret[0]["cases"]) == 2  # one record, both prompt lengths
    for r in records:
        if r["call"].startswith("SDPA"):
            assert r["kernel"] in ("flash", "math") and r["cases"]
            assert f"made by: {', '.join(r['cases'])}" in text


def test_unknown_suite_is_a_usage_error(capsys):
    assert gpu_probe.main(["--device", "cpu", "--suites", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
