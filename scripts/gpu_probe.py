"""Which SDPA kernel torch picks for every attention call of the GPU run, and why it refused the others.

    python scripts/gpu_probe.py                                # the GPU run's decode, prefill and bitnet suites
    python scripts/gpu_probe.py --suites gpu-long --max-seq-len 131072
    python scripts/gpu_probe.py --device cpu --suites my-tiny.toml --json probe.json   # the logic, on a CPU

For each distinct case of the suites (the BitNet setting aside: attention is the same) it builds
the case's model with 2 layers (attention shapes depend on heads, widths, dtype and lengths, not on
depth; YOCO keeps one self-decoder and one cross-decoder layer), runs one prefill of the case's
prompt and one decode step under bench.measure.attention.Recorder, and for every distinct SDPA
call asks torch which kernel it takes and, on CUDA, why each other kernel would not
(torch.backends.cuda.can_use_{flash,efficient,cudnn}_attention with debug=True, in torch's words).
FlexAttention and the gated-retention form are listed as the models call them. One block per
distinct call, with the cases that make it; --json writes the same records.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SUITES = "gpu-decode,gpu-prefill,gpu-bitnet"


@dataclasses.dataclass
class Call:
    call: str  # bench.measure.attention's description, e.g. "SDPA q 24x1 kv 8x4224 d128 bfloat16 mask(bool) gqa"
    kernel: str  # what torch picked ("" for non-SDPA calls: FlexAttention, gRet)
    phase: str  # prefill or decode
    refusals: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    cases: list[str] = dataclasses.field(default_factory=list)


def probe_cases(suites: list[str], max_seq_len: int | None = None):
    """The distinct cases of the suites, BitNet and the decode mode set aside (the probe runs the
    eager step, whose kernels a graph replays), in suite order."""
    from bench.suite import load_suite

    seen, cases = set(), []
    for name in suites:
        for case in load_suite(name).cases:
            case = dataclasses.replace(case, bitnet="none", decode_mode="eager")
            if (max_seq_len and case.seq_len > max_seq_len) or case.case_id in seen:
                continue
            seen.add(case.case_id)
            cases.append(case)
    return cases


def build_two_layers(case, device: str):
    """The case's model with 2 layers, in its dtype, on the device."""
    from bench import archs
    from bench.measure.roofline import DTYPES
    from yoco.config import PRESETS

    overrides = dict(n_layers=2, backend=case.backend)
    if case.seq_len + case.gen_len > PRESETS[case.preset]["max_seq_len"]:
        overrides["max_seq_len"] = case.seq_len + case.gen_len
    model = archs.get(case.arch).build(case.preset, device=device, dtype=DTYPES[case.dtype], window=case.window,
                                       **overrides)
    return model.eval()


def probe_case(case, device: str) -> list[Call]:
    """One prefill of the case's prompt and one decode step, each under a Recorder."""
    import torch

    from bench.measure.attention import Recorder

    model = build_two_layers(case, device)
    cache = model.allocate_cache(case.batch, case.seq_len + case.gen_len)
    tokens = torch.randint(0, model.config.vocab_size, (case.batch, case.seq_len), device=device)
    calls = []
    with torch.inference_mode():
        with Recorder(explain=True) as prefill:
            nxt = model.prefill(tokens, cache).argmax(-1)
        with Recorder(explain=True) as decode:
            model.decode_step(nxt, cache)
    for phase, rec in (("prefill", prefill), ("decode", decode)):
        for (call, kernel) in rec.calls:
            calls.append(Call(call, kernel, phase, rec.reasons.get(call, {}), [case.case_id]))
    del model, cache
    if device == "cuda":
        torch.cuda.empty_cache()
    return calls


def merge(calls: list[Call]) -> list[Call]:
    """One record per distinct (call, kernel, phase), the cases that make it joined."""
    out: dict[tuple, Call] = {}
    for c in calls:
        key = (c.call, c.kernel, c.phase)
        if key in out:
            out[key].cases += [x for x in c.cases if x not in out[key].cases]
        else:
            out[key] = dataclasses.replace(c, cases=list(c.cases))
    return list(out.values())


def render(calls: list[Call], header: str) -> str:
    lines = [header, ""]
    for c in calls:
        lines.append(f"[{c.phase}] {c.call}" + (f"  ->  {c.kernel}" if c.kernel else ""))
        for name, reasons in c.refusals.items():
            if name == c.kernel:
                continue
            lines.append(f"    {name}: " + ("would take it too" if not reasons else "refused: " + " | ".join(reasons)))
        lines.append(f"    made by: {', '.join(c.cases)}")
    return "\n".join(lines)


def environment_line(device: str) -> str:
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    enabled = []
    if device == "cuda":
        b = torch.backends.cuda
        enabled = [n for n, f in (("flash", b.flash_sdp_enabled), ("efficient", b.mem_efficient_sdp_enabled),
                                  ("cudnn", getattr(b, "cudnn_sdp_enabled", None)), ("math", b.math_sdp_enabled))
                   if f is not None and f()]
    return (f"probe: torch {torch.__version__} on {name} ({device})"
            + (f"; SDPA kernels enabled: {', '.join(enabled)}" if enabled else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_probe.py", description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=DEFAULT_SUITES, help=f"comma list of suite names or .toml files "
                        f"(default {DEFAULT_SUITES})")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--max-seq-len", type=int, default=None, help="leave out cases with longer prompts")
    parser.add_argument("--json", type=Path, default=None, help="also write the records here")
    args = parser.parse_args(argv)

    import torch

    from bench.suite import UsageError

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but no CUDA GPU is visible (use --device cpu)", file=sys.stderr)
        return 2
    try:
        cases = probe_cases([s.strip() for s in args.suites.split(",") if s.strip()], args.max_seq_len)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = environment_line(args.device)
    print(f"{header}\n{len(cases)} cases (2-layer models, one prefill and one decode step each)", flush=True)
    calls, failed = [], 0
    for case in cases:
        try:
            found = probe_case(case, args.device)
        except Exception as e:  # one case's failure (a missing package, memory): say so, go on
            failed += 1
            print(f"  {case.case_id}: could not probe: {type(e).__name__}: {' '.join(str(e).split())[:300]}",
                  flush=True)
            continue
        calls += found
        print(f"  {case.case_id}: {len(found)} distinct calls", flush=True)
    merged = merge(calls)
    print()
    print(render(merged, f"{len(merged)} distinct attention calls"))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(c) for c in merged], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
