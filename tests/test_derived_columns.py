"""Every derived column of results.csv recomputed from samples.csv and env.json with this file's
own code (its own percentile, its own byte count of the step, its own cache walk), to 1e-9
relative, on a tiny suite at batch 2 run as a user runs it."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_decode_bytes import independent_count

import baselines
import yoco

REPO = Path(__file__).resolve().parent.parent
REL = 1e-9

SUITE = """
[suite]
devices = ["cpu"]
repeats = 5
warmup = 1
threads = 1

[axes]
arch = ["transformer", "yoco-gret", "yoco-swa"]
preset = ["tiny"]
batch = [2]
seq_len = [48]
gen_len = [6]
window = [16]
dtype = ["float32"]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("derived")
    (folder / "suite.toml").write_text(SUITE)
    out = folder / "run"
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", str(folder / "suite.toml"), "--device",
                           "cpu", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "BENCH_NO_REPORT": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, written out)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def model_of(row: dict):
    arch = row["arch"]
    if arch == "transformer":
        return baselines.from_preset(row["preset"], device="meta")
    window = {"window": int(row["window"])} if arch == "yoco-swa" else {}
    return yoco.from_preset(row["preset"], self_decoder=arch.removeprefix("yoco-"), device="meta", **window)


def close(actual, expected, what):
    assert actual == pytest.approx(expected, rel=REL, abs=0), f"{what}: {actual} against recomputed {expected}"


def test_every_derived_column_recomputes_from_the_raw_data(run):
    rows = list(csv.DictReader(open(run / "results.csv")))
    samples = list(csv.DictReader(open(run / "samples.csv")))
    env = json.loads((run / "env.json").read_text())
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        case, batch, seq_len, gen_len = row["case_id"], int(row["batch"]), int(row["seq_len"]), int(row["gen_len"])
        assert batch == 2
        mine = {m: [float(s["value"]) for s in samples if s["case_id"] == case and s["metric"] == m]
                for m in ("prefill_ms", "decode_ms_per_step")}
        assert len(mine["prefill_ms"]) == len(mine["decode_ms_per_step"]) == int(row["repeats"]) == 5
        for metric, values in mine.items():
            close(float(row[metric]), percentile(values, 0.5), f"{case} {metric}")
            close(float(row[f"{metric}_p25"]), percentile(values, 0.25), f"{case} {metric}_p25")
            close(float(row[f"{metric}_p75"]), percentile(values, 0.75), f"{case} {metric}_p75")
        prefill_s, step_s = percentile(mine["prefill_ms"], 0.5) / 1e3, percentile(mine["decode_ms_per_step"], 0.5) / 1e3
        close(float(row["prefill_tok_s"]), batch * seq_len / prefill_s, f"{case} prefill_tok_s")
        close(float(row["decode_tok_s"]), batch / step_s, f"{case} decode_tok_s")

        model = model_of(row)
        cache = model.allocate_cache(batch, seq_len + gen_len)  # on meta: its tensors' shapes only
        cache_bytes = sum(b.numel() * b.element_size() for _, b in cache.named_buffers()
                          if b.dtype.is_floating_point)
        assert int(row["kv_cache_bytes"]) == cache_bytes, case
        # The timed steps start from the prompt's end and run gen_len steps: contexts seq_len .. +gen_len-1.
        step_bytes = sum(independent_count(model, batch, n) for n in range(seq_len, seq_len + gen_len)) / gen_len
        close(float(row["decode_bytes_per_step"]), step_bytes, f"{case} decode_bytes_per_step")
        close(float(row["decode_mbu"]), step_bytes / step_s / env["read_bandwidth_bytes_s"], f"{case} decode_mbu")

        # On a CPU in float32 every prefill FLOP runs in float32, at the float32 matmul rate measured.
        assert row["prefill_flops_dtypes"] == "float32 100.0%", case
        rate = env["matmul_flops_s_by_dtype"]["float32"]
        close(float(row["prefill_mfu"]), float(row["prefill_flops"]) / rate / prefill_s, f"{case} prefill_mfu")
