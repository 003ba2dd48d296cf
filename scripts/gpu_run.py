"""The GPU run: the headline figures in one command, within 8 minutes on one H200.

    bash scripts/gpu_run.sh OUT              # on the GPU: installs the carried fla-core wheel, then this
    python scripts/gpu_run.py --dry-run OUT  # anywhere: the plan, with a time estimate per section
    python scripts/gpu_run.py OUT --sections decode,long --budget 200   # a rerun of some sections
    python scripts/gpu_run.py OUT --device cpu --sections decode        # the plumbing, at tiny size

Sections, the most decision-relevant first, each with its own time budget (seconds a section
leaves unused pass on to the next; the run's budget bounds them all):

  smoke    pytest -m gpu_smoke: each CUDA fast path against its reference. A failure stops the run.
  decode   bench/suites/gpu-decode.toml: 3b at a 4K context, bf16, batch 1, four archs (MBU); ours with
           the split-KV decode kernel, then with SDPA's decode.
  profile  scripts/decode_profile.py: one decode step of the 3b transformer at 4K, kernel by kernel,
           with SDPA's decode and with the split-KV kernel.
  prefill  bench/suites/gpu-prefill.toml: 3b at 8K and 32K, four archs (MFU).
  long     bench/suites/gpu-long.toml: both YOCOs 128K-1M (32K is in prefill) and the baseline
           until it stops fitting, under an 80 GB memory cap (growth exponent, the 1M memory figure).
  bitnet   the packed W2A8 kernel against bf16 F.linear at M = 1, K = N = 4096 and 8192
           (tests/benchmarks/test_bitlinear_bench.py), then bench/suites/gpu-bitnet.toml.
  probe    scripts/gpu_probe.py: which SDPA kernel each attention call of sections 1, 2 and 4
           gets, and why torch refused the others.
  tests    (only when named) the whole `python -m pytest`.

Everything is written under one work folder (--work, default a new /tmp/gpu-run-*). OUT receives
at most 4 files, none in a subfolder (a device that returns at most 8 files takes them all):
STATUS.md (what ran, what was cut and why; rewritten as the run goes), targets.txt
(scripts/check_targets.py), gpu-run.log (this driver's log) and gpu-run.tar.gz (the whole work
folder, refreshed every 45 s and after each section, so a run killed at its limit still returns
every finished row). Nothing here writes a figure the harness did not measure.

--dry-run estimates each case from a simple model of the H200 (see `estimate_case_s`): prefill
FLOPs (bench.measure.roofline) at a fraction of 790 TFLOP/s, decode bytes at a fraction of
4.3 TB/s, plus fixed costs per section (imports, ceilings) and per case (process, CUDA context,
building the model, graph capture, compiles). The fractions and fixed costs are guesses made
before any GPU run; the first run's rows (elapsed_s) are what to tune them from.

Exit status: 0 when every section ran or was cut by its budget; 1 when the smoke tests or a
section failed; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the repository's packages come from here
    sys.path.insert(0, str(REPO))

TAR_NAME, STATUS_NAME, TARGETS_NAME, LOG_NAME = "gpu-run.tar.gz", "STATUS.md", "targets.txt", "gpu-run.log"
TAR_EVERY_S = float(os.environ.get("GPU_RUN_TAR_EVERY_S", 45))
TAR_FILE_MAX = 4 << 20  # a bigger file (a runaway log) stays out of the tarball, which must stay under 16 MiB
FINAL_RESERVE_S = 20  # after the last section: targets, plots of a cut section, the last tarball
BUDGET_S = 450  # the whole run; with the machine's start it fits a 540 s device call (README "GPU")

# ---- the H200 and the estimate's guesses ----
MATMUL_FLOPS_S = 790e12  # bf16, measured on the device (.library/device/KINDS.md)
COPY_BYTES_S = 4.3e12  # device copy, bytes read + written
PREFILL_FRACTION = {"transformer": 0.45, "hf-llama": 0.4, "yoco-swa": 0.3, "yoco-gret": 0.25}
GRET_TORCH_FRACTION = 0.08  # the PyTorch chunk form (elementwise-heavy) when fla-core is absent
DECODE_FRACTION = 0.6
DECODE_STEP_FLOOR_S = {"hf-llama": 0.010}  # eager HF: launch-bound (decode_mode graph: one replay per step)
SECTION_START_S = 20  # python -m bench run: imports, the case server, copy and matmul rates, plots at the end
# (18-27 s on the H200: a section's time outside its cases' elapsed_s, results/reference/h200)
CASE_START_S = 4  # fork, CUDA context, meta estimate, building the model on the GPU, calibration
HF_IMPORT_S = 4  # transformers, in the case process
GRAPH_CAPTURE_S = 2
FLEX_COMPILE_S = 15  # FlexAttention's Triton kernel, once per new prompt length (SWA prefill past W)
FLA_S = 5  # fla's Triton kernels: loaded from the cache the smoke tests filled, autotuned per process
SPLIT_KV_S = 2  # the split-KV decode kernels: compiled once per machine (Triton's cache), loaded per process
BITNET_KERNEL_S = 3  # the W2A8 kernel's autotune, per weight shape
PYTEST_START_S = 12  # collection imports torch, transformers, triton, fla


def activation_values_per_token(c) -> int:
    """Prefill activations alive at a block's widest moment, per token, to foresee an
    out-of-memory under a cap: x, its norm, q, k, v, the attention output, three FFN-wide tensors."""
    return 6 * c.d_model + 2 * c.n_kv_heads * c.head_dim + 3 * c.ffn_dim


@dataclasses.dataclass
class Section:
    name: str
    budget_s: int
    title: str
    suite: str | None = None  # the bench suite it runs, if any
    default: bool = True


SECTIONS = [
    Section("smoke", 60, "GPU smoke tests (pytest -m gpu_smoke): each CUDA fast path against its reference"),
    Section("decode", 95, "decode at a 4K context, 3b, bf16, batch 1: transformer, hf-llama, yoco-gret, yoco-swa "
            "(MBU; ours against hf-llama)", "gpu-decode"),
    Section("profile", 30, "one decode step kernel by kernel: transformer 3b 4K, bf16, with SDPA's decode and with "
            "the split-KV kernel (scripts/decode_profile.py: kernel time against the captured step's)"),
    Section("prefill", 75, "prefill at 8K and 32K, 3b, bf16: the same four archs (MFU; ours against hf-llama)",
            "gpu-prefill"),
    Section("long", 115, "long prompts, 3b, under an 80 GB cap: both YOCOs 128K-1M (with section 2's 32K), the "
            "baseline until it stops fitting (growth exponent; the 1M memory figure)", "gpu-long"),
    Section("bitnet", 70, "BitNet: packed W2A8 kernel against bf16 F.linear at M = 1, K = N = 4096 and 8192; one "
            "packed 1.58-bit decode case at 3b", "gpu-bitnet"),
    Section("probe", 15, "which SDPA kernel each attention call of sections decode, prefill and bitnet gets, and "
            "why the others refused (scripts/gpu_probe.py)"),
    Section("tests", 300, "the whole python -m pytest (CUDA tests included)", default=False),
]
BY_NAME = {s.name: s for s in SECTIONS}
BITLINEAR_BENCH = "tests/benchmarks/test_bitlinear_bench.py"
BITLINEAR_SELECT = "cuda and 1.58bit and (M1-K4096 or M1-K8192)"  # it times bf16 F.linear beside each


class UsageError(Exception):
    pass


class Stopped(Exception):
    """SIGTERM (or SIGINT) arrived: stop the section in flight, write what there is, exit."""


# ---- the plumbing mode: the same sections at tiny size on a CPU ----

def shrink_suite(text: str) -> str:
    """A section's suite at CPU-test size, case by case: preset tiny, float32, lengths and prefill chunks / 512
    (at least 32), the window / 16, at most 4 decode steps, eager decode, 2 repeats, one thread, and no split-KV
    decode (its kernel runs on CUDA alone: those cases decode with SDPA, as their twins do). Cases the mapping
    makes equal merge, in the GPU suite's order. For checking this script's plumbing without a GPU: its figures
    are CPU figures and check_targets counts none of them."""
    from bench.suite import parse_suite, tomllib

    meta = tomllib.loads(text).get("suite", {})
    meta.update(devices=["cpu"], repeats=min(2, meta.get("repeats", 2)), threads=1,
                description="plumbing check at tiny size (scripts/gpu_run.py --device cpu): " + meta.get(
                    "description", ""))
    sweeps = []
    for c in parse_suite(text, Path("gpu-suite.toml")).cases:
        point = dict(arch=c.arch, preset="tiny", batch=c.batch, seq_len=max(32, c.seq_len // 512),
                     gen_len=min(c.gen_len, 4), bitnet=c.bitnet, dtype="float32", backend=without_split_kv(c.backend),
                     decode_mode="eager" if c.decode_mode == "graph" else c.decode_mode,  # CUDA graphs: CUDA only
                     prefill_chunk=max(32, c.prefill_chunk // 512) if c.prefill_chunk else "none")
        if c.window is not None:
            point["window"] = max(16, c.window // 16)
        sweeps.append(point)
    return dump_toml({"suite": meta, "sweep": sweeps})


def without_split_kv(backend: str) -> str:
    parts = [p for p in backend.split("+") if p != "splitkv"]
    return "+".join(parts) or "torch"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(data: dict) -> str:
    """The suite grammar's TOML (tables suite and axes, array of tables sweep)."""
    lines = []
    for name in ("suite", "axes"):
        if name in data:
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in data[name].items()]
            lines.append("")
    for sweep in data.get("sweep", []):
        lines.append("[[sweep]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in sweep.items()]
        lines.append("")
    return "\n".join(lines)


# ---- the estimate ----

def estimate_case_s(case, repeats: int, warmup: int, time_budget_s: float | None, fla: bool,
                    seen_lengths: set, cap_bytes: float | None = None) -> tuple[float, str]:
    """(seconds, note) for one case of a section on the H200, from the simple model above."""
    from bench.measure.runner import _meta_model, estimate

    e = estimate(case)
    fixed = CASE_START_S + (HF_IMPORT_S if case.arch == "hf-llama" else 0)
    if "fla" in case.backend.split("+") and not fla:
        return 0.0, "skipped at once: asks for fla, which is absent"
    parts = case.backend.split("+")
    gret_on_fla = case.arch == "yoco-gret" and fla and ("fla" in parts or case.backend == "auto")
    if cap_bytes and e["estimated_bytes"] > cap_bytes:
        return fixed, "skipped at once: weights + cache exceed the cap"
    config = _meta_model(dataclasses.replace(case, arch="transformer" if case.arch == "hf-llama" else case.arch,
                                             backend="torch", batch=1, seq_len=1,
                                             gen_len=max(case.seq_len + case.gen_len, 2) - 1))[0].config
    chunk = getattr(case, "prefill_chunk", None)  # chunked prefill: activations of one chunk at a time
    activations = 2 * activation_values_per_token(config) * min(case.seq_len, chunk or case.seq_len) * case.batch
    likely_oom = bool(cap_bytes and e["estimated_bytes"] + activations > cap_bytes)
    note = f"likely out of memory (~{(e['estimated_bytes'] + activations) / 1e9:.0f} GB)" if likely_oom else ""
    if case.decode_mode == "graph":
        fixed += GRAPH_CAPTURE_S
    if gret_on_fla:
        fixed += FLA_S
    if "splitkv" in parts:
        fixed += SPLIT_KV_S
    if case.arch == "yoco-swa" and case.seq_len > (case.window or 0) and case.seq_len not in seen_lengths:
        fixed += FLEX_COMPILE_S
        seen_lengths.add(case.seq_len)
    if case.bitnet != "none":
        fixed += 5 * BITNET_KERNEL_S  # five weight shapes per model
    fraction = PREFILL_FRACTION.get(case.arch, 0.3)
    if case.arch == "yoco-gret" and not gret_on_fla:
        fraction = GRET_TORCH_FRACTION
    prefill_s = e["prefill_flops"] / (fraction * MATMUL_FLOPS_S)
    if likely_oom:  # it fails in the first layers' activations
        return fixed + prefill_s * 2 / config.n_layers, note
    if time_budget_s:
        repeats = max(1, min(repeats, int(time_budget_s // max(prefill_s, 1e-9))))
    prefills = max(1, warmup - 1) + 1 + repeats  # warm-up (>= 1 call), the memory pass, the timed ones
    decode_bytes = e["weight_bytes"] + e["kv_cache_bytes_formula"]  # an upper bound of a step's reads
    floor = DECODE_STEP_FLOOR_S.get(case.arch, 0.0) if case.decode_mode == "eager" else 0.0
    step_s = max(decode_bytes / (DECODE_FRACTION * COPY_BYTES_S), floor)
    # bench.measure.phases: warm-up (>= 25 ms, >= 2 steps), a memory pass of gen_len steps, then
    # `repeats` samples of whole gen_len-step passes, each sample >= 50 ms
    passes = max(1, math.ceil(0.05 / (case.gen_len * step_s)))
    steps = max(2, warmup, math.ceil(0.025 / step_s)) + case.gen_len + repeats * passes * case.gen_len
    return fixed + prefills * prefill_s + steps * step_s, note


def suite_for(section: Section, device: str, work: Path | None) -> str:
    """The suite a section runs: the built-in file on CUDA, its tiny copy (under work) on CPU."""
    from bench.suite import resolve_suite_path

    path = resolve_suite_path(section.suite)
    if device == "cuda":
        return section.suite
    small = (work or Path("/tmp")) / "suites" / f"{section.suite}-tiny.toml"
    small.parent.mkdir(parents=True, exist_ok=True)
    small.write_text(shrink_suite(path.read_text()))
    return str(small)


def plan_text(sections: list[Section], budget_s: int, fla: bool) -> str:
    """--dry-run: every section's cases with their estimated seconds, against the budgets."""
    from bench.suite import load_suite

    lines = [f"GPU run plan: budget {budget_s} s for the sections (+{FINAL_RESERVE_S} s to finish), "
             f"fla-core {'present' if fla else 'absent (the yoco-gret cases that ask for fla are skipped)'}",
             "estimate: prefill FLOPs / (fraction x 790 TFLOP/s), decode bytes / (0.6 x 4.3 TB/s), "
             f"+ {SECTION_START_S} s per section, {CASE_START_S} s per case, compiles and captures "
             "(scripts/gpu_run.py: the constants at the top)", ""]
    total, carried, left = 0.0, 0.0, float(budget_s)
    for section in sections:
        steps = []  # (what, seconds, note)
        if section.name == "bitnet":
            steps.append(("bitlinear microbenchmark: " + BITLINEAR_SELECT, PYTEST_START_S + 2 * (BITNET_KERNEL_S + 3),
                          ""))
        if section.suite:
            suite = load_suite(section.suite)
            seen: set = set()
            steps.append(("python -m bench run: imports, case server, this machine's rates, plots", SECTION_START_S,
                           ""))
            for case in suite.cases:
                s, note = estimate_case_s(case, suite.repeats, suite.warmup, suite.time_budget_s, fla, seen,
                                          suite.memory_cap_bytes)
                steps.append((case.case_id, s, note))
        elif section.name == "smoke":
            steps.append(("pytest -m gpu_smoke (compiles FlexAttention, fla's and the W2A8 kernels)", 60.0, ""))
        elif section.name == "profile":
            steps.append(("two 3b transformers: prefill 4K, 20 profiled eager steps, 20 captured", 28.0, ""))
        elif section.name == "probe":
            steps.append(("2-layer models of each case: one prefill and one decode step each", 20.0, ""))
        elif section.name == "tests":
            steps.append(("python -m pytest: every test, the CUDA ones included", 240.0, ""))
        limit = min(section.budget_s + carried, left)
        needed = sum(s for _, s, _ in steps)
        used, rows, cut = 0.0, [], 0
        for what, s, note in steps:
            if used + s > limit:
                cut += 1
                note = "WOULD BE CUT" + (f"; {note}" if note else "")
            used = min(limit, used + s)
            rows.append(f"    {what:<70} {s:7.1f} s{'  ' + note if note else ''}")
        verdict = "fits" if not cut else f"OVER by {needed - limit:.0f} s: {cut} step(s) would be cut"
        lines.append(f"{section.name}: ~{needed:.0f} s needed, limit {limit:.0f} s ({section.budget_s} s budget"
                     f"{f' + {carried:.0f} s carried' if carried else ''}): {verdict}")
        lines.append(f"  {section.title}")
        lines += rows
        carried, left = max(0.0, limit - used), left - used
        total += used
    lines.append("")
    lines.append(f"total ~{total:.0f} s of {budget_s} s (+{FINAL_RESERVE_S} s to finish); the machine's start "
                 f"(1-2 min) comes on top, outside the run")
    return "\n".join(lines)


# ---- a run ----

@dataclasses.dataclass
class Outcome:
    section: Section
    state: str = "not started"  # complete | CUT | FAILED | not started | skipped | running
    why: str = ""
    used_s: float = 0.0
    limit_s: float = 0.0
    detail: list[str] = dataclasses.field(default_factory=list)


class Run:
    def __init__(self, out: Path, work: Path, sections: list[Section], budget_s: int, device: str,
                 python: str, smoke: bool):
        self.out, self.work, self.sections = out, work, sections
        self.device, self.python, self.smoke = device, python, smoke
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.budget_s = budget_s
        self.outcomes = [Outcome(s) for s in sections]
        self.notes: list[str] = []
        self.left_out: set[str] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
            "PYTHONUNBUFFERED": "1"}
        self.log_file = open(self.work / LOG_NAME, "a", buffering=1)  # noqa: SIM115 (closed in finish)

    # -- logging, status, tarball --

    def log(self, text: str):
        line = f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {text}"
        print(line, file=sys.stderr, flush=True)
        self.log_file.write(line + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def status_markdown(self) -> str:
        lines = ["# GPU run (scripts/gpu_run.sh)", "",
                 f"- started {self.started_at} on {self.device}, commit {git_commit()}, budget {self.budget_s} s; "
                 f"{self.elapsed():.0f} s elapsed at this writing", *[f"- {n}" for n in self.notes], "",
                 "| section | state | used s | limit s | why |", "|---|---|---|---|---|"]
        for o in self.outcomes:
            lines.append(f"| {o.section.name} | {o.state} | {o.used_s:.0f} | {o.limit_s:.0f} | {o.why} |")
        running = [o for o in self.outcomes if o.state == "running"]
        if running:
            lines += ["", f"**{running[0].section.name} is running.** If this is the last STATUS.md you have, the "
                      "run was killed at its limit during it: that section's finished rows are in the tarball, its "
                      "case in flight is lost."]
        for o in self.outcomes:
            if o.detail:
                lines += ["", f"## {o.section.name}: {o.section.title}", "", *o.detail]
        return "\n".join(lines) + "\n"

    def write_status(self):
        text = self.status_markdown()
        for folder in (self.work, self.out):
            tmp = folder / f".{STATUS_NAME}.tmp"
            tmp.write_text(text)
            os.replace(tmp, folder / STATUS_NAME)

    def tarball(self):
        """The whole work folder as OUT/gpu-run.tar.gz, replaced atomically (a kill mid-write
        leaves the previous one whole)."""
        with self.lock:
            self.write_status()
            tmp = self.out / f".{TAR_NAME}.tmp"
            with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
                tar.add(self.work, arcname="gpu-run", filter=self._tar_filter)
            os.replace(tmp, self.out / TAR_NAME)
            shutil.copyfile(self.work / LOG_NAME, self.out / LOG_NAME)

    def _tar_filter(self, info: tarfile.TarInfo):
        if "__pycache__" in info.name or info.name.endswith(".tmp"):
            return None
        if info.isfile() and info.size > TAR_FILE_MAX and not info.name.endswith((".csv", ".json", ".md")):
            if info.name not in self.left_out:
                self.left_out.add(info.name)
                self.notes.append(f"left out of the tarball (over {TAR_FILE_MAX >> 20} MiB): {info.name}")
            return None
        return info

    def _tar_loop(self):
        while not self.done.wait(TAR_EVERY_S):
            try:
                self.tarball()
            except OSError as e:  # a full disk must not stop the measurements
                self.log(f"warning: tarball not refreshed: {e}")

    # -- running commands --

    def run_command(self, cmd: list[str], log: Path, limit_s: float, extra_env: dict | None = None) -> int | str:
        """cmd in its own process group for at most limit_s: its exit code, or "timeout" (the
        whole group stopped, the harness's case processes included, so none keeps the GPU)."""
        if limit_s <= 0:
            return "timeout"
        self.log(f"$ {' '.join(cmd)}  (at most {limit_s:.0f} s) > {log.relative_to(self.work)}")
        with open(log, "a") as f:
            proc = subprocess.Popen(cmd, cwd=REPO, env={**self.env, **(extra_env or {})}, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
            try:
                _SIGNALS["armed"] = True
                if _SIGNALS["pending"]:
                    raise Stopped(_SIGNALS["pending"])
                return proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                return "timeout"
            except BaseException:  # stopped: take the section's processes down with us
                _stop_group(proc)
                raise
            finally:
                _SIGNALS["armed"] = False

    def section_limit(self, section: Section, carried: float) -> float:
        return min(section.budget_s + carried, self.deadline - time.monotonic())

    # -- the sections --

    def go(self) -> int:
        self.started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.notes.append(device_note())
        self.notes.append(os.environ.get("GPU_RUN_FLA_NOTE") or fla_note())
        env_proc = self.environment()
        self.write_status()
        threading.Thread(target=self._tar_loop, daemon=True).start()
        saved = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
        failed, carried, stopped = False, 0.0, None
        for outcome in self.outcomes:
            stopped = stopped or _SIGNALS["pending"]
            if stopped:
                outcome.state, outcome.why = "not started", f"the run was stopped ({stopped})"
                continue
            section = outcome.section
            limit = self.section_limit(section, carried)
            outcome.limit_s = max(0.0, limit)
            if failed and section.name != "tests":
                outcome.state, outcome.why = "skipped", "the smoke tests failed (see the smoke section)"
                continue
            if limit < 5:
                outcome.state, outcome.why = "not started", f"the run's {self.budget_s} s budget was spent"
                continue
            outcome.state = "running"
            self.write_status()
            t0 = time.monotonic()
            try:
                getattr(self, f"section_{section.name}")(outcome, limit)
            except Stopped as e:
                stopped = str(e)
                outcome.state, outcome.why = "CUT", f"the run was stopped ({stopped}) during this section"
            except Exception as e:  # a bug here must not lose the other sections
                outcome.state, outcome.why = "FAILED", f"{type(e).__name__}: {e}"
            outcome.used_s = time.monotonic() - t0
            carried = max(0.0, limit - outcome.used_s)
            self.log(f"{section.name}: {outcome.state} in {outcome.used_s:.0f} s {outcome.why}")
            if section.name == "smoke" and outcome.state == "FAILED":
                failed = True
            self.tarball()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what is left takes seconds: let it finish
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopped = stopped or _SIGNALS["pending"]
        if stopped:
            _stop_group(env_proc)
        else:
            self.targets()
            try:
                env_proc.wait(timeout=max(1.0, self.deadline + FINAL_RESERVE_S - time.monotonic()))
            except subprocess.TimeoutExpired:
                _stop_group(env_proc)
        code = 143 if stopped else 1 if failed or any(o.state == "FAILED" for o in self.outcomes) else 0
        try:
            return self.finish(code)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def environment(self) -> subprocess.Popen:
        """In the background (it imports every optional backend): GPU, driver, versions."""
        code = ENVIRONMENT_SCRIPT
        f = open(self.logs / "environment.log", "w")  # noqa: SIM115 (the child holds it)
        return subprocess.Popen(["bash", "-c", f"nvidia-smi; {self.python} -c \"$0\"", code], cwd=REPO, env=self.env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)

    def section_smoke(self, outcome: Outcome, limit: float):
        if not self.smoke:
            outcome.state, outcome.why = "skipped", "--no-smoke"
            return
        xml = self.work / "smoke.xml"
        # -v names each test as it passes, so a cut run still says how far it got; one Triton
        # config per kernel (tests/conftest.py): the smoke checks results, autotuning is for timing.
        rc = self.run_command([self.python, "-m", "pytest", *smoke_files(), "-m", "gpu_smoke", "-v", "-rs", "-p",
                               "no:cacheprovider", "--durations=10", f"--junitxml={xml}"], self.logs / "smoke.log",
                              limit, extra_env={"YOCO_TEST_FIRST_TRITON_CONFIG": "1"})
        summary = _last_line(self.logs / "smoke.log")
        if rc == 0:
            outcome.state, outcome.why = "complete", summary
        elif rc == "timeout":
            outcome.state = "CUT"
            passed = (self.logs / "smoke.log").read_text(errors="replace").count(" PASSED")
            outcome.why = (f"did not finish in {limit:.0f} s ({passed} passed before the cut): no verdict, "
                           f"the run goes on (logs/smoke.log)")
        else:
            failed = _failed_tests(xml)
            outcome.state = "FAILED"
            outcome.why = (f"exit {rc}: {summary}. The run STOPS here: a CUDA fast path disagrees with its "
                           f"reference, so its figures would mean nothing (logs/smoke.log)")
            outcome.detail = [f"- failed: `{t}`" for t in failed] or ["- see logs/smoke.log"]

    def run_suite(self, outcome: Outcome, section: Section, limit: float, folder: str):
        out = self.work / folder
        suite = suite_for(section, self.device, self.work)
        log = self.logs / f"{folder.replace('/', '-')}.log"
        planned = planned_cases(suite)
        try:
            rc = self.run_command([self.python, "-m", "bench", "run", "--suite", suite, "--device", self.device,
                                   "--out", str(out)], log, limit)
        except Stopped:
            outcome.detail += case_lines(rows_done(out))
            raise
        done = rows_done(out)
        missing = [c for c in planned if c not in {r["case_id"] for r in done}]
        if rc == "timeout":
            if done:
                self.finish_partial(out, limit)
            outcome.state = "CUT"
            outcome.why = (f"stopped by its {limit:.0f} s limit after {len(done)} of {len(planned)} cases; resume "
                           f"with python -m bench run --resume {folder}")
        elif rc != 0:
            outcome.state, outcome.why = "FAILED", f"exit {rc} after {len(done)} of {len(planned)} cases " \
                                                   f"(logs/{log.name})"
        else:
            outcome.state, outcome.why = "complete", f"{len(done)} case{'s' if len(done) != 1 else ''}"
        outcome.detail += case_lines(done) + [f"- not run: `{c}`" for c in missing]

    def finish_partial(self, out: Path, limit: float):
        """Plots and summary.md from the rows a stopped run left."""
        code = ("import json, sys; from pathlib import Path; from bench.run import finish; "
                "d = Path(sys.argv[1]); finish(d, json.loads((d / 'env.json').read_text()), quiet=True)")
        self.run_command([self.python, "-c", code, str(out)], self.logs / "finish.log",
                         min(30.0, self.deadline + FINAL_RESERVE_S - time.monotonic()))

    def section_decode(self, outcome, limit):
        self.run_suite(outcome, outcome.section, limit, "decode")

    def section_profile(self, outcome, limit):
        # On a CPU (plumbing): tiny, float32, SDPA only (the split-KV kernel runs on CUDA alone).
        small = [] if self.device == "cuda" else ["--preset", "tiny", "--seq-len", "256", "--dtype", "float32",
                                                  "--steps", "4", "--backend", "torch"]
        rc = self.run_command([self.python, "scripts/decode_profile.py", str(self.work / "profile"), "--device",
                               self.device, *small], self.logs / "profile.log", limit)
        outcome.state = {0: "complete", "timeout": "CUT"}.get(rc, "FAILED")
        outcome.why = {0: "profile/decode-profile.md", "timeout": f"stopped by its {limit:.0f} s limit (what "
                       f"finished is in profile/)"}.get(rc, f"exit {rc} (logs/profile.log)")
        log = (self.logs / "profile.log").read_text(errors="replace").splitlines()
        outcome.detail += [f"- {line}" for line in log if ": graph " in line]

    def section_prefill(self, outcome, limit):
        self.run_suite(outcome, outcome.section, limit, "prefill")

    def section_long(self, outcome, limit):
        self.run_suite(outcome, outcome.section, limit, "long")

    def section_bitnet(self, outcome, limit):
        t0 = time.monotonic()
        (self.work / "bitnet").mkdir(exist_ok=True)
        report = self.work / "bitnet" / "bitlinear-bench.json"
        cmd = [self.python, "-m", "pytest", BITLINEAR_BENCH, "-q", "-s", "-p", "no:cacheprovider",
               f"--benchmark-json={report}"]
        # On CUDA: timed, at the target's shapes. On a CPU (plumbing): the untimed smoke call.
        cmd += ["--benchmark-enable", "-k", BITLINEAR_SELECT] if self.device == "cuda" else ["-k", "cpu and 1.58bit"]
        rc = self.run_command(cmd, self.logs / "bitlinear-bench.log", min(limit, 0.5 * limit + 15))
        micro = f"microbenchmark: {'stopped by its limit' if rc == 'timeout' else f'exit {rc}'}"
        outcome.detail += [f"- {line}" for line in bitlinear_lines(report)] or [f"- {micro}: no figures"]
        self.run_suite(outcome, outcome.section, limit - (time.monotonic() - t0), "bitnet/run")
        if rc != 0 and outcome.state == "complete":
            outcome.state, outcome.why = ("CUT" if rc == "timeout" else "FAILED"), f"{micro}; " + outcome.why

    def section_probe(self, outcome, limit):
        suites = [suite_for(BY_NAME[n], self.device, self.work) for n in ("decode", "prefill", "bitnet")]
        rc = self.run_command([self.python, "scripts/gpu_probe.py", "--device", self.device, "--suites",
                               ",".join(suites), "--json", str(self.work / "probe.json")],
                              self.logs / "probe.log", limit)
        shutil.copyfile(self.logs / "probe.log", self.work / "probe.txt")
        outcome.state = {0: "complete", "timeout": "CUT"}.get(rc, "FAILED")
        outcome.why = {0: "probe.txt", "timeout": f"stopped by its {limit:.0f} s limit (probe.txt has what it "
                                                   f"printed)"}.get(rc, f"exit {rc} (probe.txt)")

    def section_tests(self, outcome, limit):
        rc = self.run_command([self.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                               f"--junitxml={self.work / 'tests.xml'}"], self.logs / "tests.log", limit)
        summary = _last_line(self.logs / "tests.log")
        outcome.state = {0: "complete", "timeout": "CUT"}.get(rc, "FAILED")
        outcome.why = summary if rc != "timeout" else f"stopped by its {limit:.0f} s limit"
        outcome.detail = [f"- failed: `{t}`" for t in _failed_tests(self.work / "tests.xml")]

    def targets(self):
        runs = [d for d in (self.work / "decode", self.work / "prefill", self.work / "long",
                            self.work / "bitnet" / "run") if (d / "results.csv").is_file()]
        if not runs:
            self.notes.append("targets: not checked (no section produced rows)")
            return
        cmd = [self.python, "scripts/check_targets.py", *map(str, runs), "--json", str(self.work / "targets.json")]
        report = self.work / "bitnet" / "bitlinear-bench.json"
        if report.is_file():
            cmd += ["--bitlinear-json", str(report)]
        if self.device != "cuda":
            cmd.append("--any-device")
        with open(self.work / TARGETS_NAME, "w") as f:
            rc = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT, timeout=60).returncode
        shutil.copyfile(self.work / TARGETS_NAME, self.out / TARGETS_NAME)
        self.notes.append(f"targets ({TARGETS_NAME}, exit {rc}): {_last_line(self.work / TARGETS_NAME)}")

    def finish(self, code: int) -> int:
        self.done.set()
        self.notes.append(f"finished after {self.elapsed():.0f} s, exit {code}")
        self.log(f"done in {self.elapsed():.0f} s: {self.out / STATUS_NAME}")
        self.tarball()
        self.log_file.close()
        shutil.copyfile(self.work / LOG_NAME, self.out / LOG_NAME)
        return code


ENVIRONMENT_SCRIPT = r"""
import importlib.metadata as md, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(0), f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}")
from yoco import backends
print("optional backends", backends.detect())
from baselines import hf_llama
print("hf-llama (transformers) available:", hf_llama.available())
for dist in ("transformers", "triton", "fla-core", "einops", "pytest", "pytest-benchmark", "numpy", "pandas",
             "matplotlib", "nvidia-ml-py"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
"""


_SIGNALS = {"armed": False, "pending": None}  # raise at once only while waiting on a section's command


def _raise_stopped(signum, frame):
    _SIGNALS["pending"] = signal.Signals(signum).name
    if _SIGNALS["armed"]:
        raise Stopped(_SIGNALS["pending"])


def _die_with_parent():
    """In a section's process (its own group, so a time-out can stop all of it): killed when
    this driver dies, even by SIGKILL, so no section outlives a killed run (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_group(proc: subprocess.Popen):
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _failed_tests(xml: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return []
    return [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None]


def smoke_files() -> list[str]:
    """The test files that hold gpu_smoke tests: collecting only those saves importing the rest."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "gpu_smoke" in p.read_text())


def device_note() -> str:
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        text = ""
    return f"GPU: {text}" if text else "GPU: none seen by nvidia-smi"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def fla_expected() -> bool:
    """fla-core importable here, or its wheel carried under .whl/ (gpu_run.sh installs it)."""
    import importlib.util

    return importlib.util.find_spec("fla") is not None or any((REPO / ".whl").glob("fla_core-*.whl"))


def fla_note() -> str:
    import importlib.util

    if importlib.util.find_spec("fla") is None:
        return "fla-core: not importable (no wheel under .whl/?): the yoco-gret cases that ask for fla are skipped"
    import importlib.metadata

    try:
        return f"fla-core {importlib.metadata.version('fla-core')}: importable"
    except importlib.metadata.PackageNotFoundError:
        return "fla-core: importable (version unknown)"


def rows_done(run_dir: Path) -> list[dict]:
    import csv

    path = run_dir / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("case_id")]


def planned_cases(suite: str) -> list[str]:
    from bench.suite import load_suite

    return [c.case_id for c in load_suite(suite).cases]


def gret_form(row: dict) -> str:
    """Which gated-retention code a yoco-gret row ran, from what its warm-up called."""
    kernels = row.get("attention_kernels", "")
    if "gRet fla" in kernels:
        return "fla-core kernels"
    if "gRet torch" in kernels:
        return "PyTorch chunk form (no fla)"
    return f"not recorded (backend {row.get('backend')}, used {row.get('backend_used') or '?'})"


def case_lines(rows: list[dict]) -> list[str]:
    """One line per finished case for STATUS.md: status, the headline figure, kernels used."""
    out = []
    for r in rows:
        figures = []
        for key, fmt in (("prefill_ms", "prefill {:.4g} ms"), ("decode_ms_per_step", "decode {:.4g} ms/step"),
                         ("prefill_mfu", "MFU {:.3f}"), ("decode_mbu", "MBU {:.3f}")):
            try:
                value = float(r.get(key) or "nan")
            except ValueError:
                continue
            if not math.isnan(value):
                figures.append(fmt.format(value))
        line = f"- `{r['case_id']}`: {r.get('status')} ({float(r.get('elapsed_s') or 0):.0f} s)"
        if figures:
            line += ": " + ", ".join(figures)
        if r.get("error"):
            line += f"; {r['error'][:160]}"
        if r.get("arch") == "yoco-gret":
            line += f"; gRet: {gret_form(r)}"
        if r.get("attention_kernels"):
            line += f"; kernels: {r['attention_kernels'][:300]}"
        out.append(line)
    return out


def bitlinear_lines(report: Path) -> list[str]:
    """The microbenchmark's figures, from pytest-benchmark's JSON (nothing where it has none)."""
    try:
        data = json.loads(report.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    lines = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "speedup_vs_bf16" in info:
            lines.append(f"{b['name']}: {info['us_per_call']:.2f} us/call against bf16 F.linear "
                         f"{info['bf16_linear_us']:.2f} us: {info['speedup_vs_bf16']:.2f}x, "
                         f"{info['packed_GBps']:.0f} GB/s of packed weights")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_run.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder: at most 4 files land here")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with a time estimate; run nothing")
    parser.add_argument("--sections", default=None,
                        help=f"comma list of {', '.join(BY_NAME)} (default: all but tests, in that order)")
    parser.add_argument("--budget", type=int, default=int(os.environ.get("GPU_RUN_BUDGET_S", BUDGET_S)),
                        help=f"seconds for all sections (default {BUDGET_S}; env GPU_RUN_BUDGET_S)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=os.environ.get("GPU_RUN_DEVICE", "cuda"),
                        help="cpu: the same plumbing at tiny size, for checking this script without a GPU")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new /tmp/gpu-run-*)")
    parser.add_argument("--no-smoke", action="store_true",
                        help="run the sections even without (or after failed) smoke tests")
    parser.add_argument("--python", default=os.environ.get("PYTHON", sys.executable))
    try:
        args = parser.parse_args(argv)
        sections = select_sections(args.sections)
        if args.budget < 1:
            raise UsageError(f"--budget must be >= 1 second, got {args.budget}")
        if args.dry_run:
            print(plan_text(sections, args.budget, fla_expected()))
            return 0
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UsageError("no CUDA GPU visible: nothing to measure (--device cpu checks the plumbing)")
        out = prepare_out(args.out)
        work = args.work or Path(tempfile_dir())
        work.mkdir(parents=True, exist_ok=True)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = Run(out, work, sections, args.budget, args.device, args.python, smoke=not args.no_smoke)
    run.log(f"work folder {work}; output {out}")
    return run.go()


def select_sections(text: str | None) -> list[Section]:
    if not text:
        return [s for s in SECTIONS if s.default]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise UsageError(f"unknown section {unknown[0] if unknown else text!r}: valid sections are "
                         f"{', '.join(BY_NAME)}")
    return [s for s in SECTIONS if s.name in names]  # always in the run's order


def prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create OUT {out}: {e.strerror or e}") from None
    if (out / TAR_NAME).exists() or (out / STATUS_NAME).exists():
        raise UsageError(f"OUT {out} already holds a run: give an empty folder")
    return out.resolve()


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="gpu-run-")


if __name__ == "__main__":
    raise SystemExit(main())
