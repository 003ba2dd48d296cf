"""Test-wide setup: run Triton kernels through the interpreter when there is no GPU."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton decorates any kernel (fla's, ours).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        from triton.runtime import autotuner

        # The interpreter cannot time configs: keep only the first one.
        autotuner.Autotuner.prune_configs = lambda self, kwargs: self.configs[:1]
    except ImportError:
        pass

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
