"""The decode modes (bench.measure.decoding) on a CPU: eager greedy steps as the model's own,
graph mode refused off CUDA, and the replay counter on a stand-in graph class."""

import pytest
import torch

import yoco
from bench.measure.decoding import Decoder, ReplayCounter, no_recompiles


def test_eager_decoder_steps_are_greedy_decode_steps():
    torch.manual_seed(0)
    model = yoco.from_preset("tiny", n_layers=2).eval()
    tokens = torch.randint(0, 512, (2, 12))
    cache = model.allocate_cache(2, 20)
    with torch.inference_mode():
        first = model.prefill(tokens, cache).argmax(-1)
        decoder = Decoder(model, cache, "eager", "cpu")
        decoder.prepare(first)
        decoder.steps(5)
        got = decoder.next_tokens
        nxt = model.prefill(tokens, cache).argmax(-1)
        for _ in range(5):
            nxt = model.decode(nxt, cache).argmax(-1)
    assert torch.equal(got, nxt) and cache.length == 17
    assert decoder.compile_counts() == (0, 0)


def test_graph_mode_needs_cuda_and_modes_are_checked():
    model = yoco.from_preset("tiny", n_layers=2).eval()
    cache = model.allocate_cache(1, 8)
    with pytest.raises(ValueError, match="decode_mode 'graph' captures CUDA graphs: it needs --device cuda"):
        Decoder(model, cache, "graph", "cpu")
    with pytest.raises(ValueError, match="unknown decode_mode 'fast'"):
        Decoder(model, cache, "fast", "cpu")


class FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


class InheritedGraph(FakeGraph):
    pass


@pytest.mark.parametrize("graph_class", [FakeGraph, InheritedGraph])
def test_replay_counter_counts_and_restores(graph_class):
    original = graph_class.replay
    graph = graph_class()
    with ReplayCounter(graph_class) as counter:
        for _ in range(3):
            graph.replay()
    graph.replay()  # outside: not counted
    assert counter.count == 3 and graph.replays == 4
    assert graph_class.replay is original and ("replay" in graph_class.__dict__) == (graph_class is FakeGraph)


def test_no_recompiles_is_a_context():
    with no_recompiles():
        pass
