"""`hf-llama`: HF transformers' LlamaForCausalLM of the same shape as our `transformer` preset
(SDPA attention, HF's StaticCache), wrapped to our model API. It is the outside peer that shows
our baseline is a real Llama and at least as fast as the usual plain-PyTorch one.

Optional: `import baselines` works without transformers; `available()` tells. Our Transformer's
weights load into it by name (`from_transformer`), and the logits agree: same rotate-half rotary
(theta from the config), RMSNorm eps, SwiGLU and grouped-query attention.

Written against transformers 5.x (the cache tracks its own write position) and kept working
with 4.x (>= 4.50), where the write position is passed as `cache_position`.
"""

from __future__ import annotations

import inspect

import torch

from yoco.cache import ModelCache
from yoco.config import ModelConfig, transformer_config
from yoco.lm import CausalLM


def available() -> bool:
    """Whether transformers (with Llama and a static cache) imports here."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM, StaticCache  # noqa: F401
    except Exception:  # a broken install counts as absent, whatever it raises
        return False
    return True


def llama_config(config: ModelConfig, attn_implementation: str = "sdpa"):
    """The LlamaConfig of one of our baseline configs (no biases, untied embeddings)."""
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    llama = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim, hidden_act="silu",
        max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        rope_parameters=rope, rope_theta=config.rope_theta,  # 5.x reads the first, 4.x the second
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    llama._attn_implementation = attn_implementation
    return llama


def _attn_implementation(config: ModelConfig) -> str:
    parts = config.backends
    if config.bitnet != "none":
        raise ValueError(f"hf-llama has no BitNet layers: bitnet must be 'none', got {config.bitnet!r}")
    if config.numerics != "llama":
        raise ValueError(f"hf-llama is HF's Llama: numerics must be 'llama', got {config.numerics!r}")
    if not parts <= {"torch", "flash_attn"}:
        raise ValueError(f"hf-llama runs backend 'torch' (SDPA) or 'flash_attn' (flash_attention_2), "
                         f"got {config.backend!r}")
    return "flash_attention_2" if "flash_attn" in parts else "sdpa"


class HFStaticCache(ModelCache):
    """HF's StaticCache (allocated up front, zero-filled) with our cache's bookkeeping:
    `pos` on the device, `length` on the host, `nbytes()`."""

    def __init__(self, static, batch_size: int, max_seq_len: int, device):
        super().__init__([], batch_size, max_seq_len, device)
        self.static = static

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) [B, H_kv, S, D] per layer."""
        if hasattr(self.static, "layers"):  # transformers >= 4.56
            return [(layer.keys, layer.values) for layer in self.static.layers]
        return list(zip(self.static.key_cache, self.static.value_cache))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.layer_tensors() for t in pair)

    def set_length(self, length: int):
        """Also HF's own write positions (transformers >= 4.56 counts per layer, on the device)."""
        super().set_length(length)
        for layer in getattr(self.static, "layers", ()):
            counter = getattr(layer, "cumulative_length", None)
            if isinstance(counter, torch.Tensor):
                counter.fill_(length)
            elif counter is not None:
                layer.cumulative_length = length


# transformers < 4.56 wrote the cache where `cache_position` said; later ones count themselves.
def _needs_cache_position() -> bool:
    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache_position" in inspect.signature(LlamaModel.forward).parameters


class HFLlama(CausalLM):
    """LlamaForCausalLM behind our API: forward, allocate_cache, prefill, decode, decode_step,
    compile_decode, kv_cache_bytes, num_parameters, weight_bytes."""

    def __init__(self, config: ModelConfig):
        if not available():
            raise ImportError("hf-llama needs HF transformers: pip install transformers")
        from transformers import LlamaForCausalLM

        super().__init__()
        self.config = config
        self.hf = LlamaForCausalLM(llama_config(config, _attn_implementation(config)))
        self._cache_position = _needs_cache_position()

    @property
    def embed(self):  # CausalLM reads the model's device and dtype from here
        return self.hf.model.embed_tokens

    def _forward(self, tokens):
        return self.hf(input_ids=tokens, use_cache=False).logits

    def _prefill(self, tokens, cache):
        # Writes from position 0: prefill() (or the timed loop, off the clock) has rewound the
        # cache with set_length(0); HF's reset() would also zero every key and value, work our
        # models do not do (keys past the position are masked out).
        extra = {}
        if self._cache_position:
            extra["cache_position"] = torch.arange(tokens.shape[1], device=tokens.device)
        out = self.hf(input_ids=tokens, past_key_values=cache.static, use_cache=True, logits_to_keep=1, **extra)
        return out.logits[:, -1]

    def _step(self, tokens, cache):
        pos = cache.pos  # a device tensor: the compiled step never sees a Python position
        extra = {"cache_position": pos} if self._cache_position else {}
        out = self.hf(input_ids=tokens[:, None], position_ids=pos[None], past_key_values=cache.static,
                      use_cache=True, **extra)
        pos.add_(1)
        return out.logits[:, -1]

    def _new_cache(self, batch_size, max_seq_len):
        from transformers import StaticCache

        c, hf_config = self.config, self.hf.config
        try:  # 5.x: lazily allocated unless initialized early, which we want (static memory)
            static = StaticCache(config=hf_config, max_cache_len=max_seq_len)
            static.early_initialization(batch_size, c.n_kv_heads, c.head_dim, self.dtype, self.device)
        except (TypeError, AttributeError):  # 4.x: allocated in the constructor
            static = StaticCache(config=hf_config, max_batch_size=batch_size, max_cache_len=max_seq_len,
                                 device=self.device, dtype=self.dtype)
        return HFStaticCache(static, batch_size, max_seq_len, self.device)

    def allocate_cache(self, batch_size: int, max_seq_len: int) -> HFStaticCache:
        if max_seq_len > self.config.max_seq_len:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's max_seq_len={self.config.max_seq_len}")
        return super().allocate_cache(batch_size, max_seq_len)

    def kv_cache_bytes(self, batch_size: int, seq_len: int) -> int:
        """Bytes of allocate_cache(batch_size, seq_len): the same layout as our Transformer's."""
        c = self.config
        return c.n_layers * 2 * batch_size * c.n_kv_heads * seq_len * c.head_dim * self.dtype.itemsize

    def decode_bytes_per_step(self, batch_size: int, context: int) -> int:
        """Bytes one step moves at `context` cached tokens (see CausalLM): the weights, and per
        layer one key and value written and its cache at context + 1 read (as our Transformer)."""
        c = self.config
        per_layer = 2 * batch_size * c.n_kv_heads * (context + 2) * c.head_dim * self.dtype.itemsize
        return self._weight_bytes_per_step(batch_size) + c.n_layers * per_layer

    @torch.no_grad()
    def load_transformer(self, transformer) -> HFLlama:
        """Copy the weights of our `baselines.Transformer` of the same config, in place."""
        if transformer.config != self.config:
            raise ValueError(f"config mismatch: ours {transformer.config} vs hf-llama {self.config}")
        ours = transformer.state_dict()
        mine = self.hf.state_dict()
        mapped = {hf_name(name): w for name, w in ours.items()}
        missing = set(mine) - set(mapped) - {k for k in mine if k.endswith("rotary_emb.inv_freq")}
        if missing or set(mapped) - set(mine):
            raise ValueError(f"weight names do not map: unmatched HF {sorted(missing)}, "
                             f"unmatched ours {sorted(set(mapped) - set(mine))}")
        self.hf.load_state_dict(mapped, strict=False)
        return self


# Our Transformer's block parameter names -> LlamaForCausalLM's.
_NAME_PARTS = {
    "mixer_norm.": "input_layernorm.",
    "ffn_norm.": "post_attention_layernorm.",
    "mixer.wq.": "self_attn.q_proj.",
    "mixer.wk.": "self_attn.k_proj.",
    "mixer.wv.": "self_attn.v_proj.",
    "mixer.wo.": "self_attn.o_proj.",
    "ffn.w1.": "mlp.gate_proj.",  # silu(W1 x) * W3 x: W1 is the gate
    "ffn.w3.": "mlp.up_proj.",
    "ffn.w2.": "mlp.down_proj.",
}


def hf_name(name: str) -> str:
    """e.g. 'layers.3.ffn.w1.weight' -> 'model.layers.3.mlp.gate_proj.weight'."""
    if name.startswith("layers."):
        _, index, rest = name.split(".", 2)
        for ours, theirs in _NAME_PARTS.items():
            if rest.startswith(ours):
                return f"model.layers.{index}.{theirs}{rest[len(ours):]}"
    elif name.startswith("lm_head."):
        return name
    else:
        for ours, theirs in (("embed.", "model.embed_tokens."), ("norm.", "model.norm.")):
            if name.startswith(ours):
                return theirs + name[len(ours):]
    raise ValueError(f"no LlamaForCausalLM name for our parameter {name!r}")


def from_preset(name: str, *, device=None, dtype=None, **overrides) -> HFLlama:
    """The hf-llama twin of our `transformer` preset (same config, HF's own initialisation)."""
    from yoco import backends

    config = transformer_config(name, **overrides)
    if config.backend == "auto":  # of the optional parts, only flash-attn applies to HF's Llama
        config.backend = backends.resolve("auto", device, parts=("flash_attn",))
    _attn_implementation(config)  # bad bitnet/backend values fail before any import
    with torch.device(device or "cpu"):
        model = HFLlama(config)
    return model.to(dtype) if dtype is not None else model


def from_transformer(transformer, attn_implementation: str | None = None) -> HFLlama:
    """An hf-llama holding our Transformer's weights, on its device and in its dtype."""
    with torch.device(transformer.device):
        model = HFLlama(transformer.config)
    if attn_implementation is not None:
        model.hf.config._attn_implementation = attn_implementation
    return model.to(transformer.dtype).load_transformer(transformer).eval()
