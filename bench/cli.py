"""`python -m bench`: run | merge | report | plot | list | columns | quality | compare | gate. Parsing
and dispatch; a run is carried out by bench.run. With no arguments: `run` on the device present, of
the gpu-decode suite on a GPU and of the default suite on a CPU.

Every usage error (bad suite, axis value, shard, out dir, device...) exits 2 with one line on
stderr and writes nothing. Ctrl-C exits 130 with one line (a run's: how to resume it); a reader
that closes stdout early (`python -m bench list | head`) ends the command quietly."""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from bench import run as run_suite
from bench.show import progress
from bench.suite import UsageError

RUNS_DIR = Path("results/runs")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv or ["run"])
        if getattr(args, "arch_module", None):  # .py paths absolute: a resumed run may start elsewhere
            args.arch_module = [str(Path(m).resolve()) if m.endswith(".py") else m for m in args.arch_module]
        # From the command line, start the case server at once (it loads torch meanwhile).
        args.early_start = from_command_line
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except UsageError as e:
        progress.clear_status()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.clear_status()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader is gone: send what is still buffered nowhere, so the exit flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a shell reports SIGPIPE


def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description="YOCO vs Transformer benchmarks: prefill, decode, "
                    "memory, KV cache. With no arguments: run the default suite for this machine.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, required=True)

    run = sub.add_parser("run", help="run a suite (or list its cases with --dry-run)")
    run.add_argument("--suite", default=None, help="a built-in suite name (see `list`) or a .toml file "
                     "(default: gpu-decode on a GPU, default on a CPU)")
    run.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if present, else cpu")
    run.add_argument("--out", type=Path, default=None,
                     help="run directory (default results/runs/<suite>-<device>-<time>)")
    run.add_argument("--resume", type=Path, default=None, help="finish the run in this directory: only missing cases")
    run.add_argument("--shard", default=None, help="I/N: run every N-th case starting at the I-th (1-based)")
    run.add_argument("--only", default=None, help="CASE_ID[,CASE_ID...]: run just these cases of the suite")
    run.add_argument("--repeats", type=int, default=None, help="timed repeats per phase (default: the suite's)")
    run.add_argument("--case-timeout", type=float, default=None, metavar="S",
                     help="kill a case process still running after S seconds and record status timeout "
                          "(default: the suite's case_timeout_s, else no limit)")
    run.add_argument("--processes", type=int, default=None, metavar="N",
                     help="run each case in N separate processes, interleaved across cases; results.csv gets the "
                          "median of their medians with a 95%% confidence interval (6 or more for an interval; "
                          "default 1)")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads per case (default: the suite's, else torch's: all cores)")
    run.add_argument("--dry-run", action="store_true",
                     help="list cases with estimated weight, cache and prefill-peak bytes")
    run.add_argument("--arch-module", action="append", default=[], metavar="MODULE",
                     help="a module (dotted name or .py path) that registers archs of your own (see "
                          "bench/archs.py); repeatable")
    run.set_defaults(func=cmd_run)

    merge = sub.add_parser(
        "merge", help="join shard run directories into one run",
        description="Join the run directories of one suite's shards (`run --shard I/N`) into one run: results, "
                    "samples, env.json, then summary.md, plots and report.html. Says which shards and cases of the "
                    "suite are missing (they are also named in summary.md); refuses runs of different suites or "
                    "devices and a case present twice.")
    merge.add_argument("dirs", nargs="+", type=Path, metavar="RUN",
                       help="run directories to join (the --out of each shard's `python -m bench run`)")
    merge.add_argument("--out", type=Path, default=None,
                       help="the merged run directory (default results/runs/<suite>-merged-<device>-<time>)")
    merge.set_defaults(func=cmd_merge)

    rep = sub.add_parser(
        "report", help="write the HTML report of one or several runs",
        description="Write one self-contained HTML page (no network needed to view it): the verdicts, the "
                    "environment, the plots (values on hover, linear or log axes) and sortable tables of the last "
                    "RUN; given several runs also the first against the last (compare's rules) and the history "
                    "of every case and metric over the runs' commits.")
    rep.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                     help="run directories, or directories holding run directories (e.g. results/runs); the "
                          "last is shown in full, the first is the comparison's base")
    rep.add_argument("--html", type=Path, default=None, metavar="OUT.html",
                     help="the page to write (default: report.html inside RUN when there is one run)")
    rep.set_defaults(func=cmd_report)

    plot = sub.add_parser("plot", help="redraw every plot from a run directory or a results.csv")
    plot.add_argument("source", type=Path, metavar="RUN_OR_CSV",
                      help="a run directory or a results.csv (env.json beside it is used where present)")
    plot.add_argument("--out", type=Path, default=None, help="where the PNGs go (default: plots/ beside the CSV)")
    plot.set_defaults(func=cmd_plot)

    lst = sub.add_parser("list", help="suites, presets, BitNet modes and the backends usable here")
    lst.set_defaults(func=cmd_list)

    cols = sub.add_parser("columns", help="what every column of results.csv (or samples.csv) means: a "
                          "markdown table (README's is this one)")
    cols.add_argument("--samples", action="store_true", help="samples.csv's columns instead of results.csv's")
    cols.add_argument("--quality", action="store_true", help="quality.csv's columns (python -m bench quality)")
    cols.set_defaults(func=cmd_columns)

    from bench.judge import compare, gate
    from bench.quality import sweep

    quality = sub.add_parser("quality", help="train tiny models on recall tasks (MQAR, needle) on the CPU: "
                             "accuracy against KV-cache bytes")
    sweep.add_arguments(quality)
    quality.set_defaults(func=sweep.main)

    for name, module in (("compare", compare), ("gate", gate)):
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    return parser


# ---- run ----

def cmd_run(args) -> int:
    if args.early_start and not args.dry_run:
        from bench.measure import isolation

        isolation.start()  # (already started by bench/__main__.py: this only checks it runs)

    import torch

    from bench import suite as suites

    saved_env = {}
    if args.resume is not None:
        if args.out is not None:
            raise UsageError("give either --out or --resume, not both")
        saved_env = _load_resume(args.resume)
        modules = args.arch_module or saved_env.get("arch_modules_cli") or []
        suite = suites.parse_suite((args.resume / "suite.toml").read_text(), args.resume / "suite.toml", modules)
        suite.name = saved_env.get("suite", suite.name)
        device = args.device or saved_env["device"]
        if device != saved_env["device"]:
            raise UsageError(f"--resume {args.resume} was a {saved_env['device']} run, not {device}")
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        suite = suites.load_suite(args.suite or default_suite(device), args.arch_module)
    if device == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        raise UsageError("--device cuda, but no CUDA GPU is present on this machine (use --device cpu)")
    if device not in suite.devices and not args.dry_run:
        raise UsageError(f"suite {suite.name!r} runs on {', '.join(suite.devices)} only, not {device} "
                         f"(--dry-run still lists its cases)")
    repeats = args.repeats if args.repeats is not None else saved_env.get("repeats", suite.repeats)
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    case_timeout = args.case_timeout if args.case_timeout is not None else saved_env.get(
        "case_timeout_s", suite.case_timeout_s)
    if case_timeout is not None and not case_timeout > 0:
        raise UsageError(f"--case-timeout must be a number of seconds > 0, got {case_timeout}")
    processes = args.processes if args.processes is not None else saved_env.get("processes", 1)
    if processes < 1:
        raise UsageError(f"--processes must be >= 1, got {processes}")
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
        return run_suite.dry_run(suite, cases, device)

    present = installed_backends()
    if suites.optional_parts(cases):
        from yoco import backends

        present = backends.detect()  # import them for real: a broken install counts as absent
    suites.check_decode_modes_usable(cases, device)
    suites.check_archs_usable(cases)

    if args.resume is not None:
        out = args.resume
    else:
        out = args.out or _default_out(suite.name, device)
        _check_writable(out)
    run = run_suite.RunSettings(device, repeats, threads, shard_text, only_text,
                                tuple(args.arch_module or saved_env.get("arch_modules_cli") or ()), processes,
                                case_timeout)
    return run_suite.execute(suite, cases, run, out, present, resumed=args.resume is not None)


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
    """The suite a bare `python -m bench` runs: the GPU run's decode section on a GPU, where it exists."""
    from bench.suite import suite_names

    return "gpu-decode" if device == "cuda" and "gpu-decode" in suite_names() else "default"


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


# ---- merge, plot, list ----

def cmd_merge(args) -> int:
    import pandas as pd

    from bench.show import report

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
    expected, why_unknown = _expected_cases(args.dirs[0], envs)
    missing = [c for c in expected if c not in set(results["case_id"])] if expected is not None else []
    shards = [e.get("shard") for e in envs]
    env.update(merged_from=[str(d) for d in args.dirs], shard=None, shards=shards,
               git_commits=sorted({str(e.get("git_commit")) for e in envs}), cases=len(results),
               cases_expected=len(expected) if expected is not None else None, missing_cases=missing)
    report.write_env(out / "env.json", env)
    run_suite.finish(out, env)
    if why_unknown:
        print(f"merge: cannot tell which cases are missing: {why_unknown}", file=sys.stderr)
    elif missing:
        absent = _missing_shards(shards)
        print(f"merge: {len(missing)} of {len(expected)} cases of suite {env.get('suite')!r} missing"
              + (f" (shard{'s' if len(absent) > 1 else ''} {', '.join(absent)} not given)" if absent else "")
              + ": " + ", ".join(missing), file=sys.stderr)
    else:
        print(f"merge: all {len(expected)} cases of suite {env.get('suite')!r} present", file=sys.stderr)
    return 0


def _expected_cases(run_dir: Path, envs: list[dict]) -> tuple[list[str] | None, str | None]:
    """The case ids the shards' suite expands to (less what --only left out): (ids, None), or
    (None, why not)."""
    from bench import suite as suites

    path = run_dir / "suite.toml"
    if not path.is_file():
        return None, f"{path} is missing"
    onlys = {e.get("only") for e in envs}
    if len(onlys) > 1:
        return None, "the runs were given different --only lists"
    try:
        suite = suites.parse_suite(path.read_text(), path, envs[0].get("arch_modules_cli") or ())
    except (UsageError, OSError) as e:
        return None, f"{path} does not expand here ({e})"
    only_text = onlys.pop()
    only = [c.strip() for c in only_text.split(",") if c.strip()] if only_text else None
    try:
        return [c.case_id for c in suites.select(suite.cases, only, None)], None
    except UsageError as e:
        return None, str(e)


def _missing_shards(shards: list[str | None]) -> list[str]:
    """Shards I/N of the N the runs were split into that no run covered."""
    given = [s for s in shards if s]
    counts = {s.split("/")[1] for s in given}
    if len(counts) != 1 or len(given) != len(shards):
        return []
    n = int(counts.pop())
    return [f"{i}/{n}" for i in range(1, n + 1) if f"{i}/{n}" not in given]


def cmd_report(args) -> int:
    from bench.show import html

    dirs = []
    for path in args.runs:
        found = html.run_dirs(path)
        if not found:
            raise UsageError(f"report: {path} is not a run directory (no results.csv in it or its subdirectories)")
        dirs += found
    if args.html is None:
        if len(dirs) > 1:
            raise UsageError(f"report: {len(dirs)} runs: name the page with --html OUT.html")
        args.html = dirs[0] / "report.html"
    if args.html.exists() and args.html.is_dir():
        raise UsageError(f"report: --html {args.html} is a directory, not a file")
    _check_writable_dir(args.html.parent)
    runs = []
    for d in dirs:
        try:
            runs.append(html.load(d))
        except Exception as e:
            raise UsageError(f"report: cannot read {d}: {type(e).__name__}: {e}") from None
    print(f"wrote {html.write(args.html, runs)}")
    return 0


def cmd_plot(args) -> int:
    from bench.show import plots, report

    src = args.source
    if (src / "quality.csv").is_file() if src.is_dir() else src.name == "quality.csv":
        return _plot_quality(src if src.is_dir() else src.parent, args.out)
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


def _plot_quality(run_dir: Path, out: Path | None) -> int:
    """A quality run: its plots and summary.md, redrawn from quality.csv."""
    from bench.quality import report

    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    out = out or run_dir / "plots"
    _check_writable_dir(out)
    try:
        df = report.read(run_dir / "quality.csv")
    except Exception as e:
        raise UsageError(f"plot: cannot read {run_dir / 'quality.csv'} as a quality CSV: {e}") from None
    for p in report.plot_all(df, env, out):
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


def cmd_columns(args) -> int:
    from bench.show import columns

    print(columns.markdown(columns.QUALITY if args.quality else columns.SAMPLES if args.samples else columns.RESULTS))
    return 0


def cmd_list(args) -> int:
    import torch

    from bench.suite import load_suite, suite_names
    from yoco import backends
    from yoco.config import BITNET_MODES, PRESETS

    print("suites (bench/suites/*.toml; or pass your own file to --suite):")
    for name in suite_names():
        s = load_suite(name)
        print(f"  {name:<10} {len(s.cases):>4} cases, devices {'/'.join(s.devices)}: {s.description}")
    from bench.quality import suite as quality_suites

    print("quality suites (bench/quality/suites/*.toml, `python -m bench quality --suite NAME`): "
          + ", ".join(quality_suites.suite_names()))
    print("presets (d_model / layers / heads / kv heads, vocab):")
    for name, p in PRESETS.items():
        print(f"  {name:<6} {p['d_model']:>5} / {p['n_layers']:>2} / {p['n_heads']:>2} / {p['n_kv_heads']:>2}, "
              f"vocab {p['vocab_size']}")

    from bench import archs

    print("archs: " + ", ".join(name + (" (unusable here)" if arch.unusable() else "")
                                for name, arch in archs.ARCHS.items()))
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
