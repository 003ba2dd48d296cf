"""Synthetic recall tasks, generated from a seed: pure functions of (seed, sizes), no downloads.

Both tasks give `tokens` [B, T] and `targets` [B, T], where targets hold IGNORE except at the
answer positions: the model's output at a query key must be that key's value.

The vocabulary is split into three disjoint ranges (`Vocab`): keys, values and filler, so a
filler token can never be mistaken for a key and chance accuracy is 1 / n_values.

- MQAR, multi-query associative recall (Zoology, arXiv 2312.04927): `pairs` key-value pairs
  (distinct keys), then every key queried once at random positions of the rest of the
  sequence, filler in between. Harder with more pairs and longer sequences.
- Needle in a haystack: one key-value pair whose key sits `distance` tokens before the last
  position, the key asked again at the last position, and a haystack of random tokens from the
  whole vocabulary except that key (other keys and values among them), so that only matching
  the query to the needle's key finds the answer, not "copy the one value in sight".
- Copy (a training aid, not evaluated): a random segment of distinct tokens, then the same
  segment again and again; every position after the first repeat is an answer (the token that
  followed the current one last time). It supervises the induction circuit (attend to the token
  after the earlier occurrence of this one) at every position, where MQAR and the needle
  supervise it at a few: mixed into training, it gets tiny models past the long loss plateau of
  recall tasks in hundreds of steps instead of thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TASKS = ("mqar", "needle", "copy")
EVALUATED = ("mqar", "needle")  # copy is a training aid only
IGNORE = -100  # cross_entropy's ignore_index: positions that are not answers


@dataclass(frozen=True)
class Vocab:
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 64

    def __post_init__(self):
        for name in ("n_keys", "n_values", "n_filler"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"vocab {name} must be an integer >= 1, got {value!r}")

    @property
    def size(self) -> int:
        return self.n_keys + self.n_values + self.n_filler

    @property
    def first_value(self) -> int:
        return self.n_keys

    @property
    def first_filler(self) -> int:
        return self.n_keys + self.n_values

    @property
    def chance(self) -> float:
        """Accuracy of a guess that knows only that the answer is a value."""
        return 1.0 / self.n_values


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] int64: the value at answer positions, IGNORE elsewhere


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: valid tasks are {', '.join(map(repr, TASKS))}")
    return task


def check_mqar(seq_len: int, pairs: int, vocab: Vocab):
    _check_positive("seq_len", seq_len)
    _check_positive("pairs", pairs)
    if pairs > min(vocab.n_keys, vocab.n_values):
        raise ValueError(f"MQAR pairs={pairs} needs as many distinct keys and values: the vocab has "
                         f"{vocab.n_keys} keys and {vocab.n_values} values")
    if 3 * pairs > seq_len:
        raise ValueError(f"MQAR pairs={pairs} does not fit seq_len={seq_len}: 2 tokens per pair plus one "
                         f"query each need seq_len >= 3 * pairs = {3 * pairs}")


def check_needle(seq_len: int, distance: int):
    _check_positive("seq_len", seq_len)
    if isinstance(distance, bool) or not isinstance(distance, int) or not 2 <= distance <= seq_len - 1:
        raise ValueError(f"needle distance {distance!r} does not fit seq_len={seq_len}: the needle's key must "
                         f"lie inside the sequence and its value before the query, so the distance must be "
                         f"an integer in [2, {seq_len - 1}]")


def _check_positive(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _filler(g: torch.Generator, batch: int, seq_len: int, vocab: Vocab) -> torch.Tensor:
    return vocab.first_filler + torch.randint(vocab.n_filler, (batch, seq_len), generator=g)


def _choose(g: torch.Generator, batch: int, population: int, k: int) -> torch.Tensor:
    """k distinct integers from [0, population) per row, in random order: [batch, k]."""
    return torch.rand(batch, population, generator=g).argsort(dim=1)[:, :k]


def mqar(seed: int, batch: int, seq_len: int, pairs: int, vocab: Vocab, queries: int | None = None) -> Batch:
    """k1 v1 k2 v2 ... k_n v_n, then the keys asked at random positions among filler: every key
    once (queries = None, Zoology's MQAR), or `queries` questions spread evenly over the keys
    (each asked queries // pairs or one more times).

    The answer for the query key at position t is its value, predicted at t (next-token)."""
    check_mqar(seq_len, pairs, vocab)
    _check_positive("batch", batch)
    context = 2 * pairs
    queries = pairs if queries is None else queries
    if isinstance(queries, bool) or not isinstance(queries, int) or not pairs <= queries <= seq_len - context:
        raise ValueError(f"MQAR queries={queries!r} must be an integer in [pairs, seq_len - 2 * pairs] = "
                         f"[{pairs}, {seq_len - context}]")
    g = _generator(seed)
    keys = _choose(g, batch, vocab.n_keys, pairs)
    values = vocab.first_value + _choose(g, batch, vocab.n_values, pairs)
    tokens = _filler(g, batch, seq_len, vocab)
    tokens[:, 0:context:2] = keys
    tokens[:, 1:context:2] = values
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    # Query slots: distinct positions after the context, sorted; each slot asks about a random pair
    # (a random permutation of the pairs, repeated, then cut to `queries`, then shuffled).
    slots = context + _choose(g, batch, seq_len - context, queries).sort(dim=1).values
    rounds = -(-queries // pairs)
    order = torch.cat([_choose(g, batch, pairs, pairs) for _ in range(rounds)], dim=1)[:, :queries]
    order = torch.gather(order, 1, _choose(g, batch, queries, queries))
    rows = torch.arange(batch)[:, None]
    tokens[rows, slots] = keys[rows, order]
    targets[rows, slots] = values[rows, order]
    return Batch(tokens, targets)


def needle(seed: int, batch: int, seq_len: int, distance: int | torch.Tensor, vocab: Vocab) -> Batch:
    """A haystack of any tokens but the needle's key; the key at position T-1-distance, its value
    after it, the key again at T-1.

    `distance` (query position minus needle key position) is one int or a [batch] tensor."""
    _check_positive("batch", batch)
    distances = torch.as_tensor(distance, dtype=torch.long).expand(batch).clone()
    for d in distances.unique().tolist():
        check_needle(seq_len, int(d))
    g = _generator(seed)
    keys = torch.randint(vocab.n_keys, (batch,), generator=g)
    values = vocab.first_value + torch.randint(vocab.n_values, (batch,), generator=g)
    # Any token but the key: draw from vocab.size - 1 tokens and step over the key.
    tokens = torch.randint(vocab.size - 1, (batch, seq_len), generator=g)
    tokens += (tokens >= keys[:, None]).long()
    rows = torch.arange(batch)
    position = seq_len - 1 - distances
    tokens[rows, position] = keys
    tokens[rows, position + 1] = values
    tokens[:, -1] = keys
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    targets[:, -1] = values
    return Batch(tokens, targets)


def copy(seed: int, batch: int, seq_len: int, vocab: Vocab) -> Batch:
    """Per sequence a segment of L distinct tokens (L uniform in [seq_len // 4, seq_len // 2]),
    repeated to fill seq_len; the answers are the next tokens from position L on."""
    _check_positive("batch", batch)
    if seq_len < 8:
        raise ValueError(f"copy needs seq_len >= 8 (a segment of at least 2 tokens, repeated), got {seq_len}")
    g = _generator(seed)
    low, high = seq_len // 4, min(seq_len // 2, vocab.size)
    length = torch.randint(low, high + 1, (batch, 1), generator=g)
    segment = _choose(g, batch, vocab.size, high)
    t = torch.arange(seq_len)[None, :]
    tokens = torch.gather(segment, 1, t % length)
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    answer = (t >= length) & (t < seq_len - 1)
    targets[:, :-1] = torch.where(answer[:, :-1], tokens[:, 1:], IGNORE)
    return Batch(tokens, targets)


def training_batch(seed: int, step: int, batch: int, seq_len: int, tasks: tuple[str, ...],
                   pairs: tuple[int, ...], vocab: Vocab) -> Batch:
    """The batch of one training step: a pure function of (seed, step), so a resumed run sees
    exactly the batches an uninterrupted one would. The tasks take turns by step; MQAR draws its
    pair count from [min(pairs), max(pairs)], the needle a distance per sequence from
    [2, seq_len - 1], copy a segment length per sequence."""
    for task in tasks:
        check_task(task)
    g = _generator(_mix(seed, step))
    task = tasks[step % len(tasks)]
    data_seed = int(torch.randint(2**62, (1,), generator=g))
    if task == "mqar":
        n = int(torch.randint(min(pairs), max(pairs) + 1, (1,), generator=g))
        return mqar(data_seed, batch, seq_len, n, vocab)
    if task == "copy":
        return copy(data_seed, batch, seq_len, vocab)
    distances = torch.randint(2, seq_len, (batch,), generator=g)
    return needle(data_seed, batch, seq_len, distances, vocab)


def eval_seed(seed: int, task: str, point: int) -> int:
    """Evaluation data's seed: apart from every training step's (which mix in the step below 2^32)."""
    return _mix(seed, (1 << 40) + TASKS.index(check_task(task)) * (1 << 20) + point)


def _mix(seed: int, n: int) -> int:
    """A 63-bit seed from two integers (splitmix64's finaliser): neighbouring inputs, unrelated outputs."""
    x = (seed * 0x9E3779B97F4A7C15 + n + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) >> 1
