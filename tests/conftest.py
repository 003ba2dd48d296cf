"""Test-wide setup: run Triton kernels through the interpreter when there is no GPU.

`DEVICES` parametrizes tests of plain PyTorch code (cpu, and cuda where present).
`KERNEL_DEVICES` parametrizes tests that launch Triton kernels (ours, fla's): their cpu variant
needs the interpreter, which is on by default only where there is no GPU; on a GPU machine it
is skipped with a reason unless TRITON_INTERPRET=1 was set by hand."""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()

if not CUDA:
    # Must be set before triton decorates any kernel (fla's, ours).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        from triton.runtime import autotuner

        # The interpreter cannot time configs: keep only the first one.
        autotuner.Autotuner.prune_configs = lambda self, kwargs: self.configs[:1]
    except ImportError:
        pass

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if CUDA and os.environ.get("YOCO_TEST_FIRST_TRITON_CONFIG") == "1":
    # The GPU run's smoke set checks results, not speed: one compile per kernel instead of a
    # whole autotune (on the H200 the autotunes alone outlasted the smoke's 75 s).
    from triton.runtime import autotuner

    autotuner.Autotuner.prune_configs = lambda self, kwargs: self.configs[:1]

DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def kernel_devices(gpu_smoke: bool = False) -> list:
    """cpu (under the interpreter only) and cuda where present; gpu_smoke=True puts the cuda
    variant in the GPU smoke set (pytest -m gpu_smoke)."""
    cpu = pytest.param("cpu", marks=pytest.mark.skipif(
        not INTERPRETED, reason="Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (the default "
                                "only where there is no GPU)"))
    cuda = pytest.param("cuda", marks=pytest.mark.gpu_smoke) if gpu_smoke else "cuda"
    return [cpu] + ([cuda] if CUDA else [])


KERNEL_DEVICES = kernel_devices()
