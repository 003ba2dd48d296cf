"""scripts/aa_spread.py's analysis on synthetic runs: a machine whose speed moves as a whole
between runs is divided out by the calibration (normalized spread ~0, raw spread not)."""

import importlib.util
from pathlib import Path

import pytest

from bench.show import report

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "aa_spread.py"
spec = importlib.util.spec_from_file_location("aa_spread", SCRIPT)
aa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aa)


def fake_run(path: Path, speed: float):
    path.mkdir(parents=True)
    calibration = 2.0 * speed
    rows = [dict(case_id=c, status="ok", calibration_before_ms=calibration, calibration_after_ms=calibration)
            for c in ("a", "b")]
    report.append_rows(path / "results.csv", report.COLUMNS, rows)
    samples = [dict(case_id=c, metric=m, repeat=r, value=base * speed, calibration_ms=calibration,
                    normalized=base * speed / calibration, process=0)
               for c, base in (("a", 10.0), ("b", 30.0)) for m in ("prefill_ms", "decode_ms_per_step")
               for r in range(3)]
    report.append_rows(path / "samples.csv", report.SAMPLE_COLUMNS, samples)
    (path / "summary.md").write_text("done\n")


def test_a_whole_machine_slowdown_is_divided_out(tmp_path, capsys):
    for k, speed in enumerate([1.0, 1.3, 0.9, 1.1, 1.5], start=1):
        fake_run(tmp_path / f"run-{k:02d}", speed)
    assert aa.main(["--out", str(tmp_path), "--analyse-only"]) == 0
    table = aa.spread_table(aa.run_dirs(tmp_path))
    assert len(table) == 4 and set(table["runs"]) == {5}
    assert (table["raw_rel_iqr"] > 0.1).all()
    assert table["normalized_rel_iqr"].tolist() == pytest.approx([0.0] * 4, abs=1e-12)
    assert table["before_only_rel_iqr"].tolist() == pytest.approx([0.0] * 4, abs=1e-12)
    text = (tmp_path / "aa_spread.md").read_text()
    assert "normalized vs raw, rel_iqr: narrower in 4 of 4 pairs" in text and text in capsys.readouterr().out


def test_too_few_runs_is_an_error(tmp_path, capsys):
    fake_run(tmp_path / "run-01", 1.0)
    assert aa.main(["--out", str(tmp_path), "--analyse-only"]) == 2
    assert "a spread needs 3 or more" in capsys.readouterr().err
