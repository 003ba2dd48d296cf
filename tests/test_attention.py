"""The attention forms against their references, and rotary's defining property."""

import pytest
import torch

from yoco.ops.attention import (
    attention,
    cached_attention,
    causal_attention,
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


def test_rope_scores_depend_only_on_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(pq, pk):
        cq, sq = rope_angles(torch.tensor([pq]), 32, 10000.0)
        ck, sk = rope_angles(torch.tensor([pk]), 32, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(5, 3), score(105, 103))
    torch.testing.assert_close(apply_rope(q, *rope_angles(torch.tensor([77]), 32, 1e4)).norm(), q.norm())
