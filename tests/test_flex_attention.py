"""FlexAttention sliding-window prefill against the banded-mask reference, and the analytic
block mask against create_block_mask's."""

import pytest
import torch
from conftest import DEVICES

from yoco.ops.attention import sliding_window_attention_reference
from yoco.ops.flex_attention import (
    sliding_window_block_mask,
    sliding_window_block_mask_reference,
    sliding_window_flex,
)

# Eager flex_attention on CPU warns that it materializes the scores: expected at test sizes.
pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


def _block_sets(block_mask) -> tuple[set, set]:
    """{(query block, key block)} of partial tiles and of full tiles."""
    sets = []
    for num, idx in ((block_mask.kv_num_blocks, block_mask.kv_indices),
                     (block_mask.full_kv_num_blocks, block_mask.full_kv_indices)):
        num, idx = num[0, 0].tolist(), idx[0, 0].tolist()
        sets.append({(i, j) for i, row in enumerate(idx) for j in row[: num[i]]})
    return sets[0], sets[1]


@pytest.mark.parametrize("seq_len, window, block_size", [
    (1, 1, 16), (5, 2, 16), (16, 16, 16), (17, 17, 16), (31, 40, 16), (64, 7, 16),
    (100, 40, 16), (129, 64, 32), (129, 33, 32), (200, 1, 32), (200, 500, 32), (257, 128, 128),
])
def test_block_mask_equals_create_block_mask(seq_len, window, block_size):
    ours = sliding_window_block_mask(seq_len, window, "cpu", block_size)
    reference = sliding_window_block_mask_reference(seq_len, window, "cpu", block_size)
    partial, full = _block_sets(ours)
    assert (partial, full) == _block_sets(reference)
    assert partial and not partial & full
    assert ours.seq_lengths == (seq_len, seq_len)


def test_block_mask_is_banded_at_long_lengths():
    """O(T * W) tiles, never T x T: each query block touches ceil((W-1)/bs) + 1 key blocks."""
    T, W, bs = 1 << 16, 1024, 128
    block_mask = sliding_window_block_mask(T, W, "cpu", bs)
    per_row = block_mask.kv_num_blocks + block_mask.full_kv_num_blocks
    assert per_row.max().item() == -(-(W - 1) // bs) + 1
    assert per_row[0, 0, 0].item() == 1  # the first query block sees only itself
    assert per_row.sum().item() < (T // bs) * (W // bs + 1)


CASES = {  # B, H, H_kv, T, D, W
    "gqa-window-inside": (2, 4, 2, 100, 16, 33),
    "mha-one-block": (1, 2, 2, 128, 32, 128),
    "window-1": (1, 2, 1, 70, 16, 1),
    "window-past-T": (2, 2, 2, 90, 16, 300),
    "crosses-blocks": (1, 4, 1, 300, 16, 129),
}


@pytest.mark.parametrize("shape", CASES.values(), ids=CASES.keys())
def test_matches_reference_fp32(shape):
    B, H, H_kv, T, D, W = shape
    torch.manual_seed(T + W)
    q = torch.randn(B, H, T, D)
    k, v = torch.randn(B, H_kv, T, D), torch.randn(B, H_kv, T, D)
    torch.testing.assert_close(sliding_window_flex(q, k, v, W), sliding_window_attention_reference(q, k, v, W),
                               rtol=1e-5, atol=1e-5)


def test_matches_reference_bf16():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 160, 32, dtype=torch.bfloat16) for _ in range(3))
    expected = sliding_window_attention_reference(q.float(), k.float(), v.float(), 48)
    torch.testing.assert_close(sliding_window_flex(q, k, v, 48).float(), expected, rtol=2e-2, atol=2e-2)


def test_bad_input():
    q = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        sliding_window_flex(q, q, q, 0)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        sliding_window_flex(q, q[:, :2], q[:, :2], 4)
    with pytest.raises(ValueError, match="expected q"):
        sliding_window_flex(q, q[:, :, :8], q[:, :, :8], 4)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1"):
        sliding_window_block_mask(0, 4)


@pytest.mark.slow
def test_compiled_matches_reference_cpu():
    """The path CUDA takes (flex_attention under torch.compile), here through inductor's CPU
    template: checks that the analytic BlockMask compiles. One small case: ~15 s."""
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(1)
    q = torch.randn(1, 4, 300, 16)
    k, v = torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16)
    compiled = torch.compile(flex_attention, dynamic=False)
    out = compiled(q, k, v, block_mask=sliding_window_block_mask(300, 100, "cpu"), enable_gqa=True)
    torch.testing.assert_close(out, sliding_window_attention_reference(q, k, v, 100), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # one Triton compile per length
@pytest.mark.skipif("cuda" not in DEVICES, reason="needs CUDA")
@pytest.mark.parametrize("T, W", [pytest.param(4096, 1024, marks=pytest.mark.gpu_smoke), (3000, 256)])
def test_cuda_compiled_matches_reference_bf16(T, W):
    torch.manual_seed(2)
    q = torch.randn(1, 8, T, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, T, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    expected = sliding_window_attention_reference(q.float(), k.float(), v.float(), W)
    torch.testing.assert_close(sliding_window_flex(q, k, v, W).float(), expected, rtol=2e-2, atol=2e-2)
