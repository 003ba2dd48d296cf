"""`python -m bench`: run | merge | plot | list (and compare | gate where bench.compare and
bench.gate exist). With no arguments: `run` on the device present, of the gpu-quick suite on a
GPU and of the default suite on a CPU.

Every usage error (bad suite, axis value, shard, out dir, device...) exits 2 with one line on
stderr and writes nothing."""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.suite import UsageError

REPO = Path(__file__).resolve().parent.parent
RUNS_DIR = Path("results/runs")
# Testing hook, a comma list of KIND:TEXT: every case whose id contains TEXT, inside its own
# process, raises an out-of-memory error (oom), dies by SIGKILL (crash) or sleeps 600 s (hang).
INJECT_ENV = "YOCO_BENCH_INJECT"


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv or ["run"])
        # From the command line, start the case server at once (it loads torch meanwhile).
        args.early_start = from_command_line
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description="YOCO vs Transformer benchmarks: prefill, decode, "
                    "memory, KV cache. With no arguments: run the default suite for this machine.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, required=True)

    run = sub.add_parser("run", help="run a suite (or list its cases with --dry-run)")
    run.add_argument("--suite", default=None, help="a built-in suite name (see `list`) or a .toml file "
                     "(default: gpu-quick on a GPU, default on a CPU)")
    run.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if present, else cpu")
    run.add_argument("--out", type=Path, default=None,
                     help="run directory (default results/runs/<suite>-<device>-<time>)")
    run.add_argument("--resume", type=Path, default=None, help="finish the run in this directory: only missing cases")
    run.add_argument("--shard", default=None, help="I/N: run every N-th case starting at the I-th (1-based)")
    run.add_argument("--only", default=None, help="CASE_ID[,CASE_ID...]: run just these cases of the suite")
    run.add_argument("--repeats", type=int, default=None, help="timed repeats per phase (default: the suite's)")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads per case (default: the suite's, else torch's: all cores)")
    run.add_argument("--dry-run", action="store_true", help="list cases with estimated weight and cache bytes")
    run.set_defaults(func=cmd_run)

    merge = sub.add_parser("merge", help="join shard run directories into one run")
    merge.add_argument("dirs", nargs="+", type=Path)
    merge.add_argument("--out", type=Path, default=None)
    merge.set_defaults(func=cmd_merge)

    plot = sub.add_parser("plot", help="redraw every plot from a run directory or a results.csv")
    plot.add_argument("source", type=Path)
    plot.add_argument("--out", type=Path, default=None, help="default: plots/ beside the CSV")
    plot.set_defaults(func=cmd_plot)

    lst = sub.add_parser("list", help="suites, presets, BitNet modes and the backends usable here")
    lst.set_defaults(func=cmd_list)

    for name in ("compare", "gate"):  # issue 5's modules, registered where they exist
        if importlib.util.find_spec(f"bench.{name}") is None:
            continue
        module = importlib.import_module(f"bench.{name}")
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    return parser


# ---- run ----

def cmd_run(args) -> int:
    if args.early_start and not args.dry_run:
        from bench import isolation

        isolation.start()  # the case server loads torch while this process reads the suite

    import torch

    from bench import suite as suites

    saved_env = {}
    if args.resume is not None:
        if args.out is not None:
            raise UsageError("give either --out or --resume, not both")
        saved_env = _load_resume(args.resume)
        suite = suites.parse_suite((args.resume / "suite.toml").read_text(), args.resume / "suite.toml")
        suite.name = saved_env.get("suite", suite.name)
        device = args.device or saved_env["device"]
        if device != saved_env["device"]:
            raise UsageError(f"--resume {args.resume} was a {saved_env['device']} run, not {device}")
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        suite = suites.load_suite(args.suite or default_suite(device))
    if device == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        raise UsageError("--device cuda, but no CUDA GPU is present on this machine (use --device cpu)")
    if device not in suite.devices and not args.dry_run:
        raise UsageError(f"suite {suite.name!r} runs on {', '.join(suite.devices)} only, not {device} "
                         f"(--dry-run still lists its cases)")
    repeats = args.repeats if args.repeats is not None else saved_env.get("repeats", suite.repeats)
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    threads = args.threads if args.threads is not None else saved_env.get("threads_requested", suite.threads)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    shard_text = args.shard if args.shard is not None else saved_env.get("shard")
    shard = suites.parse_shard(shard_text) if shard_text else None
    only_text = args.only if args.only is not None else saved_env.get("only")
    only = [c.strip() for c in only_text.split(",") if c.strip()] if only_text else None
    if only_text is not None and not only:
        raise UsageError("--only needs at least one case id")
    cases = suites.select(suite.cases, only, shard)

    if args.dry_run:
        return dry_run(suite, cases, device)

    present = installed_backends()
    if suites.optional_parts(cases):
        from yoco import backends

        present = backends.detect()  # import them for real: a broken install counts as absent
    suites.check_backends_usable(cases, device, present)
    suites.check_archs_usable(cases)

    if args.resume is not None:
        out = args.resume
    else:
        out = args.out or _default_out(suite.name, device)
        _check_writable(out)
    run = RunSettings(device, repeats, threads, shard_text, only_text)
    return execute(suite, cases, run, out, present, resumed=args.resume is not None)


@dataclass
class RunSettings:
    device: str
    repeats: int
    threads: int | None
    shard: str | None
    only: str | None


def installed_backends() -> dict[str, str | None]:
    """Optional backends' versions where their package is installed (found, not imported:
    importing fla and triton costs seconds; yoco.backends.detect() imports them)."""
    from yoco.backends import OPTIONAL

    found = {}
    for name, (module, dist) in OPTIONAL.items():
        try:
            spec = importlib.util.find_spec(module.split(".")[0])
        except (ImportError, ValueError):
            spec = None
        try:
            found[name] = importlib.metadata.version(dist) if spec else None
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def default_suite(device: str) -> str:
    """The suite a bare `python -m bench` runs: the GPU quick suite on a GPU where it exists."""
    from bench.suite import suite_names

    return "gpu-quick" if device == "cuda" and "gpu-quick" in suite_names() else "default"


def _default_out(suite: str, device: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RUNS_DIR / f"{suite}-{device}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = RUNS_DIR / f"{suite}-{device}-{stamp}-{n}"
    return out


def _check_writable(out: Path):
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a directory")
        if (out / "results.csv").exists():
            raise UsageError(f"--out {out} already holds a run: use --resume {out} to finish it, or another --out")
    _check_writable_dir(out)


def _load_resume(run_dir: Path) -> dict:
    env_path = run_dir / "env.json"
    if not (env_path.is_file() and (run_dir / "suite.toml").is_file()):
        raise UsageError(f"--resume {run_dir}: not a run directory (needs env.json and suite.toml)")
    if not os.access(run_dir, os.W_OK):
        raise UsageError(f"--resume {run_dir}: directory is not writable")
    try:
        return json.loads(env_path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"--resume {run_dir}: env.json is not valid JSON ({e})") from None


def dry_run(suite, cases, device: str) -> int:
    from bench.runner import estimate

    print(f"suite {suite.name} ({suite.path}): {len(cases)} cases for {device}, {suite.repeats} repeats")
    print(f"{'case_id':<72} {'params':>14} {'weights':>11} {'kv cache':>11}")
    for case in cases:
        try:
            e = estimate(case)
            print(f"{case.case_id:<72} {e['params']:>14,} {_size(e['weight_bytes']):>11} "
                  f"{_size(e['kv_cache_bytes_formula']):>11}")
        except Exception as err:  # an invalid combination: show it, list the rest
            print(f"{case.case_id:<72} cannot build: {err}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def execute(suite, cases, run: RunSettings, out: Path, present: dict, resumed: bool) -> int:
    from bench import report, runner

    device = run.device
    out.mkdir(parents=True, exist_ok=True)
    done = report.repair(out) if resumed else set()
    if resumed:
        env = json.loads((out / "env.json").read_text())
    else:
        (out / "suite.toml").write_text(suite.text)
        dtypes = sorted({c.dtype for c in cases})
        answer = runner.run_isolated(runner.machine_info, device, dtypes, threads=run.threads)
        if answer[0] != "ok":
            print(f"warning: measuring this machine failed ({answer[1]}); ceilings left empty", file=sys.stderr)
        machine = answer[1] if answer[0] == "ok" else {}
        env = environment(suite, run, machine, present, cases)
        report.write_env(out / "env.json", env)

    todo = [c for c in cases if c.case_id not in done]
    injections = [item.partition(":")[::2] for item in os.environ.get(INJECT_ENV, "").split(",") if item]
    print(f"{suite.name}: {len(todo)} of {len(cases)} cases to run on {device} -> {out}", file=sys.stderr)
    bar = Progress(len(todo))
    backends_present = ";".join(f"{k}={v}" for k, v in sorted(present.items()) if v)
    try:
        for case in todo:
            run_one(case, suite, run, env, out, injections, backends_present, bar)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finish with `python -m bench run --resume {out}`", file=sys.stderr)
        return 130
    finish(out, env)
    return 0


def run_one(case, suite, run: RunSettings, env: dict, out: Path, injections, backends_present: str, bar):
    """One case in its own process; its samples and its row appended and flushed."""
    from bench import report, runner

    device = run.device
    bar.show(case.case_id)
    t0 = time.perf_counter()
    inject = next((kind for kind, match in injections if match and match in case.case_id), None)
    row, samples = runner.run_case(case, device, run.repeats, suite.warmup, env, inject, run.threads,
                                   suite.time_budget_s)
    row = {**case.axes(), **row, "case_id": case.case_id,
           "self_decoder": case.self_decoder, "device": device, "device_name": env.get("device_name"),
           "backends_present": backends_present, "elapsed_s": round(time.perf_counter() - t0, 3)}
    # samples first: a kill between the two writes leaves samples that repair() drops
    report.append_rows(out / "samples.csv", report.SAMPLE_COLUMNS, samples)
    report.append_rows(out / "results.csv", report.COLUMNS, [row])
    bar.done(case.case_id, row["status"], row["elapsed_s"])


def finish(out: Path, env: dict, quiet: bool = False):
    """Plots, summary.md and the console table from what results.csv holds now."""
    from bench import plots, report

    df = report.read_results(out / "results.csv")
    paths = plots.plot_all(df, env, out / "plots")
    (out / "summary.md").write_text(report.summary_markdown(df, env))
    if quiet:
        return
    print(report.console_table(df))
    ratios = report.ratio_table(df)
    if len(ratios):
        print("\nYOCO against the baseline (> 1 favours YOCO):")
        print(ratios.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\nwrote {out / 'results.csv'}, {out / 'samples.csv'}, {out / 'env.json'}, {out / 'summary.md'}")
    for p in paths:
        print(f"wrote {p}")


class Progress:
    """A one-line bar on a terminal, one line per case otherwise (logs, CI)."""

    def __init__(self, total: int, width: int = 24):
        self.total, self.width, self.count = total, width, 0
        self.tty = sys.stderr.isatty()

    def _bar(self) -> str:
        filled = self.width * self.count // max(1, self.total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.count}/{self.total}"

    def show(self, case_id: str):
        if self.tty:
            print(f"\r{self._bar()} {case_id[:70]:<70}", end="", file=sys.stderr, flush=True)

    def done(self, case_id: str, status: str, seconds: float):
        self.count += 1
        if self.tty:
            print(f"\r{self._bar()} {case_id[:60]:<60} {status}", end="\n" if self.count == self.total else "",
                  file=sys.stderr, flush=True)
        else:
            print(f"{self._bar()} {case_id} {status} {seconds:.1f}s", file=sys.stderr, flush=True)


def environment(suite, run: RunSettings, machine: dict, present: dict, cases) -> dict:
    import torch

    device = run.device
    rates = machine.get("matmul_flops_s_by_dtype", {})
    main_dtype = max({c.dtype for c in cases}, key=lambda d: sum(c.dtype == d for c in cases))
    return dict(
        suite=suite.name, suite_path=str(suite.path), description=suite.description,
        device=device, device_name=machine.get("device_name"), driver=machine.get("driver"),
        cuda_version=machine.get("cuda_version"), device_memory_bytes=machine.get("device_memory_bytes"),
        git_commit=_git_commit(), timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        host=platform.node(), platform=platform.platform(), command=" ".join(sys.argv),
        versions=_versions(torch), threads=machine.get("threads"), cpu_count=machine.get("cpu_count"),
        backends=present, backends_used=sorted({c.backend for c in cases}),
        copy_bandwidth_bytes_s=machine.get("copy_bandwidth_bytes_s", math.nan),
        matmul_flops_s=rates.get(main_dtype, math.nan), matmul_flops_s_dtype=main_dtype,
        matmul_flops_s_by_dtype=rates, repeats=run.repeats, warmup=suite.warmup,
        time_budget_s=suite.time_budget_s, shard=run.shard, only=run.only,
        threads_requested=run.threads, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        cases=len(cases), isolation="one forked process per case (multiprocessing forkserver)",
        memory_measurement=("CUDA: torch.cuda.max_memory_allocated / max_memory_reserved after a reset per "
                            "phase, NVML device-wide used memory at the end of the phase" if device == "cuda" else
                            "CPU: peak resident set size (VmHWM) of the case's own process, reset per phase by "
                            "writing 5 to /proc/self/clear_refs after glibc malloc_trim; includes Python and torch "
                            "themselves (mem_before_model_bytes is the RSS before the model was built)"),
    )


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        # results/ holds outputs, not code: regenerating a committed reference run must not mark it dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def _versions(torch) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("numpy", "pandas", "matplotlib", "triton", "fla-core", "flash-attn", "nvidia-ml-py", "yoco-bench"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---- merge, plot, list ----

def cmd_merge(args) -> int:
    import pandas as pd

    from bench import report

    envs = []
    for d in args.dirs:
        if not (d / "results.csv").is_file() or not (d / "env.json").is_file():
            raise UsageError(f"merge: {d} is not a run directory (needs results.csv and env.json)")
        envs.append(json.loads((d / "env.json").read_text()))
    suites_seen = {e.get("suite") for e in envs}
    if len(suites_seen) > 1:
        raise UsageError(f"merge: the runs are of different suites: {', '.join(sorted(map(str, suites_seen)))}")
    devices = {e.get("device") for e in envs}
    if len(devices) > 1:
        raise UsageError(f"merge: the runs are on different devices: {', '.join(sorted(map(str, devices)))}")
    frames = [pd.read_csv(d / "results.csv", dtype=str, keep_default_na=False) for d in args.dirs]
    results = pd.concat(frames, ignore_index=True)
    dup = results["case_id"][results["case_id"].duplicated()]
    if len(dup):
        raise UsageError(f"merge: case {dup.iloc[0]} appears in more than one of the runs")
    out = args.out or _default_out(f"{envs[0].get('suite')}-merged", envs[0].get("device"))
    _check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results.csv", index=False)
    samples = [pd.read_csv(d / "samples.csv", dtype=str, keep_default_na=False)
               for d in args.dirs if (d / "samples.csv").is_file() and (d / "samples.csv").stat().st_size]
    if samples:
        pd.concat(samples, ignore_index=True).to_csv(out / "samples.csv", index=False)
    else:
        (out / "samples.csv").write_text(",".join(report.SAMPLE_COLUMNS) + "\n")
    if (args.dirs[0] / "suite.toml").is_file():
        shutil.copy(args.dirs[0] / "suite.toml", out / "suite.toml")
    env = dict(envs[0])
    env.update(merged_from=[str(d) for d in args.dirs], shard=None, shards=[e.get("shard") for e in envs],
               git_commits=sorted({str(e.get("git_commit")) for e in envs}), cases=len(results))
    report.write_env(out / "env.json", env)
    finish(out, env)
    return 0


def cmd_plot(args) -> int:
    from bench import plots, report

    src = args.source
    csv_path = src / "results.csv" if src.is_dir() else src
    if not csv_path.is_file():
        raise UsageError(f"plot: {src} is neither a run directory with results.csv nor a CSV file")
    env_path = csv_path.parent / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    out = args.out or csv_path.parent / "plots"
    _check_writable_dir(out)
    try:
        df = report.read_results(csv_path)
    except Exception as e:
        raise UsageError(f"plot: cannot read {csv_path} as a results CSV: {e}") from None
    missing = [c for c in ("case_id", "arch", "seq_len", "status") if c not in df]
    if missing:
        raise UsageError(f"plot: {csv_path} lacks column(s) {', '.join(missing)}: not a results.csv")
    for p in plots.plot_all(df, env, out):
        print(f"wrote {p}")
    return 0


def _check_writable_dir(out: Path):
    """Usage error unless `out` can be created and written to. Tries for real (root passes
    os.access where the filesystem still refuses, e.g. under /proc) and leaves nothing behind."""
    created = []
    parent = out
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write to --out {out}: {parent} is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None
    finally:
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                pass


def cmd_list(args) -> int:
    import torch

    from bench.suite import load_suite, suite_names
    from yoco import backends
    from yoco.config import BITNET_MODES, PRESETS

    print("suites (bench/suites/*.toml; or pass your own file to --suite):")
    for name in suite_names():
        s = load_suite(name)
        print(f"  {name:<10} {len(s.cases):>4} cases, devices {'/'.join(s.devices)}: {s.description}")
    print("presets (d_model / layers / heads / kv heads, vocab):")
    for name, p in PRESETS.items():
        print(f"  {name:<6} {p['d_model']:>5} / {p['n_layers']:>2} / {p['n_heads']:>2} / {p['n_kv_heads']:>2}, "
              f"vocab {p['vocab_size']}")
    from baselines import hf_llama

    print("archs: yoco-gret, yoco-swa, transformer, hf-llama"
          f"{'' if hf_llama.available() else ' (hf-llama needs HF transformers: not installed)'}")
    print(f"bitnet modes: {', '.join(BITNET_MODES)}")
    found = backends.detect()
    cuda = torch.cuda.is_available()
    print(f"devices: cpu{', cuda (' + torch.cuda.get_device_name(0) + ')' if cuda else ''}")
    print("backends: torch (always)" + "".join(
        f", {k} {v}{'' if cuda or k == 'triton' else ' (CUDA only: unusable here)'}"
        for k, v in found.items() if v))
    missing = [k for k, v in found.items() if not v]
    if missing:
        print(f"not installed: {', '.join(missing)}")
    return 0
