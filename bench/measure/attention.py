"""Which attention kernels a case used, and why torch refused the others.

`F.scaled_dot_product_attention` picks one kernel per call from the tensors it is given (device,
dtype, head width, strides, mask, causal, grouped-query): on CUDA flash, memory-efficient, cuDNN
or math (math materializes the scores, and for grouped queries copies K and V); on CPU its flash
kernel or math. `sdpa_kernel` asks torch which one a call gets; `refusals` asks each CUDA kernel
why it would not take the call (torch's own debug checks, `torch.backends.cuda.can_use_*`).

`Recorder` is a context manager that notes, for every distinct call made inside it, the kernel
picked: SDPA calls (ours and HF transformers'), FlexAttention (the SWA prefill on CUDA), the split-KV
decode kernel and the gated-retention implementation (fla's kernels or the PyTorch forms). The harness records during
a case's warm-up and memory pass, never while timing (the note costs a host-side check per call).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import warnings
from collections import Counter

import torch
import torch.nn.functional as F

# torch.nn.attention.SDPBackend's values (as torch._fused_sdp_choice returns them)
KERNELS = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def sdpa_kernel(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False) -> str:
    """The kernel F.scaled_dot_product_attention would run for these arguments (same signature)."""
    try:
        choice = torch._fused_sdp_choice(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                         enable_gqa=enable_gqa)
    except TypeError:  # a torch without enable_gqa
        choice = torch._fused_sdp_choice(query, key, value, attn_mask, dropout_p, is_causal, scale=scale)
    except RuntimeError as e:  # no kernel takes the call (SDPA itself would raise)
        return f"error ({' '.join(str(e).split())[:120]})"
    return KERNELS.get(int(choice), f"backend {int(choice)}")


def _sdpa_params(query, key, value, attn_mask, is_causal, enable_gqa):
    params = getattr(torch.backends.cuda, "SDPAParams", None) or torch._C._SDPAParams
    try:  # torch >= 2.5: (q, k, v, mask, dropout, is_causal, enable_gqa)
        return params(query, key, value, attn_mask, 0.0, is_causal, enable_gqa)
    except TypeError:  # older torch: no enable_gqa
        return params(query, key, value, attn_mask, 0.0, is_causal)


@contextlib.contextmanager
def _captured_stderr(into: list[str]):
    """torch's debug checks warn through its C++ handler: to Python warnings or straight to
    file descriptor 2, depending on the build. Catch both."""
    with tempfile.TemporaryFile(mode="w+b") as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            into.extend(str(w.message) for w in caught)
            into.extend(tmp.read().decode(errors="replace").splitlines())


def refusals(query, key, value, attn_mask=None, is_causal=False, enable_gqa=False) -> dict[str, list[str]]:
    """For each CUDA SDPA kernel: [] if it would take the call, else torch's reasons why not
    ("not on CUDA" for CPU tensors: these checks are CUDA's)."""
    checks = {name: getattr(torch.backends.cuda, f"can_use_{name}_attention", None)
              for name in ("flash", "efficient", "cudnn")}
    if not query.is_cuda:
        return {name: ["not on CUDA: the CPU has its own flash kernel and math"] for name in checks}
    params = _sdpa_params(query, key, value, attn_mask, is_causal, enable_gqa)
    out = {}
    for name, check in checks.items():
        if check is None:
            out[name] = [f"torch {torch.__version__} has no can_use_{name}_attention"]
            continue
        lines: list[str] = []
        with _captured_stderr(lines):
            ok = check(params, True)
        reasons = [" ".join(line.split()) for line in lines if line.strip()]
        out[name] = [] if ok else (reasons or ["refused (torch gave no reason)"])
    return out


def describe_call(query, key, attn_mask=None, is_causal=False, enable_gqa=False) -> str:
    """e.g. 'q 24x1 kv 8x4160 d128 bfloat16 mask gqa' (heads x length)."""
    parts = [f"q {query.shape[-3]}x{query.shape[-2]} kv {key.shape[-3]}x{key.shape[-2]} d{query.shape[-1]}",
             str(query.dtype).removeprefix("torch.")]
    if is_causal:
        parts.append("causal")
    if attn_mask is not None:
        parts.append(f"mask{'(bool)' if attn_mask.dtype == torch.bool else ''}")
    if enable_gqa:
        parts.append("gqa")
    return " ".join(parts)


def _sdpa_args(args, kwargs) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


class Recorder:
    """`with Recorder() as rec:` ... `rec.summary()`: each distinct attention call made inside,
    with the kernel it got and how often. Calls made while torch.compile traces are not noted
    or captured into a CUDA graph."""

    # (module, attribute, label): functions the models look up at call time
    TARGETS = (
        ("yoco.ops.flex_attention", "sliding_window_flex", "FlexAttention (sliding window)"),
        ("yoco.ops.retention_fla", "gated_retention_fla", "gRet fla"),
        ("yoco.ops.retention_fla", "gated_retention_step_fla", "gRet step fla fused_recurrent"),
        ("yoco.layers", "gated_retention", "gRet torch"),
        ("yoco.layers", "gated_retention_step", "gRet step torch"),
    )

    def __init__(self, explain: bool = False):
        self.calls: Counter[tuple[str, str]] = Counter()  # (call, kernel) -> count
        self.explain = explain  # also ask each CUDA kernel why it refused (scripts/gpu_probe.py)
        self.reasons: dict[str, dict[str, list[str]]] = {}  # call -> refusals(), with explain=True
        self._saved: list[tuple[object, str, object]] = []

    def _patch(self, owner, name: str, wrapper):
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, wrapper)

    def __enter__(self) -> Recorder:
        sdpa = F.scaled_dot_product_attention

        def noted_sdpa(*args, **kwargs):
            if self._noting_now():
                a = _sdpa_args(args, kwargs)
                call = "SDPA " + describe_call(a["query"], a["key"], a.get("attn_mask"), a.get("is_causal", False),
                                               a.get("enable_gqa", False))
                self.calls[(call, sdpa_kernel(*args, **kwargs))] += 1
                if self.explain and call not in self.reasons:
                    self.reasons[call] = refusals(a["query"], a["key"], a["value"], a.get("attn_mask"),
                                                  a.get("is_causal", False), a.get("enable_gqa", False))
            return sdpa(*args, **kwargs)

        self._patch(F, "scaled_dot_product_attention", noted_sdpa)
        self._note_split_kv()
        for module_name, attr, label in self.TARGETS:
            try:
                module = importlib.import_module(module_name)
                original = getattr(module, attr)
            except (ImportError, AttributeError):  # the model code moved on: nothing to note there
                continue
            self._patch(module, attr, self._noting(original, label))
        return self

    def _note_split_kv(self):
        """The split-KV decode kernel, noted where the layers choose it (its own module is not
        imported for this: importing triton costs seconds, and on a CPU the kernel never runs)."""
        try:
            layers = importlib.import_module("yoco.layers")
            original = layers.decode_attention
        except (ImportError, AttributeError):
            return

        def noted(q, k_cache, v_cache, valid, use_splitkv=False):
            if use_splitkv and q.is_cuda and self._noting_now():
                self.calls[("split-KV decode (Triton) " + describe_call(q, k_cache, valid), "")] += 1
            return original(q, k_cache, v_cache, valid, use_splitkv)

        self._patch(layers, "decode_attention", noted)

    def _noting(self, fn, label: str):
        def noted(*args, **kwargs):
            if self._noting_now():
                mode = kwargs.get("mode")
                self.calls[(label + (f" {mode}" if mode else ""), "")] += 1
            return fn(*args, **kwargs)
        return noted

    @staticmethod
    def _noting_now() -> bool:
        """Not while torch.compile traces (the compiled graph picks its own kernels) nor while a
        CUDA graph is captured (nothing but the captured work may run then)."""
        if torch.compiler.is_compiling():
            return False
        return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
        return False

    start = __enter__  # for code that cannot indent a block: rec = Recorder().start() ... rec.stop()

    def stop(self) -> Recorder:
        self.__exit__(None, None, None)
        return self

    def summary(self) -> str:
        """'call: kernel xN; ...' in first-seen order ('' when nothing was noted)."""
        return "; ".join(f"{call}{': ' + kernel if kernel else ''} x{n}" for (call, kernel), n in self.calls.items())

    def kernels(self) -> set[str]:
        return {kernel for _, kernel in self.calls if kernel}
