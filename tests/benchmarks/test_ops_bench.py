"""pytest-benchmark microbenchmarks of the core ops: gRet in its three sequence forms and its
decode step, the SWA decode step and a cross-attention decode step.

The default test run (`--benchmark-disable` in pyproject) calls each once and checks the result
against its plain reference; timing them is opt-in (README):
    pytest tests/benchmarks --benchmark-enable --benchmark-autosave
    pytest tests/benchmarks --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:10%
Sizes are the `small` preset's widths on CPU and larger prompts on CUDA.
"""

import pytest
import torch
from conftest import DEVICES

from yoco.cache import KVCache, RingKVCache
from yoco.config import yoco_config
from yoco.layers import CrossAttention, SlidingWindowAttention
from yoco.ops.retention import gated_retention, gated_retention_step

# gRet: small preset's self-decoder (2 heads of 128); prompt length per device.
GRET_HEADS, GRET_DIM = 2, 128
SEQ_LEN = {"cpu": 512, "cuda": 4096}
CACHE_LEN = {"cpu": 2048, "cuda": 32768}  # global-cache length behind a cross-attention step


def synced(fn, device):
    """Time device work, not launches: wait for the GPU before the clock stops."""
    if device != "cuda":
        return fn

    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return run


def gret_inputs(device, T, B=1, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, T, GRET_HEADS, GRET_DIM, generator=g).to(device) for _ in range(3))
    # decays near 1, as sigmoid(a)^(1/16) gives: a long memory is the hard case for the chunk form
    log_decay = torch.nn.functional.logsigmoid(torch.randn(B, T, GRET_HEADS, generator=g) + 2).div(16).to(device)
    return q, k, v, log_decay


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["parallel", "chunk", "recurrent"])
def test_gret_sequence(benchmark, device, mode):
    T = SEQ_LEN[device] if mode != "recurrent" else SEQ_LEN[device] // 4  # a Python loop over T
    q, k, v, log_decay = gret_inputs(device, T)
    benchmark.group = f"gret-{device}-T{T}"
    benchmark.extra_info.update(T=T, heads=GRET_HEADS, head_dim=GRET_DIM)
    o, state = benchmark(synced(lambda: gated_retention(q, k, v, log_decay, mode=mode), device))
    # tests/test_retention.py pits each form against the recurrent definition; here the cheap
    # cross-check: parallel against chunk, the others against parallel
    o_ref, state_ref = gated_retention(q, k, v, log_decay, mode="chunk" if mode == "parallel" else "parallel")
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, state_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_gret_decode_step(benchmark, device):
    B = 1
    q, k, v, log_decay = (x[:, 0] for x in gret_inputs(device, 1, B))
    state0 = 0.1 * torch.randn(B, GRET_HEADS, GRET_DIM, GRET_DIM, device=device)
    state = state0.clone()
    o = gated_retention_step(q, k, v, log_decay, state)
    seq = (x[:, None] for x in (q, k, v, log_decay))
    o_ref, state_ref = gated_retention(*seq, initial_state=state0, mode="recurrent")
    torch.testing.assert_close(o, o_ref[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-4, atol=1e-5)
    benchmark.group = f"decode-step-{device}"
    out = benchmark(synced(lambda: gated_retention_step(q, k, v, log_decay, state), device))
    assert out.shape == (B, GRET_HEADS, GRET_DIM) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def small_swa():
    return yoco_config("small", self_decoder="swa")


@pytest.mark.parametrize("device", DEVICES)
def test_swa_decode_step(benchmark, device, small_swa):
    """One token through a SWA layer: projections, a ring write, attention over W slots."""
    torch.manual_seed(0)
    cfg = small_swa
    layer = SlidingWindowAttention(cfg).to(device).eval()
    cache = RingKVCache(1, cfg.n_self_heads, cfg.window, cfg.self_head_dim, torch.float32, device)
    prompt = torch.randn(1, 3 * cfg.window, cfg.d_model, device=device)
    positions = torch.arange(prompt.shape[1], device=device)
    x = torch.randn(1, 1, cfg.d_model, device=device)
    pos = torch.tensor([prompt.shape[1]], device=device)
    with torch.no_grad():
        full = layer(torch.cat([prompt, x], 1), torch.cat([positions, pos]))[:, -1:]
        layer(prompt, positions, cache)  # prefill: the ring holds the last W tokens
        benchmark.group = f"decode-step-{device}"
        benchmark.extra_info.update(window=cfg.window, heads=cfg.n_self_heads)
        out = benchmark(synced(lambda: layer.step(x, pos, cache, cache.valid(pos)), device))
    # rewriting the same slot with the same token is idempotent: every call equals the full forward
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_attention_decode_step(benchmark, device, small_swa):
    """One query of a cross-decoder layer over the shared global cache of CACHE_LEN tokens."""
    torch.manual_seed(0)
    cfg = small_swa
    S = CACHE_LEN[device]
    layer = CrossAttention(cfg).to(device).eval()
    cache = KVCache(1, cfg.n_kv_heads, S, cfg.head_dim, torch.float32, device)
    k = torch.randn(1, cfg.n_kv_heads, S, cfg.head_dim, device=device)
    v = torch.randn_like(k)
    cache.fill(k, v)
    x = torch.randn(1, 1, cfg.d_model, device=device)
    pos = torch.tensor([S - 1], device=device)
    with torch.no_grad():
        benchmark.group = f"decode-step-{device}"
        benchmark.extra_info.update(cache_len=S, heads=cfg.n_heads, kv_heads=cfg.n_kv_heads)
        out = benchmark(synced(lambda: layer.step(x, pos, cache, cache.valid(pos)), device))
        expected = layer(x, k, v, pos)  # the last position attends to every key
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
