"""BitNet ops and BitLinear: quantizer formulas, the packed format, the STE, bad input."""

import pytest
import torch
import torch.nn.functional as F

from yoco import bitnet
from yoco.bitnet import BitLinear
from yoco.ops.bitlinear import bitlinear_fake_quant, bitlinear_reference, dequantize_output

MODES = ["1.58bit", "1bit"]


# --- 1. the formulas of shared/YOCO.md, reimplemented directly ---------------------------------

def direct_weight_quant(w, mode):
    w = w.double()  # float64: an independent computation, compared after rounding to float32
    s = max(w.abs().mean().item(), 1e-5)
    if mode == "1.58bit":
        q = torch.clamp(torch.round(w / torch.tensor(s, dtype=torch.float32).double()), -1, 1)
    else:
        q = torch.sign(w - w.mean())
        q[q == 0] = 1
    return q, s


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(64, 48), (7, 13), (1, 5)])
def test_quantize_weight_follows_formula(mode, shape):
    torch.manual_seed(hash(shape) % 1000)
    w = torch.randn(shape) * 0.05 + (0.01 if mode == "1bit" else 0.0)
    q, s = bitnet.quantize_weight(w, mode)
    q_ref, s_ref = direct_weight_quant(w, mode)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.dtype == torch.float32 and s.dim() == 0
    torch.testing.assert_close(s.double(), torch.tensor(s_ref, dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(q.double(), q_ref, rtol=0, atol=0)
    assert set(q.unique().tolist()) <= ({-1, 0, 1} if mode == "1.58bit" else {-1, 1})


def test_quantize_weight_by_hand():
    w = torch.tensor([[0.3, -0.05, 1.0, -2.0]])  # mean|w| = 0.8375: w / s = .36, -.06, 1.19, -2.39
    q, s = bitnet.quantize_weight(w, "1.58bit")
    assert q.tolist() == [[0, 0, 1, -1]] and s.item() == pytest.approx(0.8375)
    q, s = bitnet.quantize_weight(w, "1bit")  # mean -0.1875
    assert q.tolist() == [[1, 1, 1, -1]] and s.item() == pytest.approx(0.8375)
    q, s = bitnet.quantize_weight(torch.zeros(2, 3), "1.58bit")
    assert q.abs().sum() == 0 and s.item() == pytest.approx(1e-5)  # scale floor, no division by 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_activation_follows_formula(dtype):
    torch.manual_seed(1)
    x = (torch.randn(3, 5, 40) * torch.rand(3, 5, 1) * 10).to(dtype)
    x[0, 0] = 0  # an all-zero token: the 1e-5 floor
    q, s = bitnet.quantize_activation(x)
    xf = x.float()
    s_ref = torch.tensor(127.0) / torch.clamp(xf.abs().max(dim=-1, keepdim=True).values, min=1e-5)
    q_ref = torch.clamp(torch.round(xf * s_ref), -128, 127)
    assert q.dtype == torch.int8 and q.shape == x.shape and s.shape == (3, 5, 1) and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(q.float(), q_ref, rtol=0, atol=0)
    assert q[0, 0].abs().sum() == 0 and q.abs().amax(dim=-1)[1:].eq(127).all()


def test_quantize_activation_by_hand_rounds_half_to_even():
    q, s = bitnet.quantize_activation(torch.tensor([[1.0, -2.0, 0.5, 0.0]]))  # s = 63.5
    assert s.item() == 63.5 and q.tolist() == [[64, -127, 32, 0]]  # 63.5 -> 64, 31.75 -> 32
    q, s = bitnet.quantize_activation(torch.tensor([[127 / 64, 0.5 / 64, 1.5 / 64, -2.5 / 64]]))  # s = 64
    assert s.item() == 64.0 and q.tolist() == [[127, 0, 2, -2]]


# --- 2. packing -------------------------------------------------------------------------------

def random_codes(shape, mode, seed=0):
    g = torch.Generator().manual_seed(seed)
    if mode == "1.58bit":
        return torch.randint(-1, 2, shape, generator=g).to(torch.int8)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(torch.int8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 13), (16, 64), (5, 9), (2, 3, 17), (33,)])
def test_unpack_of_pack_is_exact(mode, shape):
    q = random_codes(shape, mode, seed=sum(shape))
    packed = bitnet.pack(q, mode)
    per_byte = 4 if mode == "1.58bit" else 8
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], -(-shape[-1] // per_byte)) == bitnet.packed_shape(shape, mode)
    assert torch.equal(bitnet.unpack(packed, mode, shape), q)


def test_pack_layout_by_hand():
    # ternary: code w + 1, weight k at bits 2 (k % 4) of byte k // 4
    packed = bitnet.pack(torch.tensor([[-1, 0, 1, 1, -1]]), "1.58bit")
    assert packed.tolist() == [[0 | 1 << 2 | 2 << 4 | 2 << 6, 0]]
    # binary: bit 1 for +1, weight k at bit k % 8 of byte k // 8
    packed = bitnet.pack(torch.tensor([[1, -1, 1, 1, -1, -1, -1, 1, 1]]), "1bit")
    assert packed.tolist() == [[1 | 4 | 8 | 128, 1]]


def test_pack_accepts_float_codes():
    q = random_codes((4, 10), "1.58bit").float()
    assert torch.equal(bitnet.unpack(bitnet.pack(q, "1.58bit"), "1.58bit", q.shape).float(), q)


def test_packed_weight_bytes():
    assert bitnet.packed_weight_bytes(64, 64, "1.58bit") == 64 * 16 + 4
    assert bitnet.packed_weight_bytes(64, 65, "1bit") == 64 * 9 + 4


# --- 3. BitLinear, straight-through estimator ----------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_bitlinear_forward_matches_scaled_integer_matmul(mode):
    torch.manual_seed(2)
    layer = BitLinear(24, 10, mode)
    x = torch.randn(2, 3, 24)
    wq, ws = bitnet.quantize_weight(layer.weight, mode)
    xq, xs = bitnet.quantize_activation(x)
    expected = (xq.double() @ wq.double().T) * ws.double() / xs.double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-6, atol=1e-7)
    # and it is not a plain linear layer
    assert (layer(x) - F.linear(x, layer.weight)).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_ste_gradients_are_those_of_the_dequantized_weights(mode):
    """Integer-domain STE == BitNet's float STE x + (q(x) - x).detach(): grads reach W and x."""
    torch.manual_seed(3)
    layer = BitLinear(32, 16, mode)
    x = torch.randn(4, 32, requires_grad=True)
    grad_out = torch.randn(4, 16)
    layer(x).backward(grad_out)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0

    w = layer.weight.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    wq, ws = bitnet.quantize_weight(w, mode)
    xq, xs = bitnet.quantize_activation(x2)
    w_deq = w + (wq.float() * ws - w).detach()
    x_deq = x2 + (xq.float() / xs - x2).detach()
    F.linear(x_deq, w_deq).backward(grad_out)
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_layer_equals_fake_quant_bitwise(mode, dtype):
    torch.manual_seed(4)
    layer = BitLinear(45, 19, mode).to(dtype)  # 45: not a multiple of 4 or 8
    x = torch.randn(3, 7, 45, dtype=dtype)
    with torch.no_grad():
        fake = layer(x)
    n_params = sum(p.numel() for p in layer.parameters())
    layer.pack_()
    assert layer.weight is None and layer.is_packed and list(layer.parameters()) == []
    assert layer.packed_numel == n_params == 45 * 19
    assert layer.packed_weight.dtype == torch.uint8 and layer.weight_scale.dtype == torch.float32
    packed = layer(x)
    assert packed.dtype == dtype
    assert torch.equal(packed, fake)
    layer.to(torch.bfloat16)  # must not round the float32 scale
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer(x), fake)


def test_reference_forward_is_dequantized_integer_matmul():
    torch.manual_seed(5)
    w = torch.randn(12, 30)
    q, s = bitnet.quantize_weight(w, "1.58bit")
    x = torch.randn(6, 30)
    y = bitlinear_reference(x, bitnet.pack(q, "1.58bit"), s, "1.58bit", 30)
    xq, xs = bitnet.quantize_activation(x)
    assert torch.equal(y, dequantize_output(xq.float() @ q.float().T, s, xs))
    assert torch.equal(y, bitlinear_fake_quant(x, w, "1.58bit"))


def test_pack_on_meta_gives_shapes_only():
    layer = BitLinear(64, 32, "1bit", device="meta").pack_()
    assert layer.packed_weight.is_meta and layer.packed_weight.shape == (32, 8)


# --- 7. bad input -----------------------------------------------------------------------------

def test_unknown_mode_is_a_value_error():
    for call in (lambda: bitnet.quantize_weight(torch.ones(2, 2), "2bit"),
                 lambda: bitnet.pack(torch.ones(2, 2), "ternary"),
                 lambda: bitnet.unpack(torch.zeros(2, 1, dtype=torch.uint8), "none", (2, 2)),
                 lambda: BitLinear(4, 4, mode="none")):
        with pytest.raises(ValueError, match="unknown BitNet mode .*valid modes are '1bit', '1.58bit'"):
            call()


def test_pack_rejects_values_outside_the_code_set():
    with pytest.raises(ValueError, match="ternary"):
        bitnet.pack(torch.tensor([[1, 0, 2]]), "1.58bit")
    with pytest.raises(ValueError, match="ternary"):
        bitnet.pack(torch.tensor([[0.5, 0.0]]), "1.58bit")
    with pytest.raises(ValueError, match="binary"):
        bitnet.pack(torch.tensor([[1, 0, -1]]), "1bit")  # 0 is ternary, not binary


def test_unpack_rejects_a_packed_weight_of_the_wrong_shape():
    packed = bitnet.pack(random_codes((6, 20), "1.58bit"), "1.58bit")  # [6, 5]
    with pytest.raises(ValueError, match=r"shape \(6, 5\).*expected uint8 of shape \(6, 6\)"):
        bitnet.unpack(packed, "1.58bit", (6, 24))
    with pytest.raises(ValueError, match="expected uint8"):
        bitnet.unpack(packed.to(torch.int8), "1.58bit", (6, 20))
    with pytest.raises(ValueError, match=r"expected uint8 of shape \(6, 3\)"):
        bitnet.unpack(packed, "1bit", (6, 20))


def test_bitlinear_rejects_bad_shapes():
    with pytest.raises(ValueError, match="in_features"):
        BitLinear(0, 4)
    with pytest.raises(ValueError, match="inputs"):
        BitLinear(8, 4)(torch.randn(2, 9))


def test_packed_state_dict_loads_into_a_fresh_layer():
    torch.manual_seed(6)
    packed = BitLinear(20, 8, "1.58bit").pack_()
    fresh = BitLinear(20, 8, "1.58bit")
    fresh.load_state_dict(packed.state_dict())
    assert fresh.is_packed and fresh.weight is None
    x = torch.randn(3, 20)
    assert torch.equal(fresh(x), packed(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # a packed weight of another shape
        BitLinear(24, 8, "1.58bit").load_state_dict(packed.state_dict())


@pytest.mark.parametrize("packed", [False, True])
def test_autocast_does_not_round_the_integer_sums(packed):
    torch.manual_seed(7)
    layer = BitLinear(64, 32)
    if packed:
        layer.pack_()
    x = torch.randn(4, 64)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(x), expected)
