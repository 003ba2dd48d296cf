"""How much memory a case's prefill needs at its peak: weights + cache + the activations of one
chunk, estimated on the meta device (no memory, no weights), and the same measured on a CPU.

The activations are not a hand-written formula: the case's own prefill code runs on a meta-device
twin of its model under `LiveTensorBytes` (torch's accounting of every tensor allocated), so the
estimate follows the code as it changes (gRet's chunk form, SWA's blocked form, the baseline's
prefix attention) and works for any registered arch. What keeps it cheap:
- layers run one after another and only the residual stream passes between them, so a twin
  with two layers (one self- and one cross-decoder layer for YOCO) peaks where the full depth
  does (archs whose build takes no `n_layers` run at full depth);
- every chunk after the second allocates what the second did (the SWA ring holds its W-1 keys
  from then on, gRet's state is constant, the baseline's prefix is read as a view of the cache),
  so a prompt of two chunks shows the peak of N tokens; a chunk past EXACT_UP_TO tokens is
  extrapolated from two shorter ones (activations grow linearly with the chunk);
- attention runs as a fused kernel would (flash or memory-efficient on CUDA, flash on the CPU):
  it allocates its output only. On the meta device SDPA would run its math form, whose C x S
  scores no real run of these shapes allocates.
Not counted: kernels' private workspaces, the CUDA context and the caching allocator's slack
(reserved above allocated), and vectors of N elements (the baseline's prefix mask base, decode's
validity mask). On CUDA the real paths are at most this large (fla and FlexAttention allocate less
than the PyTorch gRet chunk form and the blocked SWA form the meta twin runs).
Choice: here in bench/ rather than as model methods, because it needs no per-model code at all
(a method per arch would restate what the code allocates, and drift from it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from bench.measure.trackers import LiveTensorBytes
from yoco.lm import check_chunk_size


@dataclasses.dataclass(frozen=True)
class PrefillFootprint:
    weight_bytes: int
    cache_bytes: int
    activation_bytes: int  # the most the prefill allocates at once on top of weights and cache

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.cache_bytes + self.activation_bytes


@contextlib.contextmanager
def fused_attention():
    """SDPA as a fused kernel allocates: only its output (see the module docstring)."""
    sdpa = F.scaled_dot_product_attention

    def output_only(query, key, value, *args, **kwargs):
        return query.new_empty((*query.shape[:-1], value.shape[-1]))

    F.scaled_dot_product_attention = output_only
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


EXACT_UP_TO = 16384  # longer chunks: extrapolated from two runs, since the meta run's Python cost grows with the chunk


def prefill_activation_bytes(build, batch: int, seq_len: int, chunk_size: int | None,
                             exact_up_to: int = EXACT_UP_TO) -> int:
    """Peak tensor bytes a prefill of `seq_len` tokens in chunks of `chunk_size` (None: one chunk)
    allocates on top of weights and cache, from a meta-device run. `build(**overrides)` returns the
    model on the meta device (called with n_layers=2 first, then with no override if the arch does
    not take it). A chunk longer than `exact_up_to` tokens is extrapolated linearly from chunks of
    exact_up_to / 2 and exact_up_to: every activation is a fixed number of values per token of the
    chunk, plus terms that do not grow with it (the SWA ring's W-1 keys, gRet's state)."""
    model = functools.cache(lambda: _two_layers(build))
    return _activation_bytes(lambda chunk, chunked: _meta_peak(model(), batch, chunk, chunked), seq_len,
                             chunk_size, exact_up_to)


def _activation_bytes(peak, seq_len: int, chunk_size: int | None, exact_up_to: int) -> int:
    """From peak(chunk, chunked), the meta run of one chunk (or two: see _meta_peak)."""
    check_chunk_size(chunk_size)
    chunk = seq_len if chunk_size is None else min(chunk_size, seq_len)
    chunked = chunk < seq_len
    if chunk <= exact_up_to:
        return peak(chunk, chunked)
    lo, hi = exact_up_to // 2, exact_up_to
    a_lo, a_hi = peak(lo, chunked), peak(hi, chunked)
    return int(math.ceil(a_hi + (a_hi - a_lo) * (chunk - hi) / (hi - lo)))


def _two_layers(build):
    for overrides in ({"n_layers": 2}, {}):
        try:
            return build(**overrides)
        except (TypeError, ValueError):  # an arch that does not take n_layers
            if not overrides:
                raise


def _meta_peak(model, batch: int, chunk: int, chunked: bool) -> int:
    """A prefill of one chunk, or of two (the second is every later one) when chunked."""
    length = 2 * chunk if chunked else chunk
    cache = model.allocate_cache(batch, length)
    tokens = torch.zeros(batch, length, dtype=torch.long, device="meta")
    with torch.inference_mode(), fused_attention(), LiveTensorBytes() as live:
        model.prefill(tokens, cache, chunk_size=chunk if chunked else None)
    return live.peak


def estimate_prefill(arch: str, preset: str, *, batch: int, seq_len: int, chunk_size: int | None,
                     dtype: str = "bfloat16", window: int | None = None, bitnet: str = "none",
                     gen_len: int = 0) -> PrefillFootprint:
    """The prefill's peak memory for a case, on the meta device: weights as stored (packed for
    BitNet), the cache for seq_len + gen_len tokens, one chunk's activations."""
    from bench.measure.runner import estimate
    from bench.suite import Case

    check_chunk_size(chunk_size)
    case = Case(arch=arch, preset=preset, batch=batch, seq_len=seq_len, gen_len=gen_len, window=window,
                bitnet=bitnet, dtype=dtype, backend="torch", decode_mode="eager", prefill_chunk=chunk_size)
    e = estimate(case)
    if math.isnan(e["estimated_activation_bytes"]):
        raise ValueError(f"arch {arch!r} does not run on the meta device: no activation estimate")
    return PrefillFootprint(e["weight_bytes"], e["kv_cache_bytes_formula"], int(e["estimated_activation_bytes"]))


def case_activation_bytes(case) -> float:
    """prefill_activation_bytes for a bench Case (its arch, preset, dtype, window, batch, length and
    chunk), or NaN where its model cannot run on the meta device. A BitNet case counts as its
    plain twin: the packed kernels allocate what a linear layer does (the CPU reference, which
    unpacks each weight matrix per call, allocates more)."""
    from bench import archs

    arch = archs.get(case.arch).sized_as or case.arch
    try:
        return float(_activation_bytes(
            lambda chunk, chunked: _case_peak(arch, case.preset, case.dtype, case.window, case.batch, chunk, chunked),
            case.seq_len, case.prefill_chunk, EXACT_UP_TO))
    except Exception:  # an arch whose code does not run on meta: no estimate, not a failed case
        return math.nan


@functools.lru_cache(maxsize=256)
def _case_peak(arch: str, preset: str, dtype: str, window: int | None, batch: int, chunk: int, chunked: bool) -> int:
    return _meta_peak(_case_model(arch, preset, dtype, window), batch, chunk, chunked)


@functools.lru_cache(maxsize=16)
def _case_model(arch: str, preset: str, dtype: str, window: int | None):
    from bench import archs
    from bench.measure.roofline import DTYPES
    from yoco.config import PRESETS

    def build(**overrides):
        overrides["max_seq_len"] = max(PRESETS[preset]["max_seq_len"], 2 * EXACT_UP_TO)
        return archs.get(arch).build(preset, device="meta", dtype=DTYPES[dtype], window=window, backend="torch",
                                     **overrides).eval()

    return _two_layers(build)


# ---- measured on a CPU ----

def measure_prefill_memory(arch: str, preset: str, seq_len: int, chunk_size: int | None, batch: int = 1,
                           dtype: str = "float32", window: int | None = None, live: bool = False) -> dict:
    """One prefill on this CPU, in this process (run it in a fresh one: bench.measure.isolation):
    the process's peak resident set during the prefill above what it held before (weights, cache,
    tokens, Python and torch: `rss_above_bytes`), and with live=True, in a second prefill, the
    tensor bytes allocated (LiveTensorBytes: `live_peak_bytes`), beside the meta estimate."""
    from bench import archs
    from bench.measure.roofline import DTYPES
    from bench.measure.trackers import PeakMemory, current_memory_bytes
    from yoco.config import PRESETS

    _heap_follows_tensors()
    torch.manual_seed(0)
    overrides = {"max_seq_len": seq_len} if seq_len > PRESETS[preset]["max_seq_len"] else {}
    model = archs.get(arch).build(preset, device="cpu", dtype=DTYPES[dtype], window=window, **overrides).eval()
    cache = model.allocate_cache(batch, seq_len)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    model.prefill(tokens[:, :min(seq_len, 2 * (chunk_size or seq_len), 256)], cache, chunk_size=chunk_size)  # warm
    out = dict(arch=arch, preset=preset, seq_len=seq_len, chunk_size=chunk_size, batch=batch, dtype=dtype,
               weight_bytes=model.weight_bytes(), cache_bytes=cache.nbytes())
    peak = PeakMemory("cpu")
    peak.start()
    before = current_memory_bytes("cpu")
    model.prefill(tokens, cache, chunk_size=chunk_size)
    peak.stop()
    out.update(rss_before_bytes=before, rss_peak_bytes=peak.allocated, rss_above_bytes=peak.allocated - before,
               memory_source=peak.source)
    if live:
        with LiveTensorBytes() as tracker:
            model.prefill(tokens, cache, chunk_size=chunk_size)
        out["live_peak_bytes"] = tracker.peak
    return out


def _heap_follows_tensors():
    """glibc serves every allocation of 64 KiB or more from its own mapping and unmaps it when
    freed (mallopt M_MMAP_THRESHOLD, fixed: by default the threshold climbs to 32 MiB as blocks are
    freed, after which freed tensors stay in the heap and the resident set keeps the high-water of
    its fragmentation, which grows with the number of chunks rather than with their size)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: RSS is an upper bound
        pass
