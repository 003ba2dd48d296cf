"""Imported once by the forkserver that every case process is forked from (bench.measure.runner).

Besides torch and the models, it builds the tiny twins on the meta device: the first meta
build loads torch's Python decompositions (seconds), which every case would otherwise pay
again. Meta tensors do no compute, so no OpenMP or CUDA state exists yet when cases fork
(the thread count stays as it was: checked in tests/test_bench_runner.py)."""

import torch  # noqa: F401

import baselines
import yoco

yoco.from_preset("tiny", device="meta")
baselines.from_preset("tiny", device="meta")
