"""Where one decode step's time goes: every kernel the step launches, by name, with its time.

    python scripts/decode_profile.py OUT                                   # 3b, 4K context, bf16, cuda
    python scripts/decode_profile.py OUT --backend torch,splitkv --arch yoco-swa
    python scripts/decode_profile.py OUT --device cpu --preset tiny --seq-len 256 --dtype float32   # plumbing

For each backend: builds the case's model (bench.measure.runner.build_model), prefills a random
prompt, then runs --steps eager decode steps under torch.profiler. On CUDA it also times the step
captured as a CUDA graph (events around --steps replays): the kernels' own time per step against
the captured step's wall time tells launch gaps from slow kernels. On a CPU the "kernels" are
aten ops (their self time), for checking the plumbing.

Writes OUT/decode-profile.csv (one row per backend and kernel: calls and microseconds per step,
share of the step's kernel time) and OUT/decode-profile.md (per backend: step times, kernel time,
the bytes one step must read over kernel time, and the top kernels).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOP = 15  # kernels listed per backend in the markdown


def kernel_times(events, device: str) -> dict[str, list[float]]:
    """name -> [calls, microseconds] over the profiled steps: CUDA kernels' durations, or on a CPU
    the aten ops' self times (which partition the profiled time)."""
    from torch.autograd import DeviceType

    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        if device == "cuda":
            if e.device_type != DeviceType.CUDA:
                continue
            us = e.time_range.end - e.time_range.start
        else:
            if e.device_type != DeviceType.CPU or not e.name.startswith("aten::"):
                continue
            us = e.self_cpu_time_total
        out[e.name][0] += 1
        out[e.name][1] += us
    return dict(out)


def profile_backend(case, device: str, steps: int) -> tuple[dict, list[dict]]:
    """(summary, kernel rows) for one case."""
    import torch

    from bench.measure.runner import build_model

    model = build_model(case, device)
    cache = model.allocate_cache(case.batch, case.seq_len + 2 * steps + 8)
    tokens = torch.randint(0, model.config.vocab_size, (case.batch, case.seq_len), device=device)
    nexts = torch.randint(0, model.config.vocab_size, (steps, case.batch), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.inference_mode():
        model.prefill(tokens, cache)
        for nxt in nexts[:2]:  # warm-up: lazy inits, Triton's kernel cache
            model.decode_step(nxt, cache)
        sync()
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for nxt in nexts:
                model.decode_step(nxt, cache)  # no host-side token check: the step's kernels only
            sync()
            eager_ms = (time.perf_counter() - t0) * 1e3 / steps  # under the profiler: an upper bound
        graph_ms = float("nan")
        if device == "cuda":
            model.prefill(tokens, cache)
            step = model.capture_decode(cache)
            model.prefill(tokens, cache)
            for nxt in nexts[:3]:
                step(nxt)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for nxt in nexts:
                step(nxt)
            end.record()
            sync()
            graph_ms = start.elapsed_time(end) / steps
    times = kernel_times(prof.events(), device)
    kernel_us = sum(us for _, us in times.values()) / steps
    step_bytes = model.decode_bytes_per_step(case.batch, case.seq_len + steps)
    rows = [dict(backend=case.backend, kernel=name, calls_per_step=calls / steps, us_per_step=us / steps,
                 share=us / steps / kernel_us if kernel_us else float("nan"))
            for name, (calls, us) in sorted(times.items(), key=lambda kv: -kv[1][1])]
    summary = dict(case_id=case.case_id, backend=case.backend, eager_profiled_ms=eager_ms, graph_ms=graph_ms,
                   kernel_ms=kernel_us / 1e3, kernels_per_step=sum(c for c, _ in times.values()) / steps,
                   step_bytes=step_bytes, kernel_bandwidth_GBps=step_bytes / (kernel_us * 1e-6) / 1e9
                   if kernel_us else float("nan"))
    del model, cache
    if device == "cuda":
        torch.cuda.empty_cache()
    return summary, rows


def _ms(value: float) -> str:
    return "- (CUDA only)" if value != value else f"{value:.3f} ms"


def markdown(summaries: list[dict], rows: list[dict]) -> str:
    lines = ["# One decode step, kernel by kernel (scripts/decode_profile.py)", ""]
    for s in summaries:
        lines += [f"## `{s['case_id']}`", "",
                  f"- captured step (CUDA graph): {_ms(s['graph_ms'])}; eager step under the profiler: "
                  f"{_ms(s['eager_profiled_ms'])}",
                  f"- kernel time: {s['kernel_ms']:.3f} ms per step in {s['kernels_per_step']:.0f} kernels; the "
                  f"{s['step_bytes'] / 1e9:.2f} GB one step must read, over that time: "
                  f"{s['kernel_bandwidth_GBps']:.0f} GB/s",
                  "", "| kernel | calls / step | us / step | share |", "|---|---|---|---|"]
        mine = [r for r in rows if r["backend"] == s["backend"]][:TOP]
        lines += [f"| `{r['kernel'][:90]}` | {r['calls_per_step']:g} | {r['us_per_step']:.1f} | {r['share']:.1%} |"
                  for r in mine]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--arch", default="transformer")
    p.add_argument("--preset", default="3b")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--backend", default="splitkv,torch", help="comma-separated: one profile each, in order")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    if args.steps < 1 or args.seq_len < 1:
        p.error(f"--steps and --seq-len must be >= 1, got {args.steps} and {args.seq_len}")

    import pandas as pd
    import torch

    from bench import suite

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --device cpu for the plumbing)")
    args.out.mkdir(parents=True, exist_ok=True)
    summaries, rows = [], []
    for backend in args.backend.split(","):
        case = suite.Case(arch=args.arch, preset=args.preset, batch=1, seq_len=args.seq_len, gen_len=args.steps,
                          window=args.window if args.arch in ("yoco-swa", "transformer-swa") else None,
                          bitnet="none", dtype=args.dtype, backend=backend, decode_mode="eager")
        s, r = profile_backend(case, args.device, args.steps)
        summaries.append(s)
        rows += r
        print(f"{backend}: graph {_ms(s['graph_ms'])}, kernels {s['kernel_ms']:.3f} ms "
              f"({s['kernels_per_step']:.0f} per step), {s['kernel_bandwidth_GBps']:.0f} GB/s", flush=True)
        pd.DataFrame(rows).to_csv(args.out / "decode-profile.csv", index=False)  # each backend kept as it ends
        (args.out / "decode-profile.md").write_text(markdown(summaries, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
