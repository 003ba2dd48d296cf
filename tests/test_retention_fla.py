"""fla-core wrappers against the reference. On CPU fla's kernels run under the Triton interpreter
(conftest sets TRITON_INTERPRET=1), which computes bf16 wrongly: fp32 only there, small shapes."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="triton is not installed")
pytest.importorskip("fla.ops.simple_gla", reason="fla-core is not installed")

from conftest import KERNEL_DEVICES  # noqa: E402

from yoco.ops.retention import gated_retention, gated_retention_step  # noqa: E402
from yoco.ops.retention_fla import fla_available, gated_retention_fla, gated_retention_step_fla  # noqa: E402


def assert_close_on(device, actual, expected, rms_ratio=5e-3):
    if device == "cuda":
        # On CUDA fla's dot products run in tf32 for fp32 inputs (bf16 for bf16): compare the RMS
        # error against the reference's RMS, as fla's own tests do.
        error = (actual.float() - expected.float()).pow(2).mean().sqrt()
        assert error <= rms_ratio * expected.float().pow(2).mean().sqrt(), f"relative RMS error {error}"
    else:
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="fla-core 0.6.0's chunk kernels do not run under the Triton interpreter; CUDA only",
)


def random_inputs(B, T, H, Dk, Dv, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, B, T, H, Dk, generator=gen)
    v = torch.randn(B, T, H, Dv, generator=gen)
    log_decay = F.logsigmoid(torch.randn(B, T, H, generator=gen)) / 16
    state0 = torch.randn(B, H, Dk, Dv, generator=gen)
    return [x.to(device, dtype) for x in (q, k, v, log_decay)], state0.to(device)


def test_fla_available():
    assert fla_available()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
@pytest.mark.parametrize("with_state", [False, True])
def test_recurrent_and_parallel_wrappers_match_reference(mode, with_state, device):
    (q, k, v, g), state0 = random_inputs(2, 13, 2, 16, 32, device)
    state0 = state0 if with_state else None
    o_ref, s_ref = gated_retention(q, k, v, g, scale=0.4, initial_state=state0, mode="recurrent")
    o, s = gated_retention_fla(q, k, v, g, scale=0.4, initial_state=state0, mode=mode)
    assert o.dtype == q.dtype and s.dtype == torch.float32
    assert_close_on(device, o, o_ref)
    assert_close_on(device, s, s_ref)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_step_wrapper_matches_reference_step(device):
    (q, k, v, g), state0 = random_inputs(2, 3, 2, 16, 8, device)
    state_ref, state = state0.clone(), state0.clone()
    data_ptr = state.data_ptr()
    for t in range(3):
        o_ref = gated_retention_step(q[:, t], k[:, t], v[:, t], g[:, t], state_ref)
        o = gated_retention_step_fla(q[:, t], k[:, t], v[:, t], g[:, t], state)
        assert_close_on(device, o, o_ref)
    assert state.data_ptr() == data_ptr
    assert_close_on(device, state, state_ref)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_prefill_state_hands_to_step(device):
    # Prefill with fla (chunk where it runs), decode with fla's step: equals one reference pass.
    T1, T2 = 11, 2
    (q, k, v, g), _ = random_inputs(1, T1 + T2, 2, 16, 16, device, seed=1)
    o_ref, s_ref = gated_retention(q, k, v, g, mode="recurrent")
    prefill_mode = "chunk" if device == "cuda" else "recurrent"
    o1, state = gated_retention_fla(q[:, :T1], k[:, :T1], v[:, :T1], g[:, :T1], mode=prefill_mode)
    steps = [gated_retention_step_fla(q[:, t], k[:, t], v[:, t], g[:, t], state) for t in range(T1, T1 + T2)]
    assert_close_on(device, torch.cat([o1, torch.stack(steps, dim=1)], dim=1), o_ref)
    assert_close_on(device, state, s_ref)


@needs_cuda
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", [64, 100])  # a multiple of the chunk and not
def test_chunk_wrapper_matches_reference_cuda(T, with_state):
    (q, k, v, g), state0 = random_inputs(2, T, 4, 64, 64, "cuda")
    state0 = state0 if with_state else None
    o_ref, s_ref = gated_retention(q, k, v, g, initial_state=state0, mode="chunk")
    o, s = gated_retention_fla(q, k, v, g, initial_state=state0, mode="chunk", chunk_size=64)
    assert_close_on("cuda", o, o_ref)
    assert_close_on("cuda", s, s_ref)


@pytest.mark.gpu_smoke
@needs_cuda
def test_chunk_wrapper_bf16_cuda():
    """The torch path as it runs on CUDA (bf16 matmuls, fp32 state) against fla's chunk kernel."""
    (q, k, v, g), state0 = random_inputs(2, 100, 4, 64, 64, "cuda", dtype=torch.bfloat16)
    o_ref, s_ref = gated_retention(q, k, v, g, initial_state=state0, mode="chunk")
    o, s = gated_retention_fla(q, k, v, g, initial_state=state0, mode="chunk")
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close_on("cuda", o, o_ref, rms_ratio=2e-2)
    assert_close_on("cuda", s, s_ref, rms_ratio=2e-2)


@pytest.mark.gpu_smoke
@needs_cuda
def test_bf16_prefill_then_steps_cuda():
    """What a bf16 yoco-gret case runs with fla: chunk_simple_gla over the prompt, then
    fused_recurrent_simple_gla one token at a time from its state, against the reference."""
    (q, k, v, g), _ = random_inputs(1, 300, 4, 128, 128, "cuda", dtype=torch.bfloat16, seed=5)
    o_ref, s_ref = gated_retention(q, k, v, g, mode="chunk")
    o, state = gated_retention_fla(q[:, :296], k[:, :296], v[:, :296], g[:, :296], mode="chunk")
    steps = [gated_retention_step_fla(q[:, t], k[:, t], v[:, t], g[:, t], state) for t in range(296, 300)]
    assert_close_on("cuda", torch.cat([o, torch.stack(steps, dim=1)], dim=1), o_ref, rms_ratio=2e-2)
    assert_close_on("cuda", state, s_ref, rms_ratio=2e-2)


def test_fla_chunk_size_must_be_a_power_of_two():
    (q, k, v, g), _ = random_inputs(1, 8, 1, 16, 16, "cpu")
    with pytest.raises(ValueError, match="chunk_size=48 must be a power of two"):
        gated_retention_fla(q, k, v, g, mode="chunk", chunk_size=48)
    with pytest.raises(ValueError, match="mode='fast'"):
        gated_retention_fla(q, k, v, g, mode="fast")
