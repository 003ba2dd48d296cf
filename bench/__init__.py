"""The benchmarking harness: `python -m bench` (see bench.cli).

Grouped by the question each part answers: what to run (suite, run), how one case is measured
(measure/: isolation, runner, trackers, roofline), did it get worse (judge/: stats, compare,
gate), how it is shown (show/: report, plots, progress). Nothing in yoco/ or baselines/ knows
this package exists.
"""
