"""What NVML says about the GPU: device-wide used memory (polled in a side thread for its peak,
as optimum-benchmark does) and the GPU's state (clocks, temperature, power, throttle reasons).

NVML sees the whole device (all processes: containers may hide our own PIDs), so its memory
figure includes the CUDA context and anything else on the card. Everything here degrades to NaN
/ empty where NVML or a GPU is absent; nothing raises. `Poller` takes any reader, so it is
tested on the CPU with a fake one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

POLL_MEMORY_S = 0.002  # every 2 ms: short phases (a decode pass) still get several samples
POLL_STATE_S = 0.05  # throttle reasons during the timed phase: rarely, so the poll costs nothing

# nvmlClocksEventReason* bits (NVML's ABI; pynvml names them nvmlClocksThrottleReason* too).
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# The reasons that mean the clocks were pulled down under load (idle, a user's clock setting
# and sync boost are not slowdowns).
SLOWDOWNS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def _handle(pynvml, device_index: int):
    """NVML's handle for torch's device: by PCI bus id (CUDA_VISIBLE_DEVICES renumbers devices
    for torch but not for NVML), by index where torch does not report the bus."""
    try:
        props = torch.cuda.get_device_properties(device_index)
        bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except Exception:  # older torch, or NVML does not know that bus id
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)


class Device:
    """One GPU through NVML, opened once (nvmlInit) and closed with close(). `ok` is False where
    NVML or the GPU is absent; then every reading is NaN."""

    def __init__(self, device_index: int = 0):
        self.ok = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = _handle(pynvml, device_index)
            self.ok = True
        except Exception:  # pynvml.NVMLError, no driver, no library
            self.close()

    def close(self):
        if getattr(self, "nvml", None) is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml = None
        self.ok = False

    def used_bytes(self) -> float:
        if not self.ok:
            return math.nan
        try:
            return float(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        except Exception:
            return math.nan

    def throttle_bits(self) -> int:
        """The current clocks-event (throttle) reason bits, 0 where unknown."""
        if not self.ok:
            return 0
        read = (getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                or getattr(self.nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        try:
            return int(read(self.handle)) if read else 0
        except Exception:
            return 0

    def state(self) -> dict:
        """SM and memory clocks (MHz), temperature (C), power (W) and throttle reason bits now."""
        out = dict(sm_clock_mhz=math.nan, mem_clock_mhz=math.nan, temp_c=math.nan, power_w=math.nan,
                   throttle_bits=self.throttle_bits())
        if not self.ok:
            return out
        n = self.nvml
        for key, read in (("sm_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_SM)),
                          ("mem_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_MEM)),
                          ("temp_c", lambda: n.nvmlDeviceGetTemperature(self.handle, n.NVML_TEMPERATURE_GPU)),
                          ("power_w", lambda: n.nvmlDeviceGetPowerUsage(self.handle) / 1e3)):
            try:
                out[key] = float(read())
            except Exception:
                pass
        return out


def reason_names(bits: int) -> str:
    """'sw_power_cap+hw_slowdown' for the bits set ('' for none)."""
    return "+".join(name for bit, name in THROTTLE_REASONS.items() if bits & bit)


class Poller:
    """Calls `read` in a side thread every `interval_s` between start() and stop() and folds
    the readings with `combine` (max for a peak, | for reason bits). stop() returns the fold,
    the readings at start and stop included."""

    def __init__(self, read: Callable[[], object], interval_s: float, combine: Callable[[object, object], object]):
        self.read, self.interval_s, self.combine = read, interval_s, combine
        self.value = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _fold(self, reading):
        self.value = reading if self.value is None else self.combine(self.value, reading)

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self._fold(self.read())

    def start(self) -> Poller:
        self.value = None
        self._fold(self.read())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-nvml-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._fold(self.read())
        return self.value


def nanmax(a: float, b: float) -> float:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return float(b)
    if isinstance(b, float) and math.isnan(b):
        return float(a)
    return float(max(a, b))


def used_bytes(device_index: int = 0) -> float:
    """Device-wide used memory now (NaN without NVML or a GPU)."""
    device = Device(device_index)
    try:
        return device.used_bytes()
    finally:
        device.close()


def driver_version() -> str | None:
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
