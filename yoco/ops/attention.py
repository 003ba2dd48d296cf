"""Attention for the baseline, the cross-decoder and the SWA self-decoder.

Layout [B, H, T, D] throughout (SDPA's). Keys and values may have fewer heads than queries
(grouped-query attention). Each fast form has its plain reference beside it:
- causal_attention:          SDPA's causal kernel (flash on CUDA)
- sliding_window_attention:  blocked, O(T * W) memory and work; reference: a banded T x T mask
- attention, cached_attention: queries over keys with at most a per-key mask (the cross-decoder's
                             last-position query; one decode step over a static cache). The query
                             groups are folded into the query length, so K and V are used as stored;
                             reference: SDPA with enable_gqa (cached_attention_reference)
- prefix_causal_attention:   a prefill chunk's queries over the cache up to the chunk's end
                             (query i of C sees keys 0..S-C+i) with no C x S mask; reference: an
                             explicit C x S mask (prefix_causal_attention_reference)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gqa(q: torch.Tensor, k: torch.Tensor) -> dict:
    if q.shape[1] == k.shape[1]:
        return {}
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    return {"enable_gqa": True}


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Query t sees keys 0..t. q [B, H, T, D], k and v [B, H_kv, T, D]."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, **_gqa(q, k))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every query over every key (key_mask [S] bool, True = attend, the same for every query):
    q [B, H, T, D] over k, v [B, H_kv, S, D].

    The H / H_kv query heads that share a key head are folded into the query length
    ([B, H_kv, G*T, D] against K, V as stored), so no kernel needs grouped-query support: with a
    mask and enable_gqa, SDPA can be left with kernels that copy K and V to H heads first (the math
    kernel on CUDA where the memory-efficient one takes no GQA), for every layer and step. With a
    per-key mask the rows stay independent, so the fold is exact.
    """
    B, H, T, D = q.shape
    H_kv = k.shape[1]
    _gqa(q, k)  # checks that H_kv divides H
    mask = None if key_mask is None else key_mask[None, :]
    if H == H_kv:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # Query head h reads key head h // G (as enable_gqa and repeat_interleave do): heads split
    # (H_kv, G). For T = 1 (decode, the cross-decoder's prefill query) this reshape is a view.
    o = F.scaled_dot_product_attention(q.reshape(B, H_kv, (H // H_kv) * T, D), k, v, attn_mask=mask)
    return o.view(B, H, T, D)


def cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """One decode step: q [B, H, 1, D] over a static cache [B, H_kv, S, D]; valid [S] bool marks
    the slots that hold this sequence's keys (slots never written are zeros and must not count).
    K and V are read as stored (query groups folded, see `attention`): no copy per layer and step,
    no host sync, static shapes (CUDA-graph capturable)."""
    return attention(q, k_cache, v_cache, valid)


def cached_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               valid: torch.Tensor) -> torch.Tensor:
    """The plain form of `cached_attention`: SDPA with enable_gqa and the validity mask."""
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=valid[None, :], **_gqa(q, k_cache))


def prefix_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A prefill chunk: q [B, H, C, D] holds the LAST C of the S positions of k, v [B, H_kv, S, D]
    (the cache up to the chunk's end); query i sees keys 0..S-C+i (causal, aligned bottom-right).

    No C x S mask is built: on CUDA, torch's lower-right causal bias (flash kernel, GQA native);
    elsewhere the chunk's queries are reversed, which turns the mask into a function of i + j,
    mask[i, j] = base[i + j], an [C, S] view of one [C + S - 1] vector (strides (1, 1)) that the CPU
    flash kernel reads as is.
    """
    C, S = q.shape[2], k.shape[2]
    if C > S:
        raise ValueError(f"a chunk of {C} queries needs at least as many keys, got {S}")
    if C == S:
        return causal_attention(q, k, v)
    if q.is_cuda:
        from torch.nn.attention.bias import causal_lower_right

        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(C, S), **_gqa(q, k))
    # Reversed query r = C-1-i sees keys j <= S-1-r, i.e. r + j <= S-1: an additive mask of r + j.
    base = torch.zeros(C + S - 1, dtype=q.dtype, device=q.device)
    base[S:] = float("-inf")
    mask = base.as_strided((C, S), (1, 1))
    return F.scaled_dot_product_attention(q.flip(2), k, v, attn_mask=mask, **_gqa(q, k)).flip(2)


def prefix_causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`prefix_causal_attention` with an explicit C x S mask: tests only."""
    C, S = q.shape[2], k.shape[2]
    mask = torch.arange(S, device=q.device)[None, :] <= (S - C + torch.arange(C, device=q.device))[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **_gqa(q, k))


def sliding_window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Query t sees keys max(0, t-W+1)..t, itself included. Builds a T x T mask: tests only."""
    T = q.shape[2]
    pos = torch.arange(T, device=q.device)
    dist = pos[:, None] - pos[None, :]
    mask = (dist >= 0) & (dist < window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **_gqa(q, k))


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Sliding-window causal attention in blocks of W queries, each over its 2W-1 keys.

    The first W queries see all earlier keys (plain causal). Block b >= 1 holds queries
    bW..bW+W-1 and keys bW-W+1..bW+W-1, so one [W, 2W-1] band mask serves every block and
    memory stays O(T * W): no T x T mask is ever built.
    """
    B, H, T, D = q.shape
    W = window
    if T <= W:
        return causal_attention(q, k, v)
    if k.shape[1] != H:  # blocks are batched as heads, so share key heads explicitly
        k, v = (x.repeat_interleave(H // k.shape[1], dim=1) for x in (k, v))
    head = causal_attention(q[:, :, :W], k[:, :, :W], v[:, :, :W])

    n_blocks = -(-(T - W) // W)
    pad = n_blocks * W - (T - W)
    q_rest = F.pad(q[:, :, W:], (0, 0, 0, pad)).reshape(B, H * n_blocks, W, D)
    # Keys from position 1 on: block b' = 0.. starts at key 1 + b'W = bW - W + 1.
    k_rest, v_rest = (
        F.pad(x[:, :, 1:], (0, 0, 0, pad)).unfold(2, 2 * W - 1, W).transpose(-1, -2)
        .reshape(B, H * n_blocks, 2 * W - 1, D)
        for x in (k, v)
    )
    i = torch.arange(W, device=q.device)[:, None]
    j = torch.arange(2 * W - 1, device=q.device)[None, :]
    band = (j >= i) & (j <= i + W - 1)  # query i of a block is key i + W - 1 of its window
    o = F.scaled_dot_product_attention(q_rest, k_rest, v_rest, attn_mask=band)
    rest = o.reshape(B, H, n_blocks * W, D)[:, :, : T - W]
    return torch.cat((head, rest), dim=2)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                    window: int | None = None) -> torch.Tensor:
    """flash-attn's kernel (optional backend, CUDA, fp16/bf16) in our [B, H, T, D] layout.
    window=W keeps keys t-W+1..t, as sliding_window_attention does. With causal=True and fewer
    queries than keys, flash-attn aligns the queries to the end: the last query sees every key."""
    from flash_attn import flash_attn_func

    window_size = (window - 1, 0) if window is not None else (-1, -1)
    o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal,
                        window_size=window_size)
    return o.transpose(1, 2)
