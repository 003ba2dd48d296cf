"""What a case records: wall time of device work and peak memory per phase.

Time: on CUDA a pair of events around the work (read after one synchronize); on CPU the clock
after the work returns (CPU ops are synchronous). Memory: on CUDA the caching allocator's peak
(allocated and reserved) after a reset, plus NVML's device-wide used memory at the end of the
phase; on CPU the peak resident set size (VmHWM) of the case's own process, reset before each
phase by writing "5" to /proc/self/clear_refs (Linux), after glibc's malloc_trim hands freed
heap back. The CPU figure is the whole process: Python, torch's libraries, weights, cache and
activations; rows also carry the process's RSS before the model was built.
"""

from __future__ import annotations

import ctypes
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def device_sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str) -> float:
    """Milliseconds fn's device work takes (fn must launch all of it before returning)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def quantiles(samples: list[float]) -> dict[str, float]:
    """Median and quartiles (nan for no samples)."""
    if not samples:
        return dict(p25=math.nan, p50=math.nan, p75=math.nan)
    p25, p50, p75 = np.percentile(np.asarray(samples, dtype=float), [25, 50, 75])
    return dict(p25=float(p25), p50=float(p50), p75=float(p75))


# ---- memory ----

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> float:
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return math.nan
    return float(match.group(1)) * 1024 if match else math.nan


def _release_freed_memory():
    """Hand freed heap memory back to the OS (glibc's malloc_trim), so the reset peak starts
    from what is live rather than from what earlier phases freed but malloc kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak is an upper bound
        pass


def _reset_vm_hwm() -> bool:
    _release_freed_memory()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def current_memory_bytes(device: str) -> float:
    """Memory in use now: the allocator's on CUDA, the process's resident set (VmRSS) on CPU."""
    if device == "cuda":
        return float(torch.cuda.memory_allocated())
    try:
        match = re.search(r"^VmRSS:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return math.nan
    return float(match.group(1)) * 1024 if match else math.nan


def _nvml_handle(pynvml, device_index: int):
    """NVML's handle for torch's device: by PCI bus id (CUDA_VISIBLE_DEVICES renumbers devices
    for torch but not for NVML), by index where torch does not report the bus."""
    try:
        props = torch.cuda.get_device_properties(device_index)
        bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except Exception:  # older torch, or NVML does not know that bus id
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)


def nvml_used_bytes(device_index: int = 0) -> float:
    """Device-wide used memory from NVML (all processes: containers may hide our own PIDs)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = _nvml_handle(pynvml, device_index)
            return float(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # pynvml.NVMLError, no driver, no library: no figure
        return math.nan


class PeakMemory:
    """Peak memory over repeated phases: call start() before and stop() after each; the
    figures are the maxima over all of them (bytes; nan where the source is absent)."""

    def __init__(self, device: str):
        self.device = device
        self.allocated = self.reserved = self.nvml = math.nan
        self.source = "cuda_allocator" if device == "cuda" else "cpu_vmhwm"

    def start(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif not _reset_vm_hwm():
            self.source = "cpu_vmhwm_unreset"  # peak since process start: an upper bound

    def stop(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.allocated = _nanmax(self.allocated, torch.cuda.max_memory_allocated())
            self.reserved = _nanmax(self.reserved, torch.cuda.max_memory_reserved())
            self.nvml = _nanmax(self.nvml, nvml_used_bytes(torch.cuda.current_device()))
        else:
            self.allocated = _nanmax(self.allocated, _vm_hwm_bytes())


def _nanmax(a: float, b: float) -> float:
    if math.isnan(a):
        return float(b)
    if math.isnan(b):
        return a
    return max(a, float(b))


def cap_memory(device: str, cap_bytes: float | None) -> float | None:
    """Make `cap_bytes` a real limit for this process on CUDA: the caching allocator may then
    reserve at most that much (torch.cuda.set_per_process_memory_fraction of the device's total),
    and an allocation past it raises an out-of-memory error, as on a card that size (the CUDA
    context, outside the allocator, is not counted). Returns the cap applied: None where none was
    asked for, and on CPU, where it is not enforced. Call it before anything is allocated."""
    if cap_bytes is None or device != "cuda":
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), 0)
    return float(min(cap_bytes, total))


def device_memory_bytes(device: str) -> float:
    """Memory a case may use: free GPU memory, or the host's MemAvailable."""
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return float(free)
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        return float(match.group(1)) * 1024
    except (OSError, AttributeError):
        return math.inf
