"""NVML readings (bench.measure.nvml) on a CPU: the side-thread poller with a fake reader, the
device wrapper with a fake pynvml, and what counts as throttled."""

import sys
import threading
import time
import types

import pytest

from bench.measure import nvml


def test_poller_catches_a_peak_that_is_gone_at_both_ends():
    readings = iter([5.0, 1.0, 100.0, 1.0])
    seen = threading.Event()
    count = {"n": 0}

    def read():
        count["n"] += 1
        if count["n"] >= 4:
            seen.set()
        return next(readings, 1.0)

    poller = nvml.Poller(read, 0.001, nvml.nanmax).start()
    assert seen.wait(10), "the side thread never polled"
    assert poller.stop() == 100.0  # start read 5, stop read 1: the peak came from the thread
    assert poller._thread is None


def test_poller_folds_reason_bits():
    bits = iter([0x1, 0x4, 0x0])
    poller = nvml.Poller(lambda: next(bits, 0), 0.001, lambda a, b: a | b).start()
    time.sleep(0.02)
    assert poller.stop() == 0x5


def fake_pynvml(used=3e9, reasons=0x4):
    calls = []

    def record(name, value):
        def fn(*args):
            calls.append(name)
            return value
        return fn

    def by_bus(_):
        raise RuntimeError("unknown bus id")

    module = types.SimpleNamespace(
        nvmlInit=record("init", None), nvmlShutdown=record("shutdown", None),
        nvmlDeviceGetHandleByPciBusId=by_bus, nvmlDeviceGetHandleByIndex=record("handle", "H"),
        nvmlDeviceGetMemoryInfo=record("memory", types.SimpleNamespace(used=used)),
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetClockInfo=lambda handle, which: 1980 if which == 0 else 2619,
        nvmlDeviceGetTemperature=record("temp", 41), nvmlDeviceGetPowerUsage=record("power", 123456),
        nvmlDeviceGetCurrentClocksEventReasons=record("reasons", reasons))
    return module, calls


def test_device_reads_state_and_memory_through_nvml(monkeypatch):
    module, calls = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    device = nvml.Device(0)
    assert device.ok and device.used_bytes() == 3e9
    state = device.state()
    assert state == dict(sm_clock_mhz=1980.0, mem_clock_mhz=2619.0, temp_c=41.0, power_w=pytest.approx(123.456),
                         throttle_bits=0x4)
    device.close()
    assert calls.count("init") == 1 and calls.count("shutdown") == 1 and not device.ok


def test_without_nvml_everything_is_nan(monkeypatch):
    module, _ = fake_pynvml()

    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    module.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", module)
    device = nvml.Device(0)
    assert not device.ok
    assert device.used_bytes() != device.used_bytes()  # NaN
    assert device.throttle_bits() == 0


def test_throttle_reasons_named_and_slowdowns_told_apart():
    assert nvml.reason_names(0x1 | 0x4) == "gpu_idle+sw_power_cap"
    assert nvml.reason_names(0) == ""
    assert not 0x1 & nvml.SLOWDOWNS and not 0x2 & nvml.SLOWDOWNS  # idle, a user's clocks: not slowdowns
    assert 0x4 & nvml.SLOWDOWNS and 0x40 & nvml.SLOWDOWNS
