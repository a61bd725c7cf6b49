"""Benchmark: the caption-clip pretraining data path (issue 13): AVLnet-Text Tri trained on the
CPU from caption clips (ASR captions merged to >= 8 s, 800 audio frames, word vectors, rows of
the sharded feature store), with the fraction of each step spent waiting for data.

Synthetic but HowTo100M-shaped: videos of `--seconds` (default 300) with a caption every ~3 s
(2-6 s long, 3-12 words), ingested through the real caption store (stage captions'
ingest_captions), word vectors through the real word2vec loader. Writes
benchmarks/results/textloader.json and .md. Usage: python -m benchmarks.textloader
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.train import dataset_rate, fit_rate, make_data
from pipeline.config import ModelParams, TrainParams
from pipeline.learn.textdata import CaptionClips
from pipeline.text.captions import CaptionStore, ingest_captions
from pipeline.text.words import WORD_DIM, demo_vectors, load_word_vectors, write_word2vec

RESULTS = Path(__file__).resolve().parent / "results"
TRI = ModelParams(arch="avlnet_text_tri", embed_dim=256, audio_widths=[32, 64, 128, 256])
VOCAB = 5000


def make_text(root: Path, ids: list[str], seconds: int) -> tuple[Path, Path]:
    """A caption.json for `ids` (a caption every ~3 s) and a word2vec file of VOCAB words."""
    rng = np.random.default_rng(1)
    words = [f"w{i:04d}" for i in range(VOCAB)]
    caps = {}
    for vid in ids:
        starts = np.cumsum(rng.uniform(1.5, 4.5, size=int(seconds / 3)))
        starts = starts[starts < seconds - 1]
        ends = np.minimum(starts + rng.uniform(2, 6, size=len(starts)), seconds)
        caps[vid] = {"start": starts.round(2).tolist(), "end": ends.round(2).tolist(),
                     "text": [" ".join(rng.choice(words, size=rng.integers(3, 13)))
                              for _ in starts]}
    (root / "caption.json").write_text(json.dumps(caps))
    write_word2vec(root / "words.bin", words, demo_vectors(words, WORD_DIM, 0))
    return root / "caption.json", root / "words.bin"


def train_rate(ds: CaptionClips, tmp: Path, n: int, m: int, workers: int, epochs: int) -> dict:
    p = TrainParams(model=TRI, videos_per_batch=n, clips_per_video=m, workers=workers,
                    epochs=epochs, seed=0, device="cpu", checkpoint_every=10 ** 6,
                    caption_min_s=8.0, caption_frames=800)
    return fit_rate(ds, tmp, p, n, epochs, 2.5e-4)


def markdown(r: dict) -> str:
    lo, tr = r["loader"], r["train"]
    ok = tr["data_wait"] < 0.10
    return "\n".join([
        f"# Caption-clip pretraining data path ({r['machine']})", "",
        f"{r['date']}. `python -m benchmarks.textloader {' '.join(r['argv'])}`. {r['videos']} "
        f"synthetic videos of {r['seconds']} s, {r['captions']} ASR captions through the "
        f"caption store, {VOCAB} word vectors through the word2vec loader; batches of "
        f"{r['n']} videos x {r['m']} caption clips (merged to >= 8 s, 800 frames); "
        f"{r['workers']} loader workers; AVLnet-Text Tri, D = {TRI.embed_dim}, audio widths "
        f"{TRI.audio_widths}, on the CPU.", "",
        "| part | clips/s | first batch s | steps/s | data-wait (mean / max) |",
        "|---|---|---|---|---|",
        f"| loader alone | {lo['clips_per_s']:.0f} | {lo['first_batch_s']:.2f} | | |",
        f"| training | {tr['clips_per_s']:.0f} | | {tr['steps_per_s']:.2f} | "
        f"{100 * tr['data_wait']:.1f} % / {100 * tr['data_wait_max']:.1f} % |", "",
        f"- data-wait while training: **{100 * tr['data_wait']:.1f} %** (target: under 10 % at "
        f"2 workers): {'met' if ok else 'NOT met'}",
        f"- the loader alone delivers {lo['clips_per_s'] / tr['clips_per_s']:.1f}x the clips "
        "training consumes", ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--n", type=int, default=8, help="videos per batch")
    ap.add_argument("--m", type=int, default=4, help="caption clips per video")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=6, help="batches timed for the loader")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="avl-bench-text-") as tmp_name:
        tmp = Path(tmp_name)
        store_dir, _ = make_data(tmp, args.videos, args.seconds)
        from pipeline.features.store import FeatureStore
        store = FeatureStore(store_dir)
        caption_json, words_file = make_text(tmp, store.ids(), args.seconds)
        report = ingest_captions(caption_json, tmp / "captions", progress=False)
        words = load_word_vectors(words_file, tmp / "cache")
        ds = CaptionClips(store, CaptionStore(tmp / "captions"), words, store.ids(), args.m,
                          8.0, 800, seed=0)
        loader = dataset_rate(ds, args.n, args.workers, args.batches)
        trained = train_rate(ds, tmp / "run", args.n, args.m, args.workers, args.epochs)
    r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "machine": f"{platform.machine()}, {os.cpu_count()} cores", "argv": argv,
         "videos": args.videos, "seconds": args.seconds, "captions": report["counts"]["captions"],
         "n": args.n, "m": args.m, "workers": args.workers, "loader": loader, "train": trained,
         "data_wait_target_met": trained["data_wait"] < 0.10}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "textloader.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / "textloader.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
