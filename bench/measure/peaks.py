"""Data-sheet peaks of known GPUs: the second ceiling MBU and MFU are reported against (the
first is what this machine measured in the same run, bench.measure.roofline).

Dense figures (no 2:4 sparsity) from NVIDIA's data sheets, boost clocks. `float32` is the
CUDA-core rate (torch's default: TF32 off for matmuls); `int8` is tensor-core TOPS. A GPU not in
the table (and every CPU) has no peak: NaN, never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

T = 1e12


@dataclass(frozen=True)
class Peak:
    name: str
    bandwidth_bytes_s: float
    flops_s: dict[str, float] = field(default_factory=dict)  # dtype -> dense FLOP/s (OP/s for int8)


def _hopper(name, bandwidth, bf16, tf32, fp32, int8):
    return Peak(name, bandwidth, {"bfloat16": bf16, "float16": bf16, "tf32": tf32, "float32": fp32, "int8": int8})


_A100 = {"bfloat16": 312 * T, "float16": 312 * T, "tf32": 156 * T, "float32": 19.5 * T, "int8": 624 * T}

# (substring of torch.cuda.get_device_name, the peak): the first match wins, so the more
# specific names come first.
TABLE: list[tuple[str, Peak]] = [
    ("H200 NVL", _hopper("H200 NVL", 4.8 * T, 835.5 * T, 417.5 * T, 60 * T, 1670.5 * T)),
    ("H200", _hopper("H200 SXM", 4.8 * T, 989.5 * T, 494.5 * T, 67 * T, 1979 * T)),
    ("H100 NVL", _hopper("H100 NVL", 3.9 * T, 835.5 * T, 417.5 * T, 60 * T, 1670.5 * T)),
    ("H100 PCIe", _hopper("H100 PCIe", 2.0 * T, 756.5 * T, 378 * T, 51.2 * T, 1513 * T)),
    ("H100", _hopper("H100 SXM", 3.35 * T, 989.4 * T, 494.7 * T, 66.9 * T, 1978.9 * T)),  # "H100 80GB HBM3"
    ("A100-SXM4-80GB", Peak("A100 SXM 80GB", 2.039 * T, _A100)),
    ("A100 80GB PCIe", Peak("A100 PCIe 80GB", 1.935 * T, _A100)),
    ("A100-SXM4-40GB", Peak("A100 SXM 40GB", 1.555 * T, _A100)),
    ("A100-PCIE-40GB", Peak("A100 PCIe 40GB", 1.555 * T, _A100)),
]


def lookup(device_name: str | None) -> Peak | None:
    """The data-sheet peak of a GPU by its name as torch reports it, or None if unknown."""
    for key, peak in TABLE:
        if device_name and key.lower() in device_name.lower():
            return peak
    return None


def as_dict(device_name: str | None) -> dict:
    """For env.json: {name, bandwidth_bytes_s, flops_s} of the matched entry, NaN where unknown."""
    peak = lookup(device_name)
    if peak is None:
        return dict(name=None, bandwidth_bytes_s=math.nan, flops_s={})
    return dict(name=peak.name, bandwidth_bytes_s=peak.bandwidth_bytes_s, flops_s=dict(peak.flops_s))
