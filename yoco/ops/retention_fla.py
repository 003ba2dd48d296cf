"""Gated retention on fla-core's Triton kernels (fla.ops.simple_gla), same API as yoco.ops.retention.

Thin wrappers: `gated_retention_fla` (prefill; "chunk" -> chunk_simple_gla, "recurrent" ->
fused_recurrent_simple_gla, "parallel" -> parallel_simple_gla) and `gated_retention_step_fla` (decode,
fused_recurrent_simple_gla on one token). Same layout, scale, initial_state and float32 final state as
the reference, so a state from one hands straight to the other (or to the reference).

fla is imported lazily and only here: importing this module never fails, `fla_available()` says
whether the kernels can be used. They need CUDA tensors (or the Triton interpreter, TRITON_INTERPRET=1,
under which fla's chunk kernels do not run in fla-core 0.6.0).
"""

from __future__ import annotations

import functools

import torch

from yoco.ops.retention import _check_sequence_inputs, _check_step_inputs


@functools.cache
def _simple_gla():
    """fla.ops.simple_gla, or None where fla-core or triton does not import."""
    try:
        import fla.ops.simple_gla as simple_gla
    except Exception:  # a broken install (triton missing, wrong torch) counts as absent
        return None
    return simple_gla


def fla_available() -> bool:
    """True where fla-core's simple_gla kernels import (they still need CUDA tensors to run)."""
    return _simple_gla() is not None


def _require_fla():
    simple_gla = _simple_gla()
    if simple_gla is None:
        raise RuntimeError(
            "fla-core is not importable here; install fla-core==0.6.0 and triton, "
            "or use yoco.ops.retention.gated_retention"
        )
    return simple_gla


def gated_retention_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """gated_retention on fla's kernels: same arguments, o in q's dtype, final_state float32.

    chunk_size is used by mode="chunk" only and must be a power of two (fla's kernels require it).
    """
    _check_sequence_inputs(q, k, v, log_decay, initial_state, mode, chunk_size)
    if mode == "chunk" and chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size={chunk_size} must be a power of two for fla's chunk kernels")
    simple_gla = _require_fla()
    if scale is None:
        scale = q.shape[-1] ** -0.5
    g = log_decay.float()
    state0 = None if initial_state is None else initial_state.float()

    if mode == "chunk":
        o, state = simple_gla.chunk_simple_gla(
            q, k, v, g, scale=scale, initial_state=state0, output_final_state=True, chunk_size=chunk_size
        )
    elif mode == "recurrent":
        o, state = simple_gla.fused_recurrent_simple_gla(
            q, k, v, g, scale=scale, initial_state=state0, output_final_state=True
        )
    else:  # "parallel"
        # fla's parallel kernel has neither an initial nor a final state: add both here, O(T d^2).
        o, _ = simple_gla.parallel_simple_gla(q, k, v, g, scale=scale)
        o, state = _parallel_state_terms(o, q, k, v, g, scale, state0)
    return o.to(q.dtype), state.float()


def gated_retention_step_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """gated_retention_step on fla's fused recurrent kernel: updates `state` in place, returns o.

    q, k [B, H, Dk]; v [B, H, Dv]; log_decay [B, H]; state [B, H, Dk, Dv] float32.
    fla writes the new state to a fresh buffer, copied back into `state` (no sync, graph-capturable).
    """
    _check_step_inputs(q, k, v, log_decay, state)
    simple_gla = _require_fla()
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, new_state = simple_gla.fused_recurrent_simple_gla(
        q.unsqueeze(1),
        k.unsqueeze(1),
        v.unsqueeze(1),
        log_decay.float().unsqueeze(1),
        scale=scale,
        initial_state=state,
        output_final_state=True,
    )
    state.copy_(new_state)
    return o.squeeze(1).to(q.dtype)


def _parallel_state_terms(o, q, k, v, g, scale, state0):
    """Add the initial state's share to o and compute the final state, in float32 ([B, T, H, D])."""
    cum = g.cumsum(1)  # [B, T, H]
    # Token s enters the final state decayed by exp(cum_T - cum_s) <= 1.
    to_end = (cum[:, -1:] - cum).exp()
    state = torch.einsum("bthk,bthv->bhkv", k.float() * to_end[..., None], v.float())
    o = o.float()
    if state0 is not None:
        o = o + torch.einsum("bthk,bhkv->bthv", q.float() * (scale * cum.exp()[..., None]), state0)
        state = state + cum[:, -1, :, None, None].exp() * state0
    return o, state
