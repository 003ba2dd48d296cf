"""Optional accelerated backends, detected by guarded imports.

The defaults are PyTorch's own (SDPA, FlexAttention, torch.nn.RMSNorm, torch.compile); the parts
below are used only where they import and the tensors live on CUDA.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings

# backend part -> (module to import, distribution that carries it)
OPTIONAL = {
    "fla": ("fla.ops.simple_gla", "fla-core"),
    "flash_attn": ("flash_attn", "flash-attn"),
    "apex": ("apex.normalization", "apex"),
    "triton": ("triton", "triton"),
}


def detect() -> dict[str, str | None]:
    """Each optional backend's version where it imports on this machine, else None."""
    found = {}
    for name, (_, dist) in OPTIONAL.items():
        if not available(name):
            found[name] = None
            continue
        try:
            found[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def available(name: str) -> bool:
    module, _ = OPTIONAL[name]
    try:
        with warnings.catch_warnings():  # fla warns on import where there is no GPU
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception:  # a broken install counts as absent, whatever it raises
        return False
    return True


def require(backend: str):
    """Raise ValueError for a requested optional part that does not import here."""
    for part in backend.split("+"):
        if part in OPTIONAL and not available(part):
            module, dist = OPTIONAL[part]
            raise ValueError(f"backend {backend!r} asks for {part!r}, but {module} does not import on this "
                             f"machine (install {dist}); 'torch' needs nothing extra")
