"""The attention forms against their references, and rotary's defining property."""

import pytest
import torch

from yoco.cache import KVCache, RingKVCache
from yoco.ops.attention import (
    attention,
    cached_attention,
    cached_attention_reference,
    causal_attention,
    prefix_causal_attention,
    prefix_causal_attention_reference,
    sliding_window_attention,
    sliding_window_attention_reference,
)
from yoco.ops.rope import apply_rope, rope_angles


def qkv(T, H=4, H_kv=4, D=16, B=2, dtype=torch.float32):
    return (torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, H_kv, T, D, dtype=dtype),
            torch.randn(B, H_kv, T, D, dtype=dtype))


@pytest.mark.parametrize("T, W", [(1, 1), (7, 1), (10, 4), (64, 16), (65, 16), (100, 7), (16, 16),
                                  (17, 16), (5, 8), (257, 32)])
@pytest.mark.parametrize("H_kv", [4, 2])
def test_blocked_sliding_window_matches_banded_mask(T, W, H_kv):
    torch.manual_seed(T * 100 + W)
    q, k, v = qkv(T, H_kv=H_kv)
    torch.testing.assert_close(sliding_window_attention(q, k, v, W),
                               sliding_window_attention_reference(q, k, v, W), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T, W", [(12, 12), (12, 13), (12, 1000)])
def test_window_covering_the_sequence_is_causal_attention(T, W):
    q, k, v = qkv(T)
    torch.testing.assert_close(sliding_window_attention(q, k, v, W), causal_attention(q, k, v))
    torch.testing.assert_close(sliding_window_attention_reference(q, k, v, W), causal_attention(q, k, v))


def test_cached_attention_ignores_unwritten_slots():
    q = torch.randn(2, 4, 1, 16)
    k, v = torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    k[:, :, 6:], v[:, :, 6:] = 0, 0  # what a zero-filled static cache holds past the sequence
    valid = torch.arange(10) <= 5
    torch.testing.assert_close(cached_attention(q, k, v, valid), attention(q, k[:, :, :6], v[:, :, :6]))


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H, H_kv", [(4, 4), (6, 2), (8, 1)])  # MHA, 3 query heads per KV head (3b's 24/8), MQA
@pytest.mark.parametrize("ring", [False, True])
def test_decode_attention_with_folded_groups_matches_the_reference(dtype, H, H_kv, ring):
    """One decode step over a static cache (linear, or a ring that has wrapped), validity mask
    and all: the folded form against SDPA with enable_gqa, at every position of a short run."""
    torch.manual_seed(H * 10 + H_kv)
    S, D = 12, 16
    cache = (RingKVCache if ring else KVCache)(2, H_kv, S, D, dtype, "cpu")
    for p in range(30 if ring else S):
        pos = torch.tensor([p])
        cache.write(pos, torch.randn(2, H_kv, 1, D, dtype=dtype), torch.randn(2, H_kv, 1, D, dtype=dtype))
        q = torch.randn(2, H, 1, D, dtype=dtype)
        valid = cache.valid(pos)
        torch.testing.assert_close(cached_attention(q, cache.k, cache.v, valid),
                                   cached_attention_reference(q, cache.k, cache.v, valid), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 5])
def test_folded_attention_matches_grouped_query_sdpa(dtype, T):
    """The cross-decoder's last-position query (T = 1) and any T with a per-key mask."""
    torch.manual_seed(T)
    q, k, v = torch.randn(2, 6, T, 16, dtype=dtype), torch.randn(2, 2, 40, 16, dtype=dtype), torch.randn(
        2, 2, 40, 16, dtype=dtype)
    mask = torch.rand(40) > 0.3
    for m in (None, mask):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=None if m is None else m[None, :], enable_gqa=True)
        torch.testing.assert_close(attention(q, k, v, m), expected, **TOL[dtype])


def test_decode_attention_reads_the_cache_as_stored():
    """At grouped-query shapes the decode step hands SDPA the cache tensors themselves (no
    repeat, no enable_gqa) and equal head counts."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.shape, k.data_ptr(), v.data_ptr(), k.shape, kwargs.get("enable_gqa", False)))
        return sdpa(q, k, v, **kwargs)

    k, v = torch.randn(1, 8, 64, 32), torch.randn(1, 8, 64, 32)
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        cached_attention(torch.randn(1, 24, 1, 32), k, v, torch.arange(64) < 10)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    assert seen == [((1, 8, 3, 32), k.data_ptr(), v.data_ptr(), k.shape, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C, S", [(1, 1), (1, 9), (4, 4), (4, 10), (7, 30), (16, 17), (32, 200)])
@pytest.mark.parametrize("H_kv", [4, 2])
def test_prefix_causal_attention_matches_the_explicit_mask(dtype, C, S, H_kv):
    torch.manual_seed(C * 1000 + S)
    q = torch.randn(2, 4, C, 16, dtype=dtype)
    k, v = torch.randn(2, H_kv, S, 16, dtype=dtype), torch.randn(2, H_kv, S, 16, dtype=dtype)
    torch.testing.assert_close(prefix_causal_attention(q, k, v), prefix_causal_attention_reference(q, k, v),
                               **TOL[dtype])


def test_prefix_causal_attention_over_a_cache_prefix_view():
    """The baseline's chunks read a slice of the static cache (not contiguous over the length)."""
    cache_k, cache_v = torch.randn(2, 2, 64, 16), torch.randn(2, 2, 64, 16)
    q = torch.randn(2, 4, 8, 16)
    k, v = cache_k[:, :, :40], cache_v[:, :, :40]
    torch.testing.assert_close(prefix_causal_attention(q, k, v),
                               prefix_causal_attention_reference(q, k.contiguous(), v.contiguous()))
    with pytest.raises(ValueError, match="at least as many keys"):
        prefix_causal_attention(torch.randn(1, 4, 9, 16), k[:1, :, :8], v[:1, :, :8])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_attention_at_3b_shapes_gets_a_fused_kernel():
    """bf16, 24 query heads over 8 KV heads, d 128, a 4K cache with its validity mask: the folded
    call gets a kernel that reads K and V as stored (not math), and equals the reference."""
    from bench.measure.attention import sdpa_kernel

    q = torch.randn(1, 24, 1, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, 4160, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    valid = torch.arange(4160, device="cuda") <= 4100
    folded = sdpa_kernel(q.view(1, 8, 3, 128), k, v, attn_mask=valid[None, :])
    assert folded in ("efficient", "cudnn", "flash"), folded
    torch.testing.assert_close(cached_attention(q, k, v, valid), cached_attention_reference(q, k, v, valid),
                               **TOL[torch.bfloat16])


@pytest.mark.gpu_smoke
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_prefix_causal_attention(dtype):
    """CUDA's path (torch's lower-right causal bias) against the explicit mask, grouped queries."""
    q = torch.randn(2, 6, 64, 64, device="cuda", dtype=dtype)
    k, v = (torch.randn(2, 2, 300, 64, device="cuda", dtype=dtype) for _ in range(2))
    torch.testing.assert_close(prefix_causal_attention(q, k, v), prefix_causal_attention_reference(q, k, v),
                               **TOL[dtype])


def test_rope_scores_depend_only_on_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(pq, pk):
        cq, sq = rope_angles(torch.tensor([pq]), 32, 10000.0)
        ck, sk = rope_angles(torch.tensor([pk]), 32, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(5, 3), score(105, 103))
    torch.testing.assert_close(apply_rope(q, *rope_angles(torch.tensor([77]), 32, 1e4)).norm(), q.norm())
