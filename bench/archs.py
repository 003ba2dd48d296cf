"""The archs a suite can name: one registry, which a user's own module can add to.

An arch is a name and a `build(preset, *, device, dtype, window, **overrides)` that returns a
model with the shared API (yoco.lm.CausalLM: prefill, decode_step, allocate_cache,
kv_cache_bytes, weight_bytes, num_parameters). The harness builds every case through here,
so adding an arch is one `register` call in any importable module, named in a suite
(`[suite] arch_modules = ["my_archs"]`) or on the command line (`--arch-module my_archs`):

    from bench.archs import Arch, register

    def build(preset, *, device, dtype, window, **overrides):
        return MyModel(...)

    register(Arch("my-model", build, windowed=False, bitnet=False))

`overrides` carries config fields the case sets (bitnet, backend, max_seq_len when the case is
longer than the preset). A module path ending in .py works too.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable
    windowed: bool = False  # takes the suite's `window` axis (else window = None for its cases)
    bitnet: bool = True  # has BitNet layers (else only bitnet = "none" cases are kept)
    # Sized (weights, cache, FLOPs) on the meta device as this other arch: an optional peer
    # whose package may be absent stays listable in a dry run.
    sized_as: str | None = None
    # A reason this arch cannot run here (a package missing), or None.
    unusable: Callable[[], str | None] = lambda: None

    @property
    def self_decoder(self) -> str | None:
        return self.name.removeprefix("yoco-") if self.name.startswith("yoco-") else None


ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    """Add an arch (a second registration of the same name replaces the first)."""
    if not isinstance(arch, Arch):
        raise TypeError(f"register takes a bench.archs.Arch, got {type(arch).__name__}")
    if not arch.name or any(c.isspace() for c in arch.name):
        raise ValueError(f"arch name must be non-empty with no spaces, got {arch.name!r}")
    ARCHS[arch.name] = arch
    return arch


def get(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}: valid archs are {', '.join(ARCHS)} "
                         f"(or register your own: see bench.archs)") from None


def load_modules(modules) -> list[str]:
    """Import users' arch modules (dotted names or .py paths), each once. Returns the names of
    the archs they registered. Raises ValueError naming a module that does not import."""
    before = set(ARCHS)
    for module in modules or ():
        try:
            if str(module).endswith(".py"):
                path = Path(module).resolve()
                name = f"bench_user_archs_{path.stem}_{abs(hash(str(path)))}"
                if name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(name, path)
                    if spec is None or not path.is_file():
                        raise FileNotFoundError(f"no such file {path}")
                    mod = importlib.util.module_from_spec(spec)
                    sys.modules[name] = mod
                    spec.loader.exec_module(mod)
            else:
                importlib.import_module(module)
        except Exception as e:
            raise ValueError(f"arch module {module!r} does not import: {type(e).__name__}: {e}") from None
    return sorted(set(ARCHS) - before)


# ---- the built-in archs ----

def _yoco(self_decoder: str):
    def build(preset, *, device, dtype, window, **overrides):
        import yoco

        if window is not None:
            overrides["window"] = window
        return yoco.from_preset(preset, self_decoder=self_decoder, device=device, dtype=dtype, **overrides)
    return build


def _transformer(preset, *, device, dtype, window, **overrides):
    import baselines

    return baselines.from_preset(preset, device=device, dtype=dtype, **overrides)


def _transformer_swa(preset, *, device, dtype, window, **overrides):
    from baselines import transformer_swa

    return transformer_swa.from_preset(preset, window=window, device=device, dtype=dtype, **overrides)


def _hf_llama(preset, *, device, dtype, window, **overrides):
    from baselines import hf_llama

    return hf_llama.from_preset(preset, device=device, dtype=dtype, **overrides)


def _hf_llama_unusable() -> str | None:
    from baselines import hf_llama

    return None if hf_llama.available() else "arch 'hf-llama' needs HF transformers, which does not import here " \
                                               "(pip install transformers)"


register(Arch("yoco-gret", _yoco("gret")))
register(Arch("yoco-swa", _yoco("swa"), windowed=True))
register(Arch("transformer", _transformer))
# The baseline with every layer windowed (Mistral's kind): windowing alone, without YOCO's global cache.
register(Arch("transformer-swa", _transformer_swa, windowed=True))
# HF transformers' Llama of the transformer's shape: the outside peer that shows our baseline is a real Llama.
register(Arch("hf-llama", _hf_llama, bitnet=False, sized_as="transformer", unusable=_hf_llama_unusable))
