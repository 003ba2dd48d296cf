"""Suite files expand to the cases they describe, and reject what they should (no processes run)."""

import dataclasses
from pathlib import Path

import pytest

from bench.suite import (
    Case,
    UsageError,
    check_decode_modes_usable,
    load_suite,
    parse_shard,
    parse_suite,
    select,
    suite_names,
)


def parse(text: str, name="user.toml"):
    return parse_suite(text, Path(name))


def test_builtin_suites_parse_with_unique_ids():
    assert {"smoke", "default", "paper"} <= set(suite_names())
    for name in suite_names():
        suite = load_suite(name)
        ids = [c.case_id for c in suite.cases]
        assert len(ids) == len(set(ids)), name
        assert all("," not in i and " " not in i for i in ids)  # --only takes a comma list


def test_default_suite_covers_the_issue():
    cases = load_suite("default").cases
    assert {c.arch for c in cases} == {"yoco-gret", "yoco-swa", "transformer"}
    assert min(c.seq_len for c in cases) == 128 and max(c.seq_len for c in cases) == 4096
    windows = {c.window for c in cases if c.arch == "yoco-swa"}
    assert min(windows) == 64 and max(windows) == 1024
    assert {c.bitnet for c in cases} == {"none", "1.58bit"}
    assert {c.dtype for c in cases} == {"float32"}


def test_paper_suite_is_gpu_bf16_up_to_1m():
    suite = load_suite("paper")
    assert suite.devices == ("cuda",)
    assert {c.dtype for c in suite.cases} == {"bfloat16"}
    assert max(c.seq_len for c in suite.cases) == 1 << 20
    assert {"160m", "3b"} <= {c.preset for c in suite.cases}


def test_case_id_is_built_from_axis_values_only():
    case = Case(arch="yoco-swa", preset="tiny", batch=2, seq_len=128, gen_len=8, window=64, bitnet="1.58bit",
                dtype="float32", backend="torch", decode_mode="compile")
    assert case.case_id == "yoco-swa-tiny-b2-s128-g8-w64-1.58bit-float32-torch-compiled"
    assert case.self_decoder == "swa"
    # the ids of eager and compiled cases stayed as they were when decode_mode was a boolean `compile`
    assert dataclasses.replace(case, decode_mode="eager").case_id.endswith("-torch-eager")
    assert dataclasses.replace(case, decode_mode="graph").case_id.endswith("-torch-graph")


def test_graph_decode_needs_cuda():
    suite = parse("[axes]\ndecode_mode = [\"eager\", \"graph\"]\n")
    assert [c.decode_mode for c in suite.cases] == ["eager", "graph"]
    check_decode_modes_usable(suite.cases, "cuda")
    with pytest.raises(UsageError, match="decode_mode 'graph' .* needs --device cuda"):
        check_decode_modes_usable(suite.cases, "cpu")
    check_decode_modes_usable(suite.cases[:1], "cpu")


def test_cartesian_product_excludes_and_window_only_for_swa():
    suite = parse("""
[axes]
arch = ["yoco-gret", "yoco-swa", "transformer"]
seq_len = [128, 256]
window = [32, 64]
exclude = [{arch = "transformer", seq_len = 256}]
""")
    # gret: 2 lengths (window dropped, duplicates merged); swa: 2 x 2; transformer: 1.
    assert len(suite.cases) == 2 + 4 + 1
    assert all(c.window is None for c in suite.cases if c.arch != "yoco-swa")
    assert not any(c.arch == "transformer" and c.seq_len == 256 for c in suite.cases)


def test_hf_llama_has_no_window_and_no_bitnet():
    suite = parse("""
[axes]
arch = ["hf-llama", "transformer"]
window = [16, 32]
bitnet = ["none", "1.58bit"]
""")
    hf = [c for c in suite.cases if c.arch == "hf-llama"]
    assert len(hf) == 1 and hf[0].window is None and hf[0].bitnet == "none"
    assert len([c for c in suite.cases if c.arch == "transformer"]) == 2


def test_sweeps_override_axes_and_union_without_duplicates():
    suite = parse("""
[suite]
repeats = 3
[axes]
arch = ["transformer"]
seq_len = [128]
[[sweep]]
[[sweep]]
seq_len = [128, 512]
""")
    assert suite.repeats == 3
    assert [c.seq_len for c in suite.cases] == [128, 512]


def test_memory_cap_is_read_in_decimal_gigabytes():
    assert parse("[suite]\nmemory_cap_gb = 80\n[axes]\n").memory_cap_bytes == 80e9
    assert parse("[axes]\nseq_len = [128]\n").memory_cap_bytes is None


@pytest.mark.parametrize("text, message", [
    ("[axes]\narch = [\"yoco\"]\n", "unknown arch value 'yoco'"),
    ("[axes]\npreset = [\"huge\"]\n", "unknown preset value 'huge'"),
    ("[axes]\nbitnet = [\"2bit\"]\n", "unknown bitnet value '2bit'"),
    ("[axes]\ndtype = [\"float64\"]\n", "unknown dtype value 'float64'"),
    ("[axes]\nbackend = [\"cuda_magic\"]\n", "unknown backend part 'cuda_magic'"),
    ("[axes]\nseq_len = [0]\n", "seq_len values must be integers >= 1"),
    ("[axes]\ndecode_mode = [\"cudagraph\"]\n", "unknown decode_mode value 'cudagraph': valid values are eager, graph, "
                                                 "compile"),
    ("[axes]\ncompile = [true]\n", "axis 'compile' is now decode_mode"),
    ("[axes]\ncolour = [1]\n", "unknown axis 'colour'"),
    ("[suite]\nrepeats = 0\n", "repeats must be an integer >= 1"),
    ("[suite]\nmemory_cap_gb = 0\n", "> 0, got 0"),
    ("[suite]\nmemory_cap_gb = \"80GB\"\n", "memory_cap_gb must be a number"),
    ("[axes]\nseq_len = [128\n", "user.toml"),
])
def test_bad_suites_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse(text)


def test_syntax_error_names_file_and_line():
    with pytest.raises(UsageError) as err:
        parse("[suite]\nrepeats = 5\n[axes]\nseq_len = [128,,]\n", "mine.toml")
    assert "mine.toml" in str(err.value) and "line 4" in str(err.value)


def test_unknown_suite_name_lists_valid_ones():
    with pytest.raises(UsageError, match="unknown suite 'nope'.*smoke"):
        load_suite("nope")


def test_shards_partition_the_suite():
    cases = load_suite("default").cases
    for n in (1, 2, 3):
        parts = [select(cases, shard=(i, n)) for i in range(1, n + 1)]
        ids = [c.case_id for part in parts for c in part]
        assert sorted(ids) == sorted(c.case_id for c in cases)
        assert all(abs(len(p) - len(cases) / n) < 1 for p in parts)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_bad_shards(text):
    with pytest.raises(UsageError, match="bad --shard"):
        parse_shard(text)


def test_only_selects_and_rejects_unknown_ids():
    cases = load_suite("smoke").cases
    picked = select(cases, only=[cases[1].case_id])
    assert picked == [cases[1]]
    with pytest.raises(UsageError, match="--only names case id 'nope'"):
        select(cases, only=["nope"])
