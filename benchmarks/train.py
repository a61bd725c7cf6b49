"""Benchmark: the pretraining data path and training speed (issue 5), side by side in one run.

(1) Clips per second the DataLoader delivers (N videos x M random 10 s windows per batch) from
    our sharded HDF5 store vs from one .npz file per video holding the same arrays (the
    reference's layout: every window loads the whole video's arrays).
(2) Training steps per second of a fixed small AVLnet on the CPU fed from each, with the
    fraction of each step spent waiting for data.
Synthetic videos of realistic length (default 60 x 5 minutes). Writes
benchmarks/results/train.json and .md. Usage: python -m benchmarks.train [--videos 60]

--paper measures instead the training throughput at the paper's scale, step by step, on the
GPU (benchmarks/train_paper.py; results train-<device>.json|md); --make-project DIR writes a
small synthetic project the train, finetune and evaluate stages run on (benchmarks/gpu_check.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.learn.avdata import PretrainVideos, collate_videos
from pipeline.config import ModelParams, TrainParams, to_dict
from pipeline.features.store import FeatureStore, ShardWriter, VideoRecord, write_index
from pipeline.learn.train import epoch_batches, train

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = ModelParams(embed_dim=256, audio_widths=[32, 64, 128, 256])
# --model: the paper's (avlnet.md: D = 4096, widths 128-1024), the demo's, one for quick tests
MODELS = {"paper": ModelParams(), "small": SMALL,
          "tiny": ModelParams(embed_dim=32, audio_widths=[8, 16, 16, 32])}


def make_data(root: Path, n: int, seconds: int) -> tuple[Path, Path]:
    """The same arrays twice: a store of 4 shards, and one npz file per video."""
    rng = np.random.default_rng(0)
    store, npz = root / "store", root / "npz"
    npz.mkdir(parents=True)
    rows, writers = [], [ShardWriter(store / f"shard-{i:05d}.h5", {"dtype": "float16"})
                         for i in range(4)]
    for v in range(n):
        vid = f"benchvid{v:03d}"
        arrays = {"resnet152": rng.random((seconds, 2048), np.float32).astype(np.float16),
                  "resnext101": rng.random((int(seconds * 1.5), 2048), np.float32
                                           ).astype(np.float16),
                  "logmel": (-80 * rng.random((40, seconds * 100), np.float32)
                             ).astype(np.float16)}
        writers[v % 4].add(VideoRecord(vid, "ok", {}, arrays))
        np.savez(npz / f"{vid}.npz", **arrays)
    for w in writers:
        rows += w.close()
    write_index(rows, store / "index.parquet")
    return store, npz


class NpzVideos:
    """The reference layout behind FeatureStore's read API: a window loads the whole arrays."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._info = {}
        for f in sorted(folder.glob("*.npz")):
            with np.load(f) as z:
                self._info[f.stem] = {"n_logmel": z["logmel"].shape[1],
                                      "n_resnet152": z["resnet152"].shape[0],
                                      "n_resnext101": z["resnext101"].shape[0]}

    def ids(self):
        return sorted(self._info)

    def info(self, vid):
        return self._info[vid]

    def read(self, vid, feature, start=None, stop=None):
        with np.load(self.folder / f"{vid}.npz") as z:
            a = z[feature]
        return a[:, start:stop] if feature == "logmel" else a[start:stop]


def dataset_rate(ds, n_per_batch: int, workers: int, batches: int) -> dict:
    """Clips per second a DataLoader delivers from `ds` (items of M clips, collate_videos)
    over the first `batches` batches of epoch 0."""
    sampler = epoch_batches(len(ds), n_per_batch, 0, 0)[:batches]
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                        collate_fn=collate_videos)
    t0 = time.perf_counter()
    first = None
    clips = 0
    for b in loader:
        if first is None:
            first = time.perf_counter() - t0
        clips += b["spec"].shape[0]
    wall = time.perf_counter() - t0
    return {"clips": clips, "wall_s": wall, "clips_per_s": clips / wall, "first_batch_s": first}


def loader_rate(source, n_per_batch: int, m: int, workers: int, batches: int) -> dict:
    return dataset_rate(PretrainVideos(source, source.ids(), m, seed=0), n_per_batch, workers,
                        batches)


def fit_rate(ds, tmp: Path, p: TrainParams, n_per_batch: int, epochs: int, lr: float) -> dict:
    """The training loop on `ds` (CPU): steps and clips per second, data-wait (mean, max)
    over the steps after the first (which includes the workers' start-up)."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    train(tmp, ds, collate_videos, p, items_per_batch=n_per_batch, epochs=epochs, lr=lr,
          lr_decay=0.9, on_step=rows.append)
    wall = time.perf_counter() - t0
    steady = rows[1:] or rows
    return {"steps": len(rows), "wall_s": wall,
            "steps_per_s": len(steady) / sum(r["clips"] / r["clips_per_s"] for r in steady),
            "clips_per_s": statistics.mean(r["clips_per_s"] for r in steady),
            "data_wait": statistics.mean(r["data_wait"] for r in steady),
            "data_wait_max": max(r["data_wait"] for r in steady)}


def train_rate(source, tmp: Path, n_per_batch: int, m: int, workers: int, epochs: int) -> dict:
    p = TrainParams(model=SMALL, videos_per_batch=n_per_batch, clips_per_video=m,
                    workers=workers, epochs=epochs, seed=0, device="cpu",
                    checkpoint_every=10 ** 6)
    return fit_rate(PretrainVideos(source, source.ids(), m, seed=0), tmp, p, n_per_batch,
                    epochs, 1e-3)


def markdown(r: dict) -> str:
    lines = [f"# Training data path and speed ({r['machine']})", "",
             f"{r['date']}. `python -m benchmarks.train {' '.join(r['argv'])}`. "
             f"{r['videos']} synthetic videos of {r['seconds']} s; batches of "
             f"{r['n']} videos x {r['m']} windows of 10 s; {r['workers']} loader workers; "
             f"model: D = {SMALL.embed_dim}, audio widths {SMALL.audio_widths}.", "",
             "| source | loader clips/s | first batch s | train steps/s | train clips/s | "
             "data-wait |", "|---|---|---|---|---|---|"]
    for k in ("hdf5_store", "npz_per_video"):
        lr_, tr = r["loader"][k], r["train"][k]
        lines.append(f"| {k} | {lr_['clips_per_s']:.0f} | {lr_['first_batch_s']:.2f} | "
                     f"{tr['steps_per_s']:.2f} | {tr['clips_per_s']:.0f} | "
                     f"{100 * tr['data_wait']:.1f} % |")
    s, z = r["loader"]["hdf5_store"], r["loader"]["npz_per_video"]
    w = r["train"]["hdf5_store"]["data_wait"]
    lines += ["", f"- store / npz loader throughput: **{s['clips_per_s'] / z['clips_per_s']:.2f}x**"
                  " (target: beats the per-video npz layout)",
              f"- data-wait while training from the store: **{100 * w:.1f} %** (target: under "
              f"10 % at 2 workers): {'met' if w < 0.10 else 'NOT met'}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, help="synthetic videos (default 60; --paper: enough "
                                               "for one epoch of warm-up + timed steps)")
    ap.add_argument("--seconds", type=int, help="length of each video (default 300)")
    ap.add_argument("--n", type=int, help="videos per batch (default 8; --paper 128)")
    ap.add_argument("--m", type=int, help="windows per video (default 4; --paper 32)")
    ap.add_argument("--workers", type=int, help="loader workers (default 2; --paper: the cores)")
    ap.add_argument("--batches", type=int, default=6, help="batches timed for the loader")
    ap.add_argument("--epochs", type=int, default=1)
    paper = ap.add_argument_group("--paper: throughput at the paper's scale (issue 17)")
    paper.add_argument("--paper", action="store_true",
                       help="measure the real training loop step by step, per precision")
    paper.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    paper.add_argument("--model", choices=tuple(MODELS), default="paper")
    paper.add_argument("--precisions", default="float32,bf16,fp16",
                       help="comma-separated; one the device lacks is recorded as skipped")
    paper.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    paper.add_argument("--warmup", type=int, default=3, help="untimed steps first (loader "
                                                            "start-up, cuDNN)")
    paper.add_argument("--budget-s", type=float, default=60.0,
                       help="per precision: no timed step starts after this many seconds")
    paper.add_argument("--store", help="folder of the synthetic store: reused when it holds "
                                       "enough videos, else written (default: a temporary one)")
    paper.add_argument("--store-gb", type=float, default=0.0,
                       help="write at least this many GB (to outgrow the page cache)")
    paper.add_argument("--gen-workers", type=int, help="processes writing the store "
                                                       "(default: the cores)")
    paper.add_argument("--drop-caches", action="store_true",
                       help="drop the store from the page cache before each part (drop_caches "
                            "where permitted, else posix_fadvise); the JSON records which worked")
    paper.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads of the training process (train.threads; 0: "
                            "torch's default)")
    paper.add_argument("--loader-batches", type=int, default=0,
                       help="also time the loader alone for this many batches")
    paper.add_argument("--tag", help="results file suffix (default: the device): train-<tag>")
    paper.add_argument("--results", default=str(RESULTS), help="results folder (both modes)")
    paper.add_argument("--make-project", metavar="DIR",
                       help="write a small synthetic project (store, manifest, params.yaml) "
                            "for the stages to DIR, and stop")
    args = ap.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    if args.make_project:
        from benchmarks.synthetic_store import make_project
        params = make_project(Path(args.make_project), to_dict(MODELS[args.model]), args.device,
                              videos=args.videos or 24, seconds=args.seconds or 30,
                              workers=2 if args.workers is None else args.workers)
        print(params)
        return 0
    if args.paper:
        from benchmarks.train_paper import run
        return run(args, MODELS[args.model], argv)
    args.videos, args.seconds = args.videos or 60, args.seconds or 300
    args.n, args.m = args.n or 8, args.m or 4
    args.workers = 2 if args.workers is None else args.workers
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
                    f"{torch.__version__}", "argv": argv,
         "videos": args.videos, "seconds": args.seconds, "n": args.n, "m": args.m,
         "workers": args.workers, "loader": {}, "train": {}}
    with tempfile.TemporaryDirectory(prefix="avl-train-bench-") as tmp:
        tmp = Path(tmp)
        store_dir, npz_dir = make_data(tmp, args.videos, args.seconds)
        sources = {"hdf5_store": FeatureStore(store_dir), "npz_per_video": NpzVideos(npz_dir)}
        for name, src in sources.items():
            r["loader"][name] = loader_rate(src, args.n, args.m, args.workers, args.batches)
            print(name, r["loader"][name], flush=True)
        for name, src in sources.items():
            r["train"][name] = train_rate(src, tmp / f"run-{name}", args.n, args.m,
                                          args.workers, args.epochs)
            print(name, r["train"][name], flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "train.json").write_text(json.dumps(r, indent=1) + "\n")
    (results / "train.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
