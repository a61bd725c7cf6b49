"""Benchmark: retrieval metrics at scale (issue 6): a 100,000 x 100,000 retrieval in both
directions, chunked, against the 40 GB a dense float32 similarity matrix would take.

Synthetic embeddings (n x D, matched pairs correlated); reports wall time and the peak RSS of
the metric computation (Linux VmHWM, reset after the embeddings exist). Writes
benchmarks/results/evaluate.json and .md. Usage: python -m benchmarks.evaluate [--n 100000]"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from pipeline.evaluate.metrics import retrieval_metrics

RESULTS = Path(__file__).resolve().parent / "results"


def _mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1024)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.n, args.dim, generator=g)
    v = a + 2.0 * torch.randn(args.n, args.dim, generator=g)
    base = _mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")          # peak = from here on
    t0 = time.perf_counter()
    m = retrieval_metrics(a, v, n_official=args.n + args.n // 100, chunk=args.chunk)
    wall = time.perf_counter() - t0
    peak = _mib("VmHWM")
    r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
                    f"{torch.__version__}", "argv": argv if argv is not None else sys.argv[1:],
         "n": args.n, "dim": args.dim, "chunk": args.chunk, "wall_s": wall,
         "rss_before_mib": base, "peak_rss_mib": peak,
         "dense_matrix_gib": args.n * args.n * 4 / 2 ** 30, "metrics": m}
    md = [f"# Retrieval metrics at scale ({r['machine']})", "",
          f"{r['date']}. `python -m benchmarks.evaluate {' '.join(r['argv'])}`.", "",
          "| queries x candidates | D | chunk rows | wall s (both directions) | RSS before MiB | "
          "peak RSS MiB | dense float32 matrix |", "|---|---|---|---|---|---|---|",
          f"| {args.n:,} x {args.n:,} | {args.dim} | {args.chunk} | {wall:.1f} | {base:.0f} | "
          f"{peak:.0f} | {r['dense_matrix_gib']:.1f} GiB |", "",
          f"Peak memory stays {peak / 1024:.2f} GiB (the embeddings plus one {args.chunk} x "
          f"{args.n:,} block of scores), where the whole matrix would need "
          f"{r['dense_matrix_gib']:.0f} GiB. A->V R@1/5/10 (available): " + " / ".join(
              f"{m['available'][f'audio_to_video_R@{k}']:.4f}" for k in (1, 5, 10)) + ".", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "evaluate.json").write_text(json.dumps(r, indent=1) + "\n")
    (RESULTS / "evaluate.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
