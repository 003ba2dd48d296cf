"""Time the gRet chunk form at several chunk sizes (how DEFAULT_CHUNK_SIZE was chosen).

    python scripts/gret_chunk_sizes.py [--device cuda] [--dtype bfloat16] [--T 8192] [--heads 2] [--dim 128]

Sizes are interleaved round by round (a slow moment hits every size alike); prints the median ms.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from yoco.ops.retention import gated_retention


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", help="input dtype: float32 or bfloat16")
    p.add_argument("--T", type=int, default=8192, help="sequence length")
    p.add_argument("--heads", type=int, default=2, help="heads (the small preset has 2 of width 128)")
    p.add_argument("--dim", type=int, default=128, help="head width")
    p.add_argument("--sizes", default="32,64,128,256", help="chunk sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    q, k, v = (torch.randn(1, args.T, args.heads, args.dim, device=args.device, dtype=dtype) for _ in range(3))
    g = F.logsigmoid(torch.randn(1, args.T, args.heads, device=args.device)) / 16
    sizes = [int(s) for s in args.sizes.split(",")]
    times = {c: [] for c in sizes}

    def run(c):
        gated_retention(q, k, v, g, mode="chunk", chunk_size=c)
        if args.device == "cuda":
            torch.cuda.synchronize()

    for c in sizes:
        run(c)  # warm-up
    for _ in range(args.rounds):
        for c in sizes:
            t0 = time.perf_counter()
            run(c)
            times[c].append((time.perf_counter() - t0) * 1e3)
    for c in sizes:
        print(f"chunk {c:>4}: {statistics.median(times[c]):8.1f} ms (median of {args.rounds})")


if __name__ == "__main__":
    main()
