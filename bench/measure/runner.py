"""How a case runs: built, timed and measured in a process of its own.

Each case is a fork of a server process that imported torch and the models but computed nothing
(bench.measure.isolation), so a case pays no import cost and one that runs out of memory, crashes or is
killed leaves the next one untouched. The parent only writes rows: a child that dies without
answering gets a row saying how it died.

The phases of a case, in order: build (skipped, with the estimate, if weights + cache would not
fit), warm-up prefills (compilation happens here, never timed), a memory pass (one prefill, then
gen_len decode steps, each phase with its own peak reset; it is the last warm-up of both), then
the timed phase: `repeats` prefills, and from the sequence the last of them left in the cache,
gen_len decode steps split into `repeats` consecutive blocks. Before every timed repeat the
case's calibration workload (bench.measure.roofline.Calibration) is timed and stored with the sample.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
import traceback

import numpy as np
import torch

from bench import archs
from bench.measure import attention, roofline
from bench.measure.isolation import one_line, run_isolated
from bench.measure.roofline import DTYPES
from bench.measure.trackers import (
    PeakMemory,
    cap_memory,
    current_memory_bytes,
    device_memory_bytes,
    quantiles,
    time_ms,
)
from bench.suite import Case
from yoco.config import PRESETS

OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


# ---- models ----

def build_model(case: Case, device: str):
    """The case's model (BitNet weights packed for inference), or raises ValueError."""
    overrides = dict(bitnet=case.bitnet, backend=case.backend)
    need = case.seq_len + case.gen_len
    if need > PRESETS[case.preset]["max_seq_len"]:
        overrides["max_seq_len"] = need
    model = archs.get(case.arch).build(case.preset, device=device, dtype=DTYPES[case.dtype], window=case.window,
                                       **overrides)
    if case.bitnet != "none" and device != "meta":
        model.pack_bitnet()
    return slow_decode_for_test(model.eval(), case.case_id, device)


# Test-only, for measuring the gate against a real slowdown: "CASE_ID:FACTOR" makes that case's
# decode step FACTOR times as slow by busy work inside the step, proportional to the step's own
# time (so it carries the step's noise). Read at model build from the environment, or from
# TEST_SLOW_DECODE, which scripts/gate_campaign.py sets in a scratch commit (a real code change).
# The work is measured in this thread's CPU time when torch computes on this thread alone: on a
# busy machine, wall time would also count the waits and add more than FACTOR's share of work.
SLOW_DECODE_ENV = "BENCH_TEST_SLOW_DECODE"
TEST_SLOW_DECODE = ""


def slow_decode_for_test(model, case_id: str, device: str):
    spec = os.environ.get(SLOW_DECODE_ENV) or TEST_SLOW_DECODE
    if not spec:
        return model
    target, _, factor_text = spec.rpartition(":")
    try:
        factor = float(factor_text)
    except ValueError:
        factor = math.nan
    if not target or not factor >= 1:
        raise ValueError(f"{SLOW_DECODE_ENV}={spec!r}: expected CASE_ID:FACTOR with FACTOR >= 1, e.g. "
                         f"yoco-swa-tiny-b1-s512-g36-w64-none-float32-torch-eager:1.25")
    if target != case_id:
        return model
    step = model.decode_step
    clock = time.thread_time if device == "cpu" and torch.get_num_threads() == 1 else time.perf_counter

    def slowed_step(*args, **kwargs):
        t0 = clock()
        out = step(*args, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        deadline = t0 + factor * (clock() - t0)
        while clock() < deadline:
            pass
        return out

    model.decode_step = slowed_step
    return model


def estimate(case: Case) -> dict:
    """Sizes from a model built on the meta device: no memory, no time. Built with the torch
    backend (sizes do not depend on it), so a dry run lists cases whose backend is absent here."""
    # The cache key keeps only what the model depends on (max_seq_len grows past the preset's).
    # An optional peer is sized as its twin (hf-llama as our transformer): the same shapes, and
    # no transformers needed.
    length = max(case.seq_len + case.gen_len, PRESETS[case.preset]["max_seq_len"])
    arch = archs.get(case.arch).sized_as or case.arch
    key = dataclasses.replace(case, arch=arch, backend="torch", batch=1, seq_len=1, gen_len=length - 1)
    model, params, weight_bytes = _meta_model(key)
    cache = model.kv_cache_bytes(case.batch, case.seq_len + case.gen_len)
    return dict(params=params, weight_bytes=weight_bytes, kv_cache_bytes_formula=cache,
                estimated_bytes=weight_bytes + cache,
                prefill_flops=roofline.prefill_flops(model.config, arch, case.batch, case.seq_len))


@functools.lru_cache(maxsize=32)
def _meta_model(case: Case):
    """(model, params, weight bytes) on meta; cached: a dry run of big suites builds each twin once."""
    model = build_model(case, "meta")
    weight_bytes = model.weight_bytes()
    if case.bitnet != "none":
        weight_bytes = _packed_weight_bytes(model, case.bitnet)
    return model, model.num_parameters(), weight_bytes


def _packed_weight_bytes(model, bitnet: str) -> int:
    """Packed BitNet size on meta: BitLinear weights at 2 (ternary) or 1 bit each, plus a float32
    scale per matrix; everything else as stored."""
    try:
        model.pack_bitnet()  # if packing works on meta, the model knows best
        return model.weight_bytes()
    except Exception:
        pass
    bits = 2 if bitnet == "1.58bit" else 1
    total = model.weight_bytes()
    for module in model.modules():
        if type(module).__name__ == "BitLinear" and getattr(module, "weight", None) is not None:
            w = module.weight
            total += math.ceil(w.numel() * bits / 8) + 4 - w.numel() * w.element_size()
    return total


# ---- one case, inside its own process ----

def measure_case(case: Case, device: str, repeats: int, warmup: int, ceilings: dict,
                 inject: str | None = None, budget_s: float | None = None,
                 arch_modules: tuple[str, ...] = (), memory_cap_bytes: float | None = None) -> tuple[dict, list[dict]]:
    """One results row (whatever happens) and its raw samples. `arch_modules`: users' modules
    that register archs (bench.archs), imported here since the case runs in a fresh fork.
    `memory_cap_bytes` (CUDA): the most this process's allocator may hold (trackers.cap_memory)."""
    row: dict = dict(status="error", error="")
    samples: list[dict] = []
    try:
        row["memory_cap_bytes"] = cap = cap_memory(device, memory_cap_bytes)
        archs.load_modules(arch_modules)
        row.update(estimate(case))
        available = device_memory_bytes(device)
        where = f"available on {device}"
        if cap is not None and cap < available:
            available, where = cap, f"of this case's memory cap ({cap / 1e9:g} GB)"
        if row["estimated_bytes"] > available:
            row.update(status="skipped", error=f"estimated weights + cache {row['estimated_bytes'] / 2**30:.2f} GiB "
                                               f"exceed the {available / 2**30:.2f} GiB {where}")
            return row, samples
        if inject == "oom":
            raise OOM_ERRORS[0]("injected out-of-memory error (YOCO_BENCH_INJECT)")
        if inject == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if inject == "hang":
            time.sleep(600)
        _measure(case, device, repeats, warmup, ceilings, row, samples, budget_s)
        row["status"] = "ok"
    except OOM_ERRORS as e:
        row.update(status="oom", error=one_line(e))
    except RuntimeError as e:
        text = str(e)
        oom = "out of memory" in text.lower() or "can't allocate memory" in text.lower()
        row.update(status="oom" if oom else "error", error=one_line(e))
    except Exception as e:  # recorded in the row; the sweep goes on
        row.update(status="error", error=one_line(e))
        traceback.print_exc()  # the full story on the run's stderr
    return row, samples


def _measure(case: Case, device: str, repeats: int, warmup: int, ceilings: dict, row: dict, samples: list,
             budget_s: float | None):
    torch.manual_seed(0)
    with torch.inference_mode():
        row["mem_before_model_bytes"] = current_memory_bytes(device)
        model = build_model(case, device)
        row.update(params=model.num_parameters(), weight_bytes=model.weight_bytes(),
                   backend_used=model.backend_used() if hasattr(model, "backend_used") else "unknown")
        cfg = model.config
        total = case.seq_len + case.gen_len
        cache = model.allocate_cache(case.batch, total)
        row["kv_cache_bytes"] = cache.nbytes()
        row["kv_cache_bytes_formula"] = model.kv_cache_bytes(case.batch, total)
        # The cache is affine in its length: keep both terms so plots can extend the formula.
        per_token = model.kv_cache_bytes(case.batch, total + 1) - row["kv_cache_bytes_formula"]
        row["kv_cache_bytes_per_token"] = per_token
        row["kv_cache_fixed_bytes"] = row["kv_cache_bytes_formula"] - per_token * total
        tokens = torch.randint(0, cfg.vocab_size, (case.batch, case.seq_len), device=device)

        if case.compile:  # the one-token step as one graph (CUDA graphs on CUDA); prefill stays eager
            model.compile_decode()
            warmup = max(warmup, 2 if device == "cuda" else 1)
        prefill, step = model.prefill, model.decode_step

        # Which attention kernels the calls get, noted until the timed phase (a graph capture's eager
        # warm-up steps show the decode's). A compiled step must find the functions it was compiled
        # with: with compile, only the memory pass's prefill is noted.
        kernels = attention.Recorder()
        if not case.compile:
            kernels.start()
        # Warm-up (and compilation): never timed. The memory pass below is the last warm-up.
        for _ in range(warmup if case.compile else max(warmup - 1, 0)):
            nxt = prefill(tokens, cache).argmax(-1)
            for _ in range(min(2, case.gen_len)):
                nxt = step(nxt, cache).argmax(-1)

        # Memory pass, with no calibration buffers alive.
        last = {}
        mem_prefill, mem_decode = PeakMemory(device), PeakMemory(device)
        mem_prefill.start()
        if case.compile:
            kernels.start()
        first_ms = time_ms(lambda: last.update(logits=prefill(tokens, cache)), device)
        if case.compile:
            kernels.stop()
        mem_prefill.stop()
        nxt = last["logits"].argmax(-1)
        if budget_s:  # a suite's time budget per phase: fewer repeats for very long prompts
            repeats = max(1, min(repeats, int(budget_s * 1e3 // max(first_ms, 1e-6))))
        mem_decode.start()
        for _ in range(case.gen_len):
            nxt = step(nxt, cache).argmax(-1)
        mem_decode.stop()
        row["attention_kernels"] = kernels.stop().summary()
        for phase, mem in (("prefill", mem_prefill), ("decode", mem_decode)):
            row[f"peak_mem_{phase}_bytes"] = mem.allocated
            row[f"peak_mem_{phase}_reserved_bytes"] = mem.reserved
            row[f"peak_mem_{phase}_nvml_bytes"] = mem.nvml
        row["memory_source"] = mem_prefill.source

        calibration = roofline.Calibration(device, row["prefill_flops"], row["weight_bytes"] + row["kv_cache_bytes"])

        def sample(metric, r, value, cal):
            samples.append(dict(case_id=case.case_id, metric=metric, repeat=r, value=value, calibration_ms=cal,
                                normalized=value / cal if cal > 0 else math.nan))

        prefill_ms = []
        for r in range(repeats):
            cal = calibration.measure_ms()
            ms = time_ms(lambda: last.update(logits=prefill(tokens, cache)), device)
            prefill_ms.append(ms)
            sample("prefill_ms", r, ms, cal)

        # Decode continues the sequence the last timed prefill left in the cache.
        nxt = last["logits"].argmax(-1)
        blocks = np.array_split(np.arange(case.gen_len), min(repeats, case.gen_len))
        step_ms, decode_total_ms = [], 0.0
        for r, block in enumerate(blocks):
            cal = calibration.measure_ms()
            state = {"nxt": nxt, "steps": len(block)}

            def run_block(state=state):
                for _ in range(state["steps"]):
                    state["nxt"] = step(state["nxt"], cache).argmax(-1)

            ms = time_ms(run_block, device)
            nxt = state["nxt"]
            decode_total_ms += ms
            step_ms.append(ms / len(block))
            sample("decode_ms_per_step", r, ms / len(block), cal)

    q = quantiles(prefill_ms)
    row.update(prefill_ms=q["p50"], prefill_ms_p25=q["p25"], prefill_ms_p75=q["p75"],
               prefill_tok_s=case.batch * case.seq_len / (q["p50"] / 1e3), repeats=repeats)
    q = quantiles(step_ms)
    row.update(decode_ms_per_step=q["p50"], decode_ms_per_step_p25=q["p25"], decode_ms_per_step_p75=q["p75"],
               decode_tok_s=case.batch * case.gen_len / (decode_total_ms / 1e3))
    row["decode_bytes_per_step"] = roofline.decode_bytes_per_step(model, row["weight_bytes"], case.batch,
                                                                  case.seq_len, case.gen_len)
    row["decode_mbu"] = roofline.efficiency(row["decode_bytes_per_step"], row["decode_ms_per_step"],
                                            ceilings.get("copy_bandwidth_bytes_s", math.nan))
    flops_s = ceilings.get("matmul_flops_s_by_dtype", {}).get(case.dtype, math.nan)
    row["prefill_mfu"] = roofline.efficiency(row["prefill_flops"], row["prefill_ms"], flops_s)


def run_case(case: Case, device: str, repeats: int, warmup: int, ceilings: dict, inject: str | None = None,
             threads: int | None = None, budget_s: float | None = None,
             arch_modules: tuple[str, ...] = (), memory_cap_bytes: float | None = None) -> tuple[dict, list[dict]]:
    """measure_case in its own process; a process that dies gets a row saying how."""
    answer = run_isolated(measure_case, case, device, repeats, warmup, ceilings, inject, budget_s, arch_modules,
                          memory_cap_bytes, threads=threads)
    if answer[0] == "ok":
        return answer[1]
    if answer[0] == "raised":
        return dict(status="error", error=answer[1]), []
    code = answer[1]
    if code == -signal.SIGKILL:
        return dict(status="oom", error="case process killed by SIGKILL (on Linux usually the out-of-memory "
                                        "killer)"), []
    return dict(status="error", error=f"case process exited with code {code} without a result"), []


def machine_info(device: str, dtypes: list[str]) -> dict:
    """Ceilings and device facts, measured in a case-like process (the parent never touches CUDA)."""
    if device == "cuda" and not torch.cuda.is_available():
        return dict(cuda_missing=True)
    info = dict(roofline.measure_ceilings(device, dtypes))
    info["threads"] = torch.get_num_threads()
    info["cpu_count"] = os.cpu_count()
    info["device_name"] = device_name(device)
    if device == "cuda":
        info["cuda_version"] = torch.version.cuda
        info["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["driver"] = _nvml_driver()
    else:
        info["device_memory_bytes"] = device_memory_bytes("cpu")
    return info


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else version
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML here
        return None
