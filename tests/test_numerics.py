"""The two numerics (yoco.config.NUMERICS) from their formulas, and backend resolution."""

import math

import pytest
import torch

import baselines
import yoco
from yoco import backends
from yoco.config import NORM_EPS
from yoco.ops.rope import apply_rope, inverse_frequencies, rope_angles


def test_frequency_tables_from_the_formulas():
    D, theta = 16, 10000.0
    llama = inverse_frequencies(D, theta, "llama")
    unilm = inverse_frequencies(D, theta, "unilm")
    for i in range(D // 2):
        assert math.isclose(llama[i].item(), theta ** (-2 * i / D), rel_tol=1e-6)
        assert math.isclose(unilm[i].item(), theta ** (-i / (D // 2 - 1)), rel_tol=1e-6)
    assert unilm[0] == 1 and math.isclose(unilm[-1].item(), 1 / theta, rel_tol=1e-6)  # exponents 0 .. 1


@pytest.mark.parametrize("style", ["llama", "unilm"])
def test_rotary_layouts_pair_the_right_dimensions(style):
    """Rotating position p turns each pair (a, b) by p * inv_freq: in the llama layout the pair is
    (i, i + D/2), in the unilm layout (2i, 2i + 1)."""
    D, p = 8, 3
    x = torch.randn(1, 1, 1, D, dtype=torch.float64).float()
    cos, sin = rope_angles(torch.tensor([p]), D, 100.0, style)
    y = apply_rope(x, cos, sin, style)[0, 0, 0]
    x = x[0, 0, 0]
    inv = inverse_frequencies(D, 100.0, style)
    for i in range(D // 2):
        a_idx, b_idx = (i, i + D // 2) if style == "llama" else (2 * i, 2 * i + 1)
        angle = p * inv[i].item()
        a, b = x[a_idx].item(), x[b_idx].item()
        assert math.isclose(y[a_idx].item(), a * math.cos(angle) - b * math.sin(angle), abs_tol=1e-5)
        assert math.isclose(y[b_idx].item(), b * math.cos(angle) + a * math.sin(angle), abs_tol=1e-5)


@pytest.mark.parametrize("self_decoder", ["gret", "swa"])
def test_unilm_numerics_switch_all_three_details(self_decoder):
    m = yoco.from_preset("tiny", self_decoder=self_decoder, numerics="unilm")
    assert m.config.norm_eps == NORM_EPS["unilm"] == 1e-5
    assert all(n.eps == 1e-5 for n in m.modules() if isinstance(n, torch.nn.RMSNorm))
    assert m.config.embed_scale == math.sqrt(m.config.d_model)
    tokens = torch.tensor([[3, 1, 4]])
    assert torch.equal(m._embed(tokens), m.embed(tokens) * math.sqrt(64))
    # the switches change the function: the same weights under llama numerics give other logits
    twin = yoco.from_preset("tiny", self_decoder=self_decoder, numerics="llama", norm_eps=1e-5)
    twin.load_state_dict(m.state_dict())
    with torch.no_grad():
        a, b = m(tokens), twin(tokens * 1)
    assert not torch.allclose(a, b)


def test_default_numerics_are_llama_for_both_models():
    for m in (yoco.from_preset("tiny", device="meta"), baselines.from_preset("tiny", device="meta")):
        assert m.config.numerics == "llama" and m.config.norm_eps == 1e-6 and m.config.embed_scale == 1.0


def test_explicit_norm_eps_wins():
    assert yoco.from_preset("tiny", numerics="unilm", norm_eps=1e-3, device="meta").config.norm_eps == 1e-3


def test_bad_numerics_and_hf_llama():
    with pytest.raises(ValueError, match="unknown numerics 'fairseq'.*'llama', 'unilm'"):
        yoco.from_preset("tiny", numerics="fairseq")
    from baselines import hf_llama

    if hf_llama.available():
        with pytest.raises(ValueError, match="numerics must be 'llama', got 'unilm'"):
            hf_llama.from_preset("tiny", numerics="unilm")


# ---- backends ----

def test_auto_resolves_to_torch_off_cuda():
    for m in (yoco.from_preset("tiny"), baselines.from_preset("tiny")):
        assert m.config.backend == "torch" and m.backend_used() == "torch"


def test_auto_on_cuda_takes_the_parts_this_model_uses(monkeypatch):
    """Resolution only: which parts a CUDA build would take where they import (no GPU needed)."""
    monkeypatch.setattr(backends, "available", lambda part: part == "fla")
    gret = yoco.model.YOCO.optional_parts(yoco.config.yoco_config("tiny", self_decoder="gret"))
    swa = yoco.model.YOCO.optional_parts(yoco.config.yoco_config("tiny", self_decoder="swa"))
    assert backends.resolve("auto", "cuda", gret) == "fla"
    assert backends.resolve("auto", "cuda", swa) == "torch"
    assert backends.resolve("auto", torch.device("cuda", 0), gret) == "fla"
    assert backends.resolve("auto", "cpu", gret) == "torch"
    assert backends.used("fla", "cuda", gret) == "fla" and backends.used("fla", "cuda", swa) == "torch"
    assert backends.used("fla", "cpu", gret) == "torch"


def test_asking_for_fla_where_it_does_not_import_is_an_error(monkeypatch):
    monkeypatch.setattr(backends, "available", lambda part: False)
    with pytest.raises(ValueError, match="backend 'fla' asks for 'fla'.*install fla-core"):
        yoco.from_preset("tiny", backend="fla", device="meta")
    assert yoco.from_preset("tiny", backend="auto", device="meta").config.backend == "torch"


@pytest.mark.parametrize("bad,match", [("cuda", "unknown backend 'cuda'"), ("auto+fla", "stand alone"),
                                       ("torch+fla", "stand alone")])
def test_bad_backend_values(bad, match):
    with pytest.raises(ValueError, match=match):
        yoco.from_preset("tiny", backend=bad, device="meta")


def test_chunk_size_below_one_is_refused():
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        yoco.from_preset("tiny", chunk_size=0, device="meta")
