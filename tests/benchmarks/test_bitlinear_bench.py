"""pytest-benchmark microbenchmark: packed BitLinear against nn.Linear at decode shapes.

Shapes: M = 1, 4, 16 rows; K = N = 2048, 4096, 8192. They run only when timing is on:
    pytest tests/benchmarks/test_bitlinear_bench.py --benchmark-enable
The default test run (`--benchmark-disable` in pyproject) calls each case once at M = 1,
K = N = 256 and checks the packed layer against its fake-quant twin, so the suite stays fast.

Baseline: nn.Linear in float32 on CPU, in bfloat16 on CUDA (F.linear, cuBLAS). BitLinear packed:
the PyTorch reference (unpack + float32 matmul) on CPU, the Triton W2A8 / W1A8 kernels on CUDA.
On CUDA a round is one CUDA graph of calls (launch overhead out of the figure) cycling over
enough weight copies (256 MiB) to exceed the L2 cache (weights come from HBM, as in decode);
extra_info holds per-call microseconds, and for BitLinear the bf16 F.linear time of the same
shape, the speedup over it and the bandwidth counting packed weight bytes (also printed: add -s).
"""

import copy
from functools import partial

import pytest
import torch
from conftest import DEVICES

from yoco.bitnet import BitLinear, packed_weight_bytes

SIZES = (2048, 4096, 8192)
ROWS = (1, 4, 16)
SMOKE_SHAPE = (1, 256)
CALLS_PER_ROUND = 100
COLD_BYTES = 256 << 20  # weight copies per graph: at least this many bytes, > H100 L2 (50 MB)
CASES = ["linear", "bitlinear-1.58bit", "bitlinear-1bit"]


def pytest_generate_tests(metafunc):
    if "shape" not in metafunc.fixturenames:
        return
    config = metafunc.config
    timing = config.getoption("benchmark_enable", False) or not config.getoption("benchmark_disable", True)
    shapes = [(m, d) for d in SIZES for m in ROWS] if timing else [SMOKE_SHAPE]
    metafunc.parametrize("shape", shapes, ids=[f"M{m}-K{d}" for m, d in shapes])


def build_layer(case, dim, device, dtype, packed=True):
    torch.manual_seed(0)
    if case == "linear":
        return torch.nn.Linear(dim, dim, bias=False, device=device, dtype=dtype)
    layer = BitLinear(dim, dim, mode=case.removeprefix("bitlinear-"), device=device, dtype=dtype)
    return layer.pack_() if packed else layer


def layer_bytes(layer):
    if isinstance(layer, BitLinear):
        return packed_weight_bytes(layer.out_features, layer.in_features, layer.mode)
    return layer.weight.numel() * layer.weight.element_size()


def cuda_graph_of_calls(forwards):
    """One CUDA graph that runs every forward in `forwards` (one per weight copy) at least once,
    CALLS_PER_ROUND calls or more: the weights stream from HBM, not L2. Returns (graph, calls)."""
    calls = max(CALLS_PER_ROUND, len(forwards))
    with torch.no_grad():
        for forward in forwards[:2]:  # autotune and warm up outside the capture
            forward()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                forwards[i % len(forwards)]()
    return graph, calls


def cuda_us_per_call(graph, calls, repeats=20):
    """Median over repeats of one replay's time (CUDA events), per call."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def cold_copies(layer):
    n = max(1, -(-COLD_BYTES // layer_bytes(layer)))
    return [layer] + [copy.deepcopy(layer) for _ in range(n - 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_bitlinear_vs_linear(benchmark, device, case, shape):
    rows, dim = shape
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    layer = build_layer(case, dim, device, dtype)
    x = torch.randn(rows, dim, device=device, dtype=dtype)
    benchmark.group = f"bitlinear-{device}-M{rows}-K{dim}"
    benchmark.extra_info.update(rows=rows, in_features=dim, out_features=dim, dtype=str(dtype),
                                weight_bytes=layer_bytes(layer))

    if device == "cuda" and benchmark.enabled:
        graph, calls = cuda_graph_of_calls([partial(c, x) for c in cold_copies(layer)])
        benchmark.extra_info["calls_per_round"] = calls
        benchmark.pedantic(lambda: (graph.replay(), torch.cuda.synchronize()), rounds=20, warmup_rounds=2)
        us = cuda_us_per_call(graph, calls)
        benchmark.extra_info["us_per_call"] = us
        if case != "linear":
            from yoco.ops.bitlinear_triton import bitlinear_triton

            bf16 = build_layer("linear", dim, device, torch.bfloat16)
            bf16_us = cuda_us_per_call(*cuda_graph_of_calls([partial(c, x) for c in cold_copies(bf16)]))
            # the same kernel with quantization as its own launch (what M > 16 uses), for comparison
            two_launch_us = cuda_us_per_call(*cuda_graph_of_calls([
                partial(bitlinear_triton, x, c.packed_weight, c.weight_scale, c.mode, dim, fused=False)
                for c in cold_copies(layer)]))
            benchmark.extra_info.update(bf16_linear_us=bf16_us, speedup_vs_bf16=bf16_us / us,
                                        packed_GBps=layer_bytes(layer) / us / 1e3,
                                        two_launch_us=two_launch_us)
            print(f"\n{case} M={rows} K=N={dim}: {us:.2f} us/call (two launches {two_launch_us:.2f}), "
                  f"bf16 F.linear {bf16_us:.2f} us, speedup {bf16_us / us:.2f}x, "
                  f"{layer_bytes(layer) / us / 1e3:.0f} GB/s of packed weights")
    else:
        def call():
            with torch.no_grad():
                out = layer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        benchmark(call)

    if not benchmark.enabled and case != "linear":  # the smoke run checks what it ran
        with torch.no_grad():
            fake = build_layer(case, dim, device, dtype, packed=False)(x)
            assert torch.equal(layer(x), fake)
