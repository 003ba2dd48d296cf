"""What YOCO and the baseline share: the public inference API and its input checks.

A subclass provides `_forward(tokens)`, `_prefill(tokens, cache, chunk_size)` (the prompt in
chunks of chunk_size tokens, an int in 1..T, each chunk reading what the earlier ones left in
the cache: `chunks(T, chunk_size)`), `_step(tokens, cache)` (the one-token decode step: tensors
only, no host sync, so it can be compiled or captured as a CUDA graph), `_new_cache(batch_size,
max_seq_len)`, `kv_cache_bytes(batch_size, seq_len)` and `decode_bytes_per_step(batch_size, context)`.
"""

from __future__ import annotations

import torch
from torch import nn

from yoco.cache import ModelCache


class CausalLM(nn.Module):
    config: object

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for tokens [B, T], no cache."""
        self._check_tokens(tokens, ndim=2)
        return self._forward(tokens)

    def allocate_cache(self, batch_size: int, max_seq_len: int) -> ModelCache:
        """A static, zero-filled cache on the model's device and in its dtype."""
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be >= 1, got {batch_size} and {max_seq_len}")
        cache = self._new_cache(batch_size, max_seq_len)
        if cache.pos.is_cuda:  # lets CUDA graphs write the cache in place
            for buffer in cache.buffers():
                torch._dynamo.mark_static_address(buffer)
        return cache

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, cache: ModelCache, chunk_size: int | None = None) -> torch.Tensor:
        """Start a new sequence: run the prompt [B, T], fill the cache from position 0, and
        return the logits [B, V] for the position after the prompt.

        chunk_size=C runs the prompt C tokens at a time (the last chunk may be shorter), each
        chunk reading the cache the earlier ones filled, so activations are bounded by the chunk
        whatever T is; the logits and the cache equal those of one chunk (None: the whole prompt)."""
        self.check_prefill(tokens, cache, chunk_size)
        cache.set_length(0)
        return self.prefill_step(tokens, cache, chunk_size)

    def check_prefill(self, tokens: torch.Tensor, cache: ModelCache, chunk_size: int | None = None):
        """prefill's input checks (they read the token ids back to the host: a sync on a GPU)."""
        check_chunk_size(chunk_size)
        self._check_tokens(tokens, ndim=2)
        B, T = tokens.shape
        self._check_batch(B, cache)
        if T > cache.max_seq_len:
            raise ValueError(f"prompt of {T} tokens exceeds the cache's max_seq_len={cache.max_seq_len}")

    @torch.no_grad()
    def prefill_step(self, tokens: torch.Tensor, cache: ModelCache, chunk_size: int | None = None) -> torch.Tensor:
        """`prefill` without the checks and without rewinding the cache to position 0: for timed
        loops, which call check_prefill once and cache.set_length(0) before each, off the clock.
        The work is the same for every model: the prompt's forward pass and the cache's fill."""
        T = tokens.shape[1]
        logits = self._prefill(tokens, cache, T if chunk_size is None else min(chunk_size, T))
        cache.set_length(T)
        return logits

    @torch.no_grad()
    def decode(self, next_tokens: torch.Tensor, cache: ModelCache) -> torch.Tensor:
        """Append one token per sequence (next_tokens [B]); return the next logits [B, V]."""
        self._check_tokens(next_tokens, ndim=1)
        self._check_batch(next_tokens.shape[0], cache)
        if cache.length == 0:
            raise ValueError("decode before prefill: the cache holds no sequence; call prefill first")
        if cache.length >= cache.max_seq_len:
            raise ValueError(f"decode past the cache's max_seq_len={cache.max_seq_len}: "
                             f"it already holds {cache.length} tokens")
        return self.decode_step(next_tokens, cache)

    @torch.no_grad()
    def decode_step(self, next_tokens: torch.Tensor, cache: ModelCache) -> torch.Tensor:
        """`decode` without the checks (they read tokens back to the host): for timed loops."""
        logits = self._step(next_tokens, cache)
        cache.length += 1
        return logits

    def compile_decode(self, mode: str | None = None):
        """Compile the one-token step. On CUDA the default mode is "reduce-overhead" (CUDA
        graphs over the static cache); elsewhere torch.compile's default. The first calls
        compile: warm up before timing. In place; returns None (the Python prompt prints nothing)."""
        if mode is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        self._step = torch.compile(self._step, mode=mode, fullgraph=True)

    def capture_decode(self, cache: ModelCache, warmup: int = 3):
        """The one-token step captured as a CUDA graph over this cache (yoco.graphs.CapturedDecode):
        `step(next_tokens)` replays it. CUDA only. The capture's eager warm-up steps write the
        cache past its position (masked out); prefill again to restore a sequence's own state."""
        from yoco.graphs import CapturedDecode

        return CapturedDecode(self, cache, warmup)

    def decode_bytes_per_step(self, batch_size: int, context: int) -> int:
        """Bytes one decode step moves to and from memory, at `context` tokens already cached
        (the step writes position `context` and attends over context + 1): the weights read (the
        embedding as the rows looked up) and each cache read and written as the model's step
        touches it. Useful bytes: slots past the context are not counted."""
        raise NotImplementedError(f"{type(self).__name__} does not count its decode bytes")

    def _weight_bytes_per_step(self, batch_size: int) -> int:
        """Weights one step reads: all of them as stored, but of the embedding table only the
        batch_size rows looked up (the LM head is read whole)."""
        table = self.embed.weight
        row_bytes = table.shape[1] * table.element_size()
        return self.weight_bytes() - table.shape[0] * row_bytes + batch_size * row_bytes

    def num_parameters(self) -> int:
        """Logical parameter count; packed BitNet weights count as the weights they stand for."""
        return sum(p.numel() for p in self.parameters()) + sum(
            getattr(m, "packed_numel", 0) for m in self.modules())

    def weight_bytes(self) -> int:
        from yoco.bitnet import weight_bytes

        return weight_bytes(self)

    def pack_bitnet(self):
        """In place: every BitLinear to packed inference storage (float weights freed). Returns
        None (the Python prompt prints nothing)."""
        from yoco.bitnet import pack_bitnet

        pack_bitnet(self)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings, times sqrt(d_model) under the authors' numerics (config.embed_scale)."""
        x = self.embed(tokens)
        scale = self.config.embed_scale
        return x * scale if scale != 1.0 else x

    @staticmethod
    def optional_parts(config) -> tuple[str, ...]:
        """The optional backend parts this kind of model can use (yoco.backends.MODEL_PARTS)."""
        return ("flash_attn", "apex", "splitkv")

    def backend_used(self) -> str:
        """The backend parts that really run now: those of the config's (resolved when built)
        that this model uses, on CUDA; "torch" elsewhere (optional parts run on CUDA tensors only)."""
        from yoco import backends

        return backends.used(self.config.backend, self.device, self.optional_parts(self.config))

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _check_tokens(self, tokens: torch.Tensor, ndim: int):
        shape = "[B, T]" if ndim == 2 else "[B]"
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor of shape {shape}, got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.dim() != ndim or tokens.numel() == 0:
            raise ValueError(f"tokens must have shape {shape} with no empty dimension, got {tuple(tokens.shape)}")
        if tokens.device.type != "meta":
            lo, hi = int(tokens.min()), int(tokens.max())
            vocab_size = self.config.vocab_size
            if lo < 0 or hi >= vocab_size:
                raise ValueError(f"token ids must lie in [0, vocab_size) with vocab_size={vocab_size}; "
                                 f"got ids from {lo} to {hi}")

    @staticmethod
    def _check_batch(batch_size: int, cache: ModelCache):
        if batch_size != cache.batch_size:
            raise ValueError(f"batch of {batch_size} sequences does not match the cache's "
                             f"batch_size={cache.batch_size}")


def check_chunk_size(chunk_size):
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None (the whole prompt at once) or an integer >= 1, got {chunk_size!r}")


def chunks(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk of a prompt of `length` tokens: [0, C), [C, 2C), ..., the last one shorter."""
    return [(start, min(start + chunk_size, length)) for start in range(0, length, chunk_size)]
