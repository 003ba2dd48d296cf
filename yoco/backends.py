"""Optional accelerated backends, detected by guarded imports.

A config's `backend` is "auto" (the default), "torch" or a '+'-joined set of optional parts.
PyTorch's own paths (SDPA, FlexAttention, torch.nn.RMSNorm, torch.compile) are always there; an
optional part is used only where it imports and the tensors live on CUDA. "auto" is resolved
once, when a model is built (`resolve`): on CUDA every part that imports here (less the opt-in
ones, OPT_IN), else "torch".
Asking for a part by name where it does not import is an error, never a silent fallback.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import warnings

# backend part -> (module to import, distribution that carries it)
OPTIONAL = {
    "fla": ("fla.ops.simple_gla", "fla-core"),
    "flash_attn": ("flash_attn", "flash-attn"),
    "apex": ("apex.normalization", "apex"),
    "triton": ("triton", "triton"),
    # our Triton split-KV decode attention (yoco/ops/split_kv_triton.py)
    "splitkv": ("yoco.ops.split_kv_triton", "triton"),
}
# Parts "auto" never picks: asked for by name only. splitkv stays opt-in until a GPU run has
# timed it against SDPA's decode (bench/suites/gpu-decode.toml times both).
OPT_IN = ("splitkv",)


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


@functools.cache
def available(name: str) -> bool:
    """Whether the part imports here (asked once per process: importing fla takes seconds)."""
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


# The parts a model can use (triton is a dependency of fla and the BitNet kernel, not a choice).
MODEL_PARTS = ("fla", "flash_attn", "apex", "splitkv")


def resolve(backend: str, device, parts: tuple[str, ...] = MODEL_PARTS) -> str:
    """The concrete backend for a model built on `device`: "auto" becomes the '+'-joined parts
    (of `parts`, the ones this model can use, less OPT_IN) that import here when the device is
    CUDA, else "torch"; anything else is returned as given, after `require` checked that it imports."""
    if backend != "auto":
        require(backend)
        return backend
    if torch_device_type(device) != "cuda":
        return "torch"
    found = [p for p in parts if p not in OPT_IN and available(p)]
    return "+".join(found) or "torch"


def torch_device_type(device) -> str:
    if device is None:
        return "cpu"
    return device.type if hasattr(device, "type") else str(device).split(":")[0]


def used(backend: str, device, parts: tuple[str, ...] = MODEL_PARTS) -> str:
    """The parts that really run for a resolved `backend` on `device` in a model that can use
    `parts`: optional parts run on CUDA tensors only, so on any other device it is "torch"."""
    if torch_device_type(device) != "cuda":
        return "torch"
    running = [p for p in backend.split("+") if p in parts]
    return "+".join(running) or "torch"
