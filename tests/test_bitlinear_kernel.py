"""The Triton W2A8 / W1A8 kernels against the PyTorch reference, exactly.

On CPU they run under TRITON_INTERPRET=1 (tests/conftest.py) at small shapes; on CUDA at the
same shapes plus one decode-sized shape. Skipped where triton does not import.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import CUDA, INTERPRETED, KERNEL_DEVICES

pytest.importorskip("triton")
if not CUDA and not INTERPRETED:
    pytest.skip("no CUDA and no Triton interpreter", allow_module_level=True)

from yoco import bitnet  # noqa: E402
from yoco.bitnet import BitLinear  # noqa: E402
from yoco.ops.bitlinear import bitlinear_reference, lowbit_matmul_reference  # noqa: E402
from yoco.ops.bitlinear_triton import (  # noqa: E402
    bitlinear_triton,
    lowbit_matmul_triton,
    quantize_activation_triton,
)

MODES = ["1.58bit", "1bit"]


def random_weight(n, k, mode, device, seed):
    torch.manual_seed(seed)
    w = torch.randn(n, k, device=device)
    q, s = bitnet.quantize_weight(w, mode)
    return w, q, s, bitnet.pack(q, mode)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_quantization_kernel_is_exact(device, dtype):
    torch.manual_seed(0)
    x = (torch.randn(5, 300, device=device) * torch.rand(5, 1, device=device) * 8).to(dtype)
    x[1] = 0
    x[2, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]) / 64
    x[2, 8:] = 0  # scale exactly 64: the row is all ties, rounded half to even
    codes, scale = quantize_activation_triton(x)
    ref_codes, ref_scale = bitnet.quantize_activation(x)
    assert torch.equal(scale, ref_scale) and torch.equal(codes, ref_codes)
    assert codes[2, :8].tolist() == [127, 0, 2, 2, 0, -2, -2, 126]


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("m,k,n", [(1, 37, 5), (3, 300, 40), (17, 64, 33)])  # K: ragged, several tiles
def test_integer_matmul_kernel_is_exact(device, mode, m, k, n):
    _, _, _, packed = random_weight(n, k, mode, device, seed=m + k + n)
    x_codes = torch.randint(-128, 128, (m, k), device=device, dtype=torch.int8)
    acc = lowbit_matmul_triton(x_codes, packed, mode, k)
    assert acc.dtype == torch.int32 and acc.shape == (m, n)
    assert torch.equal(acc, lowbit_matmul_reference(x_codes, packed, mode, k))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_integer_matmul_kernel_at_extreme_values(device, mode):
    k = 260
    packed = bitnet.pack(-torch.ones(9, k, dtype=torch.int8, device=device), mode)
    x_codes = torch.full((2, k), -128, dtype=torch.int8, device=device)
    x_codes[1] = 127
    acc = lowbit_matmul_triton(x_codes, packed, mode, k)
    assert acc[0].eq(128 * k).all() and acc[1].eq(-127 * k).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fused", [True, False])  # quantize inside the matmul, or a launch before it
def test_bitlinear_kernel_equals_reference_bitwise(device, mode, dtype, fused):
    _, _, scale, packed = random_weight(24, 70, mode, device, seed=7)
    x = (torch.randn(2, 3, 70, device=device) * torch.rand(2, 3, 1, device=device) * 5).to(dtype)
    x[1, 2] = 0  # a zero token
    y = bitlinear_triton(x, packed, scale, mode, 70, fused=fused)
    assert y.dtype == dtype and y.shape == (2, 3, 24)
    assert torch.equal(y, bitlinear_reference(x, packed, scale, mode, 70))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("rows", [1, 17])  # the fused scan over several chunks of K; rows past a tile
def test_fused_kernel_over_long_rows_is_exact(device, rows):
    _, _, scale, packed = random_weight(20, 600, "1.58bit", device, seed=rows)
    x = torch.randn(rows, 600, device=device)
    x[-1, 555] = 40.0  # the row's absmax sits in the last scan chunk
    y = bitlinear_triton(x, packed, scale, "1.58bit", 600, fused=True)
    assert torch.equal(y, bitlinear_reference(x, packed, scale, "1.58bit", 600))


def test_autotune_pruning_keeps_decode_tiles_for_decode():
    from yoco.ops.bitlinear_triton import _matmul_configs, _prune_configs

    configs = _matmul_configs()
    decode = _prune_configs(configs, {"M_BUCKET": 4}, BITS=2, QUANTIZE=True)
    prefill = _prune_configs(configs, {"M_BUCKET": 1024}, BITS=1, QUANTIZE=False)
    assert decode[0] is configs[0] and {c.kwargs["BLOCK_M"] for c in decode} == {16}
    assert {c.kwargs["BLOCK_M"] for c in prefill} > {16}
    # a tile spans at most 2048 weights along K: 512 bytes of 2-bit codes, 256 of 1-bit ones
    assert max(c.kwargs["BLOCK_KP"] for c in decode) == 512 and max(c.kwargs["BLOCK_KP"] for c in prefill) == 256


def test_kernel_rejects_a_packed_weight_of_the_wrong_shape():
    packed = bitnet.pack(torch.ones(4, 16, dtype=torch.int8), "1.58bit")
    with pytest.raises(ValueError, match=r"shape \(4, 4\).*expected uint8 of shape \(4, 5\)"):
        lowbit_matmul_triton(torch.zeros(1, 20, dtype=torch.int8), packed, "1.58bit", 20)
    with pytest.raises(ValueError, match="x_codes must be int8"):
        lowbit_matmul_triton(torch.zeros(1, 16), packed, "1.58bit", 16)
    with pytest.raises(ValueError, match=r"expected uint8 of shape \(4, 2\)"):  # 16 binary weights: 2 bytes
        bitlinear_triton(torch.zeros(1, 16), packed, torch.tensor(1.0), "1bit", 16)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("mode", [pytest.param("1.58bit", marks=pytest.mark.gpu_smoke), "1bit"])
def test_cuda_bitlinear_uses_kernel_and_matches_fake_quant(mode, monkeypatch):
    torch.manual_seed(8)
    layer = BitLinear(2048, 1024, mode, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        fake = layer(x)
        layer.pack_()
        calls = []
        import yoco.ops.bitlinear_triton as kernels

        real = kernels.bitlinear_triton
        monkeypatch.setattr(kernels, "bitlinear_triton", lambda *a: calls.append(1) or real(*a))
        packed = layer(x)
    assert calls and torch.equal(packed, fake)


COMPILE_FOR_GPUS = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from yoco.ops import bitlinear_triton as K

matmul_sig = {"x_ptr": "*i8", "w_ptr": "*u8", "x_scale_ptr": "*fp32", "w_scale_ptr": "*fp32",
              "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "KP": "i32", "stride_xm": "i32",
              "stride_wn": "i32", "stride_om": "i32", "M_BUCKET": "i32", "BITS": "constexpr",
              "DEQUANT": "constexpr", "QUANTIZE": "constexpr", "BLOCK_M": "constexpr",
              "BLOCK_N": "constexpr", "BLOCK_KP": "constexpr"}
quant_sig = {"x_ptr": "*bf16", "codes_ptr": "*i8", "scale_ptr": "*fp32", "K": "i32", "stride_xm": "i32",
             "stride_cm": "i32", "BLOCK_K": "constexpr"}
configs = K._matmul_configs()
ptx = {}
target = GPUTarget("cuda", 90, 32)  # the H100's; sm_80 lowers the same way (mma.sync), checked by hand
for bits, quantize, cfg in [(2, True, configs[0]), (1, True, configs[0]),  # decode: fused
                            (2, False, configs[-2]), (1, False, configs[-2])]:  # prefill tiles
    sig = dict(matmul_sig, x_ptr="*bf16" if quantize else "*i8")
    src = ASTSource(fn=K._lowbit_matmul_kernel.fn, signature=sig,  # .fn: under the autotuner
                    constexprs=dict(BITS=bits, DEQUANT=True, QUANTIZE=quantize, **cfg.kwargs))
    k = triton.compile(src, target=target, options=dict(num_warps=cfg.num_warps))
    ptx[f"matmul-{bits}bit-M{cfg.kwargs['BLOCK_M']}-{'fused' if quantize else 'codes'}"] = k.asm["ptx"]
src = ASTSource(fn=K._quantize_rows_kernel, signature=quant_sig, constexprs={"BLOCK_K": 1024})
ptx["quantize"] = triton.compile(src, target=target).asm["ptx"]
json.dump(ptx, sys.stdout)
"""


def test_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    """Lower the kernels to PTX for sm_90 (no GPU needed) and check what exactness rests
    on: int8 tensor-core MMA with int32 sums, IEEE division, no fused multiply-add in the rounding."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", COMPILE_FOR_GPUS], env=env, cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ptx = json.loads(run.stdout)
    assert len(ptx) == 5
    for name, code in ptx.items():
        assert "div.full" not in code and "div.approx" not in code, name
        if name.startswith("matmul"):
            # mma.sync ... .s32.s8.s8.s32 (Ampere tiles) or wgmma ... .s32.s8.s8 (Hopper, M >= 64)
            assert re.search(r"mma[a-z0-9_.]*\.s32\.s8\.s8", code) and "div.rn.f32" in code, name
            assert ("cvt.rmi." in code) == name.endswith("fused"), name  # rounding only where it quantizes
        else:
            assert "div.rn.f32" in code and "cvt.rmi." in code and "fma.r" not in code, name
