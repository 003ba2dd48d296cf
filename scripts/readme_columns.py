"""Regenerate README.md's column tables from bench/show/columns.py (tests/test_columns.py checks them)."""

from pathlib import Path

from bench.show.columns import readme_with_tables

README = Path(__file__).resolve().parent.parent / "README.md"

if __name__ == "__main__":
    README.write_text(readme_with_tables(README.read_text()))
    print(f"updated {README}")
