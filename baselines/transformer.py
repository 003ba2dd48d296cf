"""The decoder-only baseline: Llama-style pre-RMSNorm blocks with rotary, grouped-query
attention, SwiGLU and a static preallocated KV cache per layer. Built from yoco's own layers
so that both models share every kernel and differ only in architecture."""

from __future__ import annotations

import torch
from torch import nn

from yoco.cache import KVCache, ModelCache
from yoco.config import ModelConfig, transformer_config
from yoco.layers import Block, CausalAttention, init_weights, make_norm
from yoco.lm import CausalLM
from yoco.model import build


class Transformer(CausalLM):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Block(CausalAttention(c), c) for _ in range(c.n_layers))
        self.norm = make_norm(c.d_model, c)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self)

    def _forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self._embed(tokens)
        for layer in self.layers:
            x = layer(x, positions)
        return self.lm_head(self.norm(x))

    def _prefill(self, tokens, cache):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self._embed(tokens)
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer(x, positions, layer_cache)
        return self.lm_head(self.norm(x[:, -1]))

    def _step(self, tokens, cache):
        pos = cache.pos
        x = self._embed(tokens[:, None])
        valid = cache.layers[0].valid(pos)  # every layer's cache has the same length
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer.step(x, pos, layer_cache, valid)
        pos.add_(1)
        return self.lm_head(self.norm(x))[:, 0]

    def _new_cache(self, batch_size, max_seq_len):
        c = self.config
        layers = [KVCache(batch_size, c.n_kv_heads, max_seq_len, c.head_dim, self.dtype, self.device)
                  for _ in self.layers]
        return ModelCache(layers, batch_size, max_seq_len, self.device)

    def kv_cache_bytes(self, batch_size: int, seq_len: int) -> int:
        """Bytes of allocate_cache(batch_size, seq_len), from the config alone."""
        c = self.config
        return c.n_layers * KVCache.nbytes_for(batch_size, c.n_kv_heads, seq_len, c.head_dim, self.dtype.itemsize)

    def decode_bytes_per_step(self, batch_size: int, context: int) -> int:
        """Bytes one step moves at `context` cached tokens (see CausalLM): the weights, and per
        layer its new key and value written and its own cache at context + 1 read."""
        c = self.config  # context + 1 slots read, one written: context + 2 slots' worth
        cache = KVCache.nbytes_for(batch_size, c.n_kv_heads, context + 2, c.head_dim, self.dtype.itemsize)
        return self._weight_bytes_per_step(batch_size) + c.n_layers * cache


def from_preset(name: str, *, device=None, dtype=None, **overrides) -> Transformer:
    """The baseline twin of a YOCO preset (parameter-matched within 5%)."""
    return build(Transformer, transformer_config(name, **overrides), device, dtype)
