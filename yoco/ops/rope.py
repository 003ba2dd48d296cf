"""Rotary position embedding, in the two numerics this project offers (yoco.config.NUMERICS):

- "llama" (the default; Llama, HF transformers, this project's baseline): inverse frequencies
  theta^(-2i/D) for i = 0..D/2-1, rotate-half layout (dimension i pairs with i + D/2);
- "unilm" (YOCO's authors' code, microsoft/unilm YOCO/): theta^(-i/(D/2-1)), a linspace of
  exponents from 0 to 1, interleaved layout (dimension 2i pairs with 2i+1).

Angles are computed from position tensors on the fly instead of a table of max_seq_len rows:
a 1M-token table would cost hundreds of MB, the angles for one step cost nothing.
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, theta: float, style: str = "llama", device=None) -> torch.Tensor:
    """[D/2] float32 inverse frequencies of the rotary pairs."""
    half = head_dim // 2
    if style == "unilm":
        exponents = torch.linspace(0, 1, half, device=device, dtype=torch.float32)
    else:
        exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    return theta ** -exponents


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float,
                style: str = "llama") -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim // 2] (float32) for integer positions [T]."""
    inv_freq = inverse_frequencies(head_dim, theta, style, positions.device)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "llama") -> torch.Tensor:
    """Rotate x [B, T, H, D] by the angles of its T positions (cos, sin [T, D/2]); keeps x's dtype.
    Pair (a, b) becomes (a cos - b sin, b cos + a sin) in either layout."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    if style == "unilm":
        a, b = x[..., 0::2].float(), x[..., 1::2].float()
        return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2).to(x.dtype)
    half = x.shape[-1] // 2
    a, b = x[..., :half].float(), x[..., half:].float()
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).to(x.dtype)
