"""Building blocks shared by YOCO and the baseline: the linear factory, norms, SwiGLU, the
pre-norm block, and the four token mixers (gated retention, sliding-window attention,
cross-attention, causal attention).

Each mixer has `forward(x, ...)` over a whole sequence or, in a chunked prefill, over the chunk
of positions start..start+T-1 (reading what earlier chunks left in its cache and filling it), and
`step(x, ...)` for one token at the device position `pos`, which writes its cache in place and
allocates no cache memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yoco import backends
from yoco.config import ModelConfig, YOCOConfig
from yoco.ops.attention import (
    attention,
    cached_attention,
    causal_attention,
    flash_attention,
    prefix_causal_attention,
    sliding_window_attention,
)
from yoco.ops.retention import gated_retention, gated_retention_step
from yoco.ops.rope import apply_rope, rope_angles


def make_linear(in_features: int, out_features: int, bitnet: str) -> nn.Module:
    """Every linear layer inside the blocks comes from here, so BitNet can replace it."""
    if bitnet == "none":
        return nn.Linear(in_features, out_features, bias=False)
    from yoco.bitnet import BitLinear

    return BitLinear(in_features, out_features, mode=bitnet)


def make_norm(dim: int, config: ModelConfig) -> nn.Module:
    if "apex" in config.backends and backends.available("apex"):
        from apex.normalization import FusedRMSNorm

        return FusedRMSNorm(dim, eps=config.norm_eps)
    return nn.RMSNorm(dim, eps=config.norm_eps)


class SwiGLU(nn.Module):
    """W2(silu(W1 x) * W3 x)."""

    def __init__(self, dim: int, hidden: int, bitnet: str):
        super().__init__()
        self.w1 = make_linear(dim, hidden, bitnet)
        self.w3 = make_linear(dim, hidden, bitnet)
        self.w2 = make_linear(hidden, dim, bitnet)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm: x += mixer(norm(x)); x += SwiGLU(norm(x)). Extra arguments go to the mixer."""

    def __init__(self, mixer: nn.Module, config: ModelConfig):
        super().__init__()
        self.mixer_norm = make_norm(config.d_model, config)
        self.mixer = mixer
        self.ffn_norm = make_norm(config.d_model, config)
        self.ffn = SwiGLU(config.d_model, config.ffn_dim, config.bitnet)

    def forward(self, x, *mixer_args):
        h = x + self.mixer(self.mixer_norm(x), *mixer_args)
        return h + self.ffn(self.ffn_norm(h))

    def step(self, x, *mixer_args):
        h = x + self.mixer.step(self.mixer_norm(x), *mixer_args)
        return h + self.ffn(self.ffn_norm(h))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, T, H, D]."""
    return x.view(*x.shape[:-1], n_heads, -1)


def decode_attention(q, k_cache, v_cache, valid, use_splitkv: bool = False):
    """One decode step's attention over a static cache: the Triton split-KV kernel where asked
    for (backend part "splitkv") on CUDA, else SDPA on the folded query groups."""
    if use_splitkv and q.is_cuda:
        from yoco.ops.split_kv_triton import split_kv_attention

        return split_kv_attention(q, k_cache, v_cache, valid)
    return cached_attention(q, k_cache, v_cache, valid)


def _attention_step(mixer, x, pos, cache, valid=None):
    """Decode step of a self-attending mixer (SWA, the baseline's): rotate the new token's q and
    k at `pos`, write k, v into the static cache in place, attend to the valid slots (`valid`,
    when the caller computed it once for all layers, else the cache's own)."""
    q, k, v = mixer._project(x, pos)
    cache.write(pos, k, v)
    o = decode_attention(q, cache.k, cache.v, cache.valid(pos) if valid is None else valid, mixer.use_splitkv)
    return mixer.wo(o.transpose(1, 2).flatten(-2))


class GatedRetention(nn.Module):
    """gRet: data-dependent decay gamma_t = sigmoid(a_t)^(1/tau), rotary q and k, per-head
    RMSNorm without scale, output gated by silu(x W_g). The cache is one float32 state per head."""

    def __init__(self, config: YOCOConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = config.d_model, config.n_self_heads, config.self_head_dim
        self.wq, self.wk, self.wv, self.wg, self.wo = (make_linear(d, d, config.bitnet) for _ in range(5))
        self.wa = make_linear(d, self.n_heads, config.bitnet)
        self.tau, self.theta, self.eps = config.gret_tau, config.rope_theta, config.norm_eps
        self.rope = config.numerics
        self.chunk_size = config.chunk_size
        self.use_fla = "fla" in config.backends

    def _project(self, x, positions):
        q, k, v = (_heads(w(x), self.n_heads) for w in (self.wq, self.wk, self.wv))
        cos, sin = rope_angles(positions, self.head_dim, self.theta, self.rope)
        log_decay = F.logsigmoid(self.wa(x).float()) / self.tau
        return apply_rope(q, cos, sin, self.rope), apply_rope(k, cos, sin, self.rope), v, log_decay

    def _output(self, o, x):
        o = F.rms_norm(o.float(), (self.head_dim,), eps=self.eps).to(x.dtype).flatten(-2)
        return self.wo(F.silu(self.wg(x)) * o)

    def forward(self, x, positions, cache=None, start=0):
        """start > 0 (a later prefill chunk): the recurrence continues from the cache's state."""
        q, k, v, log_decay = self._project(x, positions)
        scale = self.head_dim**-0.5  # the paper scales k; o = q S is linear in k, so scaling q is the same
        state0 = cache.state if cache is not None and start > 0 else None
        if self.use_fla and q.is_cuda:
            from yoco.ops.retention_fla import gated_retention_fla

            o, state = gated_retention_fla(q, k, v, log_decay, scale=scale, initial_state=state0, mode="chunk")
        else:
            o, state = gated_retention(q, k, v, log_decay, scale=scale, initial_state=state0, mode="chunk",
                                       chunk_size=self.chunk_size)
        if cache is not None:
            cache.state.copy_(state)
        return self._output(o, x)

    def step(self, x, pos, cache):
        q, k, v, log_decay = self._project(x, pos)
        step = gated_retention_step
        if self.use_fla and q.is_cuda:
            from yoco.ops.retention_fla import gated_retention_step_fla as step
        o = step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], cache.state, scale=self.head_dim**-0.5)
        return self._output(o[:, None], x)


class SlidingWindowAttention(nn.Module):
    """Causal attention over the last W tokens (itself included); the cache is a ring of W slots."""

    def __init__(self, config: YOCOConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = config.d_model, config.n_self_heads, config.self_head_dim
        self.wq, self.wk, self.wv, self.wo = (make_linear(d, d, config.bitnet) for _ in range(4))
        self.window, self.theta, self.rope = config.window, config.rope_theta, config.numerics
        self.use_flash = "flash_attn" in config.backends
        self.use_splitkv = "splitkv" in config.backends

    def _project(self, x, positions):
        q, k, v = (_heads(w(x), self.n_heads) for w in (self.wq, self.wk, self.wv))
        cos, sin = rope_angles(positions, self.head_dim, self.theta, self.rope)
        return (apply_rope(q, cos, sin, self.rope).transpose(1, 2), apply_rope(k, cos, sin, self.rope).transpose(1, 2),
                v.transpose(1, 2))

    def forward(self, x, positions, cache=None, start=0):
        """start > 0 (a later prefill chunk): the chunk's queries also see the W-1 keys before it,
        read from the ring before the chunk's own keys overwrite them."""
        q, k, v = self._project(x, positions)
        k_all, v_all = keys_before_chunk(cache, k, v, start, self.window)
        o = windowed_attention(q, k_all, v_all, self.window, self.use_flash)
        if cache is not None:
            cache.fill(k, v, start)
        return self.wo(o.transpose(1, 2).flatten(-2))

    step = _attention_step


def keys_before_chunk(cache, k, v, start: int, window: int):
    """A later prefill chunk's keys and values preceded by the W-1 before it, read from the ring
    before the chunk's own overwrite them (the first chunk, or no cache: k, v as they are)."""
    if cache is None or start == 0:
        return k, v
    k_prev, v_prev = cache.window_before(start, min(window - 1, start))
    return torch.cat((k_prev, k), dim=2), torch.cat((v_prev, v), dim=2)


def windowed_attention(q, k, v, window: int, use_flash: bool = False):
    """Sliding-window causal attention of T queries [B, H, T, D] over S >= T keys (k, v may have
    fewer heads), the last T of them the queries' own, by the fastest form usable here:
    flash-attn, FlexAttention on CUDA, else the blocked SDPA form."""
    if use_flash and q.is_cuda:
        return flash_attention(q, k, v, window=window)  # bottom-right aligned
    # The forms below take as many queries as keys: the earlier keys get placeholder queries
    # (zeros; at most W-1 of them) whose outputs are dropped.
    T = q.shape[2]
    q_all = F.pad(q, (0, 0, k.shape[2] - T, 0))
    if q.is_cuda and q_all.shape[2] > window:  # T <= W is plain causal: SDPA's flash kernel
        from yoco.ops.flex_attention import sliding_window_flex

        return sliding_window_flex(q_all, k, v, window)[:, :, -T:]
    return sliding_window_attention(q_all, k, v, window)[:, :, -T:]


class CausalAttention(nn.Module):
    """The baseline's grouped-query attention with rotary and a static per-layer KV cache."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, self.n_heads, self.n_kv_heads, self.head_dim = (config.d_model, config.n_heads,
                                                           config.n_kv_heads, config.head_dim)
        self.wq = make_linear(d, self.n_heads * self.head_dim, config.bitnet)
        self.wk = make_linear(d, self.n_kv_heads * self.head_dim, config.bitnet)
        self.wv = make_linear(d, self.n_kv_heads * self.head_dim, config.bitnet)
        self.wo = make_linear(self.n_heads * self.head_dim, d, config.bitnet)
        self.theta, self.rope = config.rope_theta, config.numerics
        self.use_flash = "flash_attn" in config.backends
        self.use_splitkv = "splitkv" in config.backends

    def _project(self, x, positions):
        cos, sin = rope_angles(positions, self.head_dim, self.theta, self.rope)
        q = apply_rope(_heads(self.wq(x), self.n_heads), cos, sin, self.rope).transpose(1, 2)
        k = apply_rope(_heads(self.wk(x), self.n_kv_heads), cos, sin, self.rope).transpose(1, 2)
        v = _heads(self.wv(x), self.n_kv_heads).transpose(1, 2)
        return q, k, v

    def forward(self, x, positions, cache=None, start=0):
        """start > 0 (a later prefill chunk): the chunk's queries attend to the cache up to the
        chunk's end (keys 0..start+T-1), with the chunk's own keys written there first."""
        q, k, v = self._project(x, positions)
        if cache is not None:
            cache.fill(k, v, start)
        if start > 0:
            end = start + q.shape[2]
            k, v = cache.k[:, :, :end], cache.v[:, :, :end]
        if self.use_flash and q.is_cuda:
            o = flash_attention(q, k, v)  # bottom-right aligned: query i sees keys 0..start+i
        else:
            o = prefix_causal_attention(q, k, v)  # plain causal attention when start = 0
        return self.wo(o.transpose(1, 2).flatten(-2))

    step = _attention_step


class CrossAttention(nn.Module):
    """A cross-decoder layer's attention: its own queries over YOCO's one global K, V
    (grouped-query, causal). Keys arrive already rotated; only the queries are rotated here."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = config.d_model, config.n_heads, config.head_dim
        self.wq = make_linear(d, self.n_heads * self.head_dim, config.bitnet)
        self.wo = make_linear(self.n_heads * self.head_dim, d, config.bitnet)
        self.theta, self.rope = config.rope_theta, config.numerics
        self.use_flash = "flash_attn" in config.backends
        self.use_splitkv = "splitkv" in config.backends

    def _query(self, x, positions):
        cos, sin = rope_angles(positions, self.head_dim, self.theta, self.rope)
        return apply_rope(_heads(self.wq(x), self.n_heads), cos, sin, self.rope).transpose(1, 2)

    def forward(self, x, k, v, positions):
        """x holds the queries of `positions`: all T (full forward) or the last one (prefill)."""
        q = self._query(x, positions)
        if self.use_flash and q.is_cuda and q.shape[2] in (1, k.shape[2]):
            o = flash_attention(q, k, v)  # bottom-right aligned: the single query sees all keys
        elif q.shape[2] == k.shape[2]:
            o = causal_attention(q, k, v)
        elif q.shape[2] == 1:  # the last position sees every key
            o = attention(q, k, v)
        else:
            raise ValueError(f"cross-attention takes all {k.shape[2]} queries or the last one, got {q.shape[2]}")
        return self.wo(o.transpose(1, 2).flatten(-2))

    def step(self, x, pos, cache, valid):
        o = decode_attention(self._query(x, pos), cache.k, cache.v, valid, self.use_splitkv)
        return self.wo(o.transpose(1, 2).flatten(-2))


def init_weights(module: nn.Module, std: float = 0.02):
    """Normal(0, std) for every weight matrix and embedding; norms keep their ones."""
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2 and not weight.is_meta:
            nn.init.normal_(weight, std=std)
