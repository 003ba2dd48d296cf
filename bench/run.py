"""A run of a suite: the environment record (this machine's ceilings measured first), the
cases one by one (each in its own process, its row flushed as it ends; with --processes N each
case in N processes, interleaved across cases: every case once, then every case again...), the
ceilings measured again (a drift over 5% is flagged), then summary and plots. `bench.cli`
parses; this module runs."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.show import progress
from bench.show.progress import Progress
from bench.suite import MAX_BATCH, backend_unusable

REPO = Path(__file__).resolve().parent.parent
# Testing hook, a comma list of KIND:TEXT: every case whose id contains TEXT, inside its own
# process, raises an out-of-memory error (oom), dies by SIGKILL (crash) or sleeps 600 s (hang).
INJECT_ENV = "YOCO_BENCH_INJECT"
CEILING_DRIFT = 0.05  # a ceiling that moved more than this between the run's start and end is flagged
# Set (by `bench gate`): write results.csv, samples.csv and env.json only, no summary or plots:
# the gate reads nothing else, and 40 runs a gate would spend a minute drawing them.
NO_REPORT_ENV = "BENCH_NO_REPORT"
# Set (by `bench gate`): skip measuring the machine's ceilings (bandwidth and matmul rate, 1.4 s a
# run on 2 cores), so MFU and MBU are left empty: the gate judges timings and memory only.
NO_CEILINGS_ENV = "BENCH_NO_CEILINGS"
REPORT_NAME = "report.html"


@dataclass
class RunSettings:
    device: str
    repeats: int
    threads: int | None
    shard: str | None
    only: str | None
    arch_modules_cli: tuple[str, ...] = ()
    processes: int = 1  # separate processes per case (results: the median of their medians, with a CI)
    case_timeout_s: float | None = None  # a case process still running after this is killed: status timeout


def dry_run(suite, cases, device: str) -> int:
    from bench.measure.runner import estimate
    from bench.show.units import size as _size

    progress.clear_status()
    print(f"suite {suite.name} ({suite.path}): {len(cases)} cases for {device}, {suite.repeats} repeats")
    print(f"{'case_id':<72} {'params':>14} {'weights':>11} {'kv cache':>11} {'prefill peak':>12}")
    for case in cases:
        try:
            note = ""
            if case.batch == MAX_BATCH:  # sized at the batch the search would try first
                from bench.measure import max_batch

                cap = suite.memory_cap_bytes
                if cap is None:
                    print(f"{case.case_id:<72} batch = \"max\": the search starts from the device's memory")
                    continue
                first = max_batch.start_batch(case, cap)[0]
                note = f"  (batch max: first try {first})"
            e = estimate(dataclasses.replace(case, batch=first) if note else case)
            print(f"{case.case_id:<72} {e['params']:>14,} {_size(e['weight_bytes']):>11} "
                  f"{_size(e['kv_cache_bytes_formula']):>11} {_size(e.get('estimated_peak_bytes', math.nan)):>12}"
                  f"{note}")
        except Exception as err:  # an invalid combination: show it, list the rest
            print(f"{case.case_id:<72} cannot build: {err}")
    return 0


def execute(suite, cases, run: RunSettings, out: Path, present: dict, resumed: bool) -> int:
    """Run the cases into `out`; Ctrl-C stops with the resume hint alone (exit 130)."""
    try:
        env, dtypes = _execute(suite, cases, run, out, present, resumed)
        progress.status("measuring this machine again (did its ceilings drift?)")
        remeasure_ceilings(env, run.device, dtypes, run.threads)
    except KeyboardInterrupt:
        progress.clear_status()
        print(f"interrupted: finish with `python -m bench run --resume {out}`", file=sys.stderr, flush=True)
        return 130
    from bench.show import report

    report.write_env(out / "env.json", env)
    if os.environ.get(NO_REPORT_ENV):
        print(f"wrote {out / 'results.csv'}, {out / 'samples.csv'}, {out / 'env.json'} ({NO_REPORT_ENV} set: "
              f"no summary or plots)")
        return 0
    finish(out, env)
    return 0


def _execute(suite, cases, run: RunSettings, out: Path, present: dict, resumed: bool) -> tuple[dict, list[str]]:
    from bench.measure import runner
    from bench.show import report

    device = run.device
    out.mkdir(parents=True, exist_ok=True)
    done, partial = report.repair(out) if resumed else (set(), {})
    dtypes = runner.ceiling_dtypes(cases)
    if resumed:
        env = json.loads((out / "env.json").read_text())
    else:
        (out / "suite.toml").write_text(suite.text)
        progress.status(f"measuring this machine ({device}: copy bandwidth, matmul rate)")
        ceilings = not os.environ.get(NO_CEILINGS_ENV)
        answer = runner.run_isolated(runner.machine_info, device, dtypes, ceilings, threads=run.threads)
        if answer[0] != "ok":
            progress.clear_status()
            print(f"warning: measuring this machine failed ({answer[1]}); ceilings left empty", file=sys.stderr)
        machine = answer[1] if answer[0] == "ok" else {}
        env = environment(suite, run, machine, present, cases)
        if not ceilings:
            env["ceilings"] = f"not measured ({NO_CEILINGS_ENV} set): MFU and MBU left empty"
        report.write_env(out / "env.json", env)

    todo = [c for c in cases if c.case_id not in done]
    injections = [item.partition(":")[::2] for item in os.environ.get(INJECT_ENV, "").split(",") if item]
    progress.clear_status()
    print(f"{suite.name}: {len(todo)} of {len(cases)} cases to run on {device}"
          f"{f', {run.processes} processes each' if run.processes > 1 else ''} -> {out}", file=sys.stderr)
    if suite.memory_cap_gb is not None and device != "cuda":
        print(f"note: memory_cap_gb = {suite.memory_cap_gb:g} is enforced on CUDA only: not applied on {device}",
              file=sys.stderr)
    bar = Progress(sum(run.processes - len(partial.get(c.case_id, [])) for c in todo))
    backends_present = ";".join(f"{k}={v}" for k, v in sorted(present.items()) if v)
    try:
        for process in range(run.processes):  # interleaved: every case once, then every case again
            for case in todo:
                measured = partial.setdefault(case.case_id, [])
                if case.case_id in done or len(measured) > process:
                    continue
                measured.append(run_one(case, process, suite, run, env, out, injections, backends_present, bar))
                # A case that failed is not run again; one that ran its last process is complete.
                if measured[-1][0]["status"] != "ok" or len(measured) == run.processes:
                    write_result(case, measured, out)
                    done.add(case.case_id)
    finally:
        bar.close()
    return env, dtypes


def run_one(case, process: int, suite, run: RunSettings, env: dict, out: Path, injections, backends_present: str,
            bar) -> tuple[dict, list[dict]]:
    """One process of one case; its samples (and, with several processes, its own row in
    processes.csv) appended and flushed. Returns (row, samples)."""
    from bench.measure import runner
    from bench.show import report

    device = run.device
    note = f"process {process + 1} of {run.processes}" if run.processes > 1 else ""
    bar.show(case, note)
    t0 = time.perf_counter()
    inject = next((kind for kind, match in injections if match and match in case.case_id), None)
    unusable = backend_unusable(case, device, env.get("backends") or {})

    def run_at(c, repeats):
        return runner.run_case(c, device, repeats, suite.warmup, env, inject, run.threads, suite.time_budget_s,
                               suite.arch_modules, suite.memory_cap_bytes, run.case_timeout_s)

    if unusable:  # skipped here, with the reason: never run on a backend it did not ask for
        row, samples = dict(status="skipped", error=unusable), []
    elif case.batch == MAX_BATCH:
        row, samples = largest_batch(case, suite, run, env, run_at)
    else:
        row, samples = run_at(case, run.repeats)
    row = {**case.axes(), **row, "case_id": case.case_id,
           "self_decoder": case.self_decoder, "device": device, "device_name": env.get("device_name"),
           "backends_present": backends_present, "elapsed_s": round(time.perf_counter() - t0, 3),
           "process": process}
    for sample in samples:
        sample["process"] = process
    # samples first: a kill between the two writes leaves samples that repair() drops
    report.append_rows(out / "samples.csv", report.SAMPLE_COLUMNS, samples)
    if run.processes > 1:
        report.append_rows(out / report.PROCESSES_FILE, report.PROCESS_COLUMNS, [row])
    bar.done(case, row["status"], row["elapsed_s"], note)
    return row, samples


def write_result(case, measured: list[tuple[dict, list[dict]]], out: Path):
    """The case's results row: its processes combined (bench.measure.aggregate), flushed."""
    from bench.measure import aggregate
    from bench.show import report

    rows = [row for row, _ in measured]
    batch = rows[0].get("batch", case.batch)  # batch = "max": the batch the search found
    row = aggregate.combine(rows, [samples for _, samples in measured], batch, case.seq_len)
    row.pop("process", None)  # the combined row is no one process's (processes.csv has each)
    report.append_rows(out / "results.csv", report.COLUMNS, [row])


def remeasure_ceilings(env: dict, device: str, dtypes: list[str], threads: int | None):
    """The ceilings again at the end of the run, into env.json with their drift (after / before
    - 1) and a flag where one moved by more than CEILING_DRIFT."""
    from bench.measure import roofline, runner

    if not env.get("copy_bandwidth_bytes_s", math.nan) > 0:  # nothing measured at the start
        return
    answer = runner.run_isolated(runner.ceilings_only, device, dtypes, threads=threads)
    if answer[0] != "ok":
        progress.clear_status()
        print(f"warning: measuring the ceilings again failed ({answer[1]})", file=sys.stderr)
        return
    before = dict(copy_bandwidth_bytes_s=env.get("copy_bandwidth_bytes_s"),
                  read_bandwidth_bytes_s=env.get("read_bandwidth_bytes_s"),
                  matmul_flops_s_by_dtype=env.get("matmul_flops_s_by_dtype", {}))
    drift = roofline.ceiling_drift(before, answer[1])
    env["ceilings_after"] = answer[1]
    env["ceiling_drift"] = drift
    env["ceiling_drifted"] = sorted(k for k, v in drift.items() if abs(v) > CEILING_DRIFT)
    if env["ceiling_drifted"]:
        progress.clear_status()
        print(f"warning: this machine's ceilings moved by more than {CEILING_DRIFT:.0%} during the run: "
              + ", ".join(f"{k} {drift[k]:+.1%}" for k in env["ceiling_drifted"]), file=sys.stderr)


def largest_batch(case, suite, run: RunSettings, env: dict, run_at) -> tuple[dict, list[dict]]:
    """A batch = "max" case: the largest batch that fits under the cap (bench.measure.max_batch),
    probed with one repeat, measured with the suite's; the row says which batch and how it was found."""
    from bench.measure import max_batch

    cap = suite.memory_cap_bytes or env.get("device_memory_bytes")
    if not cap or not cap > 0:
        return dict(status="error", error="batch = \"max\" needs a memory cap: set [suite] memory_cap_gb"), []
    measured = {}

    def at(batch, final):
        row, samples = run_at(dataclasses.replace(case, batch=batch), run.repeats if final else 1)
        measured["samples"] = samples
        return row

    row, batch, log = max_batch.search(case, run.device, cap, at)
    if batch is not None:
        row["batch"] = batch
    row.update(memory_cap_bytes=cap, max_batch_search="; ".join(log))
    samples = measured.get("samples", []) if row.get("status") == "ok" else []
    return row, samples


def finish(out: Path, env: dict, quiet: bool = False):
    """Plots, summary.md, report.html and the console table from what results.csv holds now."""
    from bench.show import html, report, verdicts

    progress.status("writing summary.md, the plots and report.html")
    run = html.Run(out, env, report.read_results(out / "results.csv"), report.read_samples(out / "samples.csv"))
    rendered = html.render(run.results, env, png_dir=out / "plots")
    paths = [r.png for r in rendered]
    (out / "summary.md").write_text(report.summary_markdown(run.results, env, run.samples,
                                                            [p.relative_to(out) for p in paths], REPORT_NAME))
    html.write(out / REPORT_NAME, [run], rendered)
    df = run.results
    progress.clear_status()
    if quiet:
        return
    print(report.console_table(df))
    ratios = report.ratio_table(df)
    if len(ratios):
        print("\nYOCO against the baseline (> 1 favours YOCO):")
        print(ratios.to_string(index=False, float_format=lambda v: f"{v:.3g}x"))
    found = verdicts.verdicts(df, run.samples)
    if found:
        print("\nDoes YOCO's saving hold here?")
        for v in found:
            print(f"  {v.verdict}: {v.claim}: {v.measured()}; expected {v.expected}")
    print(f"\nwrote {out / 'results.csv'}, {out / 'samples.csv'}, {out / 'env.json'}, {out / 'summary.md'}, "
          f"{out / REPORT_NAME}")
    for p in paths:
        print(f"wrote {p}")


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
        read_bandwidth_bytes_s=machine.get("read_bandwidth_bytes_s", math.nan),
        matmul_flops_s=rates.get(main_dtype, math.nan), matmul_flops_s_dtype=main_dtype,
        matmul_flops_s_by_dtype=rates, datasheet=machine.get("datasheet", {}), repeats=run.repeats,
        warmup=suite.warmup, processes=run.processes,
        time_budget_s=suite.time_budget_s, case_timeout_s=run.case_timeout_s,
        memory_cap_gb=suite.memory_cap_gb if device == "cuda" else None,
        shard=run.shard, only=run.only,
        threads_requested=run.threads, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        arch_modules=list(suite.arch_modules), arch_modules_cli=list(run.arch_modules_cli),
        cases=len(cases), isolation="one forked process per case (multiprocessing forkserver)",
        timing=("warm-up by time (>= 25 ms and >= 2 calls, the memory pass included); prefill: each repeat "
                "one prefill from position 0; decode: each sample >= 50 ms of passes of gen_len greedy steps "
                "from the prompt's end (rewinds off the clock); medians; ceilings as triton's do_bench, "
                "measured at the start and again at the end (ceilings_after, ceiling_drift)"),
        calibration="a fixed fp32 matmul + copy sized from the case, timed once before and once after "
                    "each case's timed phases (results.csv calibration_before_ms / calibration_after_ms)",
        memory_measurement=("CUDA: torch.cuda.max_memory_allocated / max_memory_reserved after empty_cache() and "
                            "a peak reset per phase; NVML device-wide used memory polled every 2 ms in a side "
                            "thread for its peak" if device == "cuda" else
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
