"""Exact cached inference, early exit, caches and input checks for YOCO and the baseline."""

import pytest
import torch
from conftest import DEVICES

import baselines
import yoco
from yoco.config import BITNET_MODES, PRESETS

WINDOW, CHUNK = 16, 16


def build(arch, device="cpu", dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    if arch == "transformer":
        model = baselines.from_preset("tiny", device=device, dtype=dtype, **overrides)
    else:
        overrides = {"window": WINDOW, "chunk_size": CHUNK, **overrides}
        model = yoco.from_preset("tiny", self_decoder=arch, device=device, dtype=dtype, **overrides)
    return model.eval()


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def check_incremental(model, prompt_len, new_tokens, batch=2, cache_len=None, tol=1e-4):
    """prefill == full forward at the prompt's last position; each decode == full forward of
    prompt + tokens so far at its last position."""
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (batch, prompt_len + new_tokens), device=model.device)
    cache = model.allocate_cache(batch, cache_len or prompt_len + new_tokens)
    with torch.no_grad():
        full = model(tokens)
    assert rel_err(model.prefill(tokens[:, :prompt_len], cache), full[:, prompt_len - 1]) < tol
    for i in range(prompt_len, prompt_len + new_tokens):
        assert rel_err(model.decode(tokens[:, i], cache), full[:, i]) < tol, f"decode at position {i}"
    assert cache.length == prompt_len + new_tokens
    return tokens, cache


ARCHS = ["gret", "swa", "transformer"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prompt_len", [5, WINDOW, 37])  # shorter, equal, longer than the window;
def test_cached_inference_is_exact(arch, prompt_len):  # 5 and 37: the chunk size does not divide them
    check_incremental(build(arch), prompt_len, new_tokens=12, batch=2)


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_of_one_and_larger_cache(arch):
    check_incremental(build(arch), prompt_len=9, new_tokens=5, batch=1, cache_len=64)


def test_swa_ring_buffer_stays_exact_after_many_wraps():
    model = build("swa", window=4)
    check_incremental(model, prompt_len=6, new_tokens=40, batch=2)  # the ring wraps 11 times


def test_swa_with_window_beyond_sequence_equals_full_attention():
    """With W >= T the SWA self-decoder is plain causal attention: same weights, same logits."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 512, (2, 30))
    wide = build("swa", window=30)
    wider = build("swa", window=1000)
    wider.load_state_dict(wide.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(wide(tokens), wider(tokens), rtol=0, atol=0)
    narrow = build("swa", window=8)
    narrow.load_state_dict(wide.state_dict())
    with torch.no_grad():
        assert rel_err(narrow(tokens), wide(tokens)) > 1e-3  # the window does bite below T


@pytest.mark.parametrize("arch", ["gret", "swa"])
def test_prefill_runs_cross_decoder_on_last_position_only(arch):
    model = build(arch)
    seen = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
             for layer in model.cross_layers]
    tokens = torch.randint(0, 512, (2, 37))
    cache = model.allocate_cache(2, 40)
    last = model.prefill(tokens, cache)
    assert seen == [1] * len(model.cross_layers)
    seen.clear()
    with torch.no_grad():
        full = model(tokens)
    assert seen == [37] * len(model.cross_layers)
    for h in hooks:
        h.remove()
    assert rel_err(last, full[:, -1]) < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_cached_inference(arch):
    check_incremental(build(arch, dtype=torch.bfloat16), prompt_len=20, new_tokens=4, tol=5e-2)


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_cached_inference(arch):
    check_incremental(build(arch, device="cuda"), prompt_len=37, new_tokens=8, tol=1e-3)


@pytest.mark.gpu_smoke
@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_bf16_decode_at_grouped_query_shapes(arch):
    """bf16 on CUDA with 3 query heads per key/value head (3b's 24 / 8): prefill and every decode
    step equal the full forward. The prompt stays within the window (SDPA, not FlexAttention,
    which tests/test_flex_attention.py checks on CUDA)."""
    model = build(arch, device="cuda", dtype=torch.bfloat16, n_heads=6, n_kv_heads=2, head_dim=16,
                  **({} if arch == "transformer" else {"window": 64}))
    check_incremental(model, prompt_len=40, new_tokens=6, tol=5e-2)


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_step_matches_decode(arch):
    model = build(arch)
    tokens = torch.randint(0, 512, (2, 12))
    a, b = model.allocate_cache(2, 16), model.allocate_cache(2, 16)
    model.prefill(tokens, a), model.prefill(tokens, b)
    nxt = torch.tensor([3, 4])
    torch.testing.assert_close(model.decode(nxt, a), model.decode_step(nxt, b), rtol=0, atol=0)


# --- caches -----------------------------------------------------------------------------------

def all_models(device, dtype):
    for preset in PRESETS:
        yield baselines.from_preset(preset, device=device, dtype=dtype)
        for self_decoder in ("gret", "swa"):
            yield yoco.from_preset(preset, self_decoder=self_decoder, device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cache_bytes_match_formula_for_every_preset(dtype):
    """Allocated on the meta device (no memory), so every preset can be checked."""
    for model in all_models("meta", dtype):
        for batch, seq_len in [(1, 1), (2, 1000), (3, 4096)]:
            cache = model.allocate_cache(batch, seq_len)
            assert cache.nbytes() == model.kv_cache_bytes(batch, seq_len), (model.config, batch, seq_len)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_match_formula_on_real_memory(arch, dtype):
    model = build(arch, dtype=dtype)
    for batch, seq_len in [(1, 7), (2, 100)]:
        assert model.allocate_cache(batch, seq_len).nbytes() == model.kv_cache_bytes(batch, seq_len)


def test_3b_cache_per_token_in_bf16():
    base = baselines.from_preset("3b", device="meta", dtype=torch.bfloat16)
    assert base.kv_cache_bytes(1, 2) - base.kv_cache_bytes(1, 1) == 104 * 1024
    for self_decoder in ("gret", "swa"):
        m = yoco.from_preset("3b", self_decoder=self_decoder, device="meta", dtype=torch.bfloat16)
        per_token = m.kv_cache_bytes(1, 65536) - m.kv_cache_bytes(1, 65535)
        assert per_token == 4 * 1024
        # The self-decoder's cache is constant in N: total minus the global cache.
        self_at = [m.kv_cache_bytes(1, n) - n * per_token for n in (1024, 65536)]
        assert self_at[0] == self_at[1] > 0


def test_yoco_cache_is_smaller_than_baseline_by_about_half_the_layers():
    base = baselines.from_preset("3b", device="meta", dtype=torch.bfloat16)
    m = yoco.from_preset("3b", device="meta", dtype=torch.bfloat16)
    ratio = base.kv_cache_bytes(1, 1 << 20) / m.kv_cache_bytes(1, 1 << 20)
    assert 20 < ratio <= 26  # L = 26 layers; gRet's constant state takes a little of it


@pytest.mark.parametrize("preset", list(PRESETS))
def test_twins_are_parameter_matched_within_5_percent(preset):
    base = baselines.from_preset(preset, device="meta").num_parameters()
    for self_decoder in ("gret", "swa"):
        n = yoco.from_preset(preset, self_decoder=self_decoder, device="meta").num_parameters()
        assert abs(n / base - 1) < 0.05, (preset, self_decoder, n, base)


def test_3b_is_the_official_config():
    c = yoco.from_preset("3b", device="meta").config
    assert (c.d_model, c.ffn_dim, c.n_layers, c.n_heads, c.n_self_heads, c.n_kv_heads, c.head_dim) == (
        3072, 8192, 26, 24, 24, 8, 128)


def test_meta_device_builds_the_largest_preset_without_memory():
    m = yoco.from_preset("13b", device="meta")
    assert m.embed.weight.is_meta and m.num_parameters() > 13e9


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_token_ids_out_of_range(arch):
    model = build(arch)
    cache = model.allocate_cache(1, 8)
    for bad in (torch.tensor([[1, 512]]), torch.tensor([[-1, 2]])):
        with pytest.raises(ValueError, match="vocab_size=512"):
            model(bad)
        with pytest.raises(ValueError, match="vocab_size=512"):
            model.prefill(bad, cache)
    model.prefill(torch.tensor([[1, 2]]), cache)
    with pytest.raises(ValueError, match="vocab_size=512"):
        model.decode(torch.tensor([600]), cache)


@pytest.mark.parametrize("arch", ARCHS)
def test_too_long_prompt_writes_nothing(arch):
    model = build(arch)
    tokens = torch.randint(0, 512, (2, 20))
    cache = model.allocate_cache(2, 20)
    model.prefill(tokens[:, :12], cache)
    before = [b.clone() for b in cache.buffers()]
    with pytest.raises(ValueError, match="max_seq_len=20"):
        model.prefill(torch.randint(0, 512, (2, 21)), cache)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.buffers()))
    with torch.no_grad():
        full = model(tokens)
    for i in range(12, 20):  # the cache still gives exact results
        assert rel_err(model.decode(tokens[:, i], cache), full[:, i]) < 1e-4
    before = [b.clone() for b in cache.buffers()]
    with pytest.raises(ValueError, match="max_seq_len=20"):
        model.decode(tokens[:, 0], cache)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.buffers()))
    assert cache.length == 20
    assert rel_err(model.prefill(tokens[:, :5], cache), full[:, 4]) < 1e-4  # a new sequence starts


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_before_prefill(arch):
    model = build(arch)
    with pytest.raises(ValueError, match="before prefill"):
        model.decode(torch.tensor([1]), model.allocate_cache(1, 8))


def test_batch_mismatch_and_bad_shapes():
    model = build("gret")
    cache = model.allocate_cache(2, 8)
    with pytest.raises(ValueError, match="batch_size=2"):
        model.prefill(torch.zeros(3, 4, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"shape \[B, T\]"):
        model(torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("field, value, listed", [
    ("self_decoder", "lstm", "'gret', 'swa'"),
    ("bitnet", "2bit", ", ".join(map(repr, BITNET_MODES))),
    ("backend", "cudnn", "'torch', 'fla', 'flash_attn', 'apex'"),
])
def test_unknown_choices_list_valid_values(field, value, listed):
    with pytest.raises(ValueError, match=f"unknown {field}.*{value}.*{listed}"):
        yoco.from_preset("tiny", **{field: value}, device="meta")


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*'tiny'"):
        yoco.from_preset("huge")
    with pytest.raises(ValueError, match="unknown preset 'huge'.*'3b'"):
        baselines.from_preset("huge")
    with pytest.raises(ValueError, match="unknown config field.*'windw'"):
        yoco.from_preset("tiny", windw=3)
    with pytest.raises(ValueError, match="unknown config field.*'window'"):
        baselines.from_preset("tiny", window=3)  # the baseline has no window


@pytest.mark.parametrize("arch, parts", [("gret", ("fla", "flash_attn", "apex", "splitkv")),
                                         ("swa", ("flash_attn", "apex", "splitkv"))])
def test_auto_backend_is_resolved_for_the_models_device_and_parts(arch, parts, monkeypatch):
    """On a CPU "auto" is always "torch", so only a spy sees what the build asks for on a GPU."""
    from yoco import backends

    asked = []
    monkeypatch.setattr(backends, "resolve", lambda backend, device, parts: asked.append((backend, device, parts))
                        or "torch")
    yoco.from_preset("tiny", self_decoder=arch, device="meta")
    assert asked == [("auto", "meta", parts)]


def test_weights_start_normal_with_std_0_02():
    """GPT-2's initialisation, which the quality runs train from (the norms keep their ones)."""
    torch.manual_seed(0)
    model = yoco.from_preset("small")
    weight = model.self_layers[0].mixer.wq.weight
    assert abs(weight.std().item() - 0.02) < 0.001 and abs(weight.mean().item()) < 0.001
    assert torch.all(model.kv_norm.weight == 1)


def test_backend_that_does_not_import_is_refused():
    from yoco.backends import available

    if available("flash_attn"):
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ValueError, match="flash_attn.*install flash-attn"):
        yoco.from_preset("tiny", backend="flash_attn", device="meta")


def test_fla_backend_falls_back_to_the_reference_off_cuda():
    """On CPU the fla backend runs PyTorch's reference: same logits as the default backend."""
    from yoco.backends import available

    if not available("fla"):
        pytest.skip("fla-core does not import here")
    default = build("gret")
    fla = build("gret", backend="fla")
    tokens = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(fla(tokens), default(tokens), rtol=0, atol=0)


def test_cross_attention_takes_all_queries_or_the_last():
    model = build("gret")
    layer = model.cross_layers[0].mixer
    x, k = torch.randn(1, 2, 64), torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="cross-attention takes all 5 queries or the last one, got 2"):
        layer(x, k, k, torch.arange(3, 5))
