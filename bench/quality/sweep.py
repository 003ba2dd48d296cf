"""A quality run: each model of the suite trained (resumable from its checkpoint), evaluated at
every task point, its rows appended and flushed to quality.csv; then plots and summary.md.

Run directory:
    suite.toml, env.json          what was run, where, at which commit
    quality.csv                   one row per model x task point (bench.show.columns.QUALITY)
    checkpoints/<model_id>.pt     weights (+ optimizer while unfinished): a killed run resumes here
    plots/*.png, summary.md       from quality.csv alone (`python -m bench quality --plot DIR`)
"""

from __future__ import annotations

import copy
import csv
import datetime
import json
import math
import os
import platform
import signal
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from bench.quality import tasks
from bench.quality.suite import ModelSpec, QualitySuite, build
from bench.quality.train import Checkpoint, TrainResult, correct_answers, progress_bar, train
from bench.show import columns

COLUMNS = columns.QUALITY_NAMES
EVAL_BATCH = 64
# Testing hook: "MODEL_ID_PART:STEP" SIGKILLs this process right after that model's checkpoint
# at STEP is written (a kill at the worst moment, repeatably).
KILL_ENV = "YOCO_BENCH_QUALITY_KILL"


def add_arguments(p):
    p.add_argument("--suite", default="default", help="a quality suite name (bench/quality/suites: "
                   "default, smoke) or a .toml file with a [quality] table (default: default)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default results/runs/quality-<suite>-<time>)")
    p.add_argument("--resume", type=Path, default=None,
                   help="finish the run in this directory: finished models are kept, a model in training "
                        "continues from its last checkpoint")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for training (default: the suite's, else all cores); fixed for a run")
    p.add_argument("--jobs", type=int, default=None,
                   help="models trained at once, each in its own process with --threads threads (default: the "
                        "suite's, else 1); the results do not depend on it")
    p.add_argument("--dry-run", action="store_true", help="list the models with parameters and cache bytes")
    p.add_argument("--arch-module", action="append", default=[], metavar="MODULE",
                   help="a module (dotted name or .py path) that registers archs (see bench/archs.py); repeatable")


def main(args) -> int:
    """`python -m bench quality`: usage errors (UsageError) are raised before anything is written."""
    from bench import cli
    from bench.quality import suite as suites
    from bench.suite import UsageError

    for name in ("threads", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be an integer >= 1, got {value}")
    if args.resume is not None:
        if args.out is not None:
            raise UsageError("give either --out or --resume, not both")
        run_dir = args.resume
        if not ((run_dir / "env.json").is_file() and (run_dir / "suite.toml").is_file()):
            raise UsageError(f"--resume {run_dir}: not a quality run directory (needs env.json and suite.toml)")
        env = json.loads((run_dir / "env.json").read_text())
        if args.threads is not None and args.threads != env["threads"]:
            raise UsageError(f"--resume {run_dir}: the run trains with {env['threads']} threads (results repeat "
                             f"bitwise only with the same count), not {args.threads}")
        suite = suites.parse((run_dir / "suite.toml").read_text(), run_dir / "suite.toml",
                             args.arch_module or env.get("arch_modules_cli", []))
        suite.name = env.get("suite", suite.name)
    else:
        suite = suites.load(args.suite, args.arch_module)
    if args.dry_run:
        return dry_run(suite)
    if args.resume is None:
        out = args.out or _default_out(suite.name)
        if out.exists() and (out / "quality.csv").exists():
            raise UsageError(f"--out {out} already holds a quality run: use --resume {out} to finish it, "
                             f"or another --out")
        cli._check_writable_dir(out)
    else:
        out = args.resume
    return execute(suite, out, resumed=args.resume is not None, threads=args.threads, jobs=args.jobs,
                   arch_modules_cli=args.arch_module)


def _default_out(name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results/runs") / f"quality-{name}-{stamp}"


def dry_run(suite: QualitySuite) -> int:
    t = suite.train
    print(f"quality suite {suite.name} ({suite.path}): {len(suite.models)} models, {t.steps} steps of batch "
          f"{t.batch_size} at seq_len {t.seq_len}, tasks {', '.join(t.tasks)}; evaluation points: "
          + ", ".join(f"{task} {point}" for task, point in suite.points()))
    print(f"{'model_id':<40} {'params':>10} {'kv cache at seq_len':>20}")
    for spec in suite.models:
        model = build(suite, spec, device="meta")
        print(f"{spec.model_id:<40} {model.num_parameters():>10,} {model.kv_cache_bytes(1, t.seq_len):>18,} B")
    return 0


def execute(suite: QualitySuite, out: Path, resumed: bool, threads: int | None, jobs: int | None = None,
            arch_modules_cli=()) -> int:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "quality.csv"
    if resumed:
        env = json.loads((out / "env.json").read_text())
        threads = env["threads"]
        jobs = jobs or env.get("jobs", 1)
    else:
        (out / "suite.toml").write_text(suite.text)
        threads = threads or suite.threads or torch.get_num_threads()
        jobs = jobs or suite.jobs
        env = environment(suite, threads)
        env.update(jobs=jobs, arch_modules_cli=list(arch_modules_cli))
        (out / "env.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
    done = repair(csv_path)
    todo = [s for s in suite.models if s.model_id not in done]
    jobs = max(1, min(jobs, len(todo)))
    print(f"quality {suite.name}: {len(todo)} of {len(suite.models)} models to train on cpu "
          f"({jobs} at a time, {threads} thread{'s' * (threads > 1)} each) -> {out}", file=sys.stderr)
    labels = {s.model_id: f"[{i}/{len(todo)}] {s.model_id}" for i, s in enumerate(todo, 1)}
    try:
        if jobs == 1:
            torch.set_num_threads(threads)
            for spec in todo:
                append_rows(csv_path, run_model(suite, spec, out, labels[spec.model_id]))
        else:
            _run_parallel(suite, todo, out, labels, threads, jobs, csv_path)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finish with `python -m bench quality --resume {out}`", file=sys.stderr)
        return 130
    except BrokenProcessPool:
        print(f"\na training process died (killed?): the finished models are in {csv_path}; finish with "
              f"`python -m bench quality --resume {out}`", file=sys.stderr)
        return 1
    finish(out)
    return 0


def _run_parallel(suite, todo, out, labels, threads, jobs, csv_path):
    """Each model in a worker process (spawned: no inherited OpenMP state); rows are appended in
    the order models finish. Each worker holds one progress-bar line."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for slot in range(jobs):
        slots.put(slot)
    lock = ctx.RLock()
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, suite.arch_modules, slots, lock)) as pool:
        tqdm.set_lock(lock)
        futures = [pool.submit(run_model, suite, spec, out, labels[spec.model_id]) for spec in todo]
        try:
            for future in as_completed(futures):
                append_rows(csv_path, future.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


_SLOT = 0  # a worker's progress-bar line


def _worker_init(threads: int, arch_modules, slots, lock):
    global _SLOT
    from tqdm import tqdm

    from bench import archs

    torch.set_num_threads(threads)
    archs.load_modules(arch_modules)
    tqdm.set_lock(lock)
    _SLOT = slots.get()


def run_model(suite: QualitySuite, spec: ModelSpec, out: Path, label: str) -> list[dict]:
    """Train one model (from its checkpoint when there is one) and evaluate it at every point."""
    config = suite.train
    torch.manual_seed(config.seed)  # the same initial weights for a spec whatever runs before it
    model = build(suite, spec)
    identity = dict(spec=spec.model_id, train=config.as_dict(), model=suite.model_overrides)
    checkpoint = Checkpoint(out / "checkpoints" / f"{spec.model_id}.pt", identity)
    saved = checkpoint.load()
    start = saved["step"] if saved else 0
    bar, update = progress_bar(config.steps, start, label, position=_SLOT)
    kill = _kill_hook(spec)
    try:
        result = train(model, config, checkpoint, progress=update, after_checkpoint=kill)
    finally:
        bar.close()
    return evaluate(suite, spec, model, result)


def evaluate(suite: QualitySuite, spec: ModelSpec, model, result: TrainResult) -> list[dict]:
    config = suite.train
    c = model.config
    window = getattr(c, "window", None) if spec.window is not None else None
    reach = c.n_layers * (window - 1) + 1 if spec.arch == "transformer-swa" else None
    base = dict(model_id=spec.model_id, arch=spec.arch, preset=spec.preset, window=spec.window, bitnet=spec.bitnet,
                d_model=c.d_model, n_layers=c.n_layers, seq_len=config.seq_len,
                receptive_field=reach, chance=config.vocab.chance,
                kv_cache_bytes=model.kv_cache_bytes(1, config.seq_len), params=model.num_parameters(),
                weight_bytes=_inference_weight_bytes(model, spec.bitnet), train_steps=result.steps,
                train_seconds=round(result.seconds, 2), final_loss=result.final_loss)
    rows = []
    for task, point in suite.points():
        correct = asked = 0
        for start in range(0, suite.eval_examples, EVAL_BATCH):
            n = min(EVAL_BATCH, suite.eval_examples - start)
            seed = tasks.eval_seed(config.seed, task, point) + start
            if task == "mqar":
                batch = tasks.mqar(seed, n, config.seq_len, point, config.vocab)
            else:
                batch = tasks.needle(seed, n, config.seq_len, point, config.vocab)
            right, total = correct_answers(model, batch)
            correct, asked = correct + right, asked + total
        rows.append({**base, "task": task, "pairs": point if task == "mqar" else None,
                     "distance": point if task == "needle" else None, "accuracy": correct / asked, "answers": asked})
    return rows


def _inference_weight_bytes(model, bitnet: str) -> int:
    """Weights as stored for inference: BitNet layers packed (the model itself stays as trained)."""
    if bitnet == "none":
        return model.weight_bytes()
    packed = copy.deepcopy(model)
    packed.pack_bitnet()
    return packed.weight_bytes()


def _kill_hook(spec: ModelSpec):
    target = os.environ.get(KILL_ENV, "")
    part, _, step = target.rpartition(":")
    if not (part and step.isdigit() and part in spec.model_id):
        return None

    def kill(done: int):
        if done == int(step):
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


# ---- quality.csv ----

def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(v) if isinstance(v, float) else v


def append_rows(path: Path, rows: list[dict]):
    """Append a model's rows (with the header if the file is new) and flush them to disk."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="raise")
        if new:
            writer.writeheader()
        writer.writerows({k: _cell(r.get(k)) for k in COLUMNS} for r in rows)
        f.flush()
        os.fsync(f.fileno())


def repair(path: Path) -> set[str]:
    """Drop a torn last line after a kill; the model ids whose rows are complete."""
    if not path.exists() or not path.stat().st_size:
        return set()
    text = path.read_text()
    if not text.endswith("\n"):
        path.write_text(text[: text.rfind("\n") + 1])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # A model's rows are written at once; the torn one above is the only partial write.
    return {r["model_id"] for r in rows}


# ---- outputs ----

def finish(out: Path, quiet: bool = False) -> list[Path]:
    from bench.quality import report

    df = report.read(out / "quality.csv")
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    paths = report.plot_all(df, env, out / "plots")
    (out / "summary.md").write_text(report.summary_markdown(df, env))
    if not quiet:
        print(report.console_table(df))
        print(f"\nwrote {out / 'quality.csv'}, {out / 'env.json'}, {out / 'summary.md'}")
        for p in paths:
            print(f"wrote {p}")
    return paths


def environment(suite: QualitySuite, threads: int) -> dict:
    from bench.run import _git_commit, _versions

    return dict(
        suite=suite.name, suite_path=str(suite.path), description=suite.description, device="cpu",
        device_name=_cpu_name(), threads=threads, cpu_count=os.cpu_count(), git_commit=_git_commit(),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(), host=platform.node(),
        platform=platform.platform(), command=" ".join(sys.argv), versions=_versions(torch),
        models=len(suite.models), arch_modules=list(suite.arch_modules), dtype="float32",
        train=suite.train.as_dict(), model_overrides=suite.model_overrides,
        eval_examples=suite.eval_examples, started_unix=time.time(),
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
