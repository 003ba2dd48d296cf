"""YOCO: a self-decoder (gRet or SWA, constant cache) under a cross-decoder whose layers all
read one global key/value cache, computed once from the self-decoder's output."""

from __future__ import annotations

import torch
from torch import nn

from yoco import backends
from yoco.cache import KVCache, ModelCache, RetentionState, RingKVCache
from yoco.config import YOCOConfig, yoco_config
from yoco.layers import (
    Block,
    CrossAttention,
    GatedRetention,
    SlidingWindowAttention,
    init_weights,
    make_linear,
    make_norm,
)
from yoco.lm import CausalLM, chunks
from yoco.ops.rope import apply_rope, rope_angles


class YOCO(CausalLM):
    def __init__(self, config: YOCOConfig):
        super().__init__()
        self.config = c = config
        mixer = GatedRetention if c.self_decoder == "gret" else SlidingWindowAttention
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.self_layers = nn.ModuleList(Block(mixer(c), c) for _ in range(c.n_self_layers))
        # The global cache: K, V of the self-decoder's output, one copy for all cross layers.
        self.kv_norm = make_norm(c.d_model, c)
        self.wk = make_linear(c.d_model, c.n_kv_heads * c.head_dim, c.bitnet)
        self.wv = make_linear(c.d_model, c.n_kv_heads * c.head_dim, c.bitnet)
        self.cross_layers = nn.ModuleList(Block(CrossAttention(c), c) for _ in range(c.n_cross_layers))
        self.norm = make_norm(c.d_model, c)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self)

    @staticmethod
    def optional_parts(config) -> tuple[str, ...]:
        shared = ("flash_attn", "apex", "splitkv")
        return ("fla", *shared) if config.self_decoder == "gret" else shared

    def global_kv(self, x: torch.Tensor, positions: torch.Tensor):
        """K, V [B, H_kv, T, D] of the global cache; rotary on K."""
        h = self.kv_norm(x)
        k = self.wk(h).view(*x.shape[:2], self.config.n_kv_heads, self.config.head_dim)
        v = self.wv(h).view(*x.shape[:2], self.config.n_kv_heads, self.config.head_dim)
        c = self.config
        cos, sin = rope_angles(positions, c.head_dim, c.rope_theta, c.numerics)
        return apply_rope(k, cos, sin, c.numerics).transpose(1, 2), v.transpose(1, 2)

    def _forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self._embed(tokens)
        for layer in self.self_layers:
            x = layer(x, positions)
        k, v = self.global_kv(x, positions)
        for layer in self.cross_layers:
            x = layer(x, k, v, positions)
        return self.lm_head(self.norm(x))

    def _prefill(self, tokens, cache, chunk_size):
        # The self-decoder and the global K, V chunk by chunk: each chunk's gRet state or SWA ring
        # carries on from the last, its K, V go straight into the global cache.
        T = tokens.shape[1]
        for start, end in chunks(T, chunk_size):
            positions = torch.arange(start, end, device=tokens.device)
            x = self._embed(tokens[:, start:end])
            for layer, layer_cache in zip(self.self_layers, cache.layers):
                x = layer(x, positions, layer_cache, start)
            cache.shared.fill(*self.global_kv(x, positions), start)
        # Early exit: only the last position's logits are wanted, so the cross-decoder runs on
        # that one query (over all keys): O(N) instead of O(N^2) per cross layer.
        x = x[:, -1:]
        k, v = cache.shared.k[:, :, :T], cache.shared.v[:, :, :T]
        for layer in self.cross_layers:
            x = layer(x, k, v, positions[-1:])
        return self.lm_head(self.norm(x))[:, 0]

    def _step(self, tokens, cache):
        pos = cache.pos
        x = self._embed(tokens[:, None])
        for layer, layer_cache in zip(self.self_layers, cache.layers):
            x = layer.step(x, pos, layer_cache)
        k, v = self.global_kv(x, pos)
        cache.shared.write(pos, k, v)
        valid = cache.shared.valid(pos)  # one mask for every cross layer: they share the cache
        for layer in self.cross_layers:
            x = layer.step(x, pos, cache.shared, valid)
        pos.add_(1)
        return self.lm_head(self.norm(x))[:, 0]

    def _new_cache(self, batch_size, max_seq_len):
        c, dtype, device = self.config, self.dtype, self.device
        if c.self_decoder == "gret":
            layers = [RetentionState(batch_size, c.n_self_heads, c.self_head_dim, device)
                      for _ in self.self_layers]
        else:
            slots = min(c.window, max_seq_len)
            layers = [RingKVCache(batch_size, c.n_self_heads, slots, c.self_head_dim, dtype, device)
                      for _ in self.self_layers]
        shared = KVCache(batch_size, c.n_kv_heads, max_seq_len, c.head_dim, dtype, device)
        return ModelCache(layers, batch_size, max_seq_len, device, shared=shared)

    def kv_cache_bytes(self, batch_size: int, seq_len: int) -> int:
        """Bytes of allocate_cache(batch_size, seq_len), from the config alone."""
        c, b = self.config, self.dtype.itemsize
        if c.self_decoder == "gret":
            per_layer = RetentionState.nbytes_for(batch_size, c.n_self_heads, c.self_head_dim)
        else:
            per_layer = KVCache.nbytes_for(batch_size, c.n_self_heads, min(c.window, seq_len), c.self_head_dim, b)
        global_cache = KVCache.nbytes_for(batch_size, c.n_kv_heads, seq_len, c.head_dim, b)
        return c.n_self_layers * per_layer + global_cache

    def decode_bytes_per_step(self, batch_size: int, context: int) -> int:
        """Bytes one step moves at `context` cached tokens (see CausalLM): the weights; per self
        layer its gRet state, read and written, or its ring's slots in the window, read, and the new
        key and value written; the global cache's new key and value written once, and the global
        cache at context + 1 read in full by EACH of the L/2 cross layers (each attends over it)."""
        c, b = self.config, self.dtype.itemsize
        if c.self_decoder == "gret":
            per_self = 2 * RetentionState.nbytes_for(batch_size, c.n_self_heads, c.self_head_dim)
        else:
            slots = min(c.window, context + 1)
            per_self = KVCache.nbytes_for(batch_size, c.n_self_heads, slots + 1, c.self_head_dim, b)
        read = KVCache.nbytes_for(batch_size, c.n_kv_heads, context + 1, c.head_dim, b)
        write = KVCache.nbytes_for(batch_size, c.n_kv_heads, 1, c.head_dim, b)
        return (self._weight_bytes_per_step(batch_size) + c.n_self_layers * per_self + write
                + c.n_cross_layers * read)


def from_preset(name: str, *, self_decoder: str = "gret", device=None, dtype=None, **overrides) -> YOCO:
    """A YOCO model of a named preset (yoco.config.PRESETS); any config field may be overridden."""
    config = yoco_config(name, self_decoder=self_decoder, **overrides)
    return build(YOCO, config, device, dtype)


def build(cls, config, device=None, dtype=None):
    """Construct directly on the device (meta builds no weights) and cast to dtype. The config's
    backend "auto" is resolved here, for this device (yoco.backends.resolve)."""
    config.backend = backends.resolve(config.backend, device, cls.optional_parts(config))
    with torch.device(device or "cpu"):
        model = cls(config)
    return model.to(dtype) if dtype is not None else model
