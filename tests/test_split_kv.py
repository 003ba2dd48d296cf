"""The Triton split-KV decode attention against its reference (SDPA with enable_gqa and the mask).

On CPU the kernels run under TRITON_INTERPRET=1 in float32 (the interpreter computes bf16 wrong);
on CUDA in every dtype, and the models' decode with backend "splitkv" against "torch", captured
as a CUDA graph (in the GPU smoke set)."""

import pytest
import torch
from conftest import CUDA, INTERPRETED, kernel_devices

import baselines
import yoco
from yoco import backends
from yoco.ops.attention import cached_attention_reference

pytest.importorskip("triton")
if not CUDA and not INTERPRETED:
    pytest.skip("no CUDA and no Triton interpreter", allow_module_level=True)

from yoco.ops.split_kv_triton import BLOCK_N, default_splits, split_kv_attention  # noqa: E402

# (rtol, atol): bf16's rounding of outputs of about 0.1 is about 4e-4
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 2e-3)}


def inputs(B, H, H_kv, S, D, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g).to(device, dtype)
               for shape in ((B, H, 1, D), (B, H_kv, S, D), (B, H_kv, S, D)))
    return q, k, v


def check(q, k, v, valid, **kwargs):
    got = split_kv_attention(q, k, v, valid, **kwargs)
    want = cached_attention_reference(q.float(), k.float(), v.float(), valid)
    rtol, atol = TOLERANCE[q.dtype]
    assert got.dtype == q.dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("B,H,H_kv,S,D", [(2, 6, 2, 300, 32), (1, 4, 4, 130, 16), (1, 3, 1, 700, 24),
                                          (1, 16, 2, 64, 64), (1, 32, 1, 2500, 16)])
@pytest.mark.parametrize("n_splits", [None, 1, 3, 64])
def test_matches_reference_over_a_prefix(device, B, H, H_kv, S, D, n_splits):
    """A decode step's mask: slots 0..pos valid (the cache's), the rest hold stale values that
    must not count. Many splits leave some with no valid key at all."""
    q, k, v = inputs(B, H, H_kv, S, D, torch.float32, device, seed=S + D + (n_splits or 0))
    for length in (1, S // 3 + 1, S):
        valid = torch.arange(S, device=device) < length
        check(q, k, v, valid, n_splits=n_splits)


@pytest.mark.parametrize("device", kernel_devices())
def test_matches_reference_with_any_mask(device):
    """Any per-key mask, not only a prefix (the kernel reads it as the reference does)."""
    q, k, v = inputs(2, 8, 4, 500, 32, torch.float32, device, seed=1)
    g = torch.Generator().manual_seed(2)
    valid = (torch.rand(500, generator=g) < 0.3).to(device)
    valid[417] = True
    check(q, k, v, valid, n_splits=5)
    only_last = torch.zeros(500, dtype=torch.bool, device=device)
    only_last[-1] = True  # every split but the last is empty
    check(q, k, v, only_last, n_splits=7)


@pytest.mark.parametrize("device", kernel_devices())
def test_reads_strided_inputs_as_stored(device):
    """The step's q is a transposed view ([B, 1, H, D] -> [B, H, 1, D]); caches are contiguous
    slices of bigger buffers in some callers."""
    B, H, H_kv, S, D = 2, 4, 2, 200, 16
    q_t = torch.randn(B, 1, H, D, device=device)
    k_big = torch.randn(B, H_kv, S + 50, D, device=device)
    v_t = torch.randn(B, H_kv, D, S, device=device)  # v with strides unlike k's
    q, k, v = q_t.transpose(1, 2), k_big[:, :, :S], v_t.transpose(-1, -2)
    valid = torch.arange(S, device=device) < 150
    check(q, k, v, valid, n_splits=2)
    check(q, k, v, (torch.arange(2 * S, device=device) < 150)[::2])  # a strided mask


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype, S", [pytest.param(torch.bfloat16, 4224, marks=pytest.mark.gpu_smoke),
                                      pytest.param(torch.float32, 4224, marks=pytest.mark.gpu_smoke),
                                      (torch.bfloat16, 65536), (torch.float16, 4224)])
def test_cuda_dtypes_at_decode_shapes(dtype, S):
    """The 3b preset's decode shapes: 24 query heads over 8 KV heads, d 128 (bf16 at a 4K cache
    is in the GPU smoke set: one compile of each kernel)."""
    q, k, v = inputs(1, 24, 8, S, 128, dtype, "cuda", seed=S)
    valid = torch.arange(S, device="cuda") < S - 100
    check(q, k, v, valid)


def test_splits_cover_the_cache_and_fill_the_gpu():
    cpu = torch.device("cpu")
    assert default_splits(8, 100, cpu) == 1  # too short to split
    assert default_splits(8, 4224, cpu) == 4  # 4 waves x 8 "SMs" (the interpreter's) / 8 programs
    assert default_splits(1, 1 << 20, cpu) == 32
    assert BLOCK_N >= 16  # tl.dot's minimum


def test_bad_input_is_named():
    q, k, v = inputs(1, 4, 2, 64, 16, torch.float32, "cpu", seed=0)
    valid = torch.ones(64, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"expected q \[B, H, 1, D\].*\(1, 4, 2, 16\)"):
        split_kv_attention(q.expand(1, 4, 2, 16), k, v, valid)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of key/value heads \(3\)"):
        split_kv_attention(q, torch.randn(1, 3, 64, 16), torch.randn(1, 3, 64, 16), valid)
    with pytest.raises(ValueError, match=r"valid must be a bool \[S\] = \[64\] mask, got torch.int64 \(64,\)"):
        split_kv_attention(q, k, v, valid.long())
    with pytest.raises(ValueError, match="n_splits must be an integer >= 1, got 0"):
        split_kv_attention(q, k, v, valid, n_splits=0)
    with pytest.raises(ValueError, match="share one dtype.*torch.float32/torch.float64/torch.float32"):
        split_kv_attention(q, k.double(), v, valid)


def test_auto_never_picks_it(monkeypatch):
    """Opt-in until a GPU run has timed it: 'auto' on CUDA leaves it out even where it imports."""
    monkeypatch.setattr(backends, "available", lambda name: True)
    assert "splitkv" not in backends.resolve("auto", "cuda")
    assert backends.resolve("auto", "cuda") == "fla+flash_attn+apex"
    assert backends.resolve("splitkv", "cuda") == "splitkv"


def _build(arch, backend):
    torch.manual_seed(0)
    if arch == "transformer":
        return baselines.from_preset("tiny", n_layers=2, device="cuda", backend=backend).eval()
    return yoco.from_preset("tiny", self_decoder=arch, window=8, n_layers=2, device="cuda", backend=backend).eval()


@pytest.mark.gpu_smoke
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("arch", ["transformer", "swa", "gret"])
def test_models_captured_decode_with_splitkv_matches_sdpa(arch):
    """Same weights, backend 'splitkv' against 'torch': prefill, then 12 captured steps (the SWA
    ring of 8 wraps); a cache of 1100 slots splits in 4; the kernel must also capture as a CUDA graph."""
    plain, split = _build(arch, "torch"), _build(arch, "splitkv")
    split.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 512, (2, 1080), device="cuda")
    nexts = torch.randint(0, 512, (12, 2), device="cuda")
    logits = {}
    with torch.inference_mode():
        for name, model in (("torch", plain), ("splitkv", split)):
            cache = model.allocate_cache(2, 1100)
            model.prefill(tokens, cache)
            step = model.capture_decode(cache)
            model.prefill(tokens, cache)  # capture's warm-up steps wrote the cache
            logits[name] = [step(nxt).clone() for nxt in nexts]
    for i, (a, b) in enumerate(zip(logits["splitkv"], logits["torch"])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {i}")


def test_recorder_notes_the_kernel_where_it_runs():
    """bench's kernel record: a splitkv model's decode on a CPU runs SDPA (the kernel is CUDA
    only) and is noted as SDPA; on CUDA the split-KV calls are noted as such, no SDPA decode."""
    import yoco.layers
    from bench.measure.attention import Recorder

    original = yoco.layers.decode_attention
    devices = ["cpu"] + (["cuda"] if CUDA else [])
    for device in devices:
        torch.manual_seed(0)
        model = baselines.from_preset("tiny", n_layers=2, device=device, backend="splitkv").eval()
        cache = model.allocate_cache(1, 48)
        with torch.inference_mode(), Recorder() as rec:
            nxt = model.prefill(torch.randint(0, 512, (1, 40), device=device), cache).argmax(-1)
            for _ in range(3):
                nxt = model.decode_step(nxt, cache).argmax(-1)
        text = rec.summary()
        split = [n for (call, _), n in rec.calls.items() if call.startswith("split-KV decode (Triton)")]
        sdpa_decode = [n for (call, _), n in rec.calls.items() if call.startswith("SDPA") and "mask(bool)" in call]
        if device == "cpu":
            assert not split and sdpa_decode == [6], text  # 2 layers x 3 steps
        else:
            assert split == [6] and not sdpa_decode, text
            assert "split-KV decode (Triton) q 4x1 kv 2x48 d16 float32 mask(bool) x6" in text
    assert yoco.layers.decode_attention is original
