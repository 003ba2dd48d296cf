"""bench.measure.attention: which kernel torch picks for an attention call, and the recorder
that notes every distinct call a model makes."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import baselines
import yoco
import yoco.layers
from bench.measure import attention
from bench.measure.attention import Recorder, refusals


def qkv(heads=4, kv_heads=2, length=64, dim=16, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    q = torch.randn(1, heads, length, dim, device=device, dtype=dtype)
    k, v = (torch.randn(1, kv_heads, length, dim, device=device, dtype=dtype) for _ in range(2))
    return q, k, v


def test_choice_follows_what_torch_allows():
    q, k, v = qkv(kv_heads=4)
    assert attention.sdpa_kernel(q, k, v, is_causal=True) in ("flash", "math")
    with sdpa_kernel(SDPBackend.MATH):  # only math allowed: the helper must see that too
        assert attention.sdpa_kernel(q, k, v, is_causal=True) == "math"


def test_recorder_notes_each_distinct_call_and_puts_everything_back():
    sdpa, gret = F.scaled_dot_product_attention, yoco.layers.gated_retention
    # Decode steps and the cross-decoder's last-position query fold the 2 query heads of each KV
    # head into the query length (yoco.ops.attention.attention): 2 heads x 2 queries, no gqa.
    for model, expected in ((baselines.from_preset("tiny"), ["q 4x40 kv 2x40 d16 float32 causal gqa",
                                                            "q 2x2 kv 2x48 d16 float32 mask(bool): "]),
                            (yoco.from_preset("tiny", self_decoder="gret"), ["gRet torch chunk", "gRet step torch",
                                                                              "q 2x2 kv 2x40 d16 float32: "])):
        model.eval()
        cache = model.allocate_cache(1, 48)
        with Recorder() as rec:
            nxt = model.prefill(torch.randint(0, 512, (1, 40)), cache).argmax(-1)
            for _ in range(3):
                nxt = model.decode_step(nxt, cache).argmax(-1)
        text = rec.summary()
        for call in expected:
            assert call in text, (call, text)
        assert rec.kernels() <= {"flash", "math"} and rec.kernels()
        steps = [n for (call, _), n in rec.calls.items() if "mask(bool)" in call or "step" in call]
        assert steps and all(n % 3 == 0 for n in steps)  # three steps: every per-step call seen three times
    assert F.scaled_dot_product_attention is sdpa and yoco.layers.gated_retention is gret


def test_start_stop_for_code_that_cannot_indent():
    rec = Recorder().start()
    q, k, v = qkv()
    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert rec.stop().summary().startswith("SDPA q 4x64 kv 2x64 d16 float32 gqa: ")
    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert sum(rec.calls.values()) == 1  # stopped: no longer noting


def test_refusals_are_cuda_checks():
    q, k, v = qkv()
    assert all(r and "not on CUDA" in r[0] for r in refusals(q, k, v, enable_gqa=True).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_flash_takes_plain_causal_bf16_and_refuses_a_mask_with_reasons():
    q, k, v = qkv(heads=8, kv_heads=8, length=256, dim=128, device="cuda", dtype=torch.bfloat16)
    assert attention.sdpa_kernel(q, k, v, is_causal=True) == "flash"
    assert refusals(q, k, v, is_causal=True)["flash"] == []
    mask = torch.ones(256, 256, dtype=torch.bool, device="cuda").tril()
    assert attention.sdpa_kernel(q, k, v, attn_mask=mask) != "flash"
    assert refusals(q, k, v, attn_mask=mask)["flash"]  # at least one reason, in torch's words
