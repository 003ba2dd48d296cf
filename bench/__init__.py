"""The benchmarking harness: `python -m bench` (see bench.cli).

What to run (suite), how a case is isolated (isolation, runner), what is recorded (trackers),
how good it is (roofline), how it is shown (report, plots), whether it got worse (compare,
stats, gate). Nothing in yoco/ or baselines/ knows this package exists.
"""
