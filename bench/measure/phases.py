"""The phases of one case, in its own process (bench.measure.runner forks it):

1. build the model; allocate the cache (on CUDA, the allocator's growth around it is measured
   beside the buffers' nbytes() and the formula: all three must agree);
2. prefill warm-up: untimed calls until at least 25 ms and `warmup` - 1 calls (at least one);
3. prefill memory pass: one prefill with its own peak reset (the second warm-up call);
4. decode: the step in its decode mode (bench.measure.decoding; graph mode captures here),
   warm-up by time (at least 25 ms and 2 steps), then a memory pass of gen_len steps from the
   prompt's end; one peak window around all of it, so a captured or compiled step's memory is
   seen while it is captured (a replay allocates nothing) and compares with eager's;
5. calibration before (bench.measure.roofline.Calibration);
6. `repeats` timed prefills, each from position 0 (the rewind and the input checks off the clock);
7. `repeats` timed decode samples at a FIXED context: each at least 50 ms of passes, a pass being
   gen_len greedy steps from the prompt's end (the rewind between passes off the clock); a
   sample's value is its time over its steps;
8. calibration after; the GPU's state (NVML) before the build and after the timed phases, and
   its throttle reasons polled during them.
Timed loops run under torch.compiler's "fail_on_recompile" stance (bench.measure.decoding).
One estimator for decode: the median of the samples' ms per step; decode_tok_s is batch over it.
"""

from __future__ import annotations

import math

import torch

from bench.measure import attention, nvml, peaks, roofline
from bench.measure.decoding import Decoder, ReplayCounter, no_recompiles
from bench.measure.timing import WARMUP_MS, quantiles, time_ms, warm_up
from bench.measure.trackers import PeakMemory, allocated_growth, current_memory_bytes

MIN_SAMPLE_MS = 50.0  # every timed decode sample is at least this many milliseconds of steps
ALLOCATOR_ROUNDING = 512  # the CUDA caching allocator rounds every tensor up to this many bytes


def measure(case, device: str, repeats: int, warmup: int, ceilings: dict, row: dict, samples: list,
            budget_s: float | None, build_model):
    """Fill `row` and `samples` for one case (see the module docstring)."""
    torch.manual_seed(0)
    gpu = nvml.Device(torch.cuda.current_device()) if device == "cuda" else None
    try:
        with torch.inference_mode():
            _measure(case, device, repeats, warmup, ceilings, row, samples, budget_s, build_model, gpu)
    finally:
        if gpu is not None:
            gpu.close()


def _measure(case, device, repeats, warmup, ceilings, row, samples, budget_s, build_model, gpu):
    if gpu is not None:
        row.update(_state_columns(gpu.state(), "before"))
    row["mem_before_model_bytes"] = current_memory_bytes(device)
    model = build_model(case, device)
    row.update(params=model.num_parameters(), weight_bytes=model.weight_bytes(),
               backend_used=model.backend_used() if hasattr(model, "backend_used") else "unknown")
    total = case.seq_len + case.gen_len
    cache = _cache_with_sizes(model, case.batch, total, device, row)
    tokens = torch.randint(0, model.config.vocab_size, (case.batch, case.seq_len), device=device)
    model.check_prefill(tokens, cache)  # once, off the clock (it reads the ids back to the host)
    logits = {}

    def prefill():  # the timed work: the same for every model
        logits["last"] = model.prefill_step(tokens, cache)

    def rewound_prefill():
        cache.set_length(0)
        prefill()

    # Which attention kernels the calls get, noted until the timed phase. A compiled step must
    # find the functions it was compiled with: with compile, only the memory pass's prefill is noted.
    kernels = attention.Recorder()
    compiled = case.decode_mode == "compile"
    if not compiled:
        kernels.start()
    warm_up(rewound_prefill, device, WARMUP_MS, max(1, warmup - 1))

    # Memory pass: prefill, then decode, each with its own peak reset; no calibration buffers alive.
    mem_prefill, mem_decode = PeakMemory(device, gpu), PeakMemory(device, gpu)
    cache.set_length(0)
    mem_prefill.start()
    if compiled:
        kernels.start()
    first_ms = time_ms(prefill, device)
    if compiled:
        kernels.stop()
    mem_prefill.stop()
    if budget_s:  # a suite's time budget per phase: fewer repeats for very long prompts
        repeats = max(1, min(repeats, int(budget_s * 1e3 // max(first_ms, 1e-6))))

    seq_len, end = case.seq_len, total
    mem_decode.start()
    decoder = Decoder(model, cache, case.decode_mode, device)
    decoder.prepare(logits["last"].argmax(-1))  # graph mode: the capture
    cache.set_length(seq_len)

    def warm_step():  # within the cache: back to the prompt's end when a pass is full
        if cache.length >= end:
            cache.set_length(seq_len)
        decoder.steps(1)

    step_ms = warm_up(warm_step, device, WARMUP_MS, max(2, warmup))
    cache.set_length(seq_len)
    decoder.steps(case.gen_len)
    mem_decode.stop()
    row["attention_kernels"] = kernels.stop().summary()
    for phase, mem in (("prefill", mem_prefill), ("decode", mem_decode)):
        row[f"peak_mem_{phase}_bytes"] = mem.allocated
        row[f"peak_mem_{phase}_reserved_bytes"] = mem.reserved
        row[f"peak_mem_{phase}_nvml_bytes"] = mem.nvml
    row["memory_source"] = mem_prefill.source

    calibration_size = (row["prefill_flops"], row["weight_bytes"] + row["kv_cache_bytes"])
    row["calibration_before_ms"] = roofline.Calibration(device, *calibration_size).measure_ms()

    throttle = nvml.Poller(gpu.throttle_bits, nvml.POLL_STATE_S, lambda a, b: a | b) if gpu and gpu.ok else None
    if throttle is not None:
        throttle.start()
    prefill_ms, step_samples = [], []
    passes = max(1, math.ceil(MIN_SAMPLE_MS / max(case.gen_len * step_ms, 1e-6)))
    with no_recompiles(), ReplayCounter() as replays:
        for _ in range(repeats):
            cache.set_length(0)
            prefill_ms.append(time_ms(prefill, device))
        replays.count = 0  # prefill's own graphs (none today) are not decode's
        for _ in range(repeats):
            sample_ms = 0.0
            for _ in range(passes):
                cache.set_length(seq_len)
                sample_ms += time_ms(lambda: decoder.steps(case.gen_len), device)
            step_samples.append(sample_ms / (passes * case.gen_len))
    throttle_bits = throttle.stop() if throttle is not None else 0

    row["calibration_after_ms"] = roofline.Calibration(device, *calibration_size).measure_ms()
    if gpu is not None:
        after = gpu.state()
        row.update(_state_columns(after, "after"))
        throttle_bits |= after["throttle_bits"] | row.pop("_throttle_bits_before", 0)
        row["gpu_throttle_reasons"] = nvml.reason_names(throttle_bits)
        row["gpu_throttled"] = bool(throttle_bits & nvml.SLOWDOWNS)

    timed_steps = repeats * passes * case.gen_len
    graphs, recompiles = decoder.compile_counts()
    row.update(decode_passes=passes, compile_graphs=graphs, compile_recompiles=recompiles,
               cuda_graph_replayed=replays.count >= timed_steps > 0)

    calibration = math.sqrt(row["calibration_before_ms"] * row["calibration_after_ms"])
    for metric, values in (("prefill_ms", prefill_ms), ("decode_ms_per_step", step_samples)):
        for r, value in enumerate(values):
            samples.append(dict(case_id=case.case_id, metric=metric, repeat=r, value=value, calibration_ms=calibration,
                                normalized=value / calibration if calibration > 0 else math.nan))
    row["repeats"] = repeats
    row.update(timing_columns(prefill_ms, step_samples, case.batch, case.seq_len))
    contexts = range(seq_len, seq_len + case.gen_len)  # what every pass's steps start from
    row["decode_bytes_per_step"] = roofline.mean_decode_bytes(model, case.batch, contexts)
    dtypes = roofline.part_dtypes(case.dtype, case.bitnet, device)
    flops = roofline.prefill_flops_by_dtype(row["prefill_flops_parts"], dtypes)
    row["prefill_flops_dtypes"] = flops_dtypes_text(flops)
    row.update(efficiency_columns(row, flops, ceilings))


def _cache_with_sizes(model, batch: int, length: int, device: str, row: dict):
    """Allocate the cache; record its size three ways (on CUDA: measured, nbytes(), formula),
    which must agree (the measured figure within the allocator's rounding)."""
    cache, grown = allocated_growth(lambda: model.allocate_cache(batch, length), device)
    nbytes, formula = cache.nbytes(), model.kv_cache_bytes(batch, length)
    row.update(kv_cache_bytes=nbytes, kv_cache_bytes_formula=formula, kv_cache_bytes_allocated=grown)
    # The cache is affine in its length: keep both terms so plots can extend the formula.
    per_token = model.kv_cache_bytes(batch, length + 1) - formula
    row.update(kv_cache_bytes_per_token=per_token, kv_cache_fixed_bytes=formula - per_token * length)
    if formula != nbytes:
        raise ValueError(f"cache sizes disagree: allocate_cache holds {nbytes} bytes, kv_cache_bytes says {formula}")
    if not math.isnan(grown):
        slack = ALLOCATOR_ROUNDING * _cache_tensor_count(cache)
        if not nbytes <= grown <= nbytes + slack:
            raise ValueError(f"cache sizes disagree: the CUDA allocator grew by {grown:.0f} bytes around "
                             f"allocate_cache, its tensors hold {nbytes} (rounding allows up to {slack} more)")
    return cache


def _cache_tensor_count(cache) -> int:
    """Tensors a cache allocates: its buffers (the position counter included), and an HF
    StaticCache's keys, values and per-layer position counters."""
    count = sum(1 for _ in cache.buffers())
    static = getattr(cache, "static", None)
    if static is not None:
        count += 2 * len(cache.layer_tensors()) + len(getattr(static, "layers", ()))
    return count


def _state_columns(state: dict, when: str) -> dict:
    out = {f"gpu_{key}_{when}": state[key] for key in ("sm_clock_mhz", "mem_clock_mhz", "temp_c", "power_w")}
    if when == "before":
        out["_throttle_bits_before"] = state["throttle_bits"]
    return out


def timing_columns(prefill_ms: list[float], step_ms: list[float], batch: int, seq_len: int) -> dict:
    """Medians and quartiles of the samples, and the rates derived from the same medians."""
    out = {}
    q = quantiles(prefill_ms)
    out.update(prefill_ms=q["p50"], prefill_ms_p25=q["p25"], prefill_ms_p75=q["p75"])
    out["prefill_tok_s"] = batch * seq_len / (q["p50"] / 1e3) if q["p50"] > 0 else math.nan
    q = quantiles(step_ms)
    out.update(decode_ms_per_step=q["p50"], decode_ms_per_step_p25=q["p25"], decode_ms_per_step_p75=q["p75"])
    out["decode_tok_s"] = batch / (q["p50"] / 1e3) if q["p50"] > 0 else math.nan
    return out


def flops_dtypes_text(flops_by_dtype: dict[str, float]) -> str:
    """e.g. 'bfloat16 97.1%; float32 2.9%': how a prefill's FLOPs split by the dtype they run in."""
    total = sum(flops_by_dtype.values())
    if not total > 0:
        return ""
    return "; ".join(f"{d} {f / total:.1%}" for d, f in sorted(flops_by_dtype.items(), key=lambda kv: -kv[1]))


def efficiency_columns(row: dict, flops: dict[str, float], ceilings: dict) -> dict:
    """MBU and MFU against this run's measured ceilings and against the data sheet's."""
    sheet = peaks.as_dict(ceilings.get("device_name"))
    measured_rates = ceilings.get("matmul_flops_s_by_dtype", {})
    return dict(
        decode_mbu=roofline.efficiency(row["decode_bytes_per_step"], row["decode_ms_per_step"],
                                       ceilings.get("read_bandwidth_bytes_s", math.nan)),
        decode_mbu_peak=roofline.efficiency(row["decode_bytes_per_step"], row["decode_ms_per_step"],
                                            sheet["bandwidth_bytes_s"]),
        prefill_mfu=roofline.mfu(flops, row["prefill_ms"], measured_rates),
        prefill_mfu_peak=roofline.mfu(flops, row["prefill_ms"], sheet["flops_s"]),
    )
