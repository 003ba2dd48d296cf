"""hf-llama: HF's LlamaForCausalLM holding our Transformer's weights gives the same logits
(full forward, prefill, decode), which shows our baseline is a real Llama."""

import subprocess
import sys

import pytest
import torch

import baselines
from baselines import hf_llama

needs_transformers = pytest.mark.skipif(not hf_llama.available(), reason="HF transformers is not installed")


def _randomized_transformer(**overrides) -> baselines.Transformer:
    """Our baseline with every weight random, norms included (ones would hide a wrong mapping)."""
    model = baselines.from_preset("tiny", **overrides).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.rand_like(p))
            elif name == "embed.weight":
                p.normal_(0, 1)
            else:
                p.normal_(0, p.shape[1] ** -0.5)  # unit-scale activations: logits of order 1
    return model


def _close(actual, expected, rtol=1e-4, msg=""):
    """Relative to the largest logit: fp32 paths that sum in a different order."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=msg)


CONFIGS = {
    "tiny-gqa": {},  # 4 query heads over 2 key/value heads
    "mha-theta5e5-eps1e-5": dict(n_kv_heads=4, rope_theta=500000.0, norm_eps=1e-5),
}


@needs_transformers
@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_logits_match_our_transformer(overrides):
    torch.manual_seed(0)
    ours = _randomized_transformer(**overrides)
    hf = hf_llama.from_transformer(ours)
    assert hf.config == ours.config
    tokens = torch.randint(0, ours.config.vocab_size, (2, 37))
    with torch.no_grad():
        full = ours(tokens)
        assert full.abs().max() > 1  # logits large enough that a 1e-4 relative check means something
        _close(hf(tokens), full, msg="full forward")

    caches = ours.allocate_cache(2, 48), hf.allocate_cache(2, 48)
    for prompt in (tokens[:, :29], tokens[:, :7]):  # a second prefill starts a new sequence
        expected = ours.prefill(prompt, caches[0])
        _close(hf.prefill(prompt, caches[1]), expected, msg="prefill")
        _close(expected, full[:, prompt.shape[1] - 1], msg="our prefill vs forward")
        for step in range(6):
            nxt = torch.randint(0, ours.config.vocab_size, (2,))
            _close(hf.decode(nxt, caches[1]), ours.decode(nxt, caches[0]), msg=f"decode step {step}")
        assert caches[1].length == caches[0].length == prompt.shape[1] + 6


@needs_transformers
def test_chunked_prefill_matches_one_chunk():
    """hf-llama's prefill in chunks (calls in a row over HF's static cache) equals ours in one."""
    torch.manual_seed(2)
    ours = _randomized_transformer()
    hf = hf_llama.from_transformer(ours)
    tokens = torch.randint(0, 512, (2, 30))
    caches = ours.allocate_cache(2, 40), hf.allocate_cache(2, 40)
    expected = ours.prefill(tokens[:, :26], caches[0])
    _close(hf.prefill(tokens[:, :26], caches[1], chunk_size=7), expected, msg="chunked prefill")
    for i in range(26, 30):
        _close(hf.decode(tokens[:, i], caches[1]), ours.decode(tokens[:, i], caches[0]), msg=f"decode at {i}")


@needs_transformers
def test_a_wrong_weight_mapping_is_caught():
    """The check above can fail: swapping the SwiGLU gate and up projections changes the logits."""
    torch.manual_seed(1)
    ours = _randomized_transformer()
    hf = hf_llama.from_transformer(ours)
    with torch.no_grad():
        mlp = hf.hf.model.layers[0].mlp
        gate = mlp.gate_proj.weight.clone()
        mlp.gate_proj.weight.copy_(mlp.up_proj.weight)
        mlp.up_proj.weight.copy_(gate)
        tokens = torch.randint(0, 512, (1, 16))
        with pytest.raises(AssertionError):
            _close(hf(tokens), ours(tokens))


@needs_transformers
def test_bf16_logits_close():
    """bf16 weights and cache: agree to bf16 rounding (HF rounds rotary and norms at other points)."""
    torch.manual_seed(2)
    ours = _randomized_transformer(n_layers=2).to(torch.bfloat16)
    hf = hf_llama.from_transformer(ours)
    assert hf.dtype == torch.bfloat16
    tokens = torch.randint(0, 512, (1, 24))
    caches = ours.allocate_cache(1, 32), hf.allocate_cache(1, 32)
    assert caches[1].layer_tensors()[0][0].dtype == torch.bfloat16
    _close(hf.prefill(tokens, caches[1]).float(), ours.prefill(tokens, caches[0]).float(), rtol=5e-2)
    nxt = torch.tensor([3])
    _close(hf.decode(nxt, caches[1]).float(), ours.decode(nxt, caches[0]).float(), rtol=5e-2)


@needs_transformers
@pytest.mark.parametrize("preset", ["tiny", "3b"])
def test_sizes_match_our_transformer(preset):
    """Built on meta: same parameter count and cache formula as our twin at a paper size."""
    dtype = torch.bfloat16
    ours = baselines.from_preset(preset, device="meta", dtype=dtype)
    hf = hf_llama.from_preset(preset, device="meta", dtype=dtype)
    assert hf.config == ours.config
    assert hf.num_parameters() == ours.num_parameters()
    # HF also stores rotary inverse frequencies (float32 buffers) beside the weights
    assert 0 <= hf.weight_bytes() - ours.weight_bytes() <= 2 * 4 * ours.config.head_dim
    for batch, seq in ((1, 4096), (2, 1 << 20)):
        assert hf.kv_cache_bytes(batch, seq) == ours.kv_cache_bytes(batch, seq)


@needs_transformers
def test_allocated_cache_is_static_and_sized():
    hf = hf_llama.from_preset("tiny", n_layers=2)
    cache = hf.allocate_cache(3, 40)
    assert cache.nbytes() == hf.kv_cache_bytes(3, 40) > 0
    assert (cache.batch_size, cache.max_seq_len, cache.length) == (3, 40, 0)
    assert len(cache.layer_tensors()) == 2
    for keys, values in cache.layer_tensors():
        assert keys.shape == values.shape == (3, 2, 40, 16) and not keys.any() and not values.any()


@needs_transformers
def test_prefill_rewinds_without_zeroing_the_cache():
    """A new sequence rewinds HF's write positions (set_length) but does not zero every key and
    value (HF's reset): work our models do not do, so a timed prefill would not be the same work.
    The logits show that what is left past the position is masked out."""
    torch.manual_seed(5)
    ours = _randomized_transformer(n_layers=2)
    hf = hf_llama.from_transformer(ours)
    tokens = torch.randint(0, 512, (1, 30))
    used, fresh = hf.allocate_cache(1, 40), hf.allocate_cache(1, 40)
    hf.prefill(tokens, used)
    hf.decode(torch.tensor([3]), used)
    resets = []
    used.static.reset = lambda: resets.append(1)
    prompt = tokens[:, :9]
    _close(hf.prefill(prompt, used), hf.prefill(prompt, fresh), msg="prefill over a used cache")
    for step in range(3):
        nxt = torch.tensor([7 + step])
        _close(hf.decode(nxt, used), hf.decode(nxt, fresh), msg=f"decode step {step}")
    assert resets == [] and any(k[:, :, 12:].any() for k, _ in used.layer_tensors())  # stale keys stay, masked


@needs_transformers
def test_bad_input():
    with pytest.raises(ValueError, match="bitnet must be 'none'"):
        hf_llama.from_preset("tiny", bitnet="1.58bit")
    with pytest.raises(ValueError, match="backend 'torch'"):
        hf_llama.from_preset("tiny", backend="fla")
    hf = hf_llama.from_preset("tiny", n_layers=1, max_seq_len=64)
    with pytest.raises(ValueError, match="max_seq_len"):
        hf.allocate_cache(1, 65)
    cache = hf.allocate_cache(1, 8)
    with pytest.raises(ValueError, match="decode before prefill"):
        hf.decode(torch.tensor([1]), cache)
    with pytest.raises(ValueError, match="exceeds the cache"):
        hf.prefill(torch.zeros(1, 9, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="token ids"):
        hf.prefill(torch.full((1, 4), 512), cache)
    with pytest.raises(ValueError, match="batch of 2"):
        hf.prefill(torch.zeros(2, 4, dtype=torch.long), cache)


def test_baselines_import_without_transformers():
    """`import baselines` and `baselines.hf_llama` work where transformers is absent."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"  # makes `import transformers` fail
        "import baselines\n"
        "from baselines import hf_llama\n"
        "assert not hf_llama.available()\n"
        "try:\n"
        "    hf_llama.from_preset('tiny')\n"
        "except ImportError as e:\n"
        "    assert 'pip install transformers' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('from_preset built a model without transformers')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@needs_transformers
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"), reason="torch.compiler.set_stance needs torch >= 2.6")
def test_compiled_decode_matches_eager_without_recompiling():
    torch.manual_seed(3)
    ours = _randomized_transformer(n_layers=1)  # one layer: the compile is most of this test's time
    hf = hf_llama.from_transformer(ours)
    hf.compile_decode()
    caches = ours.allocate_cache(2, 32), hf.allocate_cache(2, 32)
    tokens = torch.randint(0, 512, (2, 20))
    try:
        for prompt in (tokens, tokens[:, :5]):
            ours.prefill(prompt, caches[0])
            hf.prefill(prompt, caches[1])
            for step in range(4):
                nxt = torch.randint(0, 512, (2,))
                _close(hf.decode(nxt, caches[1]), ours.decode(nxt, caches[0]), msg=f"step {step}")
                # one graph for every position and sequence: the position lives on the device
                torch.compiler.set_stance("fail_on_recompile")
    finally:
        torch.compiler.set_stance("default")


@needs_transformers
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_compiled_decode_matches_ours():
    """On the GPU: bf16 weights, SDPA kernels, the decode step under CUDA graphs
    (reduce-overhead), against our Transformer's eager path."""
    torch.manual_seed(4)
    ours = _randomized_transformer(n_layers=2).to("cuda", torch.bfloat16)
    hf = hf_llama.from_transformer(ours)
    hf.compile_decode()
    tokens = torch.randint(0, 512, (2, 300), device="cuda")
    caches = ours.allocate_cache(2, 320), hf.allocate_cache(2, 320)
    _close(hf.prefill(tokens, caches[1]).float(), ours.prefill(tokens, caches[0]).float(), rtol=5e-2)
    for step in range(8):
        nxt = torch.randint(0, 512, (2,), device="cuda")
        _close(hf.decode(nxt, caches[1]).float(), ours.decode(nxt, caches[0]).float(), rtol=5e-2,
               msg=f"step {step}")
