"""The prefill memory estimate (bench.measure.footprint): on the meta device, against the same
accounting of a real CPU prefill, and at the paper's headline point (3b YOCO at 1M tokens)."""

import pytest
import torch

import baselines
import yoco
from bench.measure import footprint
from bench.measure.trackers import LiveTensorBytes


def builder(arch, preset, dtype=torch.float32, device="meta", **fixed):
    def build(**overrides):
        if arch == "transformer":
            return baselines.from_preset(preset, device=device, dtype=dtype, **fixed, **overrides).eval()
        return yoco.from_preset(preset, self_decoder=arch, device=device, dtype=dtype, **fixed, **overrides).eval()
    return build


@pytest.mark.parametrize("arch", ["gret", "swa", "transformer"])
@pytest.mark.parametrize("batch, seq_len, chunk", [(1, 300, 64), (2, 256, None), (2, 512, 200)])
def test_meta_estimate_matches_a_real_cpu_prefill(arch, batch, seq_len, chunk):
    """The meta twin (2 layers, 2 chunks, attention allocating its output only) against the real
    model's full prefill on the CPU, tensor for tensor: within the CPU flash kernel's extras (its
    log-sum-exp rows, the window's band mask as floats), a few percent."""
    fixed = {} if arch == "transformer" else {"window": 32}
    estimate = footprint.prefill_activation_bytes(builder(arch, "tiny", **fixed), batch, seq_len, chunk)
    model = builder(arch, "tiny", device="cpu", **fixed)()
    cache = model.allocate_cache(batch, seq_len)
    tokens = torch.randint(0, 512, (batch, seq_len))
    with LiveTensorBytes() as live:
        model.prefill(tokens, cache, chunk_size=chunk)
    assert 0.9 * live.peak <= estimate <= 1.05 * live.peak, (estimate, live.peak)


@pytest.mark.parametrize("arch", ["gret", "swa", "transformer"])
def test_long_chunks_are_extrapolated_exactly(arch):
    """Past exact_up_to the estimate comes from two shorter chunks: here it equals the full run
    (the anchors, 1024 and 2048 tokens, are past the few windows where SWA's mixer overtakes the
    FFN as the peak; the default anchors are 8K and 16K tokens)."""
    build = builder(arch, "small", **({} if arch == "transformer" else {"window": 128}))
    for chunk in (None, 4096):
        exact = footprint.prefill_activation_bytes(build, 1, 8192, chunk, exact_up_to=10**9)
        assert footprint.prefill_activation_bytes(build, 1, 8192, chunk, exact_up_to=2048) == pytest.approx(
            exact, rel=1e-3)


@pytest.mark.parametrize("arch", ["yoco-gret", "yoco-swa"])
def test_3b_yoco_at_a_million_tokens_fits_in_16_gb(arch):
    """The paper measured 12.4 GB for YOCO-3B at 1M tokens. In bf16 with 4096-token chunks our
    estimate is weights (~6.8 GB) + cache (4 KiB a token: 4.3 GB) + one chunk's activations."""
    f = footprint.estimate_prefill(arch, "3b", batch=1, seq_len=1 << 20, chunk_size=4096, dtype="bfloat16",
                                   window=1024 if arch == "yoco-swa" else None)
    assert f.total_bytes <= 16e9, f
    assert f.cache_bytes >= (1 << 20) * 4096 and f.weight_bytes > 6e9
    assert 0 < f.activation_bytes < 1e9
    # Without chunks the same prefill's activations alone pass 80 GB (the estimate).
    whole = footprint.estimate_prefill(arch, "3b", batch=1, seq_len=1 << 20, chunk_size=None, dtype="bfloat16",
                                       window=1024 if arch == "yoco-swa" else None)
    assert whole.activation_bytes > 80e9


def test_the_baseline_at_a_million_tokens_needs_its_cache():
    f = footprint.estimate_prefill("transformer", "3b", batch=1, seq_len=1 << 20, chunk_size=4096, dtype="bfloat16")
    assert f.cache_bytes > 100e9 and f.total_bytes > 8 * 12.4e9


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_chunk_size_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=f"chunk_size must be .* got {bad!r}"):
        footprint.estimate_prefill("yoco-gret", "tiny", batch=1, seq_len=64, chunk_size=bad)
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        footprint.prefill_activation_bytes(builder("gret", "tiny"), 1, 64, bad)
