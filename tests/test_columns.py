"""The column schema documents every column the harness writes, and README shows it."""

from pathlib import Path

from bench.show import columns, report

README = Path(__file__).resolve().parent.parent / "README.md"


def test_results_and_samples_headers_come_from_the_schema():
    assert report.COLUMNS == columns.RESULT_NAMES
    assert report.SAMPLE_COLUMNS == columns.SAMPLE_NAMES
    for cols in (columns.RESULTS, columns.SAMPLES):
        names = [c.name for c in cols]
        assert len(names) == len(set(names)), "a column is documented twice"
        for c in cols:
            assert c.meaning and c.devices in (columns.ALL, columns.CUDA, columns.CPU), c


def test_readme_tables_are_generated_from_the_schema():
    text = README.read_text()
    assert columns.readme_with_tables(text) == text, "README's column tables are stale: run " \
                                                     "python scripts/readme_columns.py"
