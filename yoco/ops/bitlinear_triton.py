"""Triton kernels for packed BitLinear: int8 activations times 2-bit (or 1-bit) weights, int32 sums.

`_lowbit_matmul_kernel` is a W2A8 / W1A8 GEMM. Each program streams its [N-tile, K] slice of the
packed weight once, unpacks every byte in registers into 4 (or 8) int8 sub-tiles, one per bit
field, and feeds each to an int8 tl.dot against the matching strided columns of x (k = 4 j + i):
no interleaving, int32 accumulation, then acc * s_w / s_x in the epilogue.
- decode (at most FUSED_MAX_ROWS rows): one launch. Each program also takes the absmax of its
  rows (a scan of x, a few KiB from L2) and quantizes x tiles in registers.
- more rows (prefill): `_quantize_rows_kernel` quantizes each row once, then the GEMM reads codes.
Decode is bound by reading weights; the packed bytes are 8x (16x) fewer than bf16's.

All paths reproduce yoco.ops.bitlinear's reference bit for bit: division is div_rn (Triton's plain `/`
may lower to an approximate division), rounding is round-half-to-even written with floor and
exact compares (no fused multiply-add can change it), and the integer sums are exact.
Layout and formulas: see yoco/ops/bitlinear.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yoco.ops.bitlinear import BITS_PER_WEIGHT, check_mode, packed_shape


@triton.jit
def _round_half_even(v):
    # torch.round semantics; |v| - floor(|v|) is exact (Sterbenz), so the tie test is too.
    a = tl.abs(v)
    f = tl.floor(a)
    d = a - f
    odd = (f.to(tl.int32) & 1) == 1
    r = tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)
    return tl.where(v < 0, -r, r)


@triton.jit
def _round_to_bf16_nearest_even(y):
    # torch's float32 -> bfloat16 rounding, done on the bits so that the cast after it is exact
    # whatever rounding the cast itself uses (the interpreter truncates).
    bits = y.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _quantize_codes(x, scale):
    """float32 x times its row scale -> int8 codes, exactly as quantize_activation."""
    return tl.minimum(tl.maximum(_round_half_even(x * scale), -128.0), 127.0).to(tl.int8)


@triton.jit
def _quantize_rows_kernel(x_ptr, codes_ptr, scale_ptr, K, stride_xm, stride_cm, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.math.div_rn(tl.full((), 127.0, tl.float32), tl.maximum(tl.max(amax, axis=0), 1e-5))
    for k0 in range(0, K, BLOCK_K):
        mask = k0 + offs < K
        x = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(codes_ptr + row * stride_cm + k0 + offs, _quantize_codes(x, scale), mask=mask)
    tl.store(scale_ptr + row, scale)


def _matmul_configs():
    # The first config is the one the test interpreter keeps (tests/conftest.py): small tiles.
    # BLOCK_M 16 is tl.dot's minimum: decode rows are padded to it (free: the kernel is memory-bound).
    configs = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_KP": 32}, num_warps=4, num_stages=2)]
    for block_n, block_kp, warps, stages in [(32, 128, 4, 4), (64, 128, 4, 4), (32, 256, 4, 3),
                                             (64, 256, 8, 3), (128, 128, 8, 3), (16, 256, 4, 4),
                                             (64, 64, 4, 5), (16, 512, 4, 3), (32, 512, 8, 3)]:
        configs.append(triton.Config({"BLOCK_M": 16, "BLOCK_N": block_n, "BLOCK_KP": block_kp},
                                     num_warps=warps, num_stages=stages))
    for block_m, block_n, block_kp in [(64, 64, 64), (64, 128, 64), (128, 128, 64), (128, 64, 32)]:
        configs.append(triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_KP": block_kp},
                                     num_warps=8, num_stages=3))
    return configs


def _prune_configs(configs, named_args, **kwargs):
    # Fewer compiles on a fresh machine: decode-sized calls try decode tiles only, and a tile spans
    # at most 2048 weights along K (1-bit tiles of 512 bytes unroll 8 dots and compile slowly).
    args = {**named_args, **kwargs}
    per_byte = 8 // args["BITS"]
    kept = [c for c in configs if c.kwargs["BLOCK_KP"] * per_byte <= 2048
            and (args["M_BUCKET"] > 16 or c.kwargs["BLOCK_M"] == 16)]
    return kept or configs[:1]


# Tuned per (rows bucket, N, K, bits, fused): a prefill of any length reuses its bucket's choice.
@triton.autotune(configs=_matmul_configs(), key=["M_BUCKET", "N", "K", "BITS", "QUANTIZE"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit(do_not_specialize=["M_BUCKET"])  # a tuning key only: no recompiles per bucket
def _lowbit_matmul_kernel(
    x_ptr, w_ptr, x_scale_ptr, w_scale_ptr, out_ptr,
    M, N, K, KP, stride_xm, stride_wn, stride_om, M_BUCKET,
    BITS: tl.constexpr, DEQUANT: tl.constexpr, QUANTIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KP: tl.constexpr,
):
    # x_ptr: int8 codes, or with QUANTIZE float activations quantized here (then DEQUANT too).
    PER_BYTE: tl.constexpr = 8 // BITS
    FIELD: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kp = tl.arange(0, BLOCK_KP)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn

    if QUANTIZE:
        # Per-row absmax over all of K. Every program of a row block repeats this scan: at decode
        # sizes x is a few KiB read from L2, cheaper than a second launch.
        SCAN: tl.constexpr = 4096 // BLOCK_M
        amax = tl.zeros((BLOCK_M, SCAN), dtype=tl.float32)
        for k0 in range(0, K, SCAN):
            k = k0 + tl.arange(0, SCAN)
            xs = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & (k[None, :] < K), other=0.0)
            amax = tl.maximum(amax, tl.abs(xs.to(tl.float32)))
        x_scale = tl.math.div_rn(tl.full((BLOCK_M,), 127.0, tl.float32),
                                 tl.maximum(tl.max(amax, axis=1), 1e-5))

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kp0 in range(0, KP, BLOCK_KP):
        kp = kp0 + offs_kp
        # [BLOCK_KP, BLOCK_N] packed bytes: read once, unpacked PER_BYTE times in registers.
        w = tl.load(w_cols + kp[:, None], mask=(kp[:, None] < KP) & n_ok[None, :], other=0)
        for i in tl.static_range(PER_BYTE):
            k = kp * PER_BYTE + i
            # x past K loads as 0, so padding codes never count.
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & (k[None, :] < K), other=0)
            if QUANTIZE:
                x = _quantize_codes(x.to(tl.float32), x_scale[:, None])
            field = ((w >> (i * BITS)) & FIELD).to(tl.int8)
            if BITS == 2:
                w_i = field - 1
            else:
                w_i = field * 2 - 1
            acc = tl.dot(x, w_i, acc, out_dtype=tl.int32)

    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    if DEQUANT:
        if not QUANTIZE:
            x_scale = tl.load(x_scale_ptr + offs_m, mask=m_ok, other=1.0)
        w_scale = tl.load(w_scale_ptr)
        y = tl.math.div_rn(acc.to(tl.float32) * w_scale, x_scale[:, None])
        if out_ptr.dtype.element_ty == tl.bfloat16:
            y = _round_to_bf16_nearest_even(y)
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(out_ptrs, acc, mask=out_mask)


def quantize_activation_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as yoco.ops.bitlinear.quantize_activation for x [M, K]: (int8 [M, K], float32 [M, 1])."""
    x = x.contiguous()
    M, K = x.shape
    codes = torch.empty((M, K), dtype=torch.int8, device=x.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M:
        block_k = min(triton.next_power_of_2(K), 4096)
        _quantize_rows_kernel[(M,)](x, codes, scale, K, x.stride(0), codes.stride(0), BLOCK_K=block_k)
    return codes, scale


def lowbit_matmul_triton(x_codes: torch.Tensor, packed: torch.Tensor, mode: str, in_features: int,
                         x_scale: torch.Tensor | None = None, w_scale: torch.Tensor | None = None,
                         out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 codes [M, K] times packed weight [N, K'] -> int32 [M, N] sums, or with both scales given,
    (sums * w_scale / x_scale) in out_dtype."""
    _check_packed(packed, mode, in_features)
    if x_codes.dtype != torch.int8 or x_codes.dim() != 2 or x_codes.shape[1] != in_features:
        raise ValueError(f"x_codes must be int8 [M, {in_features}], got {x_codes.dtype} "
                         f"{tuple(x_codes.shape)}")
    dequant = x_scale is not None and w_scale is not None
    return _launch(x_codes, packed, mode, in_features, x_scale, w_scale,
                   out_dtype if dequant else torch.int32, quantize=False, dequant=dequant)


FUSED_MAX_ROWS = 16  # up to here (decode) one launch quantizes too; beyond, quantize once per row


def bitlinear_triton(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, mode: str,
                     in_features: int, fused: bool | None = None) -> torch.Tensor:
    """Packed BitLinear forward on the kernels: x [..., K] -> [..., N] in x's dtype. `fused`: quantize
    x inside the matmul (one launch); default for at most FUSED_MAX_ROWS rows."""
    _check_packed(packed, mode, in_features)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if fused is None:
        fused = x2.shape[0] <= FUSED_MAX_ROWS
    if fused:
        y = _launch(x2, packed, mode, in_features, None, w_scale, x.dtype, quantize=True, dequant=True)
    else:
        x_codes, x_scale = quantize_activation_triton(x2)
        y = _launch(x_codes, packed, mode, in_features, x_scale, w_scale, x.dtype, quantize=False,
                    dequant=True)
    return y.reshape(*lead, packed.shape[0])


def _check_packed(packed: torch.Tensor, mode: str, in_features: int):
    check_mode(mode)
    expected = packed_shape((packed.shape[0], in_features), mode)
    if tuple(packed.shape) != expected or packed.dtype != torch.uint8:
        raise ValueError(f"packed weight of shape {tuple(packed.shape)} and dtype {packed.dtype} does not "
                         f"hold {mode!r} codes for in_features={in_features}: expected uint8 of shape "
                         f"{expected}")


def _launch(x, packed, mode, in_features, x_scale, w_scale, out_dtype, quantize, dequant):
    x, packed = x.contiguous(), packed.contiguous()
    M, N = x.shape[0], packed.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    w_scale = w_scale.reshape(()).float() if dequant else out  # unused pointers: any tensor
    x_scale = x_scale.reshape(M).float().contiguous() if x_scale is not None else out

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))

    _lowbit_matmul_kernel[grid](
        x, packed, x_scale, w_scale, out,
        M, N, in_features, packed.shape[1], x.stride(0), packed.stride(0), out.stride(0),
        min(triton.next_power_of_2(M), 1024), BITS=BITS_PER_WEIGHT[mode], DEQUANT=dequant,
        QUANTIZE=quantize,
    )
    return out
