"""BitNet YOCO (gRet, SWA) and the BitNet baseline: training, packed inference, weight bytes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from torch import nn

import baselines
import yoco
from yoco.bitnet import BitLinear, packed_weight_bytes

ARCHS = ["gret", "swa", "transformer"]
MODES = ["1.58bit", "1bit"]


def build(arch, mode, dtype=torch.float32, device=None, preset="tiny", **overrides):
    torch.manual_seed(0)
    if arch == "transformer":
        return baselines.from_preset(preset, bitnet=mode, dtype=dtype, device=device, **overrides)
    overrides = {"window": 8, "chunk_size": 8, **overrides} if preset == "tiny" else overrides
    return yoco.from_preset(preset, self_decoder=arch, bitnet=mode, dtype=dtype, device=device, **overrides)


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core runner they lose ~10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ["gret", "swa", "transformer"])
def test_bitlinear_replaces_block_linears_only(arch):
    model = build(arch, "1.58bit")
    plain = [m for m in model.modules() if type(m) is nn.Linear]
    assert plain == [model.lm_head]  # the LM head stays full precision (and the embedding)
    assert sum(isinstance(m, BitLinear) for m in model.modules()) > 10


# --- 3. training: the STE lets both models memorise a fixed batch ------------------------------

@pytest.mark.parametrize("arch,mode", [("gret", "1.58bit"), ("transformer", "1.58bit"), ("swa", "1bit")])
def test_training_drives_loss_down(arch, mode):
    model = build(arch, mode, n_layers=2).train()
    tokens = torch.randint(0, model.config.vocab_size, (2, 17))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    losses = []
    for step in range(50):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = [m.weight.grad for m in model.modules() if isinstance(m, BitLinear)]
            assert all(g is not None and g.abs().sum() > 0 for g in grads), "STE must reach every weight"
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[0] > 5.5  # ~ln(512) at init
    assert losses[-1] < 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


# --- 4. packed inference == fake-quant inference, bitwise; cached == full within 5e-3 ---------------

def check_packed_equals_fake_quant(arch, mode, device="cpu", dtype=torch.float32, tol=5e-3):
    fake = build(arch, mode, device=device, dtype=dtype).eval()
    packed = copy.deepcopy(fake)
    packed.pack_bitnet()
    assert all(m.is_packed and m.weight is None for m in packed.modules() if isinstance(m, BitLinear))
    assert packed.num_parameters() == fake.num_parameters()

    prompt, new = 11, 6  # 11 > window 8 and not a multiple of the chunk: the ring and chunks both bite
    tokens = torch.randint(0, fake.config.vocab_size, (2, prompt + new), device=device)
    with torch.no_grad():
        full = fake(tokens)
        assert torch.equal(packed(tokens), full)
    caches = [m.allocate_cache(2, prompt + new) for m in (fake, packed)]
    last = [m.prefill(tokens[:, :prompt], c) for m, c in zip((fake, packed), caches)]
    assert torch.equal(last[1], last[0])
    assert rel_err(last[1], full[:, prompt - 1]) < tol
    for i in range(prompt, prompt + new):
        step = [m.decode(tokens[:, i], c) for m, c in zip((fake, packed), caches)]
        assert torch.equal(step[1], step[0]), f"decode at position {i}"
        assert rel_err(step[1], full[:, i]) < tol, f"decode at position {i}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_model_equals_fake_quant(arch, mode):
    check_packed_equals_fake_quant(arch, mode)


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
@pytest.mark.parametrize("arch, dtype", [
    pytest.param(arch, dtype, marks=pytest.mark.gpu_smoke) if (arch, dtype) == ("gret", torch.bfloat16)
    else (arch, dtype) for dtype in (torch.float32, torch.bfloat16) for arch in ARCHS])
def test_cuda_packed_model_equals_fake_quant(arch, dtype):
    """On CUDA the packed model runs the Triton kernels (fused at decode, two launches in prefill).
    The GPU smoke set takes the bf16 gRet one: what the GPU run's BitNet case runs."""
    check_packed_equals_fake_quant(arch, "1.58bit", device="cuda", dtype=dtype,
                                   tol=5e-3 if dtype == torch.float32 else 5e-2)


def test_packed_checkpoint_loads_into_a_fresh_model():
    packed = build("swa", "1bit").eval()
    packed.pack_bitnet()
    torch.manual_seed(1)  # other float weights: only the load can make the outputs equal
    fresh = yoco.from_preset("tiny", self_decoder="swa", bitnet="1bit", window=8, chunk_size=8).eval()
    fresh.load_state_dict(packed.state_dict())
    assert fresh.weight_bytes() == packed.weight_bytes()
    tokens = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        assert torch.equal(fresh(tokens), packed(tokens))


def test_packing_changes_the_function():
    """Guards the test above: BitNet logits differ from those of the same float weights."""
    model = build("transformer", "1.58bit").eval()
    plain = build("transformer", "none").eval()
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 512, (1, 12))
    model.pack_bitnet()
    with torch.no_grad():
        assert rel_err(model(tokens), plain(tokens)) > 1e-2


# --- 5. weight bytes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,min_ratio", [("1.58bit", 7), ("1bit", 14)])
@pytest.mark.parametrize("arch", ARCHS)
def test_weight_bytes_after_packing(arch, mode, min_ratio):
    model = build(arch, mode, dtype=torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    before = model.weight_bytes()
    block_bf16 = sum(m.weight.numel() * 2 for m in layers)
    expected_block = sum(packed_weight_bytes(m.out_features, m.in_features, mode) for m in layers)
    model.pack_bitnet()
    assert model.weight_bytes() == before - block_bf16 + expected_block
    assert block_bf16 / expected_block >= min_ratio


def test_meta_models_pack_to_the_same_bytes():
    """Size estimates: a meta-built model packs to the byte count of a real one, and big presets pack."""
    real, meta = build("gret", "1.58bit"), build("gret", "1.58bit", device="meta")
    for model in (real, meta):
        assert model.pack_bitnet() is None  # nothing for the Python prompt to print
    assert meta.weight_bytes() == real.weight_bytes()
    assert meta.num_parameters() == real.num_parameters()
    big = build("transformer", "1bit", device="meta", dtype=torch.bfloat16, preset="1.4b")
    n_params = big.num_parameters()
    layers = [m for m in big.modules() if isinstance(m, BitLinear)]
    rest = big.weight_bytes() - sum(m.weight.numel() * 2 for m in layers)
    big.pack_bitnet()
    assert big.num_parameters() == n_params
    assert big.weight_bytes() == rest + sum(m.out_features * m.in_features // 8 + 4 for m in layers)


# --- 7. bad input ------------------------------------------------------------------------------

def test_bad_bitnet_settings():
    with pytest.raises(ValueError, match="unknown bitnet '2bit'"):
        yoco.from_preset("tiny", bitnet="2bit")
    with pytest.raises(ValueError, match="unknown bitnet"):
        baselines.from_preset("tiny", bitnet="ternary")
    with pytest.raises(ValueError, match="no BitLinear layers"):
        build("gret", "none").pack_bitnet()


@pytest.mark.slow
def test_compiled_packed_decode_matches_eager():
    """The packed path traces as one graph (fullgraph): unpack, autocast guard, kernel dispatch."""
    eager = build("swa", "1.58bit", n_layers=2).eval()
    eager.pack_bitnet()
    compiled = copy.deepcopy(eager)
    compiled.compile_decode()
    tokens = torch.randint(0, 512, (2, 12))
    caches = [m.allocate_cache(2, 20) for m in (eager, compiled)]
    for m, c in zip((eager, compiled), caches):
        m.prefill(tokens, c)
    for step in range(4):
        nxt = torch.randint(0, 512, (2,))
        torch.testing.assert_close(compiled.decode(nxt, caches[1]), eager.decode(nxt, caches[0]),
                                   rtol=1e-4, atol=1e-5, msg=f"step {step}")
