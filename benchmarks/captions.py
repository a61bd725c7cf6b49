"""Benchmark: streaming HowTo100M's caption.json into a caption store (pipeline/text/captions.py).

For each size (default ~10 MB and ~1 GB) a synthetic caption.json is written to disk as it is
generated (seeded; ~100 captions per video, 2-6 s each, 3-12 words, some overlap, 0.2 % empty
spans, some non-ASCII and escaped text). Then, each in a fresh subprocess:

  ingest   ingest_captions(source, store): wall and CPU seconds, MB/s, peak RSS (ru_maxrss of
           that process) and the RSS after its imports (the baseline); its counts against what
           the generator wrote
  read     CaptionStore(store), then `--reads` random videos through get(): per-video latency
           (first reads of a row group mostly: the cache holds 8 of them)

Acceptance: the peak RSS of the largest ingest is within 20 % of the smallest one's (memory
flat in the file's size). Writes benchmarks/results/captions.json and captions.md; the
generated files are deleted unless --keep. Usage:
    python -m benchmarks.captions [--sizes 10,1000] [--reads 1000] [--out DIR] [--work DIR]
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
ROOT = Path(__file__).resolve().parents[1]
SIZES_MB = (10.0, 1000.0)
LIMIT = 1.20                  # largest peak RSS / smallest peak RSS must stay at or below this
EMPTY_SPAN = 0.002            # fraction of captions written with end == start
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# single words that need care: non-ASCII, JSON escapes (quote, backslash, a control character)
WORDS_EXTRA = ["café", "jalapeño", "crème", "brûlée", "naïve", "über", "piñata", "½", "日本",
               '"quoted"', "back\\slash", "bell\x07", "emoji😀"]


def peak_mib() -> float:
    """This process's peak RSS so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the input


def _vocab(rng: np.random.Generator, n: int = 3000) -> list[str]:
    letters = np.array(list("etaoinshrdlcumwfgypbvk"))
    p = np.linspace(2.0, 0.5, len(letters))
    p /= p.sum()
    words = ["".join(rng.choice(letters, int(rng.integers(2, 9)), p=p)) for _ in range(n)]
    return words + WORDS_EXTRA + ["i'm", "don't", "it's", "we're"]


def _video_id(rng: np.random.Generator, i: int) -> str:
    """11 characters like a YouTube id, unique per i (its last 4 encode i in base 64)."""
    head = "".join(ID_CHARS[k] for k in rng.integers(0, 64, 7))
    return head + "".join(ID_CHARS[(i >> s) & 63] for s in (18, 12, 6, 0))


def generate(path: Path, target_bytes: int, seed: int = 0) -> dict:
    """Writes a synthetic caption.json of about `target_bytes` to `path`, one video at a time
    -> what it wrote: videos, captions, empty_span (captions with end == start), bytes."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng)
    pool = []                               # JSON-encoded caption texts, 3-12 words
    for _ in range(20000):
        k = int(rng.integers(3, 13))
        pool.append(json.dumps(" ".join(vocab[j] for j in rng.integers(0, len(vocab), k)),
                               ensure_ascii=bool(rng.random() < 0.5)))
    pool_arr = np.array(pool, dtype=object)
    videos = captions = empty = 0
    written = 1
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("{")
        while written < target_bytes - 1 or videos == 0:
            n = int(rng.integers(50, 151))
            dur = rng.uniform(2.0, 6.0, n)
            gap = rng.uniform(-0.5, 1.0, n)
            starts = np.round(rng.uniform(0.0, 3.0) + np.concatenate([[0.0],
                                                                     np.cumsum(dur + gap)[:-1]]),
                              3)
            ends = np.round(starts + dur, 3)
            zero = rng.random(n) < EMPTY_SPAN
            ends[zero] = starts[zero]
            texts = pool_arr[rng.integers(0, len(pool), n)]
            s = (("," if videos else "") + f'"{_video_id(rng, videos)}": {{"start": ['
                 + ", ".join(map(repr, starts.tolist())) + '], "end": ['
                 + ", ".join(map(repr, ends.tolist())) + '], "text": ['
                 + ", ".join(texts.tolist()) + "]}")
            f.write(s)
            written += len(s.encode("utf-8"))
            videos += 1
            captions += n
            empty += int(zero.sum())
        f.write("}")
    return {"videos": videos, "captions": captions, "empty_span": empty,
            "bytes": path.stat().st_size, "seed": seed}


# --------------------------------------------------------------------------- children


def _setup_child() -> None:
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_ingest(src: Path, store: Path) -> dict:
    """ingest_captions in this process -> its numbers."""
    _setup_child()
    from pipeline.text.captions import ingest_captions
    base = peak_mib()
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = ingest_captions(src, store, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    size = src.stat().st_size
    return {"wall_s": wall, "cpu_s": cpu, "baseline_mib": base, "peak_mib": peak_mib(),
            "mb_per_s": size / 1e6 / wall, "counts": report["counts"],
            "skipped": report["skipped"],
            "store_bytes": sum(p.stat().st_size for p in store.iterdir() if p.is_file())}


def run_read(store: Path, reads: int, seed: int) -> dict:
    """CaptionStore(store) and `reads` random get()s in this process -> latencies."""
    _setup_child()
    from pipeline.text.captions import CaptionStore
    base = peak_mib()
    t0 = time.perf_counter()
    cs = CaptionStore(store)
    open_s = time.perf_counter() - t0
    ids = cs.ids()
    pick = np.random.default_rng(seed).integers(0, len(ids), reads)
    lat, captions = [], 0
    for i in pick.tolist():
        t0 = time.perf_counter()
        starts, ends, texts = cs.get(ids[i])
        lat.append(time.perf_counter() - t0)
        captions += len(texts)
        assert len(starts) == len(ends) == len(texts) > 0
    ms = np.array(lat) * 1e3
    return {"open_s": open_s, "videos": len(cs), "reads": reads, "captions_read": captions,
            "row_groups": sum(s["row_groups"] for s in cs.report["shards"]),
            "cache_groups": cs.CACHE_GROUPS,
            "ms_mean": float(ms.mean()), "ms_median": float(np.median(ms)),
            "ms_p90": float(np.percentile(ms, 90)), "ms_p99": float(np.percentile(ms, 99)),
            "ms_max": float(ms.max()), "baseline_mib": base, "peak_mib": peak_mib()}


def _child(argv: list[str], timeout_s: float) -> dict:
    """`python -m benchmarks.captions <argv>` in a fresh process -> the JSON it wrote."""
    return run_child("benchmarks.captions", argv, timeout_s)


# --------------------------------------------------------------------------- results


def machine() -> dict:
    import ijson
    import pyarrow
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "pyarrow": pyarrow.__version__,
            "ijson": f"{ijson.__version__} ({ijson.backend})",
            "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30}


def acceptance(runs: dict) -> dict:
    """Peak RSS of the largest ingest over the smallest's, against LIMIT."""
    ok = {k: r for k, r in runs.items() if "error" not in r.get("ingest", {"error": 1})}
    if len(ok) < 2:
        return {"ratio": None, "limit": LIMIT, "pass": False,
                "why": "fewer than two sizes ingested"}
    small = min(ok, key=lambda k: ok[k]["generate"]["bytes"])
    big = max(ok, key=lambda k: ok[k]["generate"]["bytes"])
    ratio = ok[big]["ingest"]["peak_mib"] / ok[small]["ingest"]["peak_mib"]
    return {"small": small, "big": big, "ratio": ratio, "limit": LIMIT,
            "pass": ratio <= LIMIT}


def _mb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def markdown(res: dict) -> str:
    """Tables and reading, every number from `res`."""
    m, runs, acc = res["machine"], res["runs"], res["acceptance"]
    keys = sorted(runs, key=lambda k: runs[k]["generate"]["bytes"])
    head = "| | " + " | ".join(_mb(runs[k]["generate"]["bytes"]) for k in keys) + " |"
    rule = "|---|" + "--:|" * len(keys)

    def row(name: str, fn) -> str:
        cells = []
        for k in keys:
            try:
                cells.append(fn(runs[k]))
            except (KeyError, TypeError):
                cells.append("-")
        return f"| {name} | " + " | ".join(cells) + " |"

    lines = [
        "# Streaming caption.json into a caption store", "",
        f"{m['date']}, {m['cpu_count']} CPUs, {m['mem_total_gib']:.0f} GiB, Python "
        f"{m['python']}, pyarrow {m['pyarrow']}, ijson {m['ijson']}. Generated by `python -m "
        f"benchmarks.captions{' ' + ' '.join(res['argv']) if res.get('argv') else ''}`; "
        f"synthetic caption.json (seed {res['settings']['seed']}): ~100 captions per video, "
        "2-6 s, 3-12 words, 0.2 % empty spans. Each ingest and each read run in a fresh "
        "process; peak RSS is ru_maxrss there, the baseline that process after its imports.",
        "", "## Ingest", "", head, rule,
        row("videos", lambda r: f"{r['generate']['videos']:,}"),
        row("captions", lambda r: f"{r['generate']['captions']:,}"),
        row("generate s", lambda r: f"{r['generate']['wall_s']:.1f}"),
        row("ingest s (CPU s)", lambda r: f"{r['ingest']['wall_s']:.1f} "
                                          f"({r['ingest']['cpu_s']:.1f})"),
        row("MB/s", lambda r: f"{r['ingest']['mb_per_s']:.1f}"),
        row("µs per caption",
            lambda r: f"{1e6 * r['ingest']['wall_s'] / r['generate']['captions']:.2f}"),
        row("peak RSS MiB (baseline)", lambda r: f"{r['ingest']['peak_mib']:.0f} "
                                                 f"({r['ingest']['baseline_mib']:.0f})"),
        row("store size / source",
            lambda r: f"{r['ingest']['store_bytes'] / r['generate']['bytes']:.2f}"),
        row("shards", lambda r: str(r["ingest"]["counts"]["shards"])),
        row("counts match the generator", lambda r: "yes" if r["match"] else "**no**"),
        "", "## get() of random videos", "", head, rule,
        row("reads", lambda r: str(r["read"]["reads"])),
        row("row groups in the store (cached)", lambda r: f"{r['read']['row_groups']} "
                                                          f"({r['read']['cache_groups']})"),
        row("open s", lambda r: f"{r['read']['open_s']:.3f}"),
        row("ms median", lambda r: f"{r['read']['ms_median']:.2f}"),
        row("ms p90", lambda r: f"{r['read']['ms_p90']:.2f}"),
        row("ms p99", lambda r: f"{r['read']['ms_p99']:.2f}"),
        row("ms mean", lambda r: f"{r['read']['ms_mean']:.2f}"),
        row("peak RSS MiB (baseline)", lambda r: f"{r['read']['peak_mib']:.0f} "
                                                 f"({r['read']['baseline_mib']:.0f})"),
        "", "A get() reads its video's row group unless one of the last few read is it: with "
        "more row groups than the cache holds, random reads are mostly first reads (the "
        "latency that matters); with fewer, mostly cache hits.",
        "", "## Acceptance", ""]
    if acc["ratio"] is None:
        lines.append(f"- **fail**: {acc['why']}.")
    else:
        lines.append(
            f"- Peak RSS of the {_mb(runs[acc['big']]['generate']['bytes'])} ingest over the "
            f"{_mb(runs[acc['small']]['generate']['bytes'])} one: {acc['ratio']:.3f} (limit "
            f"{acc['limit']:.2f}): **{'pass' if acc['pass'] else 'fail'}**.")
    errors = [f"{k} {step}: {r[step]['error']}" for k, r in runs.items()
              for step in ("ingest", "read") if "error" in r.get(step, {})]
    if errors:
        lines.append("- Failed: " + "; ".join(errors) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.captions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(f"{s:g}" for s in SIZES_MB),
                    help="caption.json sizes in MB (1e6 bytes), comma-separated")
    ap.add_argument("--reads", type=int, default=1000, help="random get()s per size")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated files")
    ap.add_argument("--work", type=Path, help="where the files are generated "
                                              "[default: a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and stores")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="limit per child process")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--child", choices=("ingest", "read"), help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        r = run_ingest(args.src, args.store) if args.child == "ingest" \
            else run_read(args.store, args.reads, args.seed)
        args.result.write_text(json.dumps(r))
        return 0

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    sizes = [float(s) for s in args.sizes.split(",")]
    res: dict[str, Any] = {"machine": machine(),
                           "argv": argv if argv is not None else sys.argv[1:],
                           "settings": {"seed": args.seed, "reads": args.reads, "limit": LIMIT,
                                        "empty_span_fraction": EMPTY_SPAN}, "runs": {}}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="avl-captions-"))
    work.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        for mb in sizes:
            key = f"{mb:g}MB"
            src, store = (work / f"caption-{key}.json").resolve(), (work / f"store-{key}").resolve()
            shutil.rmtree(store, ignore_errors=True)
            t0 = time.perf_counter()
            truth = generate(src, int(mb * 1e6), args.seed)
            truth["wall_s"] = time.perf_counter() - t0
            say(f"generated {_mb(truth['bytes'])}: {truth['videos']:,} videos, "
                f"{truth['captions']:,} captions in {truth['wall_s']:.1f} s")
            run: dict[str, Any] = {"generate": truth}
            res["runs"][key] = run
            run["ingest"] = _child(["--child", "ingest", "--src", str(src), "--store",
                                    str(store)], args.timeout_s)
            if "error" in run["ingest"]:
                failed = True
                say(f"ingest {key}: FAILED {run['ingest']}")
            else:
                r = run["ingest"]
                c = r["counts"]
                run["match"] = (c["entries"] == c["videos"] == truth["videos"]
                                and c["captions_read"] == truth["captions"]
                                and r["skipped"]["empty_span"] == truth["empty_span"]
                                and c["captions"] == truth["captions"] - truth["empty_span"])
                failed |= not run["match"]
                say(f"ingest {key}: {r['wall_s']:.1f} s ({r['mb_per_s']:.1f} MB/s), peak "
                    f"{r['peak_mib']:.0f} MiB (baseline {r['baseline_mib']:.0f}); counts "
                    f"{'match' if run['match'] else 'DO NOT match'}")
                run["read"] = _child(["--child", "read", "--store", str(store), "--reads",
                                      str(args.reads), "--seed", str(args.seed)], args.timeout_s)
                if "error" in run["read"]:
                    failed = True
                    say(f"read {key}: FAILED {run['read']}")
                else:
                    r = run["read"]
                    say(f"read {key}: open {r['open_s']:.2f} s, get() median "
                        f"{r['ms_median']:.2f} ms, p99 {r['ms_p99']:.2f} ms")
            if not args.keep:
                src.unlink(missing_ok=True)
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    res["acceptance"] = acc = acceptance(res["runs"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "captions.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "captions.md").write_text(markdown(res))
    ratio = "-" if acc["ratio"] is None else f"{acc['ratio']:.3f}"
    say(f"acceptance: peak RSS ratio {ratio} (limit {LIMIT}): "
        f"{'pass' if acc['pass'] else 'FAIL'}; wrote "
        f"{args.out / 'captions.json'} and {args.out / 'captions.md'}")
    return 1 if failed or not acc["pass"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
