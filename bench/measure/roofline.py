"""How good a measurement is: this machine's ceilings, analytic work per phase, and a fixed
calibration workload timed before and after every case.

- ceilings, timed as triton's do_bench (warm-up by time, repetitions by time, the median):
  copy bandwidth (bytes read + written per second of dst.copy_(src)), read bandwidth (bytes
  read per second of src.sum(): decode mostly reads) and matmul rate (FLOP/s of a square matmul)
  per dtype (int8: torch._int_mm, on CUDA). Measured at the start of a run and again at its end.
- prefill FLOPs, one convention throughout, useful FLOPs (2 per multiply-add): what the forms
  the models compute need on the real tokens, never padding; causal products as their lower
  triangle (softmax attention over the prompt, gRet's products inside each chunk), SWA over the
  keys in the window, YOCO's early exit (the cross-decoder and the LM head for the last position
  only). Split by the dtype each part runs in (`prefill_flops_by_dtype`), so MFU is measured
  against the ceiling of that dtype: the model's dtype, except gRet's chunk products off CUDA
  (float32 there), and packed BitNet layers: int8 on CUDA (the W2A8 kernel's int8 dots),
  elsewhere an exact float32 matmul.
- decode bytes per step: the model's own count (`decode_bytes_per_step(batch, context)`),
  averaged over the contexts the timed steps run at.
- calibration: a fixed fp32 matmul plus a fixed copy, sized from the case's axes only, so a
  regression gate can divide out how fast this machine is right now.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.measure.timing import bench_ms

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _median(samples: list[float]) -> float:
    return float(np.median(samples))


def measure_copy_bandwidth(device: str, nbytes: int | None = None, rep_ms: float = 100.0) -> float:
    """Bytes per second of dst.copy_(src), counting the read and the write."""
    nbytes = nbytes or (1 << 30 if device == "cuda" else 1 << 27)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (_median(bench_ms(lambda: dst.copy_(src), device, rep_ms=rep_ms)) / 1e3)


def measure_read_bandwidth(device: str, nbytes: int | None = None, rep_ms: float = 100.0) -> float:
    """Bytes per second read by a sum over a buffer far larger than any cache (writes: one value)."""
    nbytes = nbytes or (1 << 30 if device == "cuda" else 1 << 27)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    out = torch.empty((), dtype=torch.float32, device=device)
    return src.numel() * 4 / (_median(bench_ms(lambda: torch.sum(src, dim=0, out=out), device, rep_ms=rep_ms)) / 1e3)


def measure_matmul_flops(device: str, dtype: str = "float32", n: int | None = None, rep_ms: float = 100.0) -> float:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs); int8 (CUDA): OP/s of torch._int_mm."""
    if n is None:
        n = 8192 if device == "cuda" else (1024 if dtype == "float32" else 512)
    if dtype == "int8":
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        work = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        a = torch.randn(n, n, device=device).to(DTYPES[dtype])
        b = torch.randn(n, n, device=device).to(DTYPES[dtype])
        work = lambda: a @ b  # noqa: E731
    return 2 * n**3 / (_median(bench_ms(work, device, rep_ms=rep_ms)) / 1e3)


def measure_ceilings(device: str, dtypes: list[str]) -> dict:
    """Copy and read bandwidth, and the matmul rate of each dtype (int8 only on CUDA)."""
    dtypes = [d for d in dict.fromkeys(dtypes) if d != "int8" or device == "cuda"]
    return dict(copy_bandwidth_bytes_s=measure_copy_bandwidth(device),
                read_bandwidth_bytes_s=measure_read_bandwidth(device),
                matmul_flops_s_by_dtype={d: measure_matmul_flops(device, d) for d in dtypes})


def ceiling_drift(before: dict, after: dict) -> dict[str, float]:
    """Relative change of each ceiling between the start and the end of a run (after / before - 1)."""
    out = {}
    for key in ("copy_bandwidth_bytes_s", "read_bandwidth_bytes_s"):
        if before.get(key) and after.get(key):
            out[key] = after[key] / before[key] - 1
    for dtype, rate in before.get("matmul_flops_s_by_dtype", {}).items():
        later = after.get("matmul_flops_s_by_dtype", {}).get(dtype)
        if rate and later:
            out[f"matmul_flops_s[{dtype}]"] = later / rate - 1
    return out


# ---- analytic work ----

def prefill_flops(config, arch: str, batch: int, seq_len: int) -> float:
    """Useful FLOPs of one prefill of seq_len tokens (see the module docstring)."""
    return sum(prefill_flops_parts(config, arch, batch, seq_len).values())


def _causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def prefill_flops_parts(config, arch: str, batch: int, seq_len: int) -> dict[str, float]:
    """Useful FLOPs of one prefill by part: {"linear": the blocks' projections and FFNs (YOCO's
    global K, V included), "lm_head": the LM head (last position), "attention": softmax
    attention's QK^T and PV (causal: the lower triangle), "retention": gRet's chunkwise products}.
    NaN everywhere for an arch with no formula here (a user's own: no MFU)."""
    c, N = config, seq_len
    d, V, ffn = c.d_model, c.vocab_size, c.ffn_dim
    attn_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    ffn_flops = 2 * 3 * d * ffn  # per token
    lm_head = 2 * d * V  # last position only
    if arch in ("transformer", "hf-llama"):  # hf-llama: the same Llama shape, logits for the last position
        linear = c.n_layers * N * (2 * d * (2 * attn_width + 2 * kv_width) + ffn_flops)
        attention = c.n_layers * 4 * attn_width * _causal_pairs(N)
        return _times(batch, linear=linear, lm_head=lm_head, attention=attention, retention=0)

    n_self, n_cross = c.n_layers // 2, c.n_layers - c.n_layers // 2
    mixer_attention = retention = 0
    if arch == "yoco-gret":
        # q, k, v, g, o (d -> d) and the decay (d -> heads). Chunks of C: inside each, QK^T and
        # (QK^T * D) V over its causal lower triangle (4 d per pair); per token q S and its share
        # k^T v of the state update (4 d d_h). Not counted: padding the last chunk, the upper
        # triangles, and the grouped form's [n, n] product that combines chunk states (choices of
        # an implementation: yoco.ops.retention's; fla's differ).
        C, dh = c.chunk_size, d // c.n_self_heads
        full, rest = divmod(N, C)
        pairs = full * _causal_pairs(C) + _causal_pairs(rest)
        mixer_linear = N * 2 * (5 * d * d + d * c.n_self_heads)
        retention = n_self * (4 * d * pairs + 4 * N * d * dh)
    elif arch == "yoco-swa":
        W = c.window
        keys_seen = _causal_pairs(N) if N <= W else _causal_pairs(W) + (N - W) * W
        mixer_linear, mixer_attention = N * 2 * 4 * d * d, 4 * d * keys_seen
    else:
        return dict(linear=math.nan, lm_head=math.nan, attention=math.nan, retention=math.nan)
    global_kv = N * 2 * d * 2 * kv_width
    cross_linear = 2 * d * 2 * attn_width + ffn_flops  # early exit: the last position only
    linear = n_self * (mixer_linear + N * ffn_flops) + global_kv + n_cross * cross_linear
    attention = n_self * mixer_attention + n_cross * 4 * attn_width * N
    return _times(batch, linear=linear, lm_head=lm_head, attention=attention, retention=retention)


def _times(batch: int, **parts) -> dict[str, float]:
    return {k: float(batch * v) for k, v in parts.items()}


def part_dtypes(dtype: str, bitnet: str, device: str) -> dict[str, str]:
    """The dtype each part of prefill_flops_parts runs in: the model's, except packed BitNet
    layers (int8 dots on CUDA, an exact float32 matmul elsewhere) and gRet's chunk products off
    CUDA (float32: yoco.ops.retention's default there; on CUDA both its chunk form and fla's
    kernels multiply in the model's dtype, accumulating in float32)."""
    linear = dtype if bitnet == "none" else ("int8" if device == "cuda" else "float32")
    return dict(linear=linear, lm_head=dtype, attention=dtype, retention=dtype if device == "cuda" else "float32")


def prefill_flops_by_dtype(parts: dict[str, float], dtypes: dict[str, str]) -> dict[str, float]:
    """{dtype: FLOPs} from the parts and the dtype each runs in (parts with no FLOPs dropped)."""
    out: dict[str, float] = {}
    for part, flops in parts.items():
        if flops:
            out[dtypes[part]] = out.get(dtypes[part], 0.0) + flops
    return out


def ideal_ms(flops_by_dtype: dict[str, float], rates: dict[str, float]) -> float:
    """The time the FLOPs would take, each dtype's at its rate: the MFU's numerator in time.
    NaN where a dtype has no rate (or there are no FLOPs to count)."""
    if not flops_by_dtype or any(math.isnan(f) for f in flops_by_dtype.values()):
        return math.nan
    total = 0.0
    for dtype, flops in flops_by_dtype.items():
        rate = rates.get(dtype, math.nan)
        if not rate > 0:
            return math.nan
        total += flops / rate
    return total * 1e3


def mfu(flops_by_dtype: dict[str, float], ms: float, rates: dict[str, float]) -> float:
    """Model FLOP utilization: ideal time at these rates over the measured time."""
    if not ms > 0:
        return math.nan
    return ideal_ms(flops_by_dtype, rates) / ms


def mean_decode_bytes(model, batch: int, contexts) -> float:
    """The model's bytes per step (decode_bytes_per_step) averaged over the contexts the timed
    steps ran at; NaN for a model that does not count them (a user's arch)."""
    count = getattr(model, "decode_bytes_per_step", None)
    try:
        return float(np.mean([count(batch, int(n)) for n in contexts]))
    except (TypeError, NotImplementedError):
        return math.nan


def efficiency(work: float, ms: float, ceiling: float) -> float:
    """Fraction of a ceiling achieved: work per second over the ceiling (nan if unknown)."""
    if not (ms > 0 and ceiling > 0) or math.isnan(ms):
        return math.nan
    return work / (ms / 1e3) / ceiling


# ---- calibration ----

def _pow2_clamp(x: float, lo: int, hi: int) -> int:
    if not math.isfinite(x):  # work unknown (an arch with no FLOP formula): the smallest size
        return lo
    return int(min(hi, max(lo, 2 ** round(math.log2(max(x, 1))))))


class Calibration:
    """A fixed fp32 matmul plus a fixed copy whose sizes follow the case's work (matmul n from
    its prefill FLOPs, copy from its weight + cache bytes, powers of two, clamped)."""

    def __init__(self, device: str, flops: float, nbytes: float):
        hi_n = 4096 if device == "cuda" else 512
        self.n = _pow2_clamp((flops / 2) ** (1 / 3), 64, hi_n)
        self.copy_bytes = _pow2_clamp(nbytes, 1 << 20, 1 << 28)
        self.device = device
        self.a = torch.randn(self.n, self.n, device=device)
        self.b = torch.randn(self.n, self.n, device=device)
        self.src = torch.ones(self.copy_bytes // 4, device=device)
        self.dst = torch.empty_like(self.src)

    def _work(self):
        self.a @ self.b
        self.dst.copy_(self.src)

    def measure_ms(self) -> float:
        """Median of do_bench-style repetitions (warm-up 10 ms, about 50 ms of repetitions)."""
        return _median(bench_ms(self._work, self.device, warmup_ms=10.0, rep_ms=50.0))
