"""Benchmark: the vector index for search (pipeline/search/ann.py) at 1 M vectors, exact vs IVF.

Synthetic embeddings with neighbour structure (seeded): a mixture of `--clusters` Gaussian
clusters in `--dim` dimensions grouped under 64 topics (overlapping clusters, anisotropic
noise, Dirichlet-varied cluster sizes) with per-vector norms varied log-normally, float32. Queries are drawn the same way from
another seed (not in the set). Each kind runs in a fresh process that generates the vectors,
builds the index, saves it, loads it back, and searches:

  build    seconds (and the IVF parameters the build chose, nprobe calibrated on its own)
  batch    all queries in one search() call: ms per query
  single   the first `--single` queries one search() call each: p50 / p90 ms
  disk     index.faiss + ann.json bytes, load seconds
  memory   peak RSS (ru_maxrss) of that process, its RSS after the vectors were generated, and
           the vectors' own bytes
  sweep    (ivf) batch latency at other nprobe values

The driver computes recall@10 of the IVF results against the exact ones. Acceptance: recall@10
>= 0.95 at the calibrated nprobe. Writes benchmarks/results/ann.json and ann.md. Usage:
    python -m benchmarks.ann [--n 1000000] [--dim 256] [--queries 1000] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.child import run_child

RESULTS = Path(__file__).resolve().parent / "results"
ACCEPT_RECALL = 0.95
K = 10
CHUNK = 65_536
SWEEP = (1, 2, 4, 8, 16, 32, 64, 128)


def peak_mib() -> float:
    """This process's peak RSS so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's current RSS, MiB (from /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


# --------------------------------------------------------------------------- the input


class Mixture:
    """A seeded mixture of Gaussian clusters that embeddings resemble: `topics` unit directions,
    each of the `clusters` centres 0.7 of a topic plus 0.71 of its own direction (clusters that
    overlap, as neighbours in real embeddings straddle clusters); an anisotropic space (axis
    scales falling as axis^-0.3); cluster weights from a Dirichlet(2); per-cluster noise 0.6-1.2
    of the centre's norm; per-vector norm scale log-normal(0, 0.25)."""

    TOPIC_SHARE, NOISE, DECAY = 0.7, 1.2, 0.3

    def __init__(self, dim: int, clusters: int, seed: int, topics: int = 64) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        axis = np.arange(1, dim + 1, dtype=np.float32) ** -self.DECAY
        self.axis = axis / np.sqrt((axis ** 2).mean())                  # (dim,), mean square 1

        def unit(m: int) -> np.ndarray:
            v = rng.standard_normal((m, dim), dtype=np.float32) * self.axis
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        a = self.TOPIC_SHARE
        centres = a * unit(topics)[rng.integers(0, topics, clusters)] \
            + np.sqrt(1 - a * a) * unit(clusters)
        self.dirs = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        self.weights = rng.dirichlet(np.full(clusters, 2.0))
        self.spread = (self.NOISE * rng.uniform(0.5, 1.0, clusters) / np.sqrt(dim)) \
            .astype(np.float32)

    def draw(self, n: int, seed: int) -> np.ndarray:
        """(n, dim) float32, written CHUNK rows at a time into one array."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, CHUNK):
            m = min(n, s + CHUNK) - s
            lab = rng.choice(len(self.weights), m, p=self.weights)
            block = out[s:s + m]
            block[:] = rng.standard_normal((m, self.dim), dtype=np.float32)
            block *= self.axis
            block *= self.spread[lab, None]
            block += self.dirs[lab]
            block *= rng.lognormal(0.0, 0.25, (m, 1)).astype(np.float32)
        return out


def data(n: int, dim: int, clusters: int, queries: int, seed: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """The benchmark's vectors (n, dim) and queries (queries, dim), both float32."""
    mix = Mixture(dim, clusters, seed)
    return mix.draw(n, seed + 1), mix.draw(queries, seed + 2)


# --------------------------------------------------------------------------- child


def run_kind(kind: str, args: argparse.Namespace, work: Path) -> dict:
    """Generate, build `kind`, save, load, search, in this process -> its numbers; writes the
    batch result ids to work/<kind>-ids.npy (and work/ivf-ids-<nprobe>.npy for the sweep)."""
    from pipeline.search.ann import VectorIndex
    base = rss_mib()
    t0 = time.perf_counter()
    x, q = data(args.n, args.dim, args.clusters, args.queries, args.seed)
    gen_s = time.perf_counter() - t0
    after_data = rss_mib()
    t0 = time.perf_counter()
    built = VectorIndex.build(x, kind=kind, seed=args.seed)
    build_s = time.perf_counter() - t0
    folder = work / kind
    t0 = time.perf_counter()
    built.save(folder)
    save_s = time.perf_counter() - t0
    del built
    t0 = time.perf_counter()
    index = VectorIndex.load(folder)
    load_s = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in folder.iterdir())
    del x                                     # searching needs only the loaded index

    def batch() -> tuple[float, np.ndarray]:
        t = time.perf_counter()
        _, ids = index.search(q, K)
        return (time.perf_counter() - t) * 1e3 / len(q), ids

    batch_ms, ids = batch()
    np.save(work / f"{kind}-ids.npy", ids)
    lat = []
    for j in range(min(args.single, len(q))):
        t = time.perf_counter()
        index.search(q[j:j + 1], K)
        lat.append((time.perf_counter() - t) * 1e3)
    sweep = {}
    if kind == "ivf":
        chosen = index.nprobe
        for p in sorted({*SWEEP, chosen}):
            if p <= index.params["nlist"]:
                index.nprobe = p
                ms, sweep_ids = batch()
                np.save(work / f"ivf-ids-{p}.npy", sweep_ids)
                sweep[str(p)] = {"batch_ms_per_query": ms}
        index.nprobe = chosen
    return {"kind": index.kind, "n": index.n, "dim": index.dim, "params": index.params,
            "generate_s": gen_s, "build_s": build_s, "save_s": save_s, "load_s": load_s,
            "index_bytes": disk, "vectors_bytes": args.n * args.dim * 4,
            "batch_ms_per_query": batch_ms, "single_queries": len(lat),
            "single_ms_p50": float(np.percentile(lat, 50)),
            "single_ms_p90": float(np.percentile(lat, 90)), "sweep": sweep,
            "baseline_mib": base, "after_data_mib": after_data, "peak_mib": peak_mib()}


# --------------------------------------------------------------------------- results


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    from pipeline.search.ann import recall_at_k
    return recall_at_k(found, truth)


def machine() -> dict:
    import faiss
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
            "faiss_build": faiss.get_compile_options().strip() or "generic",
            "load_avg_1min": os.getloadavg()[0],
            "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30}


def _mb(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def markdown(res: dict) -> str:
    """Tables and reading, every number from `res`."""
    m, st, runs, acc = res["machine"], res["settings"], res["runs"], res["acceptance"]
    kinds = [k for k in ("exact", "ivf") if k in runs]

    def row(name: str, fn) -> str:
        cells = []
        for k in kinds:
            try:
                cells.append(fn(runs[k]))
            except (KeyError, TypeError):
                cells.append("-")
        return f"| {name} | " + " | ".join(cells) + " |"

    ivf = runs.get("ivf", {})
    p = ivf.get("params", {})
    lines = [
        "# Vector index for search: exact vs IVF at "
        f"{st['n']:,} vectors", "",
        f"{m['date']}, {m['cpu_count']} CPUs shared with other jobs (load average "
        f"{m['load_avg_1min']:.1f} at the start), faiss {m['faiss']} ({m['faiss_build']} build, "
        f"{m['faiss_threads']} OpenMP threads), {m['mem_total_gib']:.0f} GiB, Python {m['python']}, numpy {m['numpy']}. "
        f"Generated by `python -m benchmarks.ann{' ' + ' '.join(res['argv']) if res['argv'] else ''}`.",
        "", "| | " + " | ".join(kinds) + " |", "|---|" + "--:|" * len(kinds),
        row("vectors (dim)", lambda r: f"{r['n']:,} ({r['dim']})"),
        row("build s", lambda r: f"{r['build_s']:.1f}"),
        row("batch search ms / query", lambda r: f"{r['batch_ms_per_query']:.3f}"),
        row("one-at-a-time ms p50 (p90)", lambda r: f"{r['single_ms_p50']:.2f} "
                                                    f"({r['single_ms_p90']:.2f})"),
        row(f"recall@{K} vs exact", lambda r: f"{r['recall_at_10']:.4f}"),
        row("index on disk", lambda r: _mb(r["index_bytes"])),
        row("load s", lambda r: f"{r['load_s']:.2f}"),
        row("vectors' own size", lambda r: _mb(r["vectors_bytes"])),
        row("RSS after generating the vectors MiB", lambda r: f"{r['after_data_mib']:.0f}"),
        row("peak RSS MiB", lambda r: f"{r['peak_mib']:.0f}"),
        ""]
    if ivf.get("sweep"):
        keys = sorted(ivf["sweep"], key=int)
        lines += [f"IVF with other nprobe (of {p.get('nlist')} lists; the build chose "
                  f"{p.get('nprobe')}):", "",
                  "| nprobe | " + " | ".join(keys) + " |", "|---|" + "--:|" * len(keys),
                  "| recall@10 | " + " | ".join(f"{ivf['sweep'][k]['recall_at_10']:.3f}"
                                                for k in keys) + " |",
                  "| batch ms / query | " + " | ".join(
                      f"{ivf['sweep'][k]['batch_ms_per_query']:.3f}" for k in keys) + " |", ""]
    lines.append(
        f"What was measured: {st['n']:,} synthetic float32 embeddings of dimension {st['dim']} "
        f"(a seeded mixture of {st['clusters']:,} overlapping Gaussian clusters under 64 topics, "
        f"anisotropic noise, log-normal norms; seed "
        f"{st['seed']}) and {st['queries']:,} queries drawn the same way but not in the set; "
        "metric inner product, k = 10. Each kind ran in a fresh process that generated the "
        "vectors, built the index (exact: faiss IndexFlatIP; ivf: IVF-Flat with "
        f"{p.get('nlist', '?')} lists, k-means on {p.get('train_points', 0):,} sampled vectors, "
        f"nprobe {p.get('nprobe', '?')} calibrated at build time to recall "
        f"{p.get('calibration', {}).get('target_recall', '?')} on database vectors), saved and "
        "loaded it, then searched: batch = all queries in one call, one-at-a-time = the first "
        f"{st['single']} queries one call each. Recall@10 is the fraction of the exact top-10 "
        "ids the IVF search returned. Peak RSS is ru_maxrss of that process: it holds the "
        "vectors and the index at once during the build (the index keeps its own copy).")
    lines += ["", "## Acceptance", ""]
    if acc["recall"] is None:
        lines.append(f"- **fail**: {acc['why']}.")
    else:
        lines.append(f"- Recall@10 of the IVF index vs exact at {st['n']:,} vectors: "
                     f"{acc['recall']:.4f} (needs >= {ACCEPT_RECALL}): "
                     f"**{'pass' if acc['pass'] else 'fail'}**.")
    errors = [f"{k}: {r['error']}" for k, r in runs.items() if "error" in r]
    if errors:
        lines.append("- Failed: " + "; ".join(errors) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ann", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors indexed")
    ap.add_argument("--dim", type=int, default=256, help="their dimension")
    ap.add_argument("--clusters", type=int, default=4096, help="Gaussian clusters in the mixture")
    ap.add_argument("--queries", type=int, default=1000, help="queries searched in one batch")
    ap.add_argument("--single", type=int, default=200, help="queries searched one at a time")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data and the build")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="limit per child process")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--child", choices=("exact", "ivf"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.result.write_text(json.dumps(run_kind(args.child, args, args.work)))
        return 0

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    res: dict[str, Any] = {
        "machine": machine(), "argv": argv if argv is not None else sys.argv[1:],
        "settings": {"n": args.n, "dim": args.dim, "clusters": args.clusters,
                     "queries": args.queries, "single": args.single, "seed": args.seed,
                     "k": K, "accept_recall": ACCEPT_RECALL}, "runs": {}}
    work = Path(tempfile.mkdtemp(prefix="avl-ann-"))
    try:
        for kind in ("exact", "ivf"):
            cmd = ["--child", kind, "--work", str(work)] + [
                f"--{a}={getattr(args, a)}" for a in ("n", "dim", "clusters", "queries",
                                                      "single", "seed")]
            r = res["runs"][kind] = run_child("benchmarks.ann", cmd, args.timeout_s)
            if "error" in r:
                say(f"{kind}: FAILED {r}")
                continue
            say(f"{kind}: build {r['build_s']:.1f} s, batch {r['batch_ms_per_query']:.3f} ms/query, "
                f"single p50 {r['single_ms_p50']:.2f} ms, disk {_mb(r['index_bytes'])}, "
                f"peak RSS {r['peak_mib']:.0f} MiB")
        ok = all("error" not in r for r in res["runs"].values())
        if ok:
            truth = np.load(work / "exact-ids.npy")
            res["runs"]["exact"]["recall_at_10"] = 1.0
            ivf = res["runs"]["ivf"]
            ivf["recall_at_10"] = recall(np.load(work / "ivf-ids.npy"), truth)
            for p, s in ivf["sweep"].items():
                s["recall_at_10"] = recall(np.load(work / f"ivf-ids-{p}.npy"), truth)
            say(f"ivf recall@{K} vs exact: {ivf['recall_at_10']:.4f} "
                f"(nprobe {ivf['params']['nprobe']} of {ivf['params']['nlist']})")
            res["acceptance"] = {"recall": ivf["recall_at_10"], "limit": ACCEPT_RECALL,
                                 "pass": ivf["recall_at_10"] >= ACCEPT_RECALL}
        else:
            res["acceptance"] = {"recall": None, "limit": ACCEPT_RECALL, "pass": False,
                                 "why": "a kind failed to run"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ann.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "ann.md").write_text(markdown(res))
    say(f"acceptance: {'pass' if res['acceptance']['pass'] else 'FAIL'}; wrote "
        f"{args.out / 'ann.json'} and {args.out / 'ann.md'}")
    return 0 if res["acceptance"]["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
