"""The measuring parts: analytic FLOPs against torch's own counter, bytes per decode step, the
CPU peak-memory tracker, quantiles, calibration, and process isolation."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import baselines
import yoco
from baselines import transformer_swa
from bench.measure import isolation, roofline, runner, trackers
from bench.measure.trackers import PeakMemory, nvml_used_bytes, quantiles, time_ms
from bench.suite import Case

REPO = Path(__file__).resolve().parent.parent


def tiny(arch, **overrides):
    if arch == "transformer":
        return baselines.from_preset("tiny", **overrides).eval()
    if arch == "transformer-swa":
        return transformer_swa.from_preset("tiny", **overrides).eval()
    return yoco.from_preset("tiny", self_decoder=arch.removeprefix("yoco-"), **overrides).eval()


@pytest.mark.parametrize("arch", ["transformer", "transformer-swa", "yoco-swa", "yoco-gret"])
@pytest.mark.parametrize("seq_len", [64, 200])
def test_dense_prefill_flops_match_torch_flop_counter(arch, seq_len):
    """The matmuls torch counts (mm, bmm) are exactly the formula's dense part; its attention
    part is what SDPA computes and the counter does not see on CPU."""
    torch.manual_seed(0)
    model = tiny(arch, **({"window": 48} if arch.endswith("-swa") else {}))
    batch = 2
    cache = model.allocate_cache(batch, seq_len)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        model.prefill(tokens, cache)
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    dense = counted.pop("aten.mm", 0) + counted.pop("aten.bmm", 0)
    parts = roofline.prefill_flops_parts(model.config, arch, batch, seq_len)
    assert dense == parts["dense"]
    assert parts["attention"] > 0 or arch == "yoco-gret"
    assert roofline.prefill_flops(model.config, arch, batch, seq_len) == parts["dense"] + parts["attention"]


def test_causal_attention_flops_count_the_lower_triangle():
    c = tiny("transformer").config
    f = lambda n: roofline.prefill_flops_parts(c, "transformer", 1, n)["attention"]  # noqa: E731
    assert f(1) == c.n_layers * 4 * c.n_heads * c.head_dim  # one query, one key: QK^T and PV
    assert f(100) / f(50) == pytest.approx(100 * 101 / (50 * 51))


def test_swa_attention_flops_stop_growing_quadratically_past_the_window():
    c = tiny("yoco-swa", window=32).config
    f = lambda n: roofline.prefill_flops_parts(c, "yoco-swa", 1, n)["attention"]  # noqa: E731
    # Beyond W, each new token adds W keys in every self layer, plus one per cross layer.
    step = f(1001) - f(1000)
    assert step == pytest.approx(c.n_layers // 2 * 4 * c.d_model * 32 + (c.n_layers - c.n_layers // 2) * 4 *
                                 c.n_heads * c.head_dim * 1001 - (c.n_layers - c.n_layers // 2) * 4 * c.n_heads *
                                 c.head_dim * 1000)
    c = tiny("transformer-swa", window=32).config
    f = lambda n: roofline.prefill_flops_parts(c, "transformer-swa", 1, n)["attention"]  # noqa: E731
    assert f(1001) - f(1000) == c.n_layers * 4 * c.n_heads * c.head_dim * 32  # every layer: W keys
    assert f(20) == roofline.prefill_flops_parts(c, "transformer", 1, 20)["attention"]  # within W: causal


def test_decode_bytes_count_weights_rows_and_cache():
    model = tiny("transformer")
    c, b = model.config, 4
    weights = model.weight_bytes()
    got = roofline.decode_bytes_per_step(model, weights, batch=3, seq_len=100, gen_len=10)
    cache = c.n_layers * 2 * 3 * 105 * c.n_kv_heads * c.head_dim * b
    assert got == weights - c.vocab_size * c.d_model * b + 3 * c.d_model * b + cache


def test_efficiency_and_quantiles():
    assert roofline.efficiency(1e9, 1000.0, 1e9) == pytest.approx(1.0)
    assert math.isnan(roofline.efficiency(1e9, 0.0, 1e9)) and math.isnan(roofline.efficiency(1e9, 5.0, math.nan))
    q = quantiles([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (q["p25"], q["p50"], q["p75"]) == (2.0, 3.0, 4.0)
    assert math.isnan(quantiles([])["p50"])


def test_calibration_size_depends_only_on_the_case_and_runs():
    a, b = roofline.Calibration("cpu", 1e9, 5e6), roofline.Calibration("cpu", 1e9, 5e6)
    assert (a.n, a.copy_bytes) == (b.n, b.copy_bytes) == (512, 4 << 20)
    small = roofline.Calibration("cpu", 1.0, 1.0)
    assert (small.n, small.copy_bytes) == (64, 1 << 20)
    assert small.measure_ms() > 0


def test_ceilings_are_positive_and_plausible():
    bandwidth = roofline.measure_copy_bandwidth("cpu", nbytes=16 << 20, repeats=2)
    flops = roofline.measure_matmul_flops("cpu", "float32", n=256, repeats=2)
    assert 1e8 < bandwidth < 1e13 and 1e8 < flops < 1e14


def test_time_ms_measures_the_work():
    assert 40 <= time_ms(lambda: __import__("time").sleep(0.05), "cpu") < 1000


def test_cpu_peak_memory_sees_an_allocation_and_resets_per_phase():
    mem = PeakMemory("cpu")
    mem.start()
    before = mem_now()
    block = np.ones(64 << 17)  # 64 MiB, touched
    mem.stop()
    assert mem.allocated >= before + 60 * 2**20
    del block
    second = PeakMemory("cpu")
    second.start()
    second.stop()
    assert mem.source == "cpu_vmhwm"
    assert second.allocated < mem.allocated - 32 * 2**20  # the reset forgot the freed block


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_nvml_without_a_gpu_gives_nan_not_an_error():
    assert math.isnan(nvml_used_bytes(0))


def mem_now() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _raise():
    raise ValueError("bad thing")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def test_isolation_reports_values_exceptions_and_deaths():
    assert isolation.run_isolated(pow, 2, 10) == ("ok", 1024)
    assert isolation.run_isolated(_raise) == ("raised", "ValueError: bad thing")
    assert isolation.run_isolated(_die) == ("died", -signal.SIGKILL)
    assert isolation.run_isolated(torch.get_num_threads, threads=1) == ("ok", 1)


def test_a_case_too_big_for_memory_is_skipped_with_its_estimate(monkeypatch):
    case = Case(arch="transformer", preset="tiny", batch=1, seq_len=64, gen_len=4, window=None, bitnet="none",
                dtype="float32", backend="torch", compile=False)
    monkeypatch.setattr(runner, "device_memory_bytes", lambda device: 1000.0)
    row, samples = runner.measure_case(case, "cpu", 2, 1, {})
    assert row["status"] == "skipped" and "exceed" in row["error"] and samples == []
    assert row["estimated_bytes"] == row["weight_bytes"] + row["kv_cache_bytes_formula"] > 1000


def test_memory_cap_is_cuda_only_and_bounds_the_fit_check(monkeypatch):
    case = Case(arch="transformer", preset="tiny", batch=1, seq_len=32, gen_len=2, window=None, bitnet="none",
                dtype="float32", backend="torch", compile=False)
    row, _ = runner.measure_case(case, "cpu", 1, 1, {}, memory_cap_bytes=1000.0)
    assert row["status"] == "ok" and row["memory_cap_bytes"] is None  # not enforced on CPU: not recorded
    assert "SDPA q 4x32 kv 2x32 d16 float32 causal gqa: " in row["attention_kernels"]  # what the case called
    monkeypatch.setattr(runner, "cap_memory", lambda device, cap: cap)  # as on CUDA
    row, samples = runner.measure_case(case, "cpu", 1, 1, {}, memory_cap_bytes=1000.0)
    assert row["status"] == "skipped" and row["memory_cap_bytes"] == 1000.0 and samples == []
    assert "of this case's memory cap (1e-06 GB)" in row["error"]


def _allocate_past_a_cap(cap_bytes: float) -> tuple:
    applied = trackers.cap_memory("cuda", cap_bytes)
    small = torch.empty(int(cap_bytes) // 4, dtype=torch.uint8, device="cuda")
    try:
        torch.empty(int(cap_bytes), dtype=torch.uint8, device="cuda")
    except torch.cuda.OutOfMemoryError:
        return applied, small.numel(), "oom"
    return applied, small.numel(), "allocated"


@pytest.mark.gpu_smoke
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_cap_makes_a_real_out_of_memory_error_on_cuda():
    """In a process of its own (the cap holds for the whole process): under a 1 GB cap a quarter
    of it allocates and the whole of it more does not, however much the card has free."""
    answer = isolation.run_isolated(_allocate_past_a_cap, 1e9)
    assert answer == ("ok", (1e9, 250_000_000, "oom")), answer


def test_time_budget_cuts_repeats_but_keeps_one():
    case = Case(arch="transformer", preset="tiny", batch=1, seq_len=32, gen_len=4, window=None, bitnet="none",
                dtype="float32", backend="torch", compile=False)
    row, samples = runner.measure_case(case, "cpu", 4, 1, {}, budget_s=1e-9)
    assert row["status"] == "ok" and row["repeats"] == 1
    assert sorted(s["metric"] for s in samples) == ["decode_ms_per_step", "prefill_ms"]


def test_estimate_matches_the_built_model():
    case = Case(arch="yoco-swa", preset="tiny", batch=2, seq_len=100, gen_len=8, window=32, bitnet="1.58bit",
                dtype="float32", backend="torch", compile=False)
    est = runner.estimate(case)
    model = runner.build_model(case, "cpu")  # packed
    assert est["params"] == model.num_parameters()
    assert est["kv_cache_bytes_formula"] == model.allocate_cache(2, 108).nbytes()
    assert est["weight_bytes"] == pytest.approx(model.weight_bytes(), rel=0.02)


def test_hf_llama_case_runs_beside_its_twin():
    """The outside peer (HF transformers' Llama) measured by the same runner, in its own process."""
    from baselines import hf_llama

    if not hf_llama.available():
        pytest.skip("HF transformers is not installed")
    case = Case(arch="hf-llama", preset="tiny", batch=1, seq_len=32, gen_len=3, window=None, bitnet="none",
                dtype="float32", backend="torch", compile=False)
    row, samples = runner.run_case(case, "cpu", 1, 1, {})
    assert row["status"] == "ok", row["error"]
    twin = tiny("transformer")
    assert row["kv_cache_bytes"] == row["kv_cache_bytes_formula"] == twin.kv_cache_bytes(1, 35)
    assert row["params"] == twin.num_parameters()
    assert row["prefill_flops"] == roofline.prefill_flops(twin.config, "transformer", 1, 32)
    assert len(samples) == 2


@pytest.mark.slow
def test_compiled_case_runs_and_matches_eager_cache(tmp_path):
    """One compiled case: the decode step as one graph (torch.compile on CPU costs 15 s or more)."""
    case = Case(arch="yoco-gret", preset="tiny", batch=1, seq_len=32, gen_len=3, window=None, bitnet="none",
                dtype="float32", backend="torch", compile=True)
    row, samples = runner.run_case(case, "cpu", 1, 1, {})
    assert row["status"] == "ok", row["error"]
    assert row["kv_cache_bytes"] == row["kv_cache_bytes_formula"] and len(samples) == 2


def test_preload_starts_no_threads():
    """Cases fork from the server after bench.measure.preload: beyond what importing torch starts, it
    must start no threads (no OpenMP pool: its meta builds compute nothing)."""
    code = ("import os, torch; n = len(os.listdir('/proc/self/task')); import bench.measure.preload; "
            "print(n, len(os.listdir('/proc/self/task')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    before, after = map(int, out.stdout.split())
    assert after == before
