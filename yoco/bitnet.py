"""BitNet settings: BitLinear (fake-quant for training, packed for inference) and model-wide helpers.

BitLinear replaces every linear layer inside the blocks (through yoco.layers.make_linear); the
embedding and the LM head stay in full precision. A BitLinear starts as a float `.weight` trained
with straight-through fake quantization; `pack_bitnet(model)` turns each one, in place, into packed
2-bit ("1.58bit") or 1-bit ("1bit") codes plus one float32 scale, read by the kernel on CUDA.
The numerics and the packed layout live in yoco.ops.bitlinear; both forwards agree bitwise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yoco.ops.bitlinear import (
    MAX_IN_FEATURES,
    MODES,
    bitlinear,
    bitlinear_fake_quant,
    check_mode,
    pack,
    packed_shape,
    packed_weight_bytes,
    quantize_activation,
    quantize_weight,
    unpack,
)

__all__ = ["MODES", "BitLinear", "pack", "pack_bitnet", "packed_shape", "packed_weight_bytes",
           "quantize_activation", "quantize_weight", "unpack", "weight_bytes"]


class BitLinear(nn.Module):
    """A bias-free linear layer y = x W^T with BitNet weights and int8 per-token activations.

    Before packing it holds `weight` [out, in] (an nn.Parameter, initialised like nn.Linear) and
    runs the fake-quant forward; after `pack_()` it holds the buffers `packed_weight` (uint8) and
    `weight_scale` (float32 0-d), `weight` is None, and `packed_numel` = out * in keeps parameter
    counts unchanged. Inputs of any float dtype; the output has the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, mode: str = "1.58bit", *,
                 device=None, dtype=None):
        super().__init__()
        check_mode(mode)
        if not 1 <= in_features <= MAX_IN_FEATURES:
            raise ValueError(f"in_features must be in [1, {MAX_IN_FEATURES}] (the float32 integer matmul "
                             f"is exact only up to there), got {in_features}")
        if out_features < 1:
            raise ValueError(f"out_features must be >= 1, got {out_features}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.register_buffer("packed_weight", None)
        self.register_buffer("weight_scale", None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight is not None:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    @property
    def is_packed(self) -> bool:
        return self.packed_weight is not None

    @property
    def packed_numel(self) -> int:
        """Logical weights held in packed storage (0 while the float weight is a parameter)."""
        return self.out_features * self.in_features if self.is_packed else 0

    @torch.no_grad()
    def pack_(self) -> BitLinear:
        """In place: quantize the float weight once, keep codes packed and the scale, free the weight."""
        if self.is_packed:
            return self
        codes, scale = quantize_weight(self.weight, self.mode)
        self.register_buffer("packed_weight", pack(codes, self.mode))
        self.register_buffer("weight_scale", scale)
        self.weight = None  # drops the Parameter; packed state loads through the buffers above
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A packed checkpoint loads into a fresh (float) layer: switch to packed storage first.
        if prefix + "packed_weight" in state_dict and not self.is_packed:
            device = self.weight.device
            self.register_buffer("packed_weight", torch.empty(
                packed_shape((self.out_features, self.in_features), self.mode), dtype=torch.uint8,
                device=device))
            self.register_buffer("weight_scale", torch.empty((), dtype=torch.float32, device=device))
            self.weight = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) must not round the scale: both forwards use it in float32, and the
        # packed one agrees bitwise with the fake-quant one only with the same float32 scale.
        scale = self._buffers.pop("weight_scale", None)
        super()._apply(fn, recurse)
        self._buffers["weight_scale"] = None if scale is None else scale.to(fn(scale).device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"BitLinear expects inputs [..., {self.in_features}], got {tuple(x.shape)}")
        if self.is_packed:
            return bitlinear(x, self.packed_weight, self.weight_scale, self.mode, self.in_features)
        return bitlinear_fake_quant(x, self.weight, self.mode)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode!r}, "
                f"packed={self.is_packed}")


def pack_bitnet(model: nn.Module) -> None:
    """In place: every BitLinear in `model` to packed storage, float weights freed."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    if not layers:
        raise ValueError("pack_bitnet: the model has no BitLinear layers (bitnet='none'); build it with "
                         f"bitnet in {MODES} to pack")
    for layer in layers:
        layer.pack_()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers as they are stored now (packed codes count as uint8)."""
    tensors = list(model.parameters()) + list(model.buffers())
    seen = set()
    total = 0
    for t in tensors:
        if id(t) in seen:  # tied or shared tensors count once
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total
