"""transformer-swa: exact cached inference through the ring, its cache, its window, its place in bench."""

import pytest
import torch
from conftest import DEVICES
from test_models import check_incremental, rel_err

import baselines
from baselines import transformer_swa
from bench import archs
from yoco.config import PRESETS


def build(window=16, dtype=torch.float32, device="cpu", **overrides):
    torch.manual_seed(0)
    return transformer_swa.from_preset("tiny", window=window, device=device, dtype=dtype, **overrides).eval()


@pytest.mark.parametrize("prompt_len", [5, 16, 37])  # shorter than, equal to, longer than the window
def test_cached_prefill_and_decode_equal_the_full_forward(prompt_len):
    check_incremental(build(window=16), prompt_len, new_tokens=12, batch=2, tol=1e-4)


def test_ring_stays_exact_after_many_wraps():
    check_incremental(build(window=4), prompt_len=6, new_tokens=40, batch=2, tol=1e-4)  # wraps 11 times


def test_ring_holds_the_last_window_of_keys():
    """Layer 0's keys depend on nothing windowed: slot p % W of the ring holds the baseline's key at p."""
    model = build(window=4)
    torch.manual_seed(0)
    base = baselines.from_preset("tiny").eval()  # same seed, same weights
    tokens = torch.randint(0, 512, (1, 10))
    ring, full = model.allocate_cache(1, 100), base.allocate_cache(1, 10)
    assert all(layer.k.shape[2] == 4 for layer in ring.layers)
    model.prefill(tokens, ring)
    base.prefill(tokens, full)
    for p in range(6, 10):
        torch.testing.assert_close(ring.layers[0].k[:, :, p % 4], full.layers[0].k[:, :, p], rtol=0, atol=0)
        torch.testing.assert_close(ring.layers[0].v[:, :, p % 4], full.layers[0].v[:, :, p], rtol=0, atol=0)


def test_window_covering_the_sequence_is_the_baseline():
    """Same seed, same weights; with W >= T every layer is plain causal attention."""
    tokens = torch.randint(0, 512, (2, 30))
    torch.manual_seed(0)
    base = baselines.from_preset("tiny").eval()
    wide, narrow = build(window=30), build(window=8)
    with torch.no_grad():
        torch.testing.assert_close(wide(tokens), base(tokens), rtol=0, atol=0)
        assert rel_err(narrow(tokens), base(tokens)) > 1e-3  # the window does bite below T


def test_output_ignores_tokens_beyond_the_receptive_field():
    """L layers of window W see L * (W - 1) tokens back: changing a token further back changes nothing."""
    model = build(window=4)
    reach = model.config.receptive_field
    assert reach == model.config.n_layers * 3 + 1
    tokens = torch.randint(0, 512, (1, 40))
    changed = tokens.clone()
    changed[0, 39 - reach] = (tokens[0, 39 - reach] + 1) % 512
    inside = tokens.clone()
    inside[0, 39 - reach + 1] = (tokens[0, 39 - reach + 1] + 1) % 512
    with torch.no_grad():
        last = model(tokens)[0, -1]
        torch.testing.assert_close(model(changed)[0, -1], last, rtol=0, atol=0)
        assert rel_err(model(inside)[0, -1], last) > 1e-6


def test_parameters_equal_the_baseline_for_every_preset():
    for preset in PRESETS:
        n = transformer_swa.from_preset(preset, device="meta").num_parameters()
        assert n == baselines.from_preset(preset, device="meta").num_parameters()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_formula_equals_allocated_bytes(dtype):
    for preset in PRESETS:  # the meta device: every preset, no memory
        model = transformer_swa.from_preset(preset, device="meta", dtype=dtype)
        for batch, seq_len in [(1, 1), (2, 1000), (3, 1 << 20)]:
            assert model.allocate_cache(batch, seq_len).nbytes() == model.kv_cache_bytes(batch, seq_len)
    model = build(window=16, dtype=dtype)  # real memory
    for batch, seq_len in [(1, 7), (2, 100)]:
        assert model.allocate_cache(batch, seq_len).nbytes() == model.kv_cache_bytes(batch, seq_len)
    # Constant past the window: W slots in every layer.
    c = model.config
    assert model.kv_cache_bytes(1, 10_000) == c.n_layers * 2 * c.n_kv_heads * 16 * c.head_dim * dtype.itemsize


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_bad_window_is_a_clear_error(window):
    with pytest.raises(ValueError, match=f"window must be an integer >= 1.*got {window!r}"):
        transformer_swa.from_preset("tiny", window=window, device="meta")


def test_bitnet_layers_come_from_make_linear():
    from yoco.bitnet import BitLinear

    model = build(window=8, bitnet="1.58bit")
    assert sum(isinstance(m, BitLinear) for m in model.modules()) == model.config.n_layers * 7
    check_incremental(model, prompt_len=12, new_tokens=6, batch=1, tol=1e-4)


def test_registered_as_a_windowed_arch_of_the_speed_suites():
    arch = archs.get("transformer-swa")
    assert arch.windowed and arch.bitnet
    model = arch.build("tiny", device="meta", dtype=torch.float32, window=32)
    assert isinstance(model, transformer_swa.TransformerSWA) and model.config.window == 32


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
def test_cuda_cached_inference_through_flex_attention():
    check_incremental(build(window=16, device="cuda"), prompt_len=200, new_tokens=8, tol=1e-3)
