"""gated_retention: the parallel and chunk forms and the decode step against the recurrent spec."""

import re

import pytest
import torch
import torch.nn.functional as F

from yoco.ops.retention import MODES, gated_retention, gated_retention_step

FP32_TOL = dict(atol=2e-5, rtol=2e-5)


def random_inputs(B, T, H, Dk, Dv, decay="tau16", dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, Dk, generator=gen)
    k = torch.randn(B, T, H, Dk, generator=gen)
    v = torch.randn(B, T, H, Dv, generator=gen)
    logits = torch.randn(B, T, H, generator=gen)
    if decay == "tau16":  # YOCO's gate: logsigmoid(a) / 16
        log_decay = F.logsigmoid(logits) / 16
    elif decay == "strong":  # gamma down to ~1e-4 per token
        log_decay = F.logsigmoid(logits * 3) * 2
    elif decay == "extreme":  # cumsums reach -thousands: overflows if masked after exp
        log_decay = -50 * torch.rand(B, T, H, generator=gen)
    elif decay == "none":  # gamma = 1: plain causal linear attention
        log_decay = torch.zeros(B, T, H)
    else:
        raise AssertionError(decay)
    state0 = torch.randn(B, H, Dk, Dv, generator=gen)
    return [x.to(dtype) for x in (q, k, v, log_decay)], state0


# (B, T, H, Dk, Dv, chunk_size)
SHAPES = [
    (1, 1, 1, 4, 4, 64),  # one token
    (2, 37, 3, 8, 5, 8),  # T not a multiple of the chunk, Dk != Dv
    (2, 33, 2, 16, 16, 1),  # chunk of one token
    (1, 20, 2, 8, 12, 64),  # chunk longer than the sequence
    (3, 64, 2, 16, 8, 16),  # T a multiple of the chunk
]


@pytest.mark.parametrize("decay", ["tau16", "strong", "none"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("B,T,H,Dk,Dv,chunk_size", SHAPES)
def test_parallel_and_chunk_match_recurrent(B, T, H, Dk, Dv, chunk_size, with_state, decay):
    (q, k, v, g), state0 = random_inputs(B, T, H, Dk, Dv, decay)
    state0 = state0 if with_state else None
    o_ref, s_ref = gated_retention(q, k, v, g, initial_state=state0, mode="recurrent")
    assert o_ref.shape == (B, T, H, Dv) and s_ref.shape == (B, H, Dk, Dv)
    for mode in ("parallel", "chunk"):
        o, s = gated_retention(q, k, v, g, initial_state=state0, mode=mode, chunk_size=chunk_size)
        torch.testing.assert_close(o, o_ref, **FP32_TOL, msg=f"{mode} output")
        torch.testing.assert_close(s, s_ref, **FP32_TOL, msg=f"{mode} final state")


def test_recurrent_matches_a_hand_computed_case():
    # One head, Dk = Dv = 1: S_t = gamma_t S_{t-1} + k_t v_t, o_t = scale q_t S_t.
    q = torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    k = torch.tensor([1.0, 1.0, 2.0]).view(1, 3, 1, 1)
    v = torch.tensor([3.0, -1.0, 0.5]).view(1, 3, 1, 1)
    gamma = torch.tensor([0.5, 0.25, 0.8])
    s0 = torch.tensor([[[[4.0]]]])
    states, s = [], 4.0
    for t in range(3):
        s = gamma[t].item() * s + k.flatten()[t].item() * v.flatten()[t].item()
        states.append(s)
    expected = 0.5 * q.flatten() * torch.tensor(states)
    for mode in MODES:
        o, final = gated_retention(
            q, k, v, gamma.log().view(1, 3, 1), scale=0.5, initial_state=s0, mode=mode, chunk_size=2
        )
        torch.testing.assert_close(o.flatten(), expected, **FP32_TOL)
        torch.testing.assert_close(final.flatten(), torch.tensor([states[-1]]), **FP32_TOL)


@pytest.mark.parametrize("mode", ["parallel", "chunk"])
def test_extreme_decay_stays_finite(mode):
    (q, k, v, g), state0 = random_inputs(2, 64, 2, 8, 8, "extreme")
    o_ref, s_ref = gated_retention(q, k, v, g, initial_state=state0, mode="recurrent")
    o, s = gated_retention(q, k, v, g, initial_state=state0, mode=mode, chunk_size=16)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    torch.testing.assert_close(o, o_ref, **FP32_TOL)
    torch.testing.assert_close(s, s_ref, **FP32_TOL)


def test_longer_sequence_chunk_matches_recurrent():
    (q, k, v, g), state0 = random_inputs(1, 300, 2, 32, 32, "tau16")
    o_ref, s_ref = gated_retention(q, k, v, g, initial_state=state0, mode="recurrent")
    o, s = gated_retention(q, k, v, g, initial_state=state0, mode="chunk", chunk_size=64)
    torch.testing.assert_close(o, o_ref, atol=5e-5, rtol=5e-5)
    torch.testing.assert_close(s, s_ref, atol=5e-5, rtol=5e-5)


def test_chunk_then_recurrent_equals_one_pass():
    T1, T2 = 23, 9
    (q, k, v, g), state0 = random_inputs(2, T1 + T2, 2, 8, 6, "tau16")
    o_all, s_all = gated_retention(q, k, v, g, initial_state=state0, mode="recurrent")
    o1, s1 = gated_retention(
        q[:, :T1], k[:, :T1], v[:, :T1], g[:, :T1], initial_state=state0, mode="chunk", chunk_size=8
    )
    o2, s2 = gated_retention(q[:, T1:], k[:, T1:], v[:, T1:], g[:, T1:], initial_state=s1, mode="recurrent")
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o_all, **FP32_TOL)
    torch.testing.assert_close(s2, s_all, **FP32_TOL)


def test_step_equals_recurrent_and_updates_in_place():
    B, T, H, Dk, Dv = 2, 12, 3, 8, 4
    (q, k, v, g), state0 = random_inputs(B, T, H, Dk, Dv, "strong")
    o_ref, s_ref = gated_retention(q, k, v, g, scale=0.7, initial_state=state0, mode="recurrent")
    state = state0.clone()
    data_ptr = state.data_ptr()
    outputs = [gated_retention_step(q[:, t], k[:, t], v[:, t], g[:, t], state, scale=0.7) for t in range(T)]
    assert state.data_ptr() == data_ptr
    torch.testing.assert_close(torch.stack(outputs, dim=1), o_ref, **FP32_TOL)
    torch.testing.assert_close(state, s_ref, **FP32_TOL)


def test_chunk_prefill_then_steps_equals_one_pass():
    T1, T2 = 19, 5
    (q, k, v, g), _ = random_inputs(1, T1 + T2, 2, 8, 8, "tau16")
    o_all, s_all = gated_retention(q, k, v, g, mode="recurrent")
    o1, state = gated_retention(q[:, :T1], k[:, :T1], v[:, :T1], g[:, :T1], mode="chunk", chunk_size=4)
    steps = [gated_retention_step(q[:, t], k[:, t], v[:, t], g[:, t], state) for t in range(T1, T1 + T2)]
    torch.testing.assert_close(torch.cat([o1, torch.stack(steps, dim=1)], dim=1), o_all, **FP32_TOL)
    torch.testing.assert_close(state, s_all, **FP32_TOL)


def test_default_scale_is_inverse_sqrt_dk():
    (q, k, v, g), _ = random_inputs(1, 10, 2, 16, 8)
    o_default, _ = gated_retention(q, k, v, g, mode="parallel")
    o_explicit, _ = gated_retention(q * 16**-0.5, k, v, g, scale=1.0, mode="parallel")
    torch.testing.assert_close(o_default, o_explicit, **FP32_TOL)
    state = torch.zeros(1, 2, 16, 8)
    o_step = gated_retention_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state)
    torch.testing.assert_close(o_step, o_default[:, 0], **FP32_TOL)


def test_initial_state_is_not_modified():
    (q, k, v, g), state0 = random_inputs(1, 9, 2, 4, 4)
    before = state0.clone()
    for mode in MODES:
        gated_retention(q, k, v, g, initial_state=state0, mode=mode, chunk_size=4)
    assert torch.equal(state0, before)


@pytest.mark.parametrize("with_state", [False, True])
def test_matches_fla_naive_recurrent(with_state):
    naive = pytest.importorskip("fla.ops.simple_gla.naive", reason="fla-core is not installed")
    (q, k, v, g), state0 = random_inputs(2, 29, 3, 16, 8, "tau16", seed=3)
    state0 = state0 if with_state else None
    o_fla, s_fla = naive.naive_recurrent_simple_gla(
        q, k, v, g, scale=0.3, initial_state=state0, output_final_state=True
    )
    for mode in MODES:
        o, s = gated_retention(q, k, v, g, scale=0.3, initial_state=state0, mode=mode, chunk_size=8)
        torch.testing.assert_close(o, o_fla, **FP32_TOL, msg=mode)
        torch.testing.assert_close(s, s_fla, **FP32_TOL, msg=mode)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_inputs(mode):
    (q, k, v, g), state0 = random_inputs(2, 40, 2, 16, 16, "tau16", dtype=torch.bfloat16, seed=5)
    # Reference: the same bf16 values, upcast, through the fp32 spec.
    o_ref, s_ref = gated_retention(
        *(x.float() for x in (q, k, v, g)), initial_state=state0, mode="recurrent"
    )
    o, s = gated_retention(q, k, v, g, initial_state=state0.bfloat16(), mode=mode, chunk_size=16)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    # Computed in fp32: the error is the rounding of o (and of state0) to bf16.
    torch.testing.assert_close(o.float(), o_ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(s, s_ref, atol=2e-2, rtol=2e-2)


def test_bf16_step():
    (q, k, v, g), state0 = random_inputs(2, 3, 2, 8, 8, dtype=torch.bfloat16)
    o_ref, s_ref = gated_retention(*(x.float() for x in (q, k, v, g)), initial_state=state0, mode="recurrent")
    state = state0.clone()
    o = torch.stack([gated_retention_step(q[:, t], k[:, t], v[:, t], g[:, t], state) for t in range(3)], 1)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(o.float(), o_ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(state, s_ref, **FP32_TOL)


def _good():
    (q, k, v, g), state0 = random_inputs(2, 5, 3, 4, 6)
    return q, k, v, g, state0


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(mode="fast"), "mode='fast'.*parallel, chunk, recurrent"),
        (dict(chunk_size=0), "chunk_size=0"),
        (dict(chunk_size=2.5), "chunk_size=2.5"),
        (dict(q=torch.randn(2, 5, 12)), r"q must be \[B, T, H, D\]"),
        (dict(k=torch.randn(2, 5, 3, 5)), "k shape"),
        (dict(v=torch.randn(2, 4, 3, 6)), "v shape"),
        (dict(log_decay=torch.randn(2, 5, 3, 1)), "log_decay shape"),
        (dict(initial_state=torch.randn(2, 3, 6, 4)),
         re.escape("initial_state shape (2, 3, 6, 4) must be [B, H, Dk, Dv] = [2, 3, 4, 6]")),
        (dict(k=torch.randn(2, 5, 12)), r"^k must be \[B, T, H, D\]"),
        (dict(v=torch.randn(2, 5, 18)), r"^v must be \[B, T, H, D\]"),
        (dict(q=torch.zeros(2, 5, 3, 4, dtype=torch.long)), "floating-point"),
    ],
)
def test_bad_inputs_raise(change, match):
    q, k, v, g, state0 = _good()
    args = dict(q=q, k=k, v=v, log_decay=g, initial_state=state0, mode="chunk", chunk_size=4) | change
    with pytest.raises(ValueError, match=match):
        gated_retention(
            args.pop("q"), args.pop("k"), args.pop("v"), args.pop("log_decay"), **args
        )


def test_empty_sequence_raises():
    with pytest.raises(ValueError, match="T=0"):
        gated_retention(torch.randn(1, 0, 2, 4), torch.randn(1, 0, 2, 4), torch.randn(1, 0, 2, 4),
                        torch.randn(1, 0, 2))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(state=torch.zeros(2, 3, 4, 6, dtype=torch.bfloat16)), "float32"),
        (dict(state=torch.zeros(2, 3, 6, 4)),
         re.escape("state shape (2, 3, 6, 4) must be [B, H, Dk, Dv] = [2, 3, 4, 6]")),
        (dict(k=torch.randn(2, 3, 5)), re.escape("k shape (2, 3, 5) must equal q shape (2, 3, 4) ([B, H, Dk])")),
        (dict(q=torch.randn(2, 1, 3, 4)), r"q must be \[B, H, Dk\]"),
        (dict(v=torch.randn(2, 2, 6)), "v shape"),
        (dict(log_decay=torch.randn(2, 3, 1)), "log_decay shape"),
    ],
)
def test_step_bad_inputs_raise(change, match):
    q, k, v, g, _ = _good()
    args = dict(q=q[:, 0], k=k[:, 0], v=v[:, 0], log_decay=g[:, 0], state=torch.zeros(2, 3, 4, 6)) | change
    with pytest.raises(ValueError, match=match):
        gated_retention_step(**args)


# --- the chunk form's groups of chunks and its low-precision matmuls ---


@pytest.mark.parametrize("decay", ["tau16", "strong"])
@pytest.mark.parametrize("chunk_size,group_tokens", [(8, 1), (8, 8), (8, 20), (5, 16), (16, 1000)])
def test_chunk_groups_match_recurrent(chunk_size, group_tokens, decay):
    """Groups of one chunk, of several (rounded down to whole chunks), a last group shorter than the
    others and a T that neither divides: the state crosses every group boundary exactly."""
    (q, k, v, g), state0 = random_inputs(2, 77, 3, 8, 6, decay, seed=3)
    o_ref, s_ref = gated_retention(q, k, v, g, initial_state=state0, mode="recurrent")
    o, s = gated_retention(q, k, v, g, initial_state=state0, mode="chunk", chunk_size=chunk_size,
                           group_tokens=group_tokens)
    torch.testing.assert_close(o, o_ref, **FP32_TOL)
    torch.testing.assert_close(s, s_ref, **FP32_TOL)


@pytest.mark.parametrize("decay", ["tau16", "strong", "none"])
def test_chunk_in_bf16_matmuls_stays_within_bf16_of_the_fp32_reference(decay):
    """The GPU path (bf16 matmul inputs, fp32 accumulation, fp32 state and decays), forced here on
    the CPU, against the float32 recurrent spec: within what bf16 inputs allow, and the state fp32."""
    (q, k, v, g), state0 = random_inputs(2, 200, 2, 32, 32, decay, seed=4)
    q, k, v = (x.bfloat16() for x in (q, k, v))
    o_ref, s_ref = gated_retention(q.float(), k.float(), v.float(), g, initial_state=state0, mode="recurrent")
    o, s = gated_retention(q, k, v, g, initial_state=state0, mode="chunk", chunk_size=32, group_tokens=64,
                           matmul_dtype=torch.bfloat16)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    scale = o_ref.abs().max()
    assert (o.float() - o_ref).abs().max() / scale < 2e-2
    assert (s - s_ref).abs().max() / s_ref.abs().max() < 1e-2
    # and it really ran in bf16: not bit-equal to the fp32 chunk form
    o32, _ = gated_retention(q, k, v, g, initial_state=state0, mode="chunk", chunk_size=32, group_tokens=64,
                             matmul_dtype=torch.float32)
    assert not torch.equal(o, o32)


def test_the_state_is_float32_from_bf16_inputs_without_an_initial_state():
    (q, k, v, g), _ = random_inputs(1, 20, 2, 8, 8, seed=6)
    for mode, matmul in [("parallel", None), ("recurrent", None), ("chunk", None), ("chunk", torch.bfloat16)]:
        _, state = gated_retention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, mode=mode, chunk_size=8,
                                   matmul_dtype=matmul)  # bf16 matmuls: the GPU's chunk path, forced here
        assert state.dtype == torch.float32, (mode, matmul)


def test_each_mode_runs_its_own_form(monkeypatch):
    """The forms agree, so only a spy tells which one ran: the mode is a speed choice, it must be kept."""
    from yoco.ops import retention

    ran = []
    for form in ("_parallel", "_chunk", "_recurrent"):
        original = getattr(retention, form)
        monkeypatch.setattr(retention, form, lambda *a, _f=original, _n=form, **kw: ran.append(_n) or _f(*a, **kw))
    q, k, v, g, _ = _good()
    for mode in ("parallel", "chunk", "recurrent"):
        gated_retention(q, k, v, g, mode=mode)
    assert ran == ["_parallel", "_chunk", "_recurrent"]


def test_chunk_matmul_dtype_defaults_to_float32_on_the_cpu():
    (q, k, v, g), _ = random_inputs(1, 40, 2, 8, 8, seed=5)
    q, k, v = (x.bfloat16() for x in (q, k, v))
    o_default, s_default = gated_retention(q, k, v, g, mode="chunk", chunk_size=8)
    o32, s32 = gated_retention(q, k, v, g, mode="chunk", chunk_size=8, matmul_dtype=torch.float32)
    assert torch.equal(o_default, o32) and torch.equal(s_default, s32)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_group_tokens(bad):
    (q, k, v, g), _ = random_inputs(1, 8, 1, 4, 4)
    with pytest.raises(ValueError, match=f"group_tokens={bad!r} must be an int >= 1"):
        gated_retention(q, k, v, g, group_tokens=bad)


def test_chunk_memory_is_bounded_by_the_group_not_the_sequence():
    """No T x C (or fp32 T x D) tensor for the whole sequence: the peak of what torch allocates
    (profiled) grows with T only through the inputs and the output themselves."""
    from torch.profiler import ProfilerActivity, profile

    def peak_above_io(T):
        (q, k, v, g), _ = random_inputs(1, T, 2, 16, 16, seed=6)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            gated_retention(q, k, v, g, mode="chunk", chunk_size=16, group_tokens=128)
        live = peak = 0
        for event in sorted(prof.events(), key=lambda e: e.time_range.start):
            live += event.self_cpu_memory_usage
            peak = max(peak, live)
        return peak - 4 * T * 2 * 16  # less the float32 output [1, T, 2, 16]

    short, long = peak_above_io(512), peak_above_io(8192)
    assert long < 1.5 * short, (short, long)


@pytest.mark.parametrize("chunk_size, group_tokens, chunks_per_group", [
    (4, 8, [2, 2, 1]),  # 20 tokens in groups of 2 chunks, the last group short
    (4, 3, [1] * 5),  # a group smaller than a chunk is one chunk
    (4, 100, [5]),  # one group holds the whole prompt
    (8, 20, [2, 1]),  # rounded down to whole chunks; the last chunk padded
])
def test_chunk_form_runs_groups_of_whole_chunks(monkeypatch, chunk_size, group_tokens, chunks_per_group):
    """The loop runs once per group of group_tokens // chunk_size chunks (at least one), which is
    what bounds its memory and length; the result is the recurrence's whatever the grouping."""
    import yoco.ops.retention as retention

    seen, within = [], retention._log_decay_between

    def spy(log_decay):
        if log_decay.dim() == 4:  # [B, H, n, C]: once per group, for its n chunks
            seen.append(log_decay.shape[2])
        return within(log_decay)

    monkeypatch.setattr(retention, "_log_decay_between", spy)
    (q, k, v, g), _ = random_inputs(1, 20, 2, 4, 3)
    o, state = gated_retention(q, k, v, g, mode="chunk", chunk_size=chunk_size, group_tokens=group_tokens)
    assert seen == chunks_per_group
    o_ref, state_ref = gated_retention(q, k, v, g, mode="recurrent")
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)
