"""The measuring parts: analytic FLOPs against torch's own counter and by dtype, MFU, the
data-sheet table, the CPU peak-memory tracker, calibration, a case end to end (fixed-context
decode samples, one estimator), and process isolation. Nothing timed is asserted."""

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
from bench.measure import aggregate, isolation, peaks, phases, roofline, runner, trackers
from bench.measure.timing import quantiles, time_ms
from bench.measure.trackers import PeakMemory, nvml_used_bytes
from bench.show import columns
from bench.suite import Case
from yoco.ops.retention import GROUP_TOKENS

REPO = Path(__file__).resolve().parent.parent


def tiny(arch, **overrides):
    if arch == "transformer":
        return baselines.from_preset("tiny", **overrides).eval()
    return yoco.from_preset("tiny", self_decoder=arch.removeprefix("yoco-"), **overrides).eval()


@pytest.mark.parametrize("arch", ["transformer", "yoco-swa", "yoco-gret"])
@pytest.mark.parametrize("seq_len", [64, 200])
def test_dense_prefill_flops_match_torch_flop_counter(arch, seq_len):
    """The matmuls torch counts (mm) are exactly the formula's linear and LM head parts; gRet's
    chunk products (bmm) are what the chunk form executes: the useful part plus the padding of
    the last chunk and the upper triangles. Attention is what SDPA computes and the counter does
    not see on CPU."""
    torch.manual_seed(0)
    model = tiny(arch, **({"window": 48} if arch == "yoco-swa" else {}))
    batch = 2
    cache = model.allocate_cache(batch, seq_len)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        model.prefill(tokens, cache)
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    parts = roofline.prefill_flops_parts(model.config, arch, batch, seq_len)
    assert counted.pop("aten.mm", 0) == parts["linear"] + parts["lm_head"]
    c = model.config
    if arch == "yoco-gret":  # executed: every chunk whole (C x C), padding included, groups' [n, n] products
        C, d, dh = min(c.chunk_size, seq_len), c.d_model, c.d_model // c.n_self_heads
        group = max(1, GROUP_TOKENS // C) * C
        executed = 0
        for start in range(0, seq_len, group):
            n = -(-(min(seq_len, start + group) - start) // C)
            executed += 4 * n * C * C * d + 4 * n * C * d * dh + 2 * n * n * d * dh
        executed *= batch * c.n_self_layers
        assert counted.pop("aten.bmm", 0) == executed > parts["retention"] > 0
    assert parts["attention"] > 0 or arch == "yoco-gret"
    assert roofline.prefill_flops(model.config, arch, batch, seq_len) == sum(parts.values())


def test_gret_flops_are_useful_flops_no_padding_no_upper_triangle():
    c = tiny("yoco-gret").config
    C, d, dh = c.chunk_size, c.d_model, c.d_model // c.n_self_heads

    def retention(n):
        return roofline.prefill_flops_parts(c, "yoco-gret", 1, n)["retention"]

    pairs = lambda n: n * (n + 1) // 2  # noqa: E731
    assert retention(C) == c.n_self_layers * (4 * d * pairs(C) + 4 * C * d * dh)
    # one token past a chunk adds its own pair and state work, not a padded chunk of C
    assert retention(C + 1) - retention(C) == c.n_self_layers * (4 * d * 1 + 4 * d * dh)


def test_flops_by_dtype_put_each_part_where_it_runs():
    c = tiny("yoco-gret").config
    parts = roofline.prefill_flops_parts(c, "yoco-gret", 1, 100)
    bf16 = roofline.prefill_flops_by_dtype(parts, roofline.part_dtypes("bfloat16", "none", "cpu"))
    assert bf16 == {"bfloat16": parts["linear"] + parts["lm_head"] + parts["attention"],
                    "float32": parts["retention"]}  # gRet's chunk form multiplies in float32 off CUDA
    cuda = roofline.prefill_flops_by_dtype(parts, roofline.part_dtypes("bfloat16", "none", "cuda"))
    assert cuda == {"bfloat16": sum(parts.values())}  # on CUDA in the model's dtype (its form and fla's)
    packed = roofline.part_dtypes("bfloat16", "1.58bit", "cuda")
    assert (packed["linear"], packed["lm_head"]) == ("int8", "bfloat16")  # the W2A8 kernel; the LM head stays
    assert roofline.part_dtypes("float32", "1.58bit", "cpu")["linear"] == "float32"  # the exact float32 reference
    # MFU: the ideal time is each dtype's FLOPs at its own rate
    rates = {"bfloat16": 1e15, "float32": 1e14}
    ideal = (bf16["bfloat16"] / 1e15 + bf16["float32"] / 1e14) * 1e3
    assert roofline.mfu(bf16, 2 * ideal, rates) == pytest.approx(0.5)
    assert math.isnan(roofline.mfu(bf16, 1.0, {"bfloat16": 1e15}))  # a dtype with no rate: no MFU
    assert math.isnan(roofline.mfu({"bfloat16": math.nan}, 1.0, rates))  # an arch with no formula


def test_datasheet_peaks_known_gpus_and_nothing_else():
    assert peaks.lookup("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert peaks.lookup("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert peaks.lookup("NVIDIA H200").bandwidth_bytes_s == 4.8e12
    assert peaks.lookup("NVIDIA A100-SXM4-40GB").flops_s["bfloat16"] == 312e12
    assert peaks.lookup("NVIDIA A100 80GB PCIe").bandwidth_bytes_s == 1.935e12
    assert peaks.lookup("AMD EPYC 7763") is None and peaks.lookup(None) is None
    sheet = peaks.as_dict("NVIDIA GeForce GTX 1080")
    assert sheet["name"] is None and math.isnan(sheet["bandwidth_bytes_s"]) and sheet["flops_s"] == {}


def test_ceiling_drift_is_relative():
    before = dict(copy_bandwidth_bytes_s=100.0, read_bandwidth_bytes_s=200.0, matmul_flops_s_by_dtype={"float32": 10.0})
    after = dict(copy_bandwidth_bytes_s=90.0, read_bandwidth_bytes_s=200.0, matmul_flops_s_by_dtype={"float32": 11.0})
    drift = roofline.ceiling_drift(before, after)
    assert drift == pytest.approx({"copy_bandwidth_bytes_s": -0.1, "read_bandwidth_bytes_s": 0.0,
                                   "matmul_flops_s[float32]": 0.1})


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
    bandwidth = roofline.measure_copy_bandwidth("cpu", nbytes=16 << 20, rep_ms=10)
    read = roofline.measure_read_bandwidth("cpu", nbytes=16 << 20, rep_ms=10)
    flops = roofline.measure_matmul_flops("cpu", "float32", n=256, rep_ms=10)
    assert 1e8 < bandwidth < 1e13 and 1e8 < read < 1e13 and 1e8 < flops < 1e14


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
                dtype="float32", backend="torch", decode_mode="eager")
    monkeypatch.setattr(runner, "device_memory_bytes", lambda device: 1000.0)
    row, samples = runner.measure_case(case, "cpu", 2, 1, {})
    assert row["status"] == "skipped" and "exceed" in row["error"] and samples == []
    assert row["estimated_bytes"] == row["weight_bytes"] + row["kv_cache_bytes_formula"] > 1000


def test_memory_cap_is_cuda_only_and_bounds_the_fit_check(monkeypatch):
    case = Case(arch="transformer", preset="tiny", batch=1, seq_len=32, gen_len=2, window=None, bitnet="none",
                dtype="float32", backend="torch", decode_mode="eager")
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
                dtype="float32", backend="torch", decode_mode="eager")
    row, samples = runner.measure_case(case, "cpu", 4, 1, {}, budget_s=1e-9)
    assert row["status"] == "ok" and row["repeats"] == 1
    assert sorted(s["metric"] for s in samples) == ["decode_ms_per_step", "prefill_ms"]


def test_estimate_matches_the_built_model():
    case = Case(arch="yoco-swa", preset="tiny", batch=2, seq_len=100, gen_len=8, window=32, bitnet="1.58bit",
                dtype="float32", backend="torch", decode_mode="eager")
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
                dtype="float32", backend="torch", decode_mode="eager")
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
                dtype="float32", backend="torch", decode_mode="compile")
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


def test_a_case_times_the_same_work_at_a_fixed_context_with_one_estimator():
    """In one process: the input checks run once (off the clock), every decode sample runs whole
    passes from the prompt's end (the cache, sized seq_len + gen_len, never overflows), and
    decode_tok_s is batch over decode_ms_per_step."""
    case = Case(arch="transformer", preset="tiny", batch=2, seq_len=24, gen_len=3, window=None, bitnet="none",
                dtype="float32", backend="torch", decode_mode="eager")
    checks = []

    def build(case, device):
        model = runner.build_model(case, device)
        check = model._check_tokens
        model._check_tokens = lambda *a, **k: (checks.append(1), check(*a, **k))
        return model

    row, samples = dict(runner.estimate(case)), []
    phases.measure(case, "cpu", 3, 1, {"read_bandwidth_bytes_s": 1e10, "matmul_flops_s_by_dtype": {"float32": 1e10}},
                   row, samples, None, build)
    assert len(checks) == 1
    assert row["decode_tok_s"] == pytest.approx(2 / (row["decode_ms_per_step"] / 1e3))
    assert [s["metric"] for s in samples] == ["prefill_ms"] * 3 + ["decode_ms_per_step"] * 3
    assert row["decode_passes"] >= 1 and row["repeats"] == 3
    calibration = math.sqrt(row["calibration_before_ms"] * row["calibration_after_ms"])
    assert all(s["calibration_ms"] == calibration for s in samples)
    assert row["decode_bytes_per_step"] == pytest.approx(
        np.mean([runner.build_model(case, "meta").decode_bytes_per_step(2, n) for n in (24, 25, 26)]))
    assert row["prefill_flops_dtypes"] == "float32 100.0%" and row["prefill_mfu"] > 0 and row["decode_mbu"] > 0
    assert math.isnan(row["prefill_mfu_peak"]) and math.isnan(row["kv_cache_bytes_allocated"])  # CPU: no data sheet
    assert (row["compile_graphs"], row["cuda_graph_replayed"]) == (0, False)
    # every column the case wrote is documented (bench.show.columns), the CUDA-only ones too
    written = set(row) - {"prefill_flops_parts"}
    written |= set(phases._state_columns(dict.fromkeys(("sm_clock_mhz", "mem_clock_mhz", "temp_c", "power_w",
                                                        "throttle_bits"), 0), "after"))
    written |= {"gpu_throttle_reasons", "gpu_throttled", "processes"} | {f"{m}_ci_{e}" for m in aggregate.CI_METRICS
                                                                         for e in ("low", "high")}
    assert written <= set(columns.RESULT_NAMES), written - set(columns.RESULT_NAMES)
    assert set(samples[0]) | {"process"} == set(columns.SAMPLE_NAMES)


def test_a_cache_whose_figures_disagree_is_an_error(monkeypatch):
    case = Case(arch="transformer", preset="tiny", batch=1, seq_len=16, gen_len=2, window=None, bitnet="none",
                dtype="float32", backend="torch", decode_mode="eager")
    monkeypatch.setattr(baselines.Transformer, "kv_cache_bytes", lambda self, b, n: 123)
    row, _ = runner.measure_case(case, "cpu", 1, 1, {})
    assert row["status"] == "error" and "cache sizes disagree" in row["error"]
