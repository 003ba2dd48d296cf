"""Mutation score per file from mutmut's results (mutants/*.meta), after `mutmut run`.

    python scripts/mutation_score.py [--survivors] [--fail-under PCT] [FILE ...]

A mutant counts as killed when a test failed or crashed, or ran past mutmut's time limit
(shown apart: workers that hang for another reason show up there); as not killed when every
test passed or no selected test calls its function. Mutants not checked yet (an interrupted
or partial run) are listed apart and left out of the score.
bench/judge/compare.py is also scored on its deciding functions alone (reading and rendering
left out), the part the gate's verdict rests on. Exit 1 when a file scores under --fail-under.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

# mutmut's worker exit codes (mutmut/stats.py) -> our three outcomes
KILLED_CODES = {1, 3, -11, -9}  # a test failed or crashed
TIMEOUT_CODES = {36, -24, 24, 152, 255}  # past mutmut's time limit: counted as killed, shown apart
SURVIVED_CODES = {0, 5, 33}  # every test passed, or no test calls the function
# compare.py's decision: what a comparison concludes, not how files are read or tables drawn
DECIDING = {
    "bench/judge/compare.py": (
        "Comparison.failed", "Comparison.counts", "check_same_setup", "compare_runs", "why_missing",
        "default_metrics", "ok_cases", "compare_metric", "result_values", "compare_timing",
        "per_run_medians", "mark_unconfirmed",
    ),
}
MUTANT_NAME = re.compile(r"\.x(?:_(?P<function>\w+?)|ǁ(?P<cls>\w+)ǁ(?P<method>\w+?))__mutmut_\d+$")


def function_of(mutant: str) -> str:
    """'yoco.cache.xǁKVCacheǁfill__mutmut_3' -> 'KVCache.fill'; 'm.x_decide__mutmut_1' -> 'decide'."""
    match = MUTANT_NAME.search(mutant)
    if match is None:
        raise ValueError(f"not a mutmut 3 mutant name: {mutant!r}")
    return match["function"] or f"{match['cls']}.{match['method']}"


def outcome(exit_code) -> str:
    if exit_code is None:
        return "not checked"
    if exit_code in KILLED_CODES:
        return "killed"
    if exit_code in TIMEOUT_CODES:
        return "timeout"
    if exit_code in SURVIVED_CODES:
        return "survived" if exit_code == 0 else "no tests"
    return "other"  # mutmut's 'suspicious', 'skipped', type-check filtered: not killed by a test


def load(mutants_dir: Path) -> dict[str, dict[str, object]]:
    """source file -> {mutant name: exit code}."""
    results = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        source = meta.relative_to(mutants_dir).as_posix().removesuffix(".meta")
        results[source] = json.loads(meta.read_text())["exit_code_by_key"]
    return results


def score_rows(results: dict[str, dict[str, object]]) -> list[tuple[str, Counter, list[str]]]:
    rows = []
    for source, codes in results.items():
        groups = [(source, codes)]
        if source in DECIDING:
            wanted = set(DECIDING[source])
            groups.append((f"{source} (deciding)", {m: c for m, c in codes.items() if function_of(m) in wanted}))
        for label, group in groups:
            counts = Counter(outcome(c) for c in group.values())
            survivors = sorted(m for m, c in group.items() if outcome(c) in ("survived", "no tests", "other"))
            rows.append((label, counts, survivors))
    return rows


def percent(counts: Counter) -> float:
    caught = counts["killed"] + counts["timeout"]
    judged = caught + counts["survived"] + counts["no tests"] + counts["other"]
    return 100.0 * caught / judged if judged else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="source files to show (default: all mutated)")
    parser.add_argument("--mutants", default="mutants", help="mutmut's directory (default: mutants)")
    parser.add_argument("--survivors", action="store_true", help="list the mutants no test killed")
    parser.add_argument("--fail-under", type=float, default=None, metavar="PCT",
                        help="exit 1 when a shown file scores under PCT percent")
    args = parser.parse_args(argv)
    mutants_dir = Path(args.mutants)
    if not mutants_dir.is_dir():
        print(f"no {mutants_dir}/ here: run mutmut first (tox -e mutation)", file=sys.stderr)
        return 2
    rows = [r for r in score_rows(load(mutants_dir)) if not args.files or r[0].split(" ")[0] in args.files]
    columns = ("killed", "timeout", "survived", "no tests", "other", "not checked")
    print(f"{'file':<38} " + " ".join(f"{c:>11}" for c in columns) + f" {'score':>7}")
    failing = []
    for label, counts, _ in rows:
        score = percent(counts)
        print(f"{label:<38} " + " ".join(f"{counts[c]:>11}" for c in columns) + f" {score:>6.1f}%")
        if args.fail_under is not None and not score >= args.fail_under:
            failing.append(label)
    if args.survivors:
        for label, _, survivors in rows:
            if survivors and not label.endswith("(deciding)"):
                print(f"\n{label}: {len(survivors)} not killed (mutmut show NAME prints the change)")
                print("\n".join(f"  {m}" for m in survivors))
    if failing:
        print(f"\nunder {args.fail_under}%: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
