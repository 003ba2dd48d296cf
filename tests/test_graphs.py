"""The decode step captured as a CUDA graph (yoco.graphs) equals the eager step, its reference.

On a CPU: the step is graph-safe by construction (it runs on the meta device, where any
data-dependent host read fails) and capturing is refused with a clear error. On CUDA: replays
equal eager steps over many positions (the SWA ring wraps), and the position lives on the
device, so one capture serves every position."""

import pytest
import torch

import baselines
import yoco
from baselines import hf_llama

CUDA = torch.cuda.is_available()


def build(arch: str, **kwargs):
    if arch == "transformer":
        return baselines.from_preset("tiny", n_layers=2, **kwargs).eval()
    if arch == "hf-llama":
        return hf_llama.from_preset("tiny", n_layers=2, **kwargs).eval()
    return yoco.from_preset("tiny", self_decoder=arch, window=8, n_layers=2, **kwargs).eval()


ARCHS = ["gret", "swa", "transformer"]
WITH_HF = ARCHS + [pytest.param("hf-llama", marks=pytest.mark.skipif(not hf_llama.available(),
                                                                       reason="HF transformers is not installed"))]


@pytest.mark.parametrize("arch", WITH_HF)
def test_the_step_is_graph_safe_it_runs_on_meta(arch):
    """A CUDA graph replays kernels only: a step that read a tensor's value on the host (.item(),
    a Python branch on data) could not be captured. On meta every such read raises."""
    model = build(arch, device="meta")
    cache = model.allocate_cache(2, 16)
    with torch.inference_mode():
        logits = model._step(torch.zeros(2, dtype=torch.long, device="meta"), cache)
    assert logits.shape == (2, model.config.vocab_size)


def test_capture_on_cpu_is_a_clear_error():
    model = build("gret")
    cache = model.allocate_cache(1, 16)
    model.prefill(torch.zeros(1, 4, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="CUDA graphs need a model and cache on CUDA, not cpu"):
        model.capture_decode(cache)


def _captured_matches_eager(arch: str):
    torch.manual_seed(0)
    eager = build(arch, device="cuda")
    tokens = torch.randint(0, 512, (2, 20), device="cuda")
    cache = eager.allocate_cache(2, 40)
    with torch.inference_mode():
        eager.prefill(tokens, cache)
        step = eager.capture_decode(cache)  # its warm-up steps wrote the cache: prefill again
        assert cache.length == 20
        captured_logits, eager_logits = [], []
        nexts = torch.randint(0, 512, (12, 2), device="cuda")
        eager.prefill(tokens, cache)
        for nxt in nexts:  # 12 steps: the SWA ring (W = 8) wraps
            captured_logits.append(step(nxt).clone())
        assert cache.length == 32
        eager.prefill(tokens, cache)
        for nxt in nexts:
            eager_logits.append(eager.decode(nxt, cache))
    for i, (a, b) in enumerate(zip(captured_logits, eager_logits)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {i}")


@pytest.mark.gpu_smoke
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("arch", ARCHS)
def test_captured_decode_matches_eager(arch):
    _captured_matches_eager(arch)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.skipif(not hf_llama.available(), reason="HF transformers is not installed")
def test_hf_llama_captured_decode_matches_eager():
    """Not in the smoke set: whether HF's own step captures depends on the transformers version,
    and its failure must not stop the GPU run (gpu-decode also times hf-llama eager)."""
    _captured_matches_eager("hf-llama")
