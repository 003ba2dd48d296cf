"""yoco.cache on its own: where a ring puts each position, which slots count as valid, that a
cache is never saved with the model, and that every buffer and index stays on the model's
device (checked on the meta device, where a tensor made on the CPU by mistake fails loudly)."""

import pytest
import torch

import baselines
import yoco
from yoco.cache import KVCache, ModelCache, RetentionState, RingKVCache


def keys(T, head_dim=3):
    """k[..., t, :] = t + 1 everywhere, so a slot's content names the position it holds."""
    return (torch.arange(T, dtype=torch.float32) + 1)[None, None, :, None].expand(1, 2, T, head_dim).clone()


@pytest.mark.parametrize("T", [3, 4, 7, 9])  # shorter than, equal to, past and twice past a window of 4
def test_ring_fill_puts_position_p_in_slot_p_mod_w(T):
    ring = RingKVCache(1, 2, 4, 3, torch.float32, "cpu")
    k = keys(T)
    ring.fill(k, -k)
    held = {int(ring.k[0, 0, slot, 0]) - 1: slot for slot in range(4) if ring.k[0, 0, slot, 0] != 0}
    assert held == {p: p % 4 for p in range(max(0, T - 4), T)}  # the last W positions, each at p % W
    torch.testing.assert_close(ring.v, -ring.k)


def test_ring_write_wraps_and_valid_counts_written_slots():
    ring = RingKVCache(1, 2, 4, 3, torch.float32, "cpu")
    ring.fill(keys(2), keys(2))
    for p in range(2, 7):
        pos = torch.tensor([p])
        ring.write(pos, keys(p + 1)[:, :, p:], keys(p + 1)[:, :, p:])
        assert int(ring.k[0, 0, p % 4, 0]) == p + 1
        assert ring.valid(pos).tolist() == [s <= p for s in range(4)]


@pytest.mark.parametrize("start,n", [(3, 3), (6, 3), (9, 2), (10, 3)])  # from 0; past the wrap, twice past
def test_ring_window_before_gives_the_n_positions_before_start_in_order(start, n):
    ring = RingKVCache(1, 2, 4, 3, torch.float32, "cpu")
    ring.fill(keys(start), -keys(start))
    k, v = ring.window_before(start, n)
    assert k[0, 0, :, 0].tolist() == [p + 1 for p in range(start - n, start)]
    torch.testing.assert_close(v, -k)


def test_kv_cache_fill_write_and_valid():
    cache = KVCache(1, 2, 6, 3, torch.float32, "cpu")
    cache.fill(keys(4), 2 * keys(4))
    cache.write(torch.tensor([4]), keys(5)[:, :, 4:], 2 * keys(5)[:, :, 4:])
    assert cache.k[0, 1, :, 0].tolist() == [1, 2, 3, 4, 5, 0]
    assert cache.v[0, 1, :, 0].tolist() == [2, 4, 6, 8, 10, 0]
    assert cache.valid(torch.tensor([4])).tolist() == [True] * 5 + [False]


def test_retention_state_is_float32_whatever_the_default_dtype():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert RetentionState(1, 2, 3, "cpu").state.dtype == torch.float32
    finally:
        torch.set_default_dtype(default)


def test_byte_formulas():
    assert KVCache.nbytes_for(2, 3, 5, 7, 2) == 2 * 2 * 3 * 5 * 7 * 2
    assert RetentionState.nbytes_for(2, 3, 7) == 2 * 3 * 7 * 7 * 4
    cache = ModelCache([KVCache(2, 3, 5, 7, torch.bfloat16, "cpu"), RetentionState(2, 3, 7, "cpu")], 2, 5, "cpu")
    assert cache.nbytes() == KVCache.nbytes_for(2, 3, 5, 7, 2) + RetentionState.nbytes_for(2, 3, 7)
    cache.set_length(3)
    assert cache.length == 3 and cache.pos.tolist() == [3]


@pytest.mark.parametrize("arch", ["gret", "swa", "transformer"])
def test_a_cache_is_not_saved_with_anything(arch):
    """Caches are scratch space: no buffer of theirs belongs in a checkpoint."""
    model = baselines.from_preset("tiny") if arch == "transformer" else yoco.from_preset("tiny", self_decoder=arch)
    cache = model.allocate_cache(2, 8)
    assert cache.state_dict() == {}
    assert sorted(name for name, _ in cache.named_buffers())  # while it does hold buffers


@pytest.mark.parametrize("arch", ["gret", "swa", "transformer"])
def test_prefill_and_decode_stay_on_the_models_device(arch):
    """Run on the meta device (as the prefill memory estimate does): any cache tensor, slot index
    or mask made on the CPU instead of the model's device fails there."""
    if arch == "transformer":
        model = baselines.from_preset("tiny", device="meta")
    else:
        model = yoco.from_preset("tiny", self_decoder=arch, device="meta", window=4, chunk_size=4)
    cache = model.allocate_cache(2, 16)
    logits = [model.prefill(torch.zeros(2, 9, dtype=torch.long, device="meta"), cache)]
    logits += [model.decode(torch.zeros(2, dtype=torch.long, device="meta"), cache) for _ in range(3)]
    assert {b.device.type for b in cache.buffers()} == {"meta"}
    assert all(x.device.type == "meta" and x.shape == (2, model.config.vocab_size) for x in logits)
    assert cache.length == 12
    # a chunked prefill (each chunk looks back into the cache) and the full forward pass, too
    tokens = torch.zeros(2, 9, dtype=torch.long, device="meta")
    chunked = model.prefill(tokens, model.allocate_cache(2, 16), chunk_size=4)
    full = model(tokens)
    assert chunked.device.type == full.device.type == "meta" and full.shape == (2, 9, model.config.vocab_size)
