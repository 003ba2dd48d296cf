"""Suites: a TOML file expands to a list of cases (a cartesian product of axis values per sweep).

Grammar (the built-in suites in bench/suites/ use the same one as a user's own file):

    [suite]
    description = "one line"
    devices = ["cpu", "cuda"]        # optional: where a real run is allowed
    repeats = 5                      # timed repeats per phase (after warm-up)
    warmup = 1
    threads = 1                      # optional: CPU threads per case (default: torch's, all cores)
    time_budget_s = 120              # optional: per phase; very long prompts get fewer repeats (>= 1)
    memory_cap_gb = 80               # optional: on CUDA each case's allocator may hold at most 80e9 bytes;
                                     # batch = "max" fits under it (default: the device's memory)
    arch_modules = ["my_archs"]      # optional: modules (or .py paths) that register archs (bench.archs)

    [axes]                           # defaults shared by every sweep
    arch = ["yoco-gret", "yoco-swa", "transformer"]
    preset = ["tiny"]
    seq_len = [128, 256]
    decode_mode = ["graph"]          # eager (default) | graph (CUDA graph capture, CUDA only) | compile

    [[sweep]]                        # optional; each sweep overrides some axes of [axes]
    seq_len = [512]
    exclude = [{arch = "transformer"}]   # drop cases matching every key of one entry

Without [[sweep]], [axes] is the one sweep. Axes not given take AXIS_DEFAULTS. Archs come from
bench.archs. The window only applies to windowed archs (yoco-swa) and the self-decoder only to
YOCO, so other archs get window = None and the duplicates that leaves are merged. Archs without
BitNet layers (hf-llama, HF transformers' Llama) keep only their bitnet = "none" combinations.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import archs
from yoco.config import BACKEND_PARTS, BITNET_MODES, PRESETS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent / "suites"
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")

AXIS_DEFAULTS = dict(arch="yoco-gret", preset="tiny", batch=1, seq_len=128, gen_len=16, window=64,
                     bitnet="none", dtype="float32", backend="torch", decode_mode="eager")
# How the decode step runs (bench.measure.decoding): eager, graph (CUDA graph capture: the GPU
# suites' choice) or compile (torch.compile). The word each puts in the case id: "eager" and
# "compiled" as before this axis replaced the boolean `compile`.
DECODE_MODES = {"eager": "eager", "graph": "graph", "compile": "compiled"}
AXES = tuple(AXIS_DEFAULTS)
SUITE_KEYS = ("description", "devices", "repeats", "warmup", "threads", "time_budget_s", "arch_modules",
              "memory_cap_gb")


# batch = "max": the largest batch that fits under the suite's memory cap (bench.measure.max_batch).
MAX_BATCH = "max"


class UsageError(Exception):
    """A mistake in what the user asked for: the CLI prints it and exits 2."""


@dataclass(frozen=True)
class Case:
    arch: str
    preset: str
    batch: int | str  # or MAX_BATCH
    seq_len: int
    gen_len: int
    window: int | None
    bitnet: str
    dtype: str
    backend: str
    decode_mode: str

    @property
    def case_id(self) -> str:
        """Stable across machines and commits: built from the axis values only."""
        window = f"w{self.window}" if self.window is not None else "wna"
        mode = DECODE_MODES[self.decode_mode]
        return (f"{self.arch}-{self.preset}-b{self.batch}-s{self.seq_len}-g{self.gen_len}-{window}-"
                f"{self.bitnet}-{self.dtype}-{self.backend}-{mode}")

    @property
    def self_decoder(self) -> str | None:
        return self.arch.removeprefix("yoco-") if self.arch.startswith("yoco-") else None

    def axes(self) -> dict:
        return asdict(self)


@dataclass
class Suite:
    name: str
    path: Path
    cases: list[Case]
    description: str = ""
    devices: tuple[str, ...] = DEVICES
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None
    time_budget_s: float | None = None
    arch_modules: tuple[str, ...] = ()
    memory_cap_gb: float | None = None  # CUDA: a real per-process cap (bench.measure.trackers.cap_memory)
    text: str = field(default="", repr=False)

    @property
    def memory_cap_bytes(self) -> float | None:
        return None if self.memory_cap_gb is None else self.memory_cap_gb * 1e9


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def resolve_suite_path(name_or_path: str) -> Path:
    """A built-in suite name or a path to a .toml file."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"suite file {name_or_path} does not exist")
        return path
    path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UsageError(f"unknown suite {name_or_path!r}: valid suites are {', '.join(suite_names())} "
                         f"or a path to a .toml file")
    return path


def load_suite(name_or_path: str, arch_modules=()) -> Suite:
    path = resolve_suite_path(name_or_path)
    text = path.read_text()
    return parse_suite(text, path, arch_modules)


def load_arch_modules(modules, where: str) -> tuple[str, ...]:
    """Import users' arch modules (bench.archs.load_modules); a failure is a usage error."""
    if not isinstance(modules, list | tuple) or not all(isinstance(m, str) and m for m in modules):
        raise UsageError(f"{where}: arch_modules must be a list of module names or .py paths, got {modules!r}")
    try:
        archs.load_modules(modules)
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    return tuple(modules)


def parse_suite(text: str, path: Path, arch_modules=()) -> Suite:
    """Parse a suite; `arch_modules` (from the command line) are imported before the suite's own."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message carries "(at line L, column C)"
        raise UsageError(f"syntax error in suite file {path}: {e}") from None
    unknown = set(data) - {"suite", "axes", "sweep"}
    if unknown:
        raise UsageError(f"{path}: unknown table(s) {sorted(unknown)}: valid tables are [suite], [axes], [[sweep]]")
    meta = data.get("suite", {})
    bad = set(meta) - set(SUITE_KEYS)
    if bad:
        raise UsageError(f"{path}: unknown [suite] key(s) {sorted(bad)}: valid keys are {', '.join(SUITE_KEYS)}")
    devices = tuple(meta.get("devices", DEVICES))
    for d in devices:
        _check(path, "devices", d, DEVICES)
    repeats, warmup = meta.get("repeats", 5), meta.get("warmup", 1)
    if not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"{path}: [suite] repeats must be an integer >= 1, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise UsageError(f"{path}: [suite] warmup must be an integer >= 0, got {warmup!r}")
    budget = meta.get("time_budget_s")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0):
        raise UsageError(f"{path}: [suite] time_budget_s must be a number > 0, got {budget!r}")
    cap = meta.get("memory_cap_gb")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0):
        raise UsageError(f"{path}: [suite] memory_cap_gb must be a number of GB (1e9 bytes) > 0, got {cap!r}")
    threads = meta.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"{path}: [suite] threads must be an integer >= 1, got {threads!r}")
    modules = load_arch_modules(list(arch_modules), "--arch-module")
    modules += load_arch_modules(meta.get("arch_modules", []), f"{path}: [suite] arch_modules")

    base = data.get("axes", {})
    sweeps = data.get("sweep", [{}])
    cases: dict[str, Case] = {}
    for sweep in sweeps:
        axes = {**base, **sweep}
        excludes = axes.pop("exclude", [])
        for case in _expand(path, axes, excludes):
            cases.setdefault(case.case_id, case)
    if not cases:
        raise UsageError(f"{path}: the suite expands to no cases")
    return Suite(name=path.stem, path=path, cases=list(cases.values()), description=meta.get("description", ""),
                 devices=devices, repeats=repeats, warmup=warmup, threads=threads, time_budget_s=budget,
                 arch_modules=modules, memory_cap_gb=cap, text=text)


def _expand(path: Path, axes: dict, excludes: list) -> list[Case]:
    if "compile" in axes:
        raise UsageError(f"{path}: axis 'compile' is now decode_mode: compile = true is decode_mode = \"compile\" "
                         f"(valid modes are {', '.join(DECODE_MODES)})")
    unknown = set(axes) - set(AXES)
    if unknown:
        raise UsageError(f"{path}: unknown axis {sorted(unknown)[0]!r}: valid axes are {', '.join(AXES)}")
    values = {}
    for name in AXES:
        v = axes.get(name, AXIS_DEFAULTS[name])
        values[name] = [_validate(path, name, x) for x in (v if isinstance(v, list) else [v])]
        if not values[name]:
            raise UsageError(f"{path}: axis {name!r} has no values")
    if MAX_BATCH in values["batch"] and len(values["batch"]) > 1:
        raise UsageError(f"{path}: batch = \"{MAX_BATCH}\" finds the batch itself: it cannot be swept with other "
                         f"batch values, got {values['batch']!r}")
    if not isinstance(excludes, list) or not all(isinstance(e, dict) for e in excludes):
        raise UsageError(f"{path}: exclude must be a list of tables like {{arch = \"transformer\"}}")
    for e in excludes:
        if set(e) - set(AXES):
            raise UsageError(f"{path}: exclude names unknown axis {sorted(set(e) - set(AXES))[0]!r}: "
                             f"valid axes are {', '.join(AXES)}")
    # arch varies fastest: the archs of one point run back to back, so a burst of load from
    # elsewhere on the machine hits them alike instead of bending one arch's whole curve.
    order = [n for n in AXES if n != "arch"] + ["arch"]
    cases = []
    for combo in itertools.product(*(values[n] for n in order)):
        point = dict(zip(order, combo, strict=True))
        if any(_matches(point, e) for e in excludes):
            continue
        arch = archs.get(point["arch"])
        if not arch.windowed:
            point["window"] = None
        if not arch.bitnet and point["bitnet"] != "none":
            continue
        cases.append(Case(**point))
    return cases


def _matches(point: dict, exclude: dict) -> bool:
    for name, v in exclude.items():
        allowed = v if isinstance(v, list) else [v]
        if point[name] not in allowed:
            return False
    return True


def _check(path, name, value, allowed):
    if value not in allowed:
        raise UsageError(f"{path}: unknown {name} value {value!r}: valid values are {', '.join(map(str, allowed))}")


def _validate(path: Path, name: str, value):
    if name == "arch":
        _check(path, name, value, tuple(archs.ARCHS))
    elif name == "preset":
        _check(path, name, value, tuple(PRESETS))
    elif name == "bitnet":
        _check(path, name, value, BITNET_MODES)
    elif name == "dtype":
        _check(path, name, value, DTYPES)
    elif name == "backend":
        if not isinstance(value, str):
            raise UsageError(f"{path}: backend must be a string like 'torch' or 'fla+flash_attn', got {value!r}")
        for part in value.split("+"):
            if part not in BACKEND_PARTS:
                raise UsageError(f"{path}: unknown backend part {part!r} in {value!r}: "
                                 f"valid parts are {', '.join(BACKEND_PARTS)}")
    elif name == "decode_mode":
        _check(path, name, value, tuple(DECODE_MODES))
    elif name == "batch" and value == MAX_BATCH:
        pass
    elif name in ("batch", "seq_len", "gen_len", "window"):
        if name == "batch" and isinstance(value, str):
            raise UsageError(f"{path}: batch values must be integers >= 1 or \"{MAX_BATCH}\", got {value!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{path}: {name} values must be integers >= 1, got {value!r}")
    return value


def check_archs_usable(cases: list[Case]):
    """An arch whose package is missing (hf-llama without transformers): a usage error for a real run."""
    for name in dict.fromkeys(c.arch for c in cases):
        reason = archs.get(name).unusable()
        if reason:
            raise UsageError(f"{reason}, or drop it from the suite")


def check_decode_modes_usable(cases: list[Case], device: str):
    """decode_mode "graph" captures CUDA graphs: a usage error for a real run on another device."""
    graph = [c for c in cases if c.decode_mode == "graph"]
    if graph and device != "cuda":
        raise UsageError(f"decode_mode 'graph' (case {graph[0].case_id}) captures CUDA graphs: it needs --device "
                         f"cuda; on {device} use eager or compile")


def optional_parts(cases: list[Case]) -> set[str]:
    return {p for c in cases for p in c.backend.split("+")} - {"torch", "auto"}


def backend_unusable(case: Case, device: str, present: dict[str, str | None]) -> str | None:
    """Why the optional backend parts a case asks for by name cannot run here (they run only on
    CUDA and only where they import), or None. Such a case is recorded as skipped, never run on
    another backend; the rest of the suite runs."""
    for part in case.backend.split("+"):
        if part in ("torch", "auto"):
            continue
        if device != "cuda":
            return f"backend {case.backend!r} needs --device cuda; on {device} only 'torch' (or 'auto') runs"
        if not present.get(part):
            usable = "".join(", " + k for k, v in present.items() if v and k != "triton")
            return f"backend part {part!r} is not installed here (usable: auto, torch{usable})"
    return None


def select(cases: list[Case], only: list[str] | None = None, shard: tuple[int, int] | None = None) -> list[Case]:
    """--only keeps the named case ids; --shard I/N keeps every N-th case starting at the I-th."""
    if only:
        known = {c.case_id for c in cases}
        missing = [c for c in only if c not in known]
        if missing:
            raise UsageError(f"--only names case id {missing[0]!r}, which the suite does not have "
                             f"(see `python -m bench run --suite NAME --dry-run`)")
        cases = [c for c in cases if c.case_id in set(only)]
    if shard:
        i, n = shard
        cases = cases[i - 1::n]
    return cases


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"bad --shard {text!r}: expected I/N with 1 <= I <= N, e.g. 1/2") from None
    if not 1 <= i <= n:
        raise UsageError(f"bad --shard {text!r}: expected I/N with 1 <= I <= N, e.g. 1/2")
    return i, n
