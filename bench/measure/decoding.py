"""The greedy decode step a case times, in its decode mode, and proof that it ran as claimed.

Modes (the suite axis `decode_mode`):
- eager: `model.decode_step` as written (the reference);
- graph: the eager step captured once as a CUDA graph (yoco.graphs.CapturedDecode), one replay
  per step: the default way the GPU suites time decode. CUDA only;
- compile: `model.compile_decode()` (torch.compile; "reduce-overhead", CUDA graphs, on CUDA).

Each step is one decode step plus the argmax that picks the next token, in every mode. What a
row records that the mode really ran: graphs torch.compile produced for the step and how many
of them were recompilations; whether every timed step replayed a CUDA graph (counted at
torch.cuda.CUDAGraph.replay, which inductor's CUDA graph trees call too). Timed loops run under
torch.compiler.set_stance("fail_on_recompile") (torch >= 2.6), so a compilation inside the
clock is an error, never a slow sample.
"""

from __future__ import annotations

import contextlib

import torch

MODES = ("eager", "graph", "compile")


def no_recompiles():
    """Context for timed loops: torch.compile may not compile there (a no-op on old torch)."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return set_stance("fail_on_recompile") if set_stance else contextlib.nullcontext()


def _compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # no dynamo: nothing is ever compiled
        return 0
    return int(counters["stats"]["unique_graphs"])


class ReplayCounter:
    """Counts CUDA graph replays (ours and inductor's) while active: calls of `graph_class.replay`
    (torch.cuda.CUDAGraph where CUDA is present; nothing to count elsewhere)."""

    def __init__(self, graph_class=None):
        self.graph_class = graph_class or (torch.cuda.CUDAGraph if torch.cuda.is_available() else None)
        self.count = 0
        self._patched = False
        self._own = None  # the class's own replay, where it defines one (else it inherits it)

    def __enter__(self) -> ReplayCounter:
        graph_class = self.graph_class
        if graph_class is not None:
            self._own = graph_class.__dict__.get("replay")
            original = graph_class.replay

            def counted(graph, *args, **kwargs):
                self.count += 1
                return original(graph, *args, **kwargs)

            graph_class.replay = counted
            self._patched = True
        return self

    def __exit__(self, *exc):
        if self._patched:
            if self._own is None:
                del self.graph_class.replay
            else:
                self.graph_class.replay = self._own
            self._patched = False
        return False


class Decoder:
    """Greedy decode steps over one model and cache in one mode. `prepare(first_tokens)` once
    (compiles nothing yet; captures the graph in graph mode), then `steps(n)`. The cache's
    position is the caller's: `cache.set_length(n)` rewinds it between passes."""

    def __init__(self, model, cache, mode: str, device: str):
        if mode not in MODES:
            raise ValueError(f"unknown decode_mode {mode!r}: valid modes are {', '.join(MODES)}")
        if mode == "graph" and device != "cuda":
            raise ValueError(f"decode_mode 'graph' captures CUDA graphs: it needs --device cuda, not {device}")
        self.model, self.cache, self.mode, self.device = model, cache, mode, device
        self.captured = None
        self.next_tokens = None
        self._graphs_at_start = _compiled_graphs()
        if mode == "compile":
            model.compile_decode()

    def prepare(self, first_tokens: torch.Tensor):
        """Start from these next tokens [B]; in graph mode capture the step (a few eager steps
        first, which advance the cache: the caller rewinds it)."""
        if self.mode == "graph":
            self.captured = self.model.capture_decode(self.cache)
            self.captured.tokens.copy_(first_tokens)
        else:
            self.next_tokens = first_tokens

    def steps(self, n: int):
        """n greedy steps: each a decode step and the argmax of its logits, fed to the next."""
        if self.captured is not None:
            captured = self.captured
            for _ in range(n):
                torch.argmax(captured.replay(), dim=-1, out=captured.tokens)
            return
        step, cache, nxt = self.model.decode_step, self.cache, self.next_tokens
        for _ in range(n):
            nxt = step(nxt, cache).argmax(-1)
        self.next_tokens = nxt

    def compile_counts(self) -> tuple[int, int]:
        """(graphs torch.compile produced since this decoder was made, recompilations among
        them: with fullgraph=True every compilation of the step is one graph, the first one
        is not a recompilation). (0, 0) outside compile mode."""
        if self.mode != "compile":
            return 0, 0
        graphs = _compiled_graphs() - self._graphs_at_start
        return graphs, max(0, graphs - 1)
