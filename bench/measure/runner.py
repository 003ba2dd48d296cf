"""How a case runs: built, timed and measured in a process of its own.

Each case is a fork of a server process that imported torch and the models but computed nothing
(bench.measure.isolation), so a case pays no import cost and one that runs out of memory, crashes or is
killed leaves the next one untouched. The parent only writes rows: a child that dies without
answering gets a row saying how it died. What happens inside the process, phase by phase, is
bench.measure.phases; here: building the model, sizing it on the meta device, skipping a case
that cannot fit, turning failures into rows, and measuring the machine (ceilings, device facts).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
import traceback

import torch

from bench import archs
from bench.measure import footprint, nvml, peaks, phases, roofline
from bench.measure.isolation import one_line, run_isolated
from bench.measure.roofline import DTYPES
from bench.measure.trackers import cap_memory, device_memory_bytes
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
    backend (sizes do not depend on it), so a dry run lists cases whose backend is absent here.
    The prefill's peak adds one chunk's activations, from the case's prefill code run on the meta
    device (bench.measure.footprint)."""
    # The cache key keeps only what the model depends on (max_seq_len grows past the preset's).
    # An optional peer is sized as its twin (hf-llama as our transformer): the same shapes, and
    # no transformers needed.
    length = max(case.seq_len + case.gen_len, PRESETS[case.preset]["max_seq_len"])
    arch = archs.get(case.arch).sized_as or case.arch
    key = dataclasses.replace(case, arch=arch, backend="torch", batch=1, seq_len=1, gen_len=length - 1,
                              decode_mode="eager", prefill_chunk=None)
    model, params, weight_bytes = _meta_model(key)
    cache = model.kv_cache_bytes(case.batch, case.seq_len + case.gen_len)
    parts = roofline.prefill_flops_parts(model.config, arch, case.batch, case.seq_len)
    out = dict(params=params, weight_bytes=weight_bytes, kv_cache_bytes_formula=cache,
               estimated_bytes=weight_bytes + cache, prefill_flops=sum(parts.values()), prefill_flops_parts=parts)
    activations = footprint.case_activation_bytes(case)  # NaN where the arch's code cannot run on meta
    out["estimated_activation_bytes"] = activations
    if not math.isnan(activations):  # else no prefill-peak estimate: weights + cache decide alone
        out["estimated_peak_bytes"] = weight_bytes + cache + activations
    return out


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
        need = row.get("estimated_peak_bytes", row["estimated_bytes"])
        if need > available:
            gib = 2**30
            what = (f"estimated prefill peak {need / gib:.2f} GiB (weights + cache {row['estimated_bytes'] / gib:.2f}"
                    f" GiB, activations {row['estimated_activation_bytes'] / gib:.2f} GiB) exceeds"
                    if "estimated_peak_bytes" in row else f"estimated weights + cache {need / gib:.2f} GiB exceed")
            row.update(status="skipped", error=f"{what} the {available / 2**30:.2f} GiB {where}")
            return row, samples
        if inject == "oom":
            raise OOM_ERRORS[0]("injected out-of-memory error (YOCO_BENCH_INJECT)")
        if inject == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if inject == "hang":
            time.sleep(600)
        phases.measure(case, device, repeats, warmup, ceilings, row, samples, budget_s, build_model)
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
    row.pop("prefill_flops_parts", None)  # the estimate's parts, turned into prefill_flops_dtypes: no column
    return row, samples


def run_case(case: Case, device: str, repeats: int, warmup: int, ceilings: dict, inject: str | None = None,
             threads: int | None = None, budget_s: float | None = None,
             arch_modules: tuple[str, ...] = (), memory_cap_bytes: float | None = None,
             timeout_s: float | None = None) -> tuple[dict, list[dict]]:
    """measure_case in its own process; a process that dies, or runs past timeout_s and is
    killed, gets a row saying how."""
    answer = run_isolated(measure_case, case, device, repeats, warmup, ceilings, inject, budget_s, arch_modules,
                          memory_cap_bytes, threads=threads, timeout_s=timeout_s)
    if answer[0] == "ok":
        return answer[1]
    if answer[0] == "timeout":
        return dict(status="timeout", error=f"case process gave no result within {answer[1]:g} s (case_timeout_s) "
                                            f"and was killed"), []
    if answer[0] == "raised":
        return dict(status="error", error=answer[1]), []
    code = answer[1]
    if code == -signal.SIGKILL:
        return dict(status="oom", error="case process killed by SIGKILL (on Linux usually the out-of-memory "
                                        "killer)"), []
    return dict(status="error", error=f"case process exited with code {code} without a result"), []


def machine_info(device: str, dtypes: list[str], ceilings: bool = True) -> dict:
    """Ceilings and device facts, measured in a case-like process (the parent never touches CUDA).
    `dtypes`: the matmul rates to measure (the cases' dtypes, float32, int8 for BitNet on CUDA);
    ceilings=False: the device facts only."""
    if device == "cuda" and not torch.cuda.is_available():
        return dict(cuda_missing=True)
    info = dict(roofline.measure_ceilings(device, dtypes)) if ceilings else {}
    info["threads"] = torch.get_num_threads()
    info["cpu_count"] = os.cpu_count()
    info["device_name"] = device_name(device)
    info["datasheet"] = peaks.as_dict(info["device_name"] if device == "cuda" else None)
    if device == "cuda":
        info["cuda_version"] = torch.version.cuda
        info["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["driver"] = nvml.driver_version()
    else:
        info["device_memory_bytes"] = device_memory_bytes("cpu")
    return info


def ceilings_only(device: str, dtypes: list[str]) -> dict:
    """The ceilings again (the end of a run), in a case-like process."""
    return roofline.measure_ceilings(device, dtypes)


def ceiling_dtypes(cases) -> list[str]:
    """The matmul rates a run needs: every case's dtype, float32 (gRet's PyTorch form, BitNet's
    reference matmul) and, for packed BitNet cases, int8 (their CUDA kernel; measured on CUDA only)."""
    dtypes = sorted({c.dtype for c in cases} | {"float32"})
    if any(c.bitnet != "none" for c in cases):
        dtypes.append("int8")
    return dtypes


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
