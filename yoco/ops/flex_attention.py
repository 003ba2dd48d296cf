"""Sliding-window prefill with FlexAttention: the fast path for the SWA self-decoder on CUDA.

Query t sees keys t-W+1..t (mask_mod: 0 <= q_idx - kv_idx < W). FlexAttention skips every
key block the block mask leaves out, so the work is O(T * W) and no T x T mask is ever built.
The reference is `yoco.ops.attention.sliding_window_attention_reference` (a banded T x T mask).

The block mask is written down directly from the band's geometry (`sliding_window_block_mask`):
`create_block_mask` would evaluate the mask_mod over all T x T positions (eagerly, terabytes
at 1M tokens) or need a compile per length; `sliding_window_block_mask_reference` builds it that
way for the tests. Layout [B, H, T, D] as in `yoco.ops.attention`.

On CUDA flex_attention runs compiled (a fused Triton kernel); elsewhere it runs eagerly, which
materializes the scores: correct, for tests at small T only.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

BLOCK_SIZE = 128  # FlexAttention's default tile; queries and keys share it
_HAS_COMPUTE_Q_BLOCKS = "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters


def sliding_window_mask_mod(window: int):
    """True where query q_idx may see key kv_idx: itself and the W-1 keys before it."""

    def mask_mod(b, h, q_idx, kv_idx):
        distance = q_idx - kv_idx
        return (distance >= 0) & (distance < window)

    return mask_mod


def _check(seq_len: int, window: int, block_size: int):
    for name, value in (("seq_len", seq_len), ("window", window), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@functools.lru_cache(maxsize=4)  # per (length, window, device): every SWA layer and repeat shares one
def sliding_window_block_mask(seq_len: int, window: int, device: str | torch.device = "cpu",
                              block_size: int = BLOCK_SIZE) -> BlockMask:
    """The sliding-window BlockMask from the band's geometry: O((T / bs) * (W / bs + 2)) work.

    Query block i holds rows i*bs..min(T, (i+1)*bs)-1, key block j columns likewise. The
    distance q - k over that tile spans [lo, hi]; the tile is skipped if the span misses
    [0, W), "full" (no mask_mod needed) if it lies inside it and the tile has no padding,
    else partial.
    """
    _check(seq_len, window, block_size)
    n = -(-seq_len // block_size)
    i = torch.arange(n, device=device)
    # Key blocks a query block can touch: from the one holding its first row's oldest key
    # (row i*bs sees back to key i*bs - W + 1, in block i - ceil((W-1)/bs)) up to the diagonal.
    span = min(-(-(window - 1) // block_size), n - 1)
    j = (i[:, None] - span + torch.arange(span + 1, device=device)[None, :])  # [n, span + 1]
    last = seq_len - 1
    row_first, row_last = i * block_size, torch.clamp((i + 1) * block_size - 1, max=last)
    col_first, col_last = j * block_size, torch.clamp((j + 1) * block_size - 1, max=last)
    lo = row_first[:, None] - col_last  # smallest q - k over the tile's real rows and columns
    hi = row_last[:, None] - col_first  # largest
    touched = (j >= 0) & (hi >= 0) & (lo <= window - 1)
    # As in create_block_mask, positions past T count as masked: a tile with any is not full.
    inside = ((i + 1) * block_size <= seq_len)[:, None] & ((j + 1) * block_size <= seq_len)
    full = touched & (lo >= 0) & (hi <= window - 1) & inside
    partial = touched & ~full

    def pack(keep):
        """Per query block: how many key blocks, and their indices first (ascending), in rows
        n wide as BlockMask expects (it transposes them into the query-block lists)."""
        order = torch.sort(torch.where(keep, j, n + j), dim=1, stable=True).indices
        indices = torch.zeros(n, n, dtype=torch.int32, device=device)
        indices[:, : j.shape[1]] = torch.gather(torch.where(keep, j, 0), 1, order)
        return keep.sum(1).to(torch.int32)[None, None], indices[None, None]

    kv_num, kv_idx = pack(partial)
    full_num, full_idx = pack(full)
    extra = {"compute_q_blocks": False} if _HAS_COMPUTE_Q_BLOCKS else {}  # forward only: skip the transpose
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=sliding_window_mask_mod(window), seq_lengths=(seq_len, seq_len),
                                    **extra)


def sliding_window_block_mask_reference(seq_len: int, window: int, device: str | torch.device = "cpu",
                                        block_size: int = BLOCK_SIZE) -> BlockMask:
    """The same BlockMask from `create_block_mask`, which evaluates the mask_mod over T x T: tests only."""
    _check(seq_len, window, block_size)
    return create_block_mask(sliding_window_mask_mod(window), None, None, seq_len, seq_len,
                             device=device, BLOCK_SIZE=block_size)


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


def sliding_window_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                        block_mask: BlockMask | None = None) -> torch.Tensor:
    """Query t sees keys max(0, t-W+1)..t. q [B, H, T, D], k and v [B, H_kv, T, D] (H_kv divides H)."""
    if q.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"expected q [B, H, T, D] and k, v [B, H_kv, T, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    T = q.shape[2]
    if block_mask is None:
        block_mask = sliding_window_block_mask(T, window, q.device)
    attend = _compiled_flex_attention() if q.is_cuda else flex_attention
    return attend(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
