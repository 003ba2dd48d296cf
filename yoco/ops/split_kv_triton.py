"""Split-KV decode attention in Triton (flash-decoding): one query token over a long static cache.

One decode step has one query per head, so a kernel that gives each (batch, KV head) one block of
work runs B * H_kv blocks: 8 on a 132-SM H200 at 3b, each streaming its whole cache (the first
H200 run measured SDPA's decode at about 200 GB/s of K/V). Here the cache length is split too:
- `_split_kernel`: program (b, kv head, split) takes the G query heads that share the KV head
  (padded to tl.dot's 16 rows) over its run of keys, an online softmax, and writes a partial
  output and its log-sum-exp;
- `_combine_kernel`: program (b, head) weighs the splits' partials by their log-sum-exps.
K and V are read as stored, once each. Slots are masked by `valid` [S] exactly as
`yoco.ops.attention.cached_attention` does (the same mask for every query), so the reference is
`cached_attention_reference`. Static shapes and no host sync: CUDA-graph capturable.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # keys per inner step
MIN_KEYS_PER_SPLIT = 256  # below this a split's fixed cost outweighs the parallelism it adds
WAVES = 4  # aim for about this many programs per SM
COMBINE_BLOCK_S = 32  # splits per tile in the combine


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, part_ptr, lse_ptr,
                  S, H_kv, keys_per_split, sm_scale,
                  s_qb, s_qh, s_qd, s_kb, s_kh, s_ks, s_kd, s_vb, s_vh, s_vs, s_vd,
                  G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    b = (bh // H_kv).to(tl.int64)  # 64-bit offsets: a cache may hold 2^31 elements or more
    h_kv = (bh % H_kv).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = h_kv * G + offs_g
    g_mask = offs_g < G
    d_mask = offs_d < D
    q = tl.load(q_ptr + b * s_qb + heads[:, None] * s_qh + offs_d[None, :] * s_qd,
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + b * s_kb + h_kv * s_kh
    v_base = v_ptr + b * s_vb + h_kv * s_vh

    m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, S)
    for n0 in range(0, keys_per_split, BLOCK_N):  # the same trip count in every program
        offs = (start + n0 + offs_n).to(tl.int64)
        in_range = offs < end
        keep = in_range & (tl.load(valid_ptr + offs, mask=in_range, other=0) != 0)
        kv_mask = in_range[:, None] & d_mask[None, :]
        k = tl.load(k_base + offs[:, None] * s_ks + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale
        s = tl.where(keep[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with no valid key so far
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        v = tl.load(v_base + offs[:, None] * s_vs + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        l = l * alpha + tl.sum(p, 1)
        m = m_new

    has_keys = l > 0  # a split whose keys are all masked contributes nothing (weight exp(-inf))
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l, 1.0)[:, None], 0.0)
    lse = tl.where(has_keys, m + tl.log(tl.where(has_keys, l, 1.0)), float("-inf"))
    row = (b * H_kv * G + heads) * n_splits + split  # part [B, H, n_splits, D], lse [B, H, n_splits]
    tl.store(part_ptr + row[:, None] * D + offs_d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
    tl.store(lse_ptr + row, lse, mask=g_mask)


@triton.jit
def _combine_kernel(part_ptr, lse_ptr, o_ptr, n_splits, s_ob, s_oh, s_od, H,
                    D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    # Splits in tiles of BLOCK_S (a tile of all of them would spill registers at hundreds of
    # splits): the largest log-sum-exp first, then the weighted sum.
    bh = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    lse_max = tl.full((), float("-inf"), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        lse = tl.load(lse_ptr + bh * n_splits + offs_s, mask=offs_s < n_splits, other=float("-inf"))
        lse_max = tl.maximum(lse_max, tl.max(lse, 0))  # finite: at least one split holds a valid key
    total = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_mask = offs_s < n_splits
        w = tl.exp(tl.load(lse_ptr + bh * n_splits + offs_s, mask=s_mask, other=float("-inf")) - lse_max)
        part = tl.load(part_ptr + (bh * n_splits + offs_s[:, None]) * D + offs_d[None, :],
                       mask=s_mask[:, None] & (offs_d[None, :] < D), other=0.0)
        total += tl.sum(w, 0)
        acc += tl.sum(w[:, None] * part, 0)
    o = acc / total
    tl.store(o_ptr + (bh // H) * s_ob + (bh % H) * s_oh + offs_d * s_od, o.to(o_ptr.dtype.element_ty),
             mask=offs_d < D)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # the interpreter: any small number works
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(programs: int, seq_len: int, device: torch.device) -> int:
    """Splits of the cache length: enough for about WAVES programs per SM, none shorter than
    MIN_KEYS_PER_SPLIT keys (at least one)."""
    wanted = -(-WAVES * _sm_count(device) // programs)
    return max(1, min(wanted, seq_len // MIN_KEYS_PER_SPLIT))


def split_kv_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, valid: torch.Tensor,
                       n_splits: int | None = None) -> torch.Tensor:
    """`cached_attention` by split-KV: q [B, H, 1, D] over k_cache, v_cache [B, H_kv, S, D]
    (H_kv divides H), valid [S] bool (True = attend; at least one True). n_splits: how many runs
    the S keys are cut into (default: `default_splits`); rounded so each run is whole blocks."""
    if q.dim() != 4 or q.shape[2] != 1 or k_cache.shape != v_cache.shape or k_cache.dim() != 4 \
            or k_cache.shape[0] != q.shape[0] or k_cache.shape[3] != q.shape[3]:
        raise ValueError(f"expected q [B, H, 1, D] and k_cache, v_cache [B, H_kv, S, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, H, _, D = q.shape
    H_kv, S = k_cache.shape[1], k_cache.shape[2]
    if H % H_kv:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({H_kv})")
    if valid.shape != (S,) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool [S] = [{S}] mask, got {valid.dtype} {tuple(valid.shape)}")
    if {t.dtype for t in (q, k_cache, v_cache)} != {q.dtype} or {t.device for t in (q, k_cache, v_cache, valid)} \
            != {q.device}:
        raise ValueError(f"q, k_cache, v_cache must share one dtype and, with valid, one device; got "
                         f"{q.dtype}/{k_cache.dtype}/{v_cache.dtype} on {q.device}/{k_cache.device}/{v_cache.device}/"
                         f"{valid.device}")
    if n_splits is None:
        n_splits = default_splits(B * H_kv, S, q.device)
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise ValueError(f"n_splits must be an integer >= 1, got {n_splits!r}")
    per_split = -(-S // n_splits)
    keys_per_split = -(-per_split // BLOCK_N) * BLOCK_N  # whole blocks
    n_splits = -(-S // keys_per_split)

    part = torch.empty(B, H, n_splits, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, H, n_splits, dtype=torch.float32, device=q.device)
    G = H // H_kv
    block_d = max(16, triton.next_power_of_2(D))
    _split_kernel[(B * H_kv, n_splits)](
        q, k_cache, v_cache, valid.contiguous().view(torch.uint8), part, lse, S, H_kv, keys_per_split, D**-0.5,
        q.stride(0), q.stride(1), q.stride(3), *k_cache.stride(), *v_cache.stride(),
        G=G, D=D, BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_D=block_d, BLOCK_N=BLOCK_N,
        num_warps=4, num_stages=2)
    out = torch.empty_like(q)
    _combine_kernel[(B * H,)](part, lse, out, n_splits, out.stride(0), out.stride(1), out.stride(3), H,
                              D=D, BLOCK_S=min(COMBINE_BLOCK_S, triton.next_power_of_2(n_splits)), BLOCK_D=block_d,
                              num_warps=4)
    return out
