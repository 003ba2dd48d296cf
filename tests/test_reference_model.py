"""Every mixer, the global K/V and the whole models (both YOCOs, the baseline; both numerics)
against an independent float64 reference written from the formulas (tests/reference_model.py):
full forward, prefill and decode, on weights far from their initial values (norm scales spread
over [0.25, 2.5] with some negative, wide gate and decay projections) so that a dropped norm,
gate or 1/tau changes the output.

Our models run in float64, but parts of them compute in float32 by design (rotary angles and
rotation, the gRet state and its per-head norm, for the sake of bf16 models): that leaves a
relative error of about 1e-6, and TOL sits above it.

Bugs planted one at a time that these tests catch and the model, retention, attention and BitNet
model tests (which pit cached inference against the full forward) all pass: gRet's decay without
1/tau, its output gate without silu, its q without rotary, its k without d_h^-0.5 (prefill and
decode alike); the global K/V without its RMSNorm, K without rotary, K/V heads paired with the
wrong query heads; SwiGLU's silu on the wrong branch; rotary frequencies theta^(-i/D); unilm's
pairs read as rotate-half; unilm's embeddings unscaled.
"""

from types import SimpleNamespace

import pytest
import reference_model as reference
import torch
from reference_model import NUMERICS, Numerics, Weights

import baselines
import yoco
from baselines import transformer_swa
from yoco.cache import KVCache, RetentionState, RingKVCache
from yoco.config import transformer_config, yoco_config
from yoco.layers import CausalAttention, CrossAttention, GatedRetention, SlidingWindowAttention

F64 = torch.float64
TOL = 2e-5  # max |ours - reference| / max |reference|
WINDOW, CHUNK = 4, 4  # prompts of 11: the window wraps, the chunks do not divide the prompt
PROMPT, NEW = 11, 5
ARCHS = ["gret", "swa", "transformer", "transformer_swa"]


def far_from_init(module: torch.nn.Module, seed: int = 0):
    """In place: norm scales (ones at init) spread over +-[0.25, 2.5], a fifth negative; matrices
    N(0, 1/fan_in), the gRet gate and decay projections 3x wider (decays from ~0.75 to ~1 with
    tau 16), embeddings N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                scale = torch.empty(p.shape, dtype=F64).uniform_(0.25, 2.5, generator=g)
                sign = torch.where(torch.rand(p.shape, generator=g, dtype=F64) < 0.2, -1.0, 1.0)
                p.copy_(scale * sign)
                continue
            std = p.shape[1] ** -0.5
            if name.endswith(("wg.weight", "wa.weight")):
                std *= 3
            if name == "embed.weight":
                std = 1.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * std)
    return module


def rel_err(ours, ref) -> float:
    return ((ours.to(F64) - ref).abs().max() / ref.abs().max()).item()



# --- the reference's own pieces against closed forms ---


def test_reference_pieces_match_their_closed_forms():
    x = torch.tensor([3.0, -4.0], dtype=F64)
    assert torch.allclose(reference.rms_norm(x, torch.tensor([2.0, 1.0], dtype=F64), 0.0),
                          torch.tensor([3.0, -4.0], dtype=F64) / 12.5**0.5 * torch.tensor([2.0, 1.0], dtype=F64))
    assert torch.allclose(reference.silu(x), x * torch.sigmoid(x))
    keys = [torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)]
    values = [torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0, 4.0], dtype=F64)]
    p = torch.softmax(torch.tensor([1.5, -2.0], dtype=F64), 0)  # q . k_s for q = x / 2
    assert torch.allclose(reference.softmax_attention(x / 2, keys, values, 1.0), p[0] * values[0] + p[1] * values[1])
    # rotate-half: pair (0, 2) turns by pos * 1, pair (1, 3) by pos * theta^(-1/2)
    num = Numerics("llama", 100.0, 4)
    got = num.rotate(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64), 3)
    assert torch.allclose(got, torch.tensor([torch.cos(torch.tensor(3.0)), torch.cos(torch.tensor(0.3)),
                                             torch.sin(torch.tensor(3.0)), torch.sin(torch.tensor(0.3))], dtype=F64))
    # unilm: pair (0, 1) turns by pos * 1, pair (2, 3) by pos * theta^(-1)
    got = Numerics("unilm", 100.0, 4).rotate(torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64), 3)
    assert torch.allclose(got, torch.tensor([torch.cos(torch.tensor(3.0)), torch.sin(torch.tensor(3.0)),
                                             torch.cos(torch.tensor(0.03)), torch.sin(torch.tensor(0.03))], dtype=F64))
    with pytest.raises(ValueError, match="unknown numerics 'yoco'"):
        Numerics("yoco", 1.0, 4)


# --- each mixer alone: prefill (filling its cache) then decode steps ---


def run_layer(layer, x, cache, **step_args):
    """Our layer over x [B, T, d]: forward over the first PROMPT tokens filling `cache`, then
    one step per token; the outputs concatenated [B, T, d]."""
    outs = [layer(x[:, :PROMPT], torch.arange(PROMPT), cache)]
    for t in range(PROMPT, x.shape[1]):
        outs.append(layer.step(x[:, t:t + 1], torch.tensor([t]), cache, **step_args))
    return torch.cat(outs, dim=1)


def run_reference(make, x):
    """A fresh reference mixer (make()) per sequence of x [B, T, d], fed token by token."""
    outs = []
    for seq in x:
        mixer = make()
        outs.append(torch.stack([mixer(seq[t], t) for t in range(len(seq))]))
    return torch.stack(outs)


def inputs(c, T=PROMPT + NEW):
    return torch.randn(2, T, c.d_model, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("numerics", NUMERICS)
def test_gret_layer(numerics):
    """Decay logsigmoid(a)/tau, rotary q and k, k scaled by d_h^-0.5, the per-head norm without a
    scale, the silu output gate; the chunked prefill's state carried into decode."""
    c = yoco_config("tiny", self_decoder="gret", chunk_size=CHUNK, numerics=numerics)
    num = Numerics(numerics, c.rope_theta, c.d_model)
    layer = far_from_init(GatedRetention(c).to(F64), seed=1)
    x = inputs(c)
    with torch.no_grad():
        ours = run_layer(layer, x, RetentionState(2, c.n_self_heads, c.self_head_dim, "cpu"))
    weights = Weights.of(layer.state_dict())
    expected = run_reference(lambda: reference.GatedRetention(weights, c.n_self_heads, c.gret_tau, num), x)
    assert rel_err(ours, expected) < TOL


@pytest.mark.parametrize("numerics", NUMERICS)
def test_gret_retention_before_the_norm(monkeypatch, numerics):
    """The per-head norm hides any constant factor on o = q S (up to its eps): a k not scaled by
    d_h^-0.5 would pass the layer's test, so the retention's output is compared before the norm."""
    seen = []

    def spy(op):
        def recorded(*args, **kwargs):
            out = op(*args, **kwargs)
            seen.append(out[0] if isinstance(out, tuple) else out[:, None])  # [B, T, H, d_h]
            return out
        return recorded

    monkeypatch.setattr(yoco.layers, "gated_retention", spy(yoco.layers.gated_retention))
    monkeypatch.setattr(yoco.layers, "gated_retention_step", spy(yoco.layers.gated_retention_step))
    c = yoco_config("tiny", self_decoder="gret", chunk_size=CHUNK, numerics=numerics)
    num = Numerics(numerics, c.rope_theta, c.d_model)
    layer = far_from_init(GatedRetention(c).to(F64), seed=1)
    x = inputs(c)
    with torch.no_grad():
        run_layer(layer, x, RetentionState(2, c.n_self_heads, c.self_head_dim, "cpu"))
    ours = torch.cat(seen, dim=1)
    for b in range(2):
        mixer = reference.GatedRetention(Weights.of(layer.state_dict()), c.n_self_heads, c.gret_tau, num)
        retained = []
        for t in range(PROMPT + NEW):
            mixer(x[b, t], t)
            retained.append(mixer.retained)
        assert rel_err(ours[b], torch.stack(retained)) < TOL


@pytest.mark.parametrize("numerics", NUMERICS)
def test_swa_layer(numerics):
    """Window W keys, itself included, past a ring that wraps in prefill and again in decode."""
    c = yoco_config("tiny", self_decoder="swa", window=WINDOW, numerics=numerics)
    num = Numerics(numerics, c.rope_theta, c.d_model)
    layer = far_from_init(SlidingWindowAttention(c).to(F64), seed=2)
    x = inputs(c)
    with torch.no_grad():
        ours = run_layer(layer, x, RingKVCache(2, c.n_self_heads, WINDOW, c.self_head_dim, F64, "cpu"))
    weights = Weights.of(layer.state_dict())
    expected = run_reference(
        lambda: reference.Attention(weights, c.n_self_heads, c.n_self_heads, num, window=WINDOW), x)
    assert rel_err(ours, expected) < TOL


@pytest.mark.parametrize("numerics", NUMERICS)
def test_baseline_attention_layer(numerics):
    """Causal attention with rotary and grouped-query heads (4 query heads over 2 key/value heads)."""
    c = transformer_config("tiny", numerics=numerics)
    num = Numerics(numerics, c.rope_theta, c.d_model)
    assert c.n_heads == 2 * c.n_kv_heads
    layer = far_from_init(CausalAttention(c).to(F64), seed=3)
    x = inputs(c)
    with torch.no_grad():
        ours = run_layer(layer, x, KVCache(2, c.n_kv_heads, PROMPT + NEW, c.head_dim, F64, "cpu"))
    weights = Weights.of(layer.state_dict())
    expected = run_reference(lambda: reference.Attention(weights, c.n_heads, c.n_kv_heads, num), x)
    assert rel_err(ours, expected) < TOL


@pytest.mark.parametrize("numerics", NUMERICS)
def test_global_kv(numerics):
    """K = rotary(RMSNorm(X) W_K) with the norm's own scale, V = RMSNorm(X) W_V."""
    c = yoco_config("tiny", self_decoder="gret", numerics=numerics)
    num = Numerics(numerics, c.rope_theta, c.d_model)
    model = far_from_init(yoco.YOCO(c).to(F64), seed=4)
    x = inputs(c, T=PROMPT)
    with torch.no_grad():
        k, v = model.global_kv(x, torch.arange(PROMPT))
    for b in range(2):
        shared = reference.GlobalKV(Weights.of(model.state_dict()), c.n_kv_heads, num)
        for t in range(PROMPT):
            shared.append(x[b, t], t)
        assert rel_err(k[b], torch.stack([torch.stack(keys) for keys in shared.keys])) < TOL
        assert rel_err(v[b], torch.stack([torch.stack(values) for values in shared.values])) < TOL


@pytest.mark.parametrize("numerics", NUMERICS)
def test_cross_attention_layer(numerics):
    """Rotary queries over given (already rotated) shared keys, causal, grouped-query: all
    positions, the last one alone (prefill's early exit), and decode steps over the cache."""
    c = yoco_config("tiny", self_decoder="gret", numerics=numerics)
    num = Numerics(numerics, c.rope_theta, c.d_model)
    layer = far_from_init(CrossAttention(c).to(F64), seed=5)
    T = PROMPT + NEW
    x = inputs(c)
    g = torch.Generator().manual_seed(1)
    k, v = (torch.randn(2, c.n_kv_heads, T, c.head_dim, dtype=F64, generator=g) for _ in range(2))
    cache = KVCache(2, c.n_kv_heads, T, c.head_dim, F64, "cpu")
    cache.fill(k, v)
    with torch.no_grad():
        every = layer(x, k, v, torch.arange(T))
        last = layer(x[:, -1:], k, v, torch.tensor([T - 1]))
        steps = [layer.step(x[:, t:t + 1], torch.tensor([t]), cache, cache.valid(torch.tensor([t])))
                 for t in range(T)]
    weights = Weights.of(layer.state_dict())
    for b in range(2):
        shared = SimpleNamespace(n_kv_heads=c.n_kv_heads, keys=[list(k[b, j]) for j in range(c.n_kv_heads)],
                                 values=[list(v[b, j]) for j in range(c.n_kv_heads)])
        mixer = reference.CrossAttention(weights, c.n_heads, shared, num)
        expected = torch.stack([mixer(x[b, t], t) for t in range(T)])
        assert rel_err(every[b], expected) < TOL
        assert rel_err(last[b, 0], expected[-1]) < TOL
        assert rel_err(torch.cat(steps, dim=1)[b], expected) < TOL


# --- whole models: full forward, prefill (early exit), decode ---


def build(arch, numerics="llama", **overrides):
    torch.manual_seed(0)
    overrides["numerics"] = numerics
    if arch == "transformer":
        model = baselines.from_preset("tiny", dtype=F64, **overrides)
    elif arch == "transformer_swa":
        model = transformer_swa.from_preset("tiny", dtype=F64, **{"window": WINDOW, **overrides})
    else:
        model = yoco.from_preset("tiny", self_decoder=arch, dtype=F64,
                                 **{"window": WINDOW, "chunk_size": CHUNK, **overrides})
    return far_from_init(model, seed=6).eval()


def check_against_reference(model, arch, numerics="llama", prompt=PROMPT, new=NEW, batch=2):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (batch, prompt + new), generator=g)
    cache = model.allocate_cache(batch, prompt + new)
    with torch.no_grad():
        full = model(tokens)
        ours = [model.prefill(tokens[:, :prompt], cache)]
        ours += [model.decode(tokens[:, t], cache) for t in range(prompt, prompt + new)]
        chunked_cache = model.allocate_cache(batch, prompt + new)  # chunks of 3: none divides the prompt
        chunked = [model.prefill(tokens[:, :prompt], chunked_cache, chunk_size=3)]
        chunked += [model.decode(tokens[:, t], chunked_cache) for t in range(prompt, prompt + new)]
        # chunks of one token: the second chunk starts at position 1, every chunk but the first looks back
        one_by_one = model.prefill(tokens[:, :prompt], model.allocate_cache(batch, prompt), chunk_size=1)
    ours = torch.stack(ours, dim=1)  # [B, 1 + new, V]: positions prompt-1 .. prompt+new-1
    chunked = torch.stack(chunked, dim=1)
    ref = reference.ReferenceModel(model.state_dict(), model.config, arch, numerics)
    for b in range(batch):
        expected = ref.forward(tokens[b])
        assert rel_err(full[b], expected) < TOL, "full forward"
        assert rel_err(ours[b, 0], expected[prompt - 1]) < TOL, "prefill"
        assert rel_err(ours[b, 1:], expected[prompt:]) < TOL, "decode"
        assert rel_err(chunked[b, 0], expected[prompt - 1]) < TOL, "chunked prefill"
        assert rel_err(chunked[b, 1:], expected[prompt:]) < TOL, "decode after a chunked prefill"
        assert rel_err(one_by_one[b], expected[prompt - 1]) < TOL, "prefill in chunks of one token"


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("arch", ARCHS)
def test_model_matches_reference(arch, numerics):
    check_against_reference(build(arch, numerics), arch, numerics)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_model_matches_reference_longer_and_odd_sizes(arch):
    """A longer sequence, 3 layers (an odd split: 1 self, 2 cross), one key/value head for all
    queries, and (YOCO) a window and chunk that divide nothing."""
    overrides = dict(n_layers=3, n_kv_heads=1)
    if arch == "transformer_swa":
        overrides.update(window=5)
    elif arch != "transformer":
        overrides.update(window=5, chunk_size=7)
    check_against_reference(build(arch, **overrides), arch, prompt=30, new=10, batch=1)
