"""Gated retention (YOCO's gRet, fla's "simple GLA"): the plain PyTorch reference in three forms.

Per head, with gamma_t = exp(log_decay_t) in (0, 1]:
    S_t = gamma_t * S_{t-1} + k_t^T v_t        (S is Dk x Dv)
    o_t = (scale * q_t) S_t

- "recurrent": the definition, one token at a time (slow; the spec the other forms are tested against).
- "parallel": O = ((Q K^T) * D) V with D[t, s] = exp(log_decay_{s+1} + ... + log_decay_t) for s <= t,
  else 0; O(T^2) memory.
- "chunk": parallel inside chunks of `chunk_size`, the state carried between chunks; O(T * C * d) work.
  This is the prefill form. Chunks are processed in groups (GROUP_TOKENS tokens): inside a group,
  the states entering its chunks come from one small [G, G] decay product, so the Python loop runs
  T / GROUP_TOKENS times (128 at 1M tokens, not 16,384), and nothing of size T x C is ever held
  for the whole sequence: memory is bounded by the group, whatever T is.

Layout follows fla: q, k [B, T, H, Dk], v [B, T, H, Dv], log_decay [B, T, H], state [B, H, Dk, Dv].
The state is always float32 and so are all decay factors. "recurrent" and "parallel" compute in
float32 (they are references). "chunk" runs its matmuls in `matmul_dtype`: by default the input
dtype on CUDA (bf16 tensor cores, fp32 accumulation, as the authors' kernel and fla do) and float32
elsewhere (a CPU's bf16 matmuls are slower than its fp32 ones); the output comes back in q's dtype.
`gated_retention_step` is the one-token decode update, in place.
"""

from __future__ import annotations

import torch

MODES = ("parallel", "chunk", "recurrent")
# Chunk length of the prefill form. The authors' kernel uses 256. On a 2-core CPU, float32, one thread,
# 8K tokens, 2 heads of 128 (scripts/gret_chunk_sizes.py): 32 -> 191 ms, 64 -> 83, 128 -> 92, 256 -> 103.
# On a GPU the choice is unmeasured (bigger chunks fill tensor cores better: measure there).
DEFAULT_CHUNK_SIZE = 64
# Tokens per group of chunks (see the module docstring): bounds the loop length and the memory.
GROUP_TOKENS = 8192


def gated_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    matmul_dtype: torch.dtype | None = None,
    group_tokens: int = GROUP_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated retention over a sequence.

    Args:
        q, k: [B, T, H, Dk]. v: [B, T, H, Dv].
        log_decay: [B, T, H], the log of the per-token, per-head decay gamma_t; must be <= 0
            (not checked: that would cost a device sync).
        scale: multiplies q; default Dk ** -0.5 (as in fla).
        initial_state: [B, H, Dk, Dv] or None (zeros). Read, never modified.
        mode: "parallel", "chunk" or "recurrent"; all give the same result up to rounding.
        chunk_size: chunk length for mode="chunk" (any value >= 1; T need not be a multiple).
        matmul_dtype: the chunk form's matmul input dtype (accumulation is float32); None: q's dtype
            on CUDA, float32 elsewhere. The other forms always compute in float32.
        group_tokens: the chunk form's tokens per group of chunks (rounded down to whole chunks).

    Returns:
        o: [B, T, H, Dv] in q's dtype.
        final_state: [B, H, Dk, Dv], always float32 (computed in float32 whatever the inputs).
    """
    _check_sequence_inputs(q, k, v, log_decay, initial_state, mode, chunk_size)
    if isinstance(group_tokens, bool) or not isinstance(group_tokens, int) or group_tokens < 1:
        raise ValueError(f"group_tokens={group_tokens!r} must be an int >= 1")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    state0 = None if initial_state is None else initial_state.float()
    if mode == "chunk":
        if matmul_dtype is None:
            matmul_dtype = q.dtype if q.is_cuda else torch.float32
        return _chunk(q, k, v, log_decay, state0, scale, chunk_size, matmul_dtype, group_tokens)
    # Heads first ([B, H, T, D]) so matmuls batch over (B, H); float32 from here on.
    q32, k32, v32 = (x.transpose(1, 2).float() for x in (q, k, v))
    q32 = q32 * scale
    log_decay32 = log_decay.transpose(1, 2).float()
    if mode == "recurrent":
        o, state = _recurrent(q32, k32, v32, log_decay32, state0)
    else:
        o, state = _parallel(q32, k32, v32, log_decay32, state0)
    return o.transpose(1, 2).to(q.dtype), state


def gated_retention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """One decode token: update `state` in place and return o.

    q, k: [B, H, Dk]; v: [B, H, Dv]; log_decay: [B, H]; state: [B, H, Dk, Dv] float32, updated IN PLACE
    to S = exp(log_decay) * S + k^T v. Returns o = (scale * q) S as [B, H, Dv] in q's dtype.
    Computed in float32. Only shapes are checked (no data-dependent branch, no sync), and nothing the
    size of the state is allocated, so the step can be captured in a CUDA graph.
    """
    _check_step_inputs(q, k, v, log_decay, state)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    decay = log_decay.float().exp()
    state.mul_(decay[..., None, None])
    # addcmul_ broadcasts k (column) times v (row) straight into the state: no [Dk, Dv] temporary.
    state.addcmul_(k.float().unsqueeze(-1), v.float().unsqueeze(-2))
    o = torch.matmul(q.float().unsqueeze(-2) * scale, state).squeeze(-2)
    return o.to(q.dtype)


# --- the three forms; all take float32 [B, H, T, D] tensors, q already scaled ---


def _recurrent(q, k, v, log_decay, state0):
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    state = q.new_zeros(B, H, Dk, Dv) if state0 is None else state0
    decay = log_decay.exp()
    outputs = []
    for t in range(T):
        state = decay[:, :, t, None, None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    return torch.stack(outputs, dim=2), state


def _log_decay_between(log_decay: torch.Tensor) -> torch.Tensor:
    """L[..., t, s] = sum of log_decay over s < r <= t for s <= t, else -inf; so exp(L) is D.

    Summed segment by segment rather than as cum_t - cum_s: that difference of two large cumsums
    cancels and loses digits once the cumsums reach the hundreds (strong decay, long T). The -inf
    goes in before any exp, so nothing overflows.
    """
    T = log_decay.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=log_decay.device)
    # rows[..., r, s] = log_decay_r where r > s: summing rows 0..t gives the segment (s, t].
    rows = log_decay[..., :, None].expand(*log_decay.shape, T).masked_fill(~ones.tril(-1), 0.0)
    return rows.cumsum(-2).masked_fill(~ones.tril(), float("-inf"))


def _parallel(q, k, v, log_decay, state0):
    between = _log_decay_between(log_decay)  # [B, H, T, T]
    o = ((q @ k.transpose(-1, -2)) * between.exp()) @ v
    # Token s enters the final state decayed over (s, T]: the last row of `between`.
    state = (k * between[..., -1, :].exp()[..., None]).transpose(-1, -2) @ v
    if state0 is not None:
        cum = log_decay.cumsum(-1)  # decay since the start, for the initial state's share
        o = o + (q * cum.exp()[..., None]) @ state0
        state = state + cum[..., -1, None, None].exp() * state0
    return o, state


def _chunk(q, k, v, log_decay, state0, scale, chunk_size, mm, group_tokens):
    """The chunk form on [B, T, H, D] inputs, one group of G chunks at a time (see the module
    docstring). Per group: the intra-chunk parallel form, each chunk's contribution to the state
    (k_to_end^T v), the states entering its chunks from a [G, G] lower-triangular decay product,
    then q times those states. Decay factors and the state stay float32; matmul inputs are `mm`."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    C = min(chunk_size, T)
    G = max(1, group_tokens // C)
    out = torch.empty(B, T, H, Dv, dtype=q.dtype, device=q.device)
    state = q.new_zeros(B, H, Dk, Dv, dtype=torch.float32) if state0 is None else state0
    for start in range(0, T, G * C):
        end = min(T, start + G * C)
        n = -(-(end - start) // C)
        pad = n * C - (end - start)
        # Heads first, this group only; padded tokens have k = v = 0 and log_decay = 0: they add
        # nothing and decay nothing.
        qg, kg, vg = (torch.nn.functional.pad(x[:, start:end].transpose(1, 2), (0, 0, 0, pad))
                      .reshape(B, H, n, C, x.shape[-1]) for x in (q, k, v))
        lg = torch.nn.functional.pad(log_decay[:, start:end].transpose(1, 2).float(), (0, pad)).reshape(B, H, n, C)
        qg = (qg.float() * scale).to(mm)
        kg, vg = kg.to(mm), vg.to(mm)
        between = _log_decay_between(lg)  # [B, H, n, C, C], within each chunk

        # Inside every chunk of the group at once.
        scores = (qg @ kg.transpose(-1, -2)).float() * between.exp()
        o = (scores.to(mm) @ vg).float()
        # Token s reaches its chunk's end state decayed by the tokens after it (the last row of
        # `between`); summed over the chunk, that is the chunk's contribution to the state.
        k_to_end = (kg.float() * between[..., -1, :].exp()[..., None]).to(mm)
        contrib = (k_to_end.transpose(-1, -2) @ vg).float()  # [B, H, n, Dk, Dv]
        # State at the end of chunk g: the contributions of chunks m <= g decayed over the chunks
        # m+1..g, plus the incoming state decayed over chunks 0..g. All factors are <= 1.
        chunk_log_decay = lg.sum(-1)  # [B, H, n]
        across = _log_decay_between(chunk_log_decay).exp()  # [B, H, n, n]
        ends = (across @ contrib.flatten(-2)).view(B, H, n, Dk, Dv)
        ends = ends + chunk_log_decay.cumsum(-1).exp()[..., None, None] * state[:, :, None]
        starts = torch.cat((state[:, :, None], ends[:, :, :-1]), dim=2)  # entering each chunk
        # q sees the state entering its chunk decayed from the chunk's start to t (inclusive).
        q_from_state = (qg.float() * lg.cumsum(-1).exp()[..., None]).to(mm)
        o = o + (q_from_state @ starts.to(mm)).float()
        out[:, start:end] = o.reshape(B, H, n * C, Dv)[:, :, : end - start].transpose(1, 2).to(q.dtype)
        state = ends[:, :, -1]
    return out, state


# --- input checks: shapes and options only (never data, which would sync the device) ---


def _check_sequence_inputs(q, k, v, log_decay, initial_state, mode, chunk_size):
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed: {', '.join(MODES)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an int >= 1")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, T, H, D], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k shape {tuple(k.shape)} must equal q shape {tuple(q.shape)} ([B, T, H, Dk])")
    B, T, H, Dk = q.shape
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v shape {tuple(v.shape)} must be [B, T, H, Dv] = [{B}, {T}, {H}, Dv]")
    if T < 1:
        raise ValueError(f"the sequence is empty (T={T}); need at least one token")
    if log_decay.shape != q.shape[:3]:
        raise ValueError(f"log_decay shape {tuple(log_decay.shape)} must be [B, T, H] = [{B}, {T}, {H}]")
    if initial_state is not None and initial_state.shape != (B, H, Dk, v.shape[-1]):
        raise ValueError(
            f"initial_state shape {tuple(initial_state.shape)} must be [B, H, Dk, Dv] = "
            f"[{B}, {H}, {Dk}, {v.shape[-1]}]"
        )


def _check_step_inputs(q, k, v, log_decay, state):
    if q.dim() != 3:
        raise ValueError(f"q must be [B, H, Dk] (one token), got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k shape {tuple(k.shape)} must equal q shape {tuple(q.shape)} ([B, H, Dk])")
    B, H, Dk = q.shape
    if v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v shape {tuple(v.shape)} must be [B, H, Dv] = [{B}, {H}, Dv]")
    if log_decay.shape != q.shape[:2]:
        raise ValueError(f"log_decay shape {tuple(log_decay.shape)} must be [B, H] = [{B}, {H}]")
    if state.shape != (B, H, Dk, v.shape[-1]):
        raise ValueError(
            f"state shape {tuple(state.shape)} must be [B, H, Dk, Dv] = [{B}, {H}, {Dk}, {v.shape[-1]}]"
        )
    if state.dtype != torch.float32:
        raise ValueError(f"state dtype {state.dtype} is not allowed; the state is always torch.float32")
