"""Quality suites: the speed suites' TOML shape ([suite], [axes], [[sweep]]) plus a [quality]
table for the tasks and the training; the axes name models (arch, preset, window, bitnet).

    [suite]
    description = "one line"
    threads = 1                     # CPU threads per model in training (fixed: results repeat bitwise)
    jobs = 2                        # models trained at once, each in its own process (default 1)
    arch_modules = ["my_archs"]     # optional: modules that register archs (bench.archs)

    [quality]
    seq_len = 128                   # training and evaluation length
    vocab = {keys = 64, values = 64, filler = 64}
    tasks = ["mqar", "needle", "copy"]  # trained in turns; mqar and needle evaluated at their points,
                                    # copy (bench.quality.tasks) a training aid only
    mqar_pairs = [4, 8, 16]         # evaluation points; training draws from [min, max]
    needle_distances = [8, 32, 64]  # evaluation points; training draws from [2, seq_len - 1]
    eval_examples = 256             # sequences per evaluation point
    steps = 1000                    # and batch_size, lr, warmup_steps, schedule, min_lr_ratio,
                                    # weight_decay, grad_clip, seed, checkpoint_every (TrainConfig)
    model = {d_model = 64}          # optional: config fields set on every model

    [axes]
    arch = ["transformer", "transformer-swa", "yoco-swa", "yoco-gret"]
    preset = ["tiny"]
    window = [8]
    bitnet = ["none", "1.58bit"]

    [[sweep]]                       # optional, as in the speed suites (exclude too)
    arch = ["yoco-swa"]
    window = [8, 32]

Quality suites live in bench/quality/suites/ (the speed `list` and `run` never see them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path

from bench import archs
from bench import suite as speed
from bench.quality import tasks
from bench.quality.tasks import Vocab
from bench.quality.train import TrainConfig
from bench.suite import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent / "suites"
AXIS_DEFAULTS = dict(arch="transformer", preset="tiny", window=64, bitnet="none")
AXES = tuple(AXIS_DEFAULTS)
SUITE_KEYS = ("description", "threads", "jobs", "arch_modules")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("tasks", "pairs", "vocab", "seq_len"))
QUALITY_KEYS = ("seq_len", "vocab", "tasks", "mqar_pairs", "needle_distances", "eval_examples", "model", *TRAIN_KEYS)
VOCAB_KEYS = {"keys": "n_keys", "values": "n_values", "filler": "n_filler"}


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    preset: str
    window: int | None
    bitnet: str

    @property
    def model_id(self) -> str:
        window = f"w{self.window}" if self.window is not None else "wna"
        return f"{self.arch}-{self.preset}-{window}-{self.bitnet}"


@dataclass
class QualitySuite:
    name: str
    path: Path
    models: list[ModelSpec]
    train: TrainConfig
    mqar_pairs: tuple[int, ...]
    needle_distances: tuple[int, ...]
    eval_examples: int
    model_overrides: dict = field(default_factory=dict)
    description: str = ""
    threads: int | None = None
    jobs: int = 1
    arch_modules: tuple[str, ...] = ()
    text: str = field(default="", repr=False)

    def points(self) -> list[tuple[str, int]]:
        """(task, pairs or distance) of every evaluation, in order."""
        return ([("mqar", n) for n in self.mqar_pairs] if "mqar" in self.train.tasks else []) + \
            ([("needle", d) for d in self.needle_distances] if "needle" in self.train.tasks else [])


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load(name_or_path: str, arch_modules=()) -> QualitySuite:
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"quality suite file {name_or_path} does not exist")
    else:
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise UsageError(f"unknown quality suite {name_or_path!r}: valid suites are "
                             f"{', '.join(suite_names())} or a path to a .toml file")
    return parse(path.read_text(), path, arch_modules)


def parse(text: str, path: Path, arch_modules=()) -> QualitySuite:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"syntax error in quality suite file {path}: {e}") from None
    unknown = set(data) - {"suite", "quality", "axes", "sweep"}
    if unknown:
        raise UsageError(f"{path}: unknown table(s) {sorted(unknown)}: valid tables are [suite], [quality], "
                         f"[axes], [[sweep]]")
    if "quality" not in data:
        raise UsageError(f"{path}: a quality suite needs a [quality] table (tasks and training); "
                         f"speed suites run with `python -m bench run`")
    meta = data.get("suite", {})
    bad = set(meta) - set(SUITE_KEYS)
    if bad:
        raise UsageError(f"{path}: unknown [suite] key(s) {sorted(bad)}: valid keys are {', '.join(SUITE_KEYS)}")
    threads, jobs = meta.get("threads"), meta.get("jobs", 1)
    for name, value in (("threads", threads), ("jobs", jobs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{path}: [suite] {name} must be an integer >= 1, got {value!r}")
    modules = speed.load_arch_modules(list(arch_modules), "--arch-module")
    modules += speed.load_arch_modules(meta.get("arch_modules", []), f"{path}: [suite] arch_modules")

    q = data["quality"]
    bad = set(q) - set(QUALITY_KEYS)
    if bad:
        raise UsageError(f"{path}: unknown [quality] key(s) {sorted(bad)}: valid keys are {', '.join(QUALITY_KEYS)}")
    try:
        train, points, examples = _quality(q)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: [quality] {e}") from None
    overrides = q.get("model", {})
    if not isinstance(overrides, dict):
        raise UsageError(f"{path}: [quality] model must be a table of config fields, got {overrides!r}")

    base = data.get("axes", {})
    models: dict[str, ModelSpec] = {}
    for sweep in data.get("sweep", [{}]):
        axes = {**base, **sweep}
        excludes = axes.pop("exclude", [])
        for spec in _expand(path, axes, excludes):
            models.setdefault(spec.model_id, spec)
    if not models:
        raise UsageError(f"{path}: the suite expands to no models")
    suite = QualitySuite(name=path.stem, path=path, models=list(models.values()), train=train,
                         mqar_pairs=points["mqar"], needle_distances=points["needle"], eval_examples=examples,
                         model_overrides=overrides, description=meta.get("description", ""), threads=threads, jobs=jobs,
                         arch_modules=modules, text=text)
    for spec in suite.models:  # every model must build (window vs sequence, overrides): say which does not
        try:
            build(suite, spec, device="meta")
        except (ValueError, TypeError) as e:
            raise UsageError(f"{path}: model {spec.model_id} cannot be built: {e}") from None
    return suite


def _quality(q: dict) -> tuple[TrainConfig, dict, int]:
    vocab = q.get("vocab", {})
    if not isinstance(vocab, dict) or set(vocab) - set(VOCAB_KEYS):
        raise ValueError(f"vocab must be a table with keys {', '.join(VOCAB_KEYS)}, got {vocab!r}")
    vocab = Vocab(**{VOCAB_KEYS[k]: v for k, v in vocab.items()})
    task_list = q.get("tasks", list(tasks.TASKS))
    if not isinstance(task_list, list) or not task_list:
        raise ValueError(f"tasks must be a non-empty list: valid tasks are {', '.join(map(repr, tasks.TASKS))}")
    for task in task_list:
        tasks.check_task(task)
    seq_len = q.get("seq_len", TrainConfig.seq_len)
    points = {"mqar": tuple(q.get("mqar_pairs", [4, 8, 16])), "needle": tuple(q.get("needle_distances", []))}
    if not set(task_list) & set(tasks.EVALUATED):
        raise ValueError(f"tasks {task_list} train nothing that is evaluated: include "
                         f"{' or '.join(map(repr, tasks.EVALUATED))}")
    for task in set(task_list) & set(tasks.EVALUATED):
        if not points[task]:
            raise ValueError(f"task {task!r} is trained but has no evaluation points: give "
                             f"{'mqar_pairs' if task == 'mqar' else 'needle_distances'}")
    for n in points["mqar"]:
        tasks.check_mqar(seq_len, n, vocab)
    for d in points["needle"]:
        tasks.check_needle(seq_len, d)
    examples = q.get("eval_examples", 256)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ValueError(f"eval_examples must be an integer >= 1, got {examples!r}")
    pairs = points["mqar"] if "mqar" in task_list else (1,)
    train = TrainConfig(seq_len=seq_len, tasks=tuple(task_list), pairs=(min(pairs), max(pairs)), vocab=vocab,
                        **{k: q[k] for k in TRAIN_KEYS if k in q})
    return train, points, examples


def _expand(path: Path, axes: dict, excludes: list) -> list[ModelSpec]:
    unknown = set(axes) - set(AXES)
    if unknown:
        raise UsageError(f"{path}: unknown axis {sorted(unknown)[0]!r}: valid quality axes are {', '.join(AXES)}")
    values = {}
    for name in AXES:
        v = axes.get(name, AXIS_DEFAULTS[name])
        values[name] = [_validate(path, name, x) for x in (v if isinstance(v, list) else [v])]
        if not values[name]:
            raise UsageError(f"{path}: axis {name!r} has no values")
    if not isinstance(excludes, list) or not all(isinstance(e, dict) for e in excludes):
        raise UsageError(f"{path}: exclude must be a list of tables like {{arch = \"transformer\"}}")
    for e in excludes:
        if set(e) - set(AXES):
            raise UsageError(f"{path}: exclude names unknown axis {sorted(set(e) - set(AXES))[0]!r}: "
                             f"valid quality axes are {', '.join(AXES)}")
    specs = []
    for combo in itertools.product(*(values[n] for n in AXES)):
        point = dict(zip(AXES, combo, strict=True))
        if any(speed._matches(point, e) for e in excludes):
            continue
        arch = archs.get(point["arch"])
        if not arch.windowed:
            point["window"] = None
        if not arch.bitnet and point["bitnet"] != "none":
            continue
        specs.append(ModelSpec(**point))
    return specs


def _validate(path: Path, name: str, value):
    if name == "window":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{path}: window values must be integers >= 1 (tokens attended, the current one "
                             f"included), got {value!r}")
        return value
    return speed._validate(path, name, value)


def build(suite: QualitySuite, spec: ModelSpec, device="cpu"):
    """The model of a spec, sized for the suite's tasks (vocabulary and length), in fp32."""
    import torch

    overrides = {**suite.model_overrides, "vocab_size": suite.train.vocab.size, "bitnet": spec.bitnet,
                 "max_seq_len": suite.train.seq_len}
    return archs.get(spec.arch).build(spec.preset, device=device, dtype=torch.float32, window=spec.window,
                                      **overrides)
