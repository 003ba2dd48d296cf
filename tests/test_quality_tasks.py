"""The recall tasks: layouts, answers, determinism and bad sizes."""

import pytest
import torch

from bench.quality import tasks
from bench.quality.tasks import IGNORE, Vocab

VOCAB = Vocab(n_keys=16, n_values=12, n_filler=8)


def test_vocab_ranges_are_disjoint_and_sized():
    assert VOCAB.size == 36 and VOCAB.first_value == 16 and VOCAB.first_filler == 28
    assert VOCAB.chance == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match="n_keys must be an integer >= 1, got 0"):
        Vocab(n_keys=0)


@pytest.mark.parametrize("pairs", [1, 5, 12])
def test_mqar_layout_and_answers(pairs):
    seq_len, batch = 40, 64
    b = tasks.mqar(seed=3, batch=batch, seq_len=seq_len, pairs=pairs, vocab=VOCAB)
    assert b.tokens.shape == b.targets.shape == (batch, seq_len)
    assert b.tokens.dtype == b.targets.dtype == torch.long
    for tokens, targets in zip(b.tokens.tolist(), b.targets.tolist()):
        keys, values = tokens[0:2 * pairs:2], tokens[1:2 * pairs:2]
        assert all(0 <= k < 16 for k in keys) and len(set(keys)) == pairs
        assert all(16 <= v < 28 for v in values)
        answer = dict(zip(keys, values))
        asked = [(t, tokens[t], targets[t]) for t in range(seq_len) if targets[t] != IGNORE]
        assert sorted(k for _, k, _ in asked) == sorted(keys)  # every key asked once
        assert all(t >= 2 * pairs and answer[k] == v for t, k, v in asked)  # after the context, the right value
        rest = [tokens[t] for t in range(2 * pairs, seq_len) if targets[t] == IGNORE]
        assert all(28 <= x < 36 for x in rest)  # filler only between the queries
    # Query positions and the order of the questions vary between sequences.
    assert len({tuple((b.targets[i] != IGNORE).nonzero().flatten().tolist()) for i in range(batch)}) > 1


def test_needle_layout_and_answer():
    seq_len, d = 30, 7
    b = tasks.needle(seed=1, batch=50, seq_len=seq_len, distance=d, vocab=VOCAB)
    for tokens, targets in zip(b.tokens.tolist(), b.targets.tolist()):
        key = tokens[-1]
        assert 0 <= key < 16
        assert tokens[seq_len - 1 - d] == key and 16 <= tokens[seq_len - d] < 28
        assert tokens.count(key) == 2  # the needle and the query: the haystack never holds the key
        assert targets[:-1] == [IGNORE] * (seq_len - 1) and targets[-1] == tokens[seq_len - d]
    # The haystack draws on the whole vocabulary (keys and values too): copying the only value fails.
    hay = b.tokens[:, : seq_len - 1 - d]
    assert (hay < 16).any() and ((hay >= 16) & (hay < 28)).any() and (hay >= 28).any()


def test_needle_distance_per_sequence():
    distances = torch.tensor([2, 5, 29, 11])
    b = tasks.needle(seed=0, batch=4, seq_len=30, distance=distances, vocab=VOCAB)
    for row, d in enumerate(distances.tolist()):
        assert b.tokens[row, 29 - d] == b.tokens[row, -1]
        assert b.targets[row, -1] == b.tokens[row, 30 - d]


def test_copy_repeats_a_segment_and_asks_every_later_token():
    seq_len = 40
    b = tasks.copy(seed=2, batch=64, seq_len=seq_len, vocab=VOCAB)
    lengths = set()
    for tokens, targets in zip(b.tokens.tolist(), b.targets.tolist()):
        length = next(n for n in range(2, seq_len) if tokens[n:] == tokens[:seq_len - n])  # the period
        lengths.add(length)
        assert 10 <= length <= 20 and len(set(tokens[:length])) == length  # distinct tokens in a segment
        assert targets[:length] == [IGNORE] * length and targets[-1] == IGNORE
        assert targets[length:-1] == tokens[length + 1:]  # every later position: the next token
    assert len(lengths) > 5


def test_tasks_are_pure_functions_of_seed_and_sizes():
    a, b = tasks.mqar(7, 8, 32, 4, VOCAB), tasks.mqar(7, 8, 32, 4, VOCAB)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, tasks.mqar(8, 8, 32, 4, VOCAB).tokens)
    n1, n2 = tasks.needle(7, 8, 32, 9, VOCAB), tasks.needle(7, 8, 32, 9, VOCAB)
    assert torch.equal(n1.tokens, n2.tokens)
    torch.manual_seed(0)  # the global RNG plays no part
    x = tasks.mqar(7, 8, 32, 4, VOCAB)
    torch.manual_seed(1)
    assert torch.equal(x.tokens, tasks.mqar(7, 8, 32, 4, VOCAB).tokens)


def test_training_batches_depend_on_seed_and_step_only():
    args = dict(batch=4, seq_len=32, tasks=("mqar", "needle"), pairs=(2, 6), vocab=VOCAB)
    same = tasks.training_batch(0, 5, **args), tasks.training_batch(0, 5, **args)
    assert torch.equal(same[0].tokens, same[1].tokens)
    assert not torch.equal(tasks.training_batch(0, 7, **args).tokens, same[0].tokens)
    assert not torch.equal(tasks.training_batch(1, 5, **args).tokens, same[0].tokens)
    # The tasks take turns: even steps MQAR (several answers a row), odd steps the needle (one, at the end).
    answers = [(tasks.training_batch(0, s, **args).targets != IGNORE).sum(1) for s in range(6)]
    assert all((a >= 2).all() for a in answers[0::2]) and all((a == 1).all() for a in answers[1::2])
    pairs = {int((tasks.training_batch(0, s, **args).targets[0] != IGNORE).sum()) for s in range(0, 80, 2)}
    assert pairs == set(range(2, 7))  # every pair count of [min, max]


def test_evaluation_seeds_differ_by_task_and_point():
    seeds = {tasks.eval_seed(0, t, p) for t in tasks.EVALUATED for p in range(1, 50)}
    assert len(seeds) == 2 * 49


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'recall': valid tasks are 'mqar', 'needle', 'copy'"):
        tasks.check_task("recall")
    with pytest.raises(ValueError, match="unknown task 'recall'"):
        tasks.training_batch(0, 0, 4, 32, ("recall",), (2,), VOCAB)


@pytest.mark.parametrize("distance", [40, 30, 1, 0, -5])
def test_needle_deeper_than_the_sequence_is_refused(distance):
    with pytest.raises(ValueError, match=rf"needle distance {distance} does not fit seq_len=30.*\[2, 29\]"):
        tasks.needle(0, 2, 30, distance, VOCAB)


def test_mqar_sizes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"pairs=11 does not fit seq_len=32.*seq_len >= 3 \* pairs = 33"):
        tasks.mqar(0, 2, 32, 11, VOCAB)
    with pytest.raises(ValueError, match="pairs=13 needs as many distinct keys and values.*12 values"):
        tasks.mqar(0, 2, 64, 13, VOCAB)
    with pytest.raises(ValueError, match="pairs must be an integer >= 1, got 0"):
        tasks.mqar(0, 2, 64, 0, VOCAB)
