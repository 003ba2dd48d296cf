"""How good a measurement is: this machine's ceilings, analytic work per phase, and a fixed
calibration workload timed beside every repeat.

- ceilings: best-of-a-few copy bandwidth (bytes read + written per second) and matmul rate
  (FLOP/s of a square matmul) in the dtype the case uses;
- prefill FLOPs: matmul FLOPs only (2 per multiply-add), for the forms the models compute
  (causal attention counted as its lower triangle, gRet chunkwise, YOCO's early exit: the
  cross-decoder runs for the last position only, as does the LM head);
- decode bytes per step: weights (the embedding table counted as the rows looked up) plus
  the cache a step reads at the mean context of the decode run;
- calibration: a fixed fp32 matmul plus a fixed copy, sized from the case's axes only, so
  a regression gate can divide out how fast this machine is right now.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bench.measure.trackers import device_sync, time_ms

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def measure_copy_bandwidth(device: str, nbytes: int | None = None, repeats: int = 5) -> float:
    """Bytes per second of dst.copy_(src), counting the read and the write."""
    nbytes = nbytes or (1 << 30 if device == "cuda" else 1 << 27)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    device_sync(device)
    best = min(time_ms(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * src.numel() * 4 / (best / 1e3)


def measure_matmul_flops(device: str, dtype: str = "float32", n: int | None = None, repeats: int = 3) -> float:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs), best of a few."""
    if n is None:
        n = 8192 if device == "cuda" else (1024 if dtype == "float32" else 512)
    a = torch.randn(n, n, device=device).to(DTYPES[dtype])
    b = torch.randn(n, n, device=device).to(DTYPES[dtype])
    a @ b
    device_sync(device)
    best = min(time_ms(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / (best / 1e3)


def measure_ceilings(device: str, dtypes: list[str]) -> dict:
    return dict(copy_bandwidth_bytes_s=measure_copy_bandwidth(device),
                matmul_flops_s_by_dtype={d: measure_matmul_flops(device, d) for d in dtypes})


# ---- analytic work ----

def prefill_flops(config, arch: str, batch: int, seq_len: int) -> float:
    """Matmul FLOPs of one prefill of seq_len tokens (see the module docstring)."""
    return sum(prefill_flops_parts(config, arch, batch, seq_len).values())


def prefill_flops_parts(config, arch: str, batch: int, seq_len: int) -> dict[str, float]:
    """{"dense": projections, FFNs, LM head and gRet's chunkwise products (plain matmuls),
    "attention": softmax attention's QK^T and PV (causal: the lower triangle only)}."""
    c, N = config, seq_len
    d, V, ffn = c.d_model, c.vocab_size, c.ffn_dim
    attn_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    ffn_flops = 2 * 3 * d * ffn  # per token
    lm_head = 2 * d * V  # last position only
    if arch in ("transformer", "hf-llama", "transformer-swa"):  # hf-llama: the same Llama shape
        dense = c.n_layers * N * (2 * d * (2 * attn_width + 2 * kv_width) + ffn_flops) + lm_head
        keys_seen = N * (N + 1) // 2 if arch != "transformer-swa" else _keys_in_window(N, c.window)
        attention = c.n_layers * 4 * attn_width * keys_seen
        return dict(dense=float(batch * dense), attention=float(batch * attention))

    n_self, n_cross = c.n_layers // 2, c.n_layers - c.n_layers // 2
    if arch == "yoco-gret":
        # q, k, v, g, o (d -> d) and the decay (d -> heads); chunks of C (the last one padded,
        # as computed): QK^T and (QK^T * D) V inside each (4 C^2 d), q S and the state update
        # k^T v across chunks (4 C d d_h).
        C, dh = min(c.chunk_size, N), d // c.n_self_heads
        padded = -(-N // C) * C
        mixer_dense = N * 2 * (5 * d * d + d * c.n_self_heads) + 4 * padded * C * d + 4 * padded * d * dh
        mixer_attention = 0
    elif arch == "yoco-swa":
        mixer_dense, mixer_attention = N * 2 * 4 * d * d, 4 * d * _keys_in_window(N, c.window)
    else:  # an arch with no formula here (a user's own): no FLOP count, so no MFU
        return dict(dense=math.nan, attention=math.nan)
    global_kv = N * 2 * d * 2 * kv_width
    cross_dense = 2 * d * 2 * attn_width + ffn_flops  # early exit: the last position only
    dense = n_self * (mixer_dense + N * ffn_flops) + global_kv + n_cross * cross_dense + lm_head
    attention = n_self * mixer_attention + n_cross * 4 * attn_width * N
    return dict(dense=float(batch * dense), attention=float(batch * attention))


def _keys_in_window(N: int, W: int) -> int:
    """(query, key) pairs a causal window of W sees over N queries."""
    return N * (N + 1) // 2 if N <= W else W * (W + 1) // 2 + (N - W) * W


def embedding_bytes(model: nn.Module) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Embedding))


def decode_bytes_per_step(model, weight_bytes: int, batch: int, seq_len: int, gen_len: int) -> float:
    """Weights read once per step (the embedding table only for the rows looked up) plus the
    cache read at the mean context seq_len + gen_len / 2."""
    emb = embedding_bytes(model)
    rows = batch * model.config.d_model * (emb // max(1, model.config.vocab_size * model.config.d_model))
    cache = model.kv_cache_bytes(batch, seq_len + gen_len // 2)
    return float(weight_bytes - emb + rows + cache)


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
        """Median of three runs (after one untimed)."""
        self._work()
        samples = sorted(time_ms(self._work, self.device) for _ in range(3))
        return samples[1]
