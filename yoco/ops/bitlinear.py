"""BitNet's low-bit linear op: the quantizers, the packed weight format and the packed matmul.

Formulas (shared/YOCO.md; BitNet b1.58 arXiv 2402.17764, BitNet arXiv 2310.11453):
- "1.58bit": s_w = max(mean|W|, 1e-5) per matrix, w_q = clamp(round(W / s_w), -1, 1).
- "1bit":    s_w = mean|W|, w_q = sign(W - mean(W)), with sign(0) taken as +1 so the code is binary.
  s_w is clamped at 1e-5 here too, so an all-zero matrix does not divide by zero in the STE.
- activations, per token (last dim): s_x = 127 / max(max|x|, 1e-5), x_q = clamp(round(x s_x), -128, 127).
- y = (x_q @ w_q^T) * s_w / s_x.
All of it is computed in float32 whatever the input dtype. The integer matmul runs in float32 too:
|x_q| <= 128 and |w_q| <= 1 keep every partial sum an integer below 2^24 while K <= 2^17, so it is
exact in any summation order (TF32 and bf16 inputs hold these small integers exactly as well). That
is why the fake-quant forward and the packed forward below agree bitwise.

Packed layout (along K, the reduction dim, which is what the kernel streams):
- a weight [N, K] packs to uint8 [N, ceil(K / per_byte)], per_byte = 4 ("1.58bit") or 8 ("1bit").
- weight k of a row sits in byte k // per_byte at bits [b * (k % per_byte), b * (k % per_byte) + b),
  b = 8 // per_byte, lowest bits first.
- codes: ternary w -> w + 1 in {0, 1, 2}; binary w -> 1 if w > 0 else 0. Padding past K is code 0
  (its value is never used: the matmul masks activations past K to zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MODES = ("1bit", "1.58bit")
BITS_PER_WEIGHT = {"1.58bit": 2, "1bit": 1}
MAX_IN_FEATURES = 1 << 17  # keeps 128 * K < 2^24: the float32 integer matmul stays exact
_EPS = 1e-5


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown BitNet mode {mode!r}: valid modes are {', '.join(map(repr, MODES))}")
    return mode


def weights_per_byte(mode: str) -> int:
    return 8 // BITS_PER_WEIGHT[check_mode(mode)]


# ---------------------------------------------------------------------------------------------
# Quantizers (no gradient: the straight-through estimator is added by bitlinear_fake_quant)


@torch.no_grad()
def quantize_weight(w: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-matrix weight quantization: (codes int8 shaped like w, scale float32 0-d)."""
    check_mode(mode)
    w = w.float()
    scale = w.abs().mean().clamp_min(_EPS)
    if mode == "1.58bit":
        codes = (w / scale).round().clamp(-1, 1)
    else:
        codes = torch.where(w - w.mean() >= 0, 1.0, -1.0)
    return codes.to(torch.int8), scale


@torch.no_grad()
def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: (codes int8 shaped like x, scale float32 [..., 1])."""
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True).clamp_min(_EPS)
    # A true division (127 / t on a tensor is computed as 127 * (1 / t), one rounding more),
    # so that the Triton kernel's div_rn reproduces it bit for bit.
    scale = torch.full_like(amax, 127.0) / amax
    codes = (x * scale).round().clamp(-128, 127)
    return codes.to(torch.int8), scale


def dequantize_output(acc: torch.Tensor, w_scale: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
    """acc * s_w / s_x in float32: the one place both the fake-quant and the packed path scale."""
    return acc * w_scale / x_scale


# ---------------------------------------------------------------------------------------------
# Packed storage


def packed_shape(shape, mode: str) -> tuple[int, ...]:
    """Shape of pack(q, mode) for codes q of `shape`: the last dim shrinks per_byte times, rounded up."""
    shape = tuple(shape)
    if not shape:
        raise ValueError("cannot pack a 0-d tensor: weights need at least one dimension")
    return (*shape[:-1], math.ceil(shape[-1] / weights_per_byte(mode)))


def packed_weight_bytes(out_features: int, in_features: int, mode: str) -> int:
    """Bytes of one packed BitLinear: the packed codes plus its float32 scale."""
    return math.prod(packed_shape((out_features, in_features), mode)) + 4


def pack(q: torch.Tensor, mode: str) -> torch.Tensor:
    """Ternary ("1.58bit") or binary ("1bit") codes [..., K] -> uint8 [..., ceil(K / per_byte)]."""
    per_byte = weights_per_byte(mode)
    out_shape = packed_shape(q.shape, mode)
    if q.is_meta:  # size estimates of big presets: the shape is all there is
        return torch.empty(out_shape, dtype=torch.uint8, device="meta")
    allowed = (-1, 0, 1) if mode == "1.58bit" else (-1, 1)
    if q.is_complex() or not torch.isin(q, torch.tensor(allowed, device=q.device, dtype=q.dtype)).all():
        kind = "ternary values in {-1, 0, 1}" if mode == "1.58bit" else "binary values in {-1, 1}"
        raise ValueError(f"pack(mode={mode!r}) needs {kind}; got a tensor with other values")
    codes = (q.to(torch.int16) + 1) if mode == "1.58bit" else (q > 0).to(torch.int16)
    pad = out_shape[-1] * per_byte - q.shape[-1]
    codes = F.pad(codes, (0, pad)).reshape(*out_shape, per_byte)
    bits = BITS_PER_WEIGHT[mode]
    shifts = torch.arange(per_byte, device=q.device, dtype=torch.int16) * bits
    return (codes << shifts).sum(dim=-1).to(torch.uint8)


def unpack(packed: torch.Tensor, mode: str, shape) -> torch.Tensor:
    """Inverse of pack: uint8 [..., ceil(K / per_byte)] -> int8 codes of `shape` [..., K]."""
    per_byte = weights_per_byte(mode)
    shape = tuple(shape)
    expected = packed_shape(shape, mode)
    if packed.dtype != torch.uint8 or tuple(packed.shape) != expected:
        raise ValueError(f"packed weight of shape {tuple(packed.shape)} and dtype {packed.dtype} does not "
                         f"hold {mode!r} codes of shape {shape}: expected uint8 of shape {expected}")
    bits = BITS_PER_WEIGHT[mode]
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.uint8) * bits
    fields = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    codes = fields.reshape(*shape[:-1], -1)[..., : shape[-1]].to(torch.int8)
    return codes - 1 if mode == "1.58bit" else codes * 2 - 1


def integer_matmul(x_codes: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    """x_codes [..., K] @ w_codes[N, K]^T for float32 tensors holding integers: exact, even under
    autocast (which would round the sums to bf16)."""
    with torch.autocast(x_codes.device.type, enabled=False):
        return F.linear(x_codes, w_codes)


# ---------------------------------------------------------------------------------------------
# Forward paths. All share quantize_activation, an exact float32 integer matmul and
# dequantize_output, so they are bitwise equal on the same weights.


def bitlinear_fake_quant(x: torch.Tensor, weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Training path: quantize on the fly, straight-through gradients to x and the float weight.

    The STE lives in the integer domain: codes + (t - t.detach()) is the code exactly in the forward
    (t - t is 0) and has gradient 1 w.r.t. t = x * s_x or W / s_w; with the scales held constant
    this is BitNet's x + (quant(x) - x).detach() applied to the dequantized values.
    """
    x32 = x.float()
    x_codes, x_scale = quantize_activation(x32)
    w_codes, w_scale = quantize_weight(weight, mode)
    x_t, w_t = x32 * x_scale, weight.float() / w_scale
    x_ste = x_codes.float() + (x_t - x_t.detach())
    w_ste = w_codes.float() + (w_t - w_t.detach())
    return dequantize_output(integer_matmul(x_ste, w_ste), w_scale, x_scale).to(x.dtype)


def bitlinear_reference(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, mode: str,
                        in_features: int) -> torch.Tensor:
    """Packed inference in plain PyTorch: unpack to codes, exact float32 integer matmul, scale."""
    out_features = packed.shape[0]
    w_codes = unpack(packed, mode, (out_features, in_features))
    x_codes, x_scale = quantize_activation(x)
    acc = integer_matmul(x_codes.float(), w_codes.float())
    return dequantize_output(acc, w_scale.float(), x_scale).to(x.dtype)


def lowbit_matmul_reference(x_codes: torch.Tensor, packed: torch.Tensor, mode: str,
                            in_features: int) -> torch.Tensor:
    """int8 codes [M, K] times packed weight [N, K'] -> int32 [M, N]: the kernel's integer spec."""
    w_codes = unpack(packed, mode, (packed.shape[0], in_features))
    return integer_matmul(x_codes.float(), w_codes.float()).to(torch.int32)


_kernels = None  # yoco.ops.bitlinear_triton once imported; False where triton does not import


def triton_available() -> bool:
    global _kernels
    if _kernels is None:
        try:
            from yoco.ops import bitlinear_triton
        except Exception:  # absent or broken triton: the reference serves
            _kernels = False
        else:
            _kernels = bitlinear_triton
    return _kernels is not False


def bitlinear(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, mode: str,
              in_features: int) -> torch.Tensor:
    """Packed BitLinear forward: the Triton W2A8 / W1A8 kernels on CUDA, the reference elsewhere."""
    if x.is_cuda and triton_available():
        return _kernels.bitlinear_triton(x, packed, w_scale, mode, in_features)
    return bitlinear_reference(x, packed, w_scale, mode, in_features)
