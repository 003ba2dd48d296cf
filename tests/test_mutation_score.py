"""scripts/mutation_score.py: mutmut's results read back into a score per file."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mutation_score.py"
spec = importlib.util.spec_from_file_location("mutation_score", SCRIPT)
mutation_score = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_score)


def test_function_of_names_functions_and_methods():
    assert mutation_score.function_of("yoco.cache.xǁKVCacheǁfill__mutmut_3") == "KVCache.fill"
    assert mutation_score.function_of("bench.judge.stats.x_decide__mutmut_12") == "decide"
    assert mutation_score.function_of("yoco.ops.retention.x__chunk__mutmut_1") == "_chunk"
    assert mutation_score.function_of("yoco.cache.xǁKVCacheǁ__init____mutmut_2") == "KVCache.__init__"
    with pytest.raises(ValueError, match="not a mutmut 3 mutant name"):
        mutation_score.function_of("yoco.cache.fill")


def write_meta(root: Path, source: str, codes: dict):
    path = root / (source + ".meta")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_score_counts_timeouts_as_killed_and_leaves_unrun_out(tmp_path, capsys):
    m = "yoco.cache.xǁKVCacheǁfill__mutmut_"
    # 2 killed, 1 timeout, 1 survived, 1 without tests, 1 not run: 3 of 5 judged.
    write_meta(tmp_path, "yoco/cache.py", {m + "1": 1, m + "2": 1, m + "3": 36, m + "4": 0, m + "5": 33, m + "6": None})
    assert mutation_score.main(["--mutants", str(tmp_path), "--survivors", "--fail-under", "60"]) == 0
    out = capsys.readouterr().out
    assert "60.0%" in out and m + "4" in out and m + "5" in out and m + "1" not in out
    assert mutation_score.main(["--mutants", str(tmp_path), "--fail-under", "61"]) == 1


def test_compare_is_scored_also_on_its_deciding_functions(tmp_path, capsys):
    write_meta(tmp_path, "bench/judge/compare.py", {
        "bench.judge.compare.x_compare_runs__mutmut_1": 1,
        "bench.judge.compare.xǁComparisonǁfailed__mutmut_1": 1,
        "bench.judge.compare.x_markdown_table__mutmut_1": 0,  # rendering: not deciding
    })
    rows = {label: mutation_score.percent(counts)
            for label, counts, _ in mutation_score.score_rows(mutation_score.load(tmp_path))}
    assert rows["bench/judge/compare.py"] == pytest.approx(200 / 3)
    assert rows["bench/judge/compare.py (deciding)"] == 100.0


def test_no_results_is_a_usage_error(tmp_path, capsys):
    assert mutation_score.main(["--mutants", str(tmp_path / "absent")]) == 2
    assert "run mutmut first" in capsys.readouterr().err
