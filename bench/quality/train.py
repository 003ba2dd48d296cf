"""Training one tiny model on the recall tasks, and measuring its accuracy; apart from the tasks
(bench.quality.tasks) and from the sweep (bench.quality.sweep).

- loss: cross-entropy on the answer positions only (every other position is IGNORE);
- AdamW (weight decay on matrices only), linear warm-up then a cosine (or step) decay to
  min_lr_ratio x lr, gradient-norm clipping;
- BitNet models train through their fake-quant forward with the straight-through estimator,
  as yoco.bitnet.BitLinear does it;
- every batch is a pure function of (seed, step) and the model's initial weights of the seed,
  so a run is repeatable, and a run resumed from its checkpoint ends bitwise where an
  uninterrupted one would (fp32 on the CPU with a fixed thread count).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.quality import tasks
from bench.quality.tasks import IGNORE, Vocab

SCHEDULES = ("cosine", "step")
LOSS_WINDOW = 50  # final_loss: the mean over this many last steps (the tasks take turns by step)


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 1000
    lr: float = 3e-3
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1  # the schedule ends at lr x this
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    tasks: tuple[str, ...] = tasks.TASKS
    pairs: tuple[int, ...] = (4, 16)  # MQAR trains on pair counts drawn from [min, max]
    vocab: Vocab = field(default_factory=Vocab)

    def __post_init__(self):
        for name in ("seq_len", "batch_size", "steps", "checkpoint_every"):
            _check_int(name, getattr(self, name), 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("seed", self.seed, 0)
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, int | float) \
                or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: valid schedules are "
                             f"{', '.join(map(repr, SCHEDULES))}")
        if not self.tasks:
            raise ValueError(f"tasks must name at least one task: valid tasks are {', '.join(map(repr, tasks.TASKS))}")
        for task in self.tasks:
            tasks.check_task(task)
        if "copy" in self.tasks and self.seq_len < 8:
            raise ValueError(f"the copy task needs seq_len >= 8, got {self.seq_len}")
        if "mqar" in self.tasks:
            if not self.pairs:
                raise ValueError("MQAR trains on pair counts from [min(pairs), max(pairs)]: pairs is empty")
            for n in self.pairs:
                tasks.check_mqar(self.seq_len, n, self.vocab)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tasks"], d["pairs"] = list(self.tasks), list(self.pairs)
        return d


def _check_int(name: str, value, low: int):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning rate of `step` (0-based) over the peak: linear warm-up from 1/warmup to 1,
    then cosine from 1 down to min_lr_ratio at the last step ("step": 1, then 0.3 after 60% and
    min_lr_ratio after 85% of the decay)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    low = config.min_lr_ratio
    if config.schedule == "cosine":
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 if progress < 0.6 else max(low, 0.3) if progress < 0.85 else low


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices (not on norms' gains)."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    others = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": config.weight_decay},
                              {"params": others, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions (targets != IGNORE)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def correct_answers(model: torch.nn.Module, batch: tasks.Batch) -> tuple[int, int]:
    """(answers whose argmax over the whole vocabulary is the value, answers asked)."""
    logits = model(batch.tokens)
    asked = batch.targets != IGNORE
    return int((logits.argmax(-1)[asked] == batch.targets[asked]).sum()), int(asked.sum())


@dataclass
class TrainResult:
    steps: int
    seconds: float  # training time summed over every session that trained this model
    final_loss: float  # mean answer loss over the last LOSS_WINDOW steps
    resumed_from: int  # the step this session started at (0: from scratch)


class Checkpoint:
    """One file per model: weights, optimizer, step, time spent and recent losses, written
    atomically (a kill mid-write leaves the previous one); `identity` must match on resume."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = Path(path), identity

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("identity") != self.identity:
            raise ValueError(f"checkpoint {self.path} was written for {state.get('identity')}, not "
                             f"{self.identity}: delete it or use another --out")
        return state

    def save(self, state: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "identity": self.identity}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def train(model: torch.nn.Module, config: TrainConfig, checkpoint: Checkpoint | None = None,
          progress: Callable[[int, float], None] | None = None,
          after_checkpoint: Callable[[int], None] | None = None) -> TrainResult:
    """Train `model` in place for config.steps, resuming from `checkpoint` when it holds a
    partial run (or returning at once when it holds a finished one). `progress(step, loss)` is
    called after every step; `after_checkpoint(step)` after every checkpoint written."""
    optimizer = make_optimizer(model, config)
    start, seconds, losses = 0, 0.0, []
    state = checkpoint.load() if checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        if state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        start, seconds, losses = state["step"], state["seconds"], list(state["losses"])
    resumed_from = start
    model.train()
    began = time.perf_counter()
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        batch = tasks.training_batch(config.seed, step, config.batch_size, config.seq_len, config.tasks,
                                     config.pairs, config.vocab)
        loss = answer_loss(model(batch.tokens), batch.targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}: lower lr (now {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses = (losses + [loss.item()])[-LOSS_WINDOW:]
        done = step + 1
        if progress:
            progress(done, losses[-1])
        if checkpoint and (done % config.checkpoint_every == 0 or done == config.steps):
            finished = done == config.steps
            checkpoint.save(dict(model=model.state_dict(), optimizer=None if finished else optimizer.state_dict(),
                                 step=done, seconds=seconds + time.perf_counter() - began, losses=losses,
                                 finished=finished))
            if after_checkpoint:
                after_checkpoint(done)
    seconds += time.perf_counter() - began
    if start == config.steps and state is not None:
        seconds = state["seconds"]
    model.eval()
    return TrainResult(steps=config.steps, seconds=seconds, final_loss=sum(losses) / max(1, len(losses)),
                       resumed_from=resumed_from)


def progress_bar(total: int, initial: int, label: str, position: int = 0):
    """A tqdm bar with the loss and an ETA on a terminal (one line per parallel job); sparse
    lines in a log."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(total=total, initial=initial, desc=label, unit="step", file=sys.stderr, dynamic_ncols=tty,
               mininterval=0.5 if tty else 30, leave=position == 0, ascii=not tty, position=position)

    def update(step: int, loss: float):
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    return bar, update
