"""What a case records about memory: the peak per phase, and what is in use now.

On CUDA, per phase: the caching allocator's peak allocated and peak reserved bytes, after
emptying its cache (so the reserved peak is the phase's own, not blocks an earlier phase left
cached) and resetting its peaks; and NVML's device-wide used memory polled every 2 ms in a side
thread for its peak (bench.measure.nvml). On CPU the peak resident set size (VmHWM) of the
case's own process, reset before each phase by writing "5" to /proc/self/clear_refs (Linux),
after glibc's malloc_trim hands freed heap back. The CPU figure is the whole process: Python,
torch's libraries, weights, cache and activations; rows also carry the process's RSS before the
model was built. Timing lives in bench.measure.timing.
"""

from __future__ import annotations

import ctypes
import math
import re
from pathlib import Path

import torch

from bench.measure import nvml

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


def allocated_growth(fn, device: str) -> tuple[object, float]:
    """(fn(), bytes the CUDA allocator's allocated memory grew by while fn ran); NaN off CUDA.
    The allocator rounds each tensor up to a multiple of 512 bytes."""
    if device != "cuda":
        return fn(), math.nan
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, float(torch.cuda.memory_allocated() - before)


def nvml_used_bytes(device_index: int = 0) -> float:
    """Device-wide used memory from NVML now (NaN without NVML or a GPU)."""
    return nvml.used_bytes(device_index)


class PeakMemory:
    """Peak memory over repeated phases: call start() before and stop() after each; the
    figures are the maxima over all of them (bytes; nan where the source is absent).
    `nvml_device` (CUDA): an open bench.measure.nvml.Device to poll; None opens none."""

    def __init__(self, device: str, nvml_device: nvml.Device | None = None):
        self.device = device
        self.allocated = self.reserved = self.nvml = math.nan
        self.source = "cuda_allocator" if device == "cuda" else "cpu_vmhwm"
        self._poller = None
        if nvml_device is not None and nvml_device.ok:
            self._poller = nvml.Poller(nvml_device.used_bytes, nvml.POLL_MEMORY_S, nvml.nanmax)

    def start(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # the phase's reserved peak must not inherit an earlier phase's blocks
            torch.cuda.reset_peak_memory_stats()
            if self._poller is not None:
                self._poller.start()
        elif not _reset_vm_hwm():
            self.source = "cpu_vmhwm_unreset"  # peak since process start: an upper bound

    def stop(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.allocated = _nanmax(self.allocated, torch.cuda.max_memory_allocated())
            self.reserved = _nanmax(self.reserved, torch.cuda.max_memory_reserved())
            if self._poller is not None:
                self.nvml = _nanmax(self.nvml, self._poller.stop())
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
