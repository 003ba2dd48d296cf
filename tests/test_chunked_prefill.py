"""Chunked prefill: the logits and every cache tensor equal the one-chunk prefill, decode after it
equals decode after a plain one, and the prefill's activations stay bounded by the chunk."""

import pytest
import torch

import baselines
import yoco
from baselines import transformer_swa
from bench.measure.trackers import LiveTensorBytes

WINDOW = 16
ARCHS = ["gret", "swa", "transformer", "transformer-swa"]


def build(arch, dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    if arch == "transformer":
        return baselines.from_preset("tiny", dtype=dtype, **overrides).eval()
    if arch == "transformer-swa":
        return transformer_swa.from_preset("tiny", dtype=dtype, **{"window": WINDOW, **overrides}).eval()
    overrides = {"window": WINDOW, **overrides}
    return yoco.from_preset("tiny", self_decoder=arch, dtype=dtype, **overrides).eval()


def assert_rel_close(actual, expected, tol, what):
    err = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.3g} against max |value| {scale:.3g}"


def buffers(cache) -> dict[str, torch.Tensor]:
    return {name: b for name, b in cache.named_buffers()}


def compare_prefills(model, prompt_len, chunk_size, batch=2, new_tokens=4, tol=1e-4):
    """Chunked against one-chunk prefill: logits, every cache tensor, then decode steps."""
    tokens = torch.randint(0, model.config.vocab_size, (batch, prompt_len + new_tokens))
    prompt = tokens[:, :prompt_len]
    plain, chunked = (model.allocate_cache(batch, prompt_len + new_tokens) for _ in range(2))
    expected = model.prefill(prompt, plain)
    actual = model.prefill(prompt, chunked, chunk_size=chunk_size)
    assert_rel_close(actual, expected, tol, f"logits, chunk {chunk_size}")
    want, got = buffers(plain), buffers(chunked)
    assert want.keys() == got.keys() and len(want) > 1
    for name in want:
        assert_rel_close(got[name], want[name], tol, f"cache {name}, chunk {chunk_size}")
    assert chunked.length == plain.length == prompt_len
    for i in range(prompt_len, prompt_len + new_tokens):
        assert_rel_close(model.decode(tokens[:, i], chunked), model.decode(tokens[:, i], plain), tol,
                         f"decode at {i} after chunk {chunk_size}")


# 40 tokens: 8 and 20 divide it, 3 and 23 do not; 3 and 8 are shorter than the window (16), 20 and
# 23 longer, 16 equal to it; 1 is the extreme (every token its own chunk); 64 exceeds the prompt.
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 16, 20, 23, 64])
def test_chunked_prefill_equals_one_chunk(arch, chunk_size):
    compare_prefills(build(arch), prompt_len=40, chunk_size=chunk_size)


@pytest.mark.parametrize("arch", ["gret", "swa"])
def test_chunked_prefill_with_a_small_ring_and_gret_chunk(arch):
    """The SWA ring wraps inside and across chunks (W = 4); gRet's own chunk (5) does not divide
    the prefill chunk (12), so its internal chunks straddle the prefill's."""
    compare_prefills(build(arch, window=4, chunk_size=5), prompt_len=37, chunk_size=12)
    compare_prefills(build(arch, window=4, chunk_size=5), prompt_len=37, chunk_size=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_under_the_authors_numerics(arch):
    compare_prefills(build(arch, numerics="unilm"), prompt_len=30, chunk_size=7)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_in_a_larger_cache_and_batch_of_one(arch):
    model = build(arch)
    tokens = torch.randint(0, 512, (1, 29))
    plain, chunked = model.allocate_cache(1, 64), model.allocate_cache(1, 64)
    assert_rel_close(model.prefill(tokens, chunked, chunk_size=7), model.prefill(tokens, plain), 1e-4, "logits")
    for name, b in buffers(plain).items():
        assert_rel_close(buffers(chunked)[name], b, 1e-4, name)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_in_bf16(arch):
    model = build(arch, dtype=torch.bfloat16)
    tokens = torch.randint(0, 512, (2, 40))
    plain, chunked = model.allocate_cache(2, 40), model.allocate_cache(2, 40)
    assert_rel_close(model.prefill(tokens, chunked, chunk_size=12), model.prefill(tokens, plain), 5e-2, "logits")


@pytest.mark.parametrize("arch", ARCHS)
def test_a_chunked_prefill_starts_a_new_sequence(arch):
    """The cache's earlier sequence (longer, other tokens) leaves no trace in a chunked prefill."""
    model = build(arch)
    fresh, reused = model.allocate_cache(2, 48), model.allocate_cache(2, 48)
    model.prefill(torch.randint(0, 512, (2, 48)), reused, chunk_size=10)
    tokens = torch.randint(0, 512, (2, 30))
    assert_rel_close(model.prefill(tokens, reused, chunk_size=7), model.prefill(tokens, fresh), 1e-4, "logits")
    nxt = torch.tensor([1, 2])
    assert_rel_close(model.decode(nxt, reused), model.decode(nxt, fresh), 1e-4, "decode")


@pytest.mark.parametrize("arch", ["gret", "swa"])
def test_chunked_prefill_runs_the_cross_decoder_once_on_the_last_position(arch):
    model = build(arch)
    seen = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
             for layer in model.cross_layers]
    model.prefill(torch.randint(0, 512, (2, 37)), model.allocate_cache(2, 37), chunk_size=8)
    for h in hooks:
        h.remove()
    assert seen == [1] * len(model.cross_layers)


@pytest.mark.gpu_smoke
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_chunked_prefill_equals_one_chunk(arch):
    """On CUDA in bf16 (FlexAttention for SWA past the window, the lower-right causal bias for the
    baseline; fla's gRet kernels with backend="fla" where fla-core imports)."""
    from yoco.backends import available

    backends = ["torch"] + (["fla"] if arch == "gret" and available("fla") else [])
    for backend in backends:
        torch.manual_seed(0)
        if arch == "transformer":
            model = baselines.from_preset("tiny", device="cuda", dtype=torch.bfloat16, n_heads=6, n_kv_heads=2)
        elif arch == "transformer-swa":
            model = transformer_swa.from_preset("tiny", device="cuda", dtype=torch.bfloat16, window=32, n_heads=6,
                                                n_kv_heads=2)
        else:
            model = yoco.from_preset("tiny", self_decoder=arch, device="cuda", dtype=torch.bfloat16, window=32,
                                     n_heads=6, n_kv_heads=2, backend=backend)
        model.eval()
        tokens = torch.randint(0, 512, (2, 200), device="cuda")
        plain, chunked = model.allocate_cache(2, 204), model.allocate_cache(2, 204)
        assert_rel_close(model.prefill(tokens, chunked, chunk_size=48), model.prefill(tokens, plain), 5e-2,
                         f"logits ({backend})")
        for name, b in buffers(plain).items():
            assert_rel_close(buffers(chunked)[name], b, 5e-2, f"{name} ({backend})")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_chunk_size_is_refused_by_name(bad):
    model = build("gret")
    cache = model.allocate_cache(1, 8)
    with pytest.raises(ValueError, match=f"chunk_size must be None .* or an integer >= 1, got {bad!r}"):
        model.prefill(torch.zeros(1, 8, dtype=torch.long), cache, chunk_size=bad)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_activations_are_bounded_by_the_chunk(arch):
    """Tensor memory allocated during the prefill, on top of weights and cache (torch's own
    accounting): the same at 1024 tokens as at 128 with a 32-token chunk, where a one-chunk
    prefill grows with the prompt."""
    if arch.startswith("transformer"):
        model = build(arch, **({"window": 32} if arch == "transformer-swa" else {}))
    else:
        model = build(arch, window=32, chunk_size=32)

    def peak(n, chunk_size):
        cache = model.allocate_cache(1, n)
        tokens = torch.randint(0, 512, (1, n))
        with LiveTensorBytes() as live:
            model.prefill(tokens, cache, chunk_size=chunk_size)
        return live.peak

    short, long = peak(128, 32), peak(1024, 32)
    assert long < 1.1 * short, (short, long)
    assert peak(1024, None) > 4 * short  # the same accounting sees a whole prompt's activations
