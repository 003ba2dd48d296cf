"""The one-token decode step captured as a CUDA graph: one replay launches the whole step.

The step (`CausalLM._step`) is graph-safe by construction: it reads the position from a device
tensor (`cache.pos`, advanced in place inside the step), writes the static cache in place and
makes no data-dependent host read (tests/test_graphs.py runs it on the meta device, where any
such read fails). So it can be captured once and replayed at every position, as gpt-fast does
with torch.compile's "reduce-overhead" mode, but with no compiler: the kernels replayed are the
eager step's own. The plain reference is `model.decode_step` (tests/test_graphs.py: equal over
several steps, on CUDA).
"""

from __future__ import annotations

import torch


class CapturedDecode:
    """A decode step captured on CUDA with static buffers: write the next tokens into `tokens`
    [B] (or pass them to the call), `replay()`, read `logits` [B, V]. Each replay advances the
    cache by one position, like `decode_step`; `logits` is overwritten by the next replay."""

    def __init__(self, model, cache, warmup: int = 3):
        if cache.pos.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model and cache on CUDA, not {cache.pos.device.type}: "
                             f"use decode_step (or compile_decode) there")
        room = cache.max_seq_len - cache.length
        if warmup < 1 or room < 1:
            raise ValueError(f"capture runs at least one eager step first: warmup={warmup} steps asked, room for "
                             f"{room} in the cache ({cache.length} of {cache.max_seq_len} positions used)")
        warmup = min(warmup, room)
        self.cache = cache
        self.tokens = torch.zeros(cache.batch_size, dtype=torch.long, device=cache.pos.device)
        length = cache.length
        # Eager steps on a side stream first (as torch.cuda.graphs asks): lazy initialisation,
        # cuBLAS workspaces and autotuning happen outside the capture. They write the cache, so
        # the position is rewound afterwards; what they wrote past it is masked out.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                model._step(self.tokens, cache)
        torch.cuda.current_stream().wait_stream(side)
        cache.set_length(length)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records the kernels; nothing runs, the position stays
            self.logits = model._step(self.tokens, cache)

    def replay(self) -> torch.Tensor:
        """One step with whatever `tokens` holds; returns the static `logits`."""
        self.graph.replay()
        self.cache.length += 1
        return self.logits

    def __call__(self, next_tokens: torch.Tensor) -> torch.Tensor:
        """`decode_step` as a replay: copies next_tokens [B] in, returns the static logits."""
        self.tokens.copy_(next_tokens)
        return self.replay()
