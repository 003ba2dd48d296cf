"""Each model's decode_bytes_per_step against an independent count: the tensors themselves (the
model's parameters and buffers, a cache allocated at the step's context on the meta device),
walked the way the step touches them. No model is run, nothing is timed."""

import functools

import pytest
import torch

import baselines
import yoco
from baselines import hf_llama, transformer_swa
from bench.measure import roofline
from yoco.cache import RetentionState


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weights_read(model, batch: int) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    table = model.embed.weight
    return sum(map(nbytes, tensors.values())) - nbytes(table) + batch * nbytes(table[0])


def kv_traffic(k: torch.Tensor, v: torch.Tensor) -> int:
    """A [B, H, S, D] key/value buffer read whole (S = context + 1 as allocated here) and one
    position of it written."""
    return nbytes(k) + nbytes(v) + nbytes(k[:, :, :1]) + nbytes(v[:, :, :1])


def independent_count(model, batch: int, context: int) -> int:
    cache = model.allocate_cache(batch, context + 1)  # on meta: shapes only
    total = weights_read(model, batch)
    if isinstance(model, yoco.YOCO):
        for layer_cache in cache.layers:
            if isinstance(layer_cache, RetentionState):
                total += 2 * nbytes(layer_cache.state)  # read and written
            else:  # the ring holds min(W, context + 1) slots, all in the window
                total += kv_traffic(layer_cache.k, layer_cache.v)
        shared = cache.shared
        total += len(model.cross_layers) * (nbytes(shared.k) + nbytes(shared.v))  # every cross layer reads it
        total += nbytes(shared.k[:, :, :1]) + nbytes(shared.v[:, :, :1])  # the new token, written once
    elif isinstance(model, hf_llama.HFLlama):
        total += sum(kv_traffic(k, v) for k, v in cache.layer_tensors())
    else:
        total += sum(kv_traffic(c.k, c.v) for c in cache.layers)
    return total


@functools.lru_cache(maxsize=4)
def models(preset: str, dtype):
    out = {
        "yoco-gret": yoco.from_preset(preset, device="meta", dtype=dtype),
        "yoco-swa": yoco.from_preset(preset, self_decoder="swa", device="meta", dtype=dtype),
        "transformer": baselines.from_preset(preset, device="meta", dtype=dtype),
        "transformer-swa": transformer_swa.from_preset(preset, device="meta", dtype=dtype),
    }
    if hf_llama.available():
        out["hf-llama"] = hf_llama.from_preset(preset, device="meta", dtype=dtype)
    return out


@pytest.mark.parametrize("preset, dtype", [("tiny", torch.float32), ("3b", torch.bfloat16)])
@pytest.mark.parametrize("context", [0, 5, 63, 64, 1000])
def test_decode_bytes_match_an_independent_count(preset, dtype, context):
    for arch, model in models(preset, dtype).items():
        for batch in (1, 3):
            assert model.decode_bytes_per_step(batch, context) == independent_count(model, batch, context), \
                (arch, batch)


def test_every_cross_layer_reads_the_global_cache():
    """The step's growth per token of context: YOCO's global K, V times the L/2 cross layers
    that each read it (not once), the baseline's per-layer caches."""
    for name, model in models("3b", torch.bfloat16).items():
        c = model.config
        growth = model.decode_bytes_per_step(1, 5000) - model.decode_bytes_per_step(1, 4999)
        per_token_kv = 2 * c.n_kv_heads * c.head_dim * 2  # bf16 key + value of one position
        if name == "transformer-swa":  # every layer's ring is full at 4999: nothing grows
            assert growth == 0 and c.window < 4999
            continue
        layers = c.n_cross_layers if name.startswith("yoco") else c.n_layers
        assert growth == layers * per_token_kv, name
    gret = models("3b", torch.bfloat16)["yoco-gret"]
    assert gret.config.n_cross_layers == 13


def test_swa_ring_reads_only_the_window():
    model = yoco.from_preset("tiny", self_decoder="swa", window=16, device="meta")
    c = model.config
    per_slot = 2 * c.n_self_heads * c.self_head_dim * 4
    global_growth = c.n_cross_layers * 2 * c.n_kv_heads * c.head_dim * 4
    below = model.decode_bytes_per_step(1, 10) - model.decode_bytes_per_step(1, 9)
    above = model.decode_bytes_per_step(1, 100) - model.decode_bytes_per_step(1, 99)
    assert below == c.n_self_layers * per_slot + global_growth  # the ring still filling
    assert above == global_growth  # full: W slots whatever the context


def test_packed_bitnet_weights_count_as_stored():
    model = yoco.from_preset("tiny", bitnet="1.58bit").eval()
    model.pack_bitnet()
    assert model.decode_bytes_per_step(1, 7) == independent_count(model, 1, 7)
    dense = yoco.from_preset("tiny")
    assert model.decode_bytes_per_step(1, 7) < dense.decode_bytes_per_step(1, 7) / 2  # the block weights are packed


def test_the_runner_averages_over_the_timed_contexts():
    model = yoco.from_preset("tiny", self_decoder="swa", window=16, device="meta")
    contexts = range(10, 30)  # the ring fills up inside this range: not affine
    expected = sum(model.decode_bytes_per_step(2, n) for n in contexts) / len(contexts)
    assert roofline.mean_decode_bytes(model, 2, contexts) == pytest.approx(expected, rel=1e-12)

    class NoCount:  # a user's arch without the method: no MBU, not an error
        pass

    assert roofline.mean_decode_bytes(NoCount(), 1, contexts) != roofline.mean_decode_bytes(NoCount(), 1, contexts)
