"""A sliding-window Transformer in which every layer is windowed (the Mistral kind): the
baseline's blocks and grouped-query attention, each layer attending to its last W tokens and
caching them in a ring of W slots. Its cache is constant in the sequence length, like YOCO's
self-decoder, but nothing attends beyond L x (W - 1) tokens back: the peer that shows what
YOCO's global cross-decoder buys over windowing alone.

Same weights as the baseline Transformer of the same preset (the window adds no parameter), so
it is parameter-matched to both YOCO twins as the baseline is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from baselines.transformer import Transformer
from yoco.cache import KVCache, ModelCache, RingKVCache
from yoco.config import PRESETS, ModelConfig, transformer_config
from yoco.layers import CausalAttention, keys_before_chunk, windowed_attention
from yoco.model import build


@dataclass
class TransformerSWAConfig(ModelConfig):
    window: int = 64

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1 (tokens each layer attends to, itself "
                             f"included), got {self.window!r}")

    @property
    def receptive_field(self) -> int:
        """How far back (in tokens, the position itself included) the last layer's output can
        depend on the input: each layer reaches W - 1 tokens further."""
        return self.n_layers * (self.window - 1) + 1


class WindowedAttention(CausalAttention):
    """The baseline's grouped-query attention over the last W tokens only."""

    def __init__(self, config: TransformerSWAConfig):
        super().__init__(config)
        self.window = config.window

    def forward(self, x, positions, cache=None, start=0):
        """start > 0 (a later prefill chunk): the W-1 keys before the chunk come from the ring."""
        q, k, v = self._project(x, positions)
        k_all, v_all = keys_before_chunk(cache, k, v, start, self.window)
        if cache is not None:
            cache.fill(k, v, start)
        o = windowed_attention(q, k_all, v_all, self.window, self.use_flash)
        return self.wo(o.transpose(1, 2).flatten(-2))


class TransformerSWA(Transformer):
    """The baseline with windowed mixers: same modules, same initialisation from the same seed."""

    attention = WindowedAttention

    def _new_cache(self, batch_size, max_seq_len):
        c = self.config
        slots = min(c.window, max_seq_len)
        layers = [RingKVCache(batch_size, c.n_kv_heads, slots, c.head_dim, self.dtype, self.device)
                  for _ in self.layers]
        return ModelCache(layers, batch_size, max_seq_len, self.device)

    def decode_bytes_per_step(self, batch_size: int, context: int) -> int:
        """Bytes one step moves at `context` cached tokens (see CausalLM): the weights, and per
        layer its ring's slots in the window read and the new key and value written."""
        c = self.config
        slots = min(c.window, context + 1)
        ring = KVCache.nbytes_for(batch_size, c.n_kv_heads, slots + 1, c.head_dim, self.dtype.itemsize)
        return self._weight_bytes_per_step(batch_size) + c.n_layers * ring

    def kv_cache_bytes(self, batch_size: int, seq_len: int) -> int:
        """Bytes of allocate_cache(batch_size, seq_len), from the config alone."""
        c = self.config
        return c.n_layers * KVCache.nbytes_for(batch_size, c.n_kv_heads, min(c.window, seq_len), c.head_dim,
                                               self.dtype.itemsize)


def swa_config(preset: str, window: int | None = None, **overrides) -> TransformerSWAConfig:
    """The baseline's config of a preset plus a window (default: the preset's SWA window)."""
    base = transformer_config(preset, **overrides)
    return TransformerSWAConfig(**dataclasses.asdict(base),
                                window=PRESETS[preset]["window"] if window is None else window)


def from_preset(name: str, *, window: int | None = None, device=None, dtype=None, **overrides) -> TransformerSWA:
    """The sliding-window twin of a preset: the baseline's shape, every layer windowed to `window`."""
    return build(TransformerSWA, swa_config(name, window, **overrides), device, dtype)


__all__ = ["TransformerSWA", "TransformerSWAConfig", "WindowedAttention", "from_preset", "swa_config"]
