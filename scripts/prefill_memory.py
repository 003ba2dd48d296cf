"""Is a chunked prefill's memory bounded by the chunk? Measured on this CPU.

    python scripts/prefill_memory.py                         # small preset, chunk 1024, 8K..64K, 3 archs
    python scripts/prefill_memory.py --lengths 8192,65536 --live   # also torch's tensor accounting (slower)

Each (arch, length) runs in a fresh process (bench.measure.isolation, one thread): the model (fp32)
and a cache of the prompt's length are built, one short prefill warms up, then the process's peak
resident set is reset and one prefill of the whole prompt runs in chunks. `above` is that peak
minus the resident set just before it: what the prefill added on top of weights, cache, Python and
torch. With --live a second prefill counts the tensor bytes it allocates (LiveTensorBytes), and
`estimate` is bench.measure.footprint's meta-device figure for the same case. The last column is
`above` at each length over `above` at the first: under 1.10 from 8K to 64K is the claim (issue 11).
Memory, not time: a busy machine changes these little, but an idle one gives the cleanest figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/prefill_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--archs", default="yoco-gret,yoco-swa,transformer")
    parser.add_argument("--lengths", default="8192,16384,32768,65536", help="prompt lengths (comma list)")
    parser.add_argument("--chunk", type=int, default=1024, help="prefill chunk (tokens)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--live", action="store_true", help="also count tensor bytes (LiveTensorBytes; slower)")
    args = parser.parse_args(argv)
    if args.chunk < 1:
        parser.error(f"--chunk must be an integer >= 1, got {args.chunk}")

    from bench.measure import isolation
    from bench.measure.footprint import estimate_prefill, measure_prefill_memory

    lengths = [int(x) for x in args.lengths.split(",")]
    mib = 2**20
    print(f"prefill memory on this CPU: {args.preset}, fp32, batch {args.batch}, chunk {args.chunk}, one thread")
    print(f"{'arch':<12} {'tokens':>8} {'weights':>9} {'cache':>9} {'rss before':>11} {'above':>9}"
          f"{' live':>9} {'estimate':>9} {'above/first':>12}   (MiB)")
    worst = 0.0
    for arch in args.archs.split(","):
        first = None
        for n in lengths:
            answer = isolation.run_isolated(measure_prefill_memory, arch, args.preset, n, args.chunk, args.batch,
                                            "float32", None, args.live, threads=1)
            if answer[0] != "ok":
                print(f"{arch:<12} {n:>8} failed: {answer[1]}")
                continue
            r = answer[1]
            est = estimate_prefill(arch, args.preset, batch=args.batch, seq_len=n, chunk_size=args.chunk,
                                   dtype="float32")
            first = first or r["rss_above_bytes"]
            ratio = r["rss_above_bytes"] / first
            worst = max(worst, ratio)
            live = f"{r['live_peak_bytes'] / mib:>9.1f}" if "live_peak_bytes" in r else f"{'-':>9}"
            print(f"{arch:<12} {n:>8} {r['weight_bytes'] / mib:>9.1f} {r['cache_bytes'] / mib:>9.1f} "
                  f"{r['rss_before_bytes'] / mib:>11.1f} {r['rss_above_bytes'] / mib:>9.1f}{live} "
                  f"{est.activation_bytes / mib:>9.1f} {ratio:>12.3f}   [{r['memory_source']}]", flush=True)
    print(f"largest growth of the prefill's peak above weights and cache: {worst:.3f}x "
          f"({'within' if worst < 1.10 else 'NOT within'} 1.10x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
