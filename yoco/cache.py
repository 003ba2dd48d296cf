"""Static, preallocated inference caches, written in place (so a decode step can be captured
by CUDA graphs). Every buffer is zero-filled: a slot not yet written must never hold NaN,
since masked-out keys still meet a zero weight in the attention's value product."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values [B, H, S, D] for positions 0..S-1 (baseline layers, YOCO's global cache)."""

    def __init__(self, batch_size, n_heads, length, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @staticmethod
    def nbytes_for(batch_size, n_heads, length, head_dim, element_size) -> int:
        return 2 * batch_size * n_heads * length * head_dim * element_size

    def fill(self, k: torch.Tensor, v: torch.Tensor, start: int = 0):
        """Prefill: keys and values of positions start..start+T-1 (a chunk; start = 0: the prompt)."""
        T = k.shape[2]
        self.k[:, :, start:start + T].copy_(k)
        self.v[:, :, start:start + T].copy_(v)

    def write(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Decode: one position (pos, a [1] tensor) in place."""
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)

    def valid(self, pos: torch.Tensor) -> torch.Tensor:
        """Slots holding positions 0..pos."""
        return torch.arange(self.k.shape[2], device=pos.device) <= pos


class RingKVCache(KVCache):
    """The last W keys and values of a sliding window: position p lives in slot p % W.
    Rotary is applied before caching, so the slot order does not matter to attention."""

    def fill(self, k: torch.Tensor, v: torch.Tensor, start: int = 0):
        """Prefill: positions start..start+T-1; only the last W of them can still be seen."""
        T, W = k.shape[2], self.k.shape[2]
        n = min(T, W)
        slots = torch.arange(start + T - n, start + T, device=k.device) % W
        self.k.index_copy_(2, slots, k[:, :, T - n:])
        self.v.index_copy_(2, slots, v[:, :, T - n:])

    def window_before(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the keys and values of positions start-n..start-1, in position order (a
        chunked prefill's view back into the window; n <= W)."""
        slots = torch.arange(start - n, start, device=self.k.device) % self.k.shape[2]
        return self.k.index_select(2, slots), self.v.index_select(2, slots)

    def write(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        super().write(pos % self.k.shape[2], k, v)

    def valid(self, pos: torch.Tensor) -> torch.Tensor:
        # Before the ring wraps only slots 0..pos are written; after, all W are in the window.
        return torch.arange(self.k.shape[2], device=pos.device) <= pos


class RetentionState(nn.Module):
    """The gRet recurrent state S [B, H, Dk, Dv], kept in float32 whatever the model dtype."""

    def __init__(self, batch_size, n_heads, head_dim, device):
        super().__init__()
        shape = (batch_size, n_heads, head_dim, head_dim)
        self.register_buffer("state", torch.zeros(shape, dtype=torch.float32, device=device), persistent=False)

    @staticmethod
    def nbytes_for(batch_size, n_heads, head_dim) -> int:
        return batch_size * n_heads * head_dim * head_dim * 4


class ModelCache(nn.Module):
    """A model's whole cache: one entry per layer that keeps one, plus (YOCO) the shared
    global cache, and the position of the next token, on the device (`pos`, read inside
    the decode step) and mirrored on the host (`length`, for checks that must not sync)."""

    def __init__(self, layers: list[nn.Module], batch_size: int, max_seq_len: int, device,
                 shared: KVCache | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.shared = shared
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.register_buffer("pos", torch.zeros(1, dtype=torch.long, device=device), persistent=False)
        self.length = 0

    def nbytes(self) -> int:
        """Bytes of the key/value/state tensors allocated (not the position counter)."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "pos")

    def set_length(self, length: int):
        self.pos.fill_(length)
        self.length = length
