"""Pretraining and fine-tuning runs: a feature store and a manifest -> a trained AVLnet
(pipeline/learn/train.py does the loop). Each run records what it was trained on in its checkpoints:
dataset, split checksum, feature recipe hash, clips used and missing."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterable

import torch

from pipeline.learn.avdata import AnnotatedClips, ClipRef, PretrainVideos, collate_videos
from pipeline.config import FinetuneParams, TrainParams
from pipeline.data.manifest import read_clips, read_videos, write_json_atomic
from pipeline.safety import writer_lock
from pipeline.learn.sampling import CLIP_FRAMES, TRAIN_SPLIT
from pipeline.features.store import FeatureStore, recipe_sha256
from pipeline.learn.train import TrainError, train

log = logging.getLogger(__name__)


def provenance(dataset: str, split: str, store: FeatureStore, manifest_dir: Path,
               **extra) -> dict:
    """What a model was trained or evaluated on: dataset, split, its clip checksum, the
    feature recipe hash."""
    path = manifest_dir / "manifest.json"
    try:
        m = json.loads(path.read_text())
        if not isinstance(m, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise TrainError(f"{path}: not found; run the manifest stage for {dataset} "
                         "first") from None
    except (OSError, ValueError) as e:
        raise TrainError(f"{path}: unreadable ({e}); run the manifest stage for {dataset} "
                         "again") from None
    checksum = m.get("splits", {}).get(split, {}).get("clip_checksum")
    return {"dataset": dataset, "split": split, "split_checksum": checksum,
            "recipe_sha256": recipe_sha256(store.recipe) if store.recipe else None, **extra}


def verify_features(store: FeatureStore, video_ids: Iterable[str]) -> None:
    """Checks the shards of `video_ids` once, here, before the run folder is touched and
    before loader workers fork (StoreError naming the first bad shard)."""
    n = store.verify_shards(video_ids)
    log.info("%s: %d shard(s) checked (verify: %s)", store.root, n, store.verify)


def load_clips(manifest_dir: Path, split: str) -> list[ClipRef]:
    rows = read_clips(manifest_dir / "clips.parquet").to_pylist()
    return [ClipRef(r["clip_id"], r["video_id"], r["start_s"], r["end_s"]) for r in rows
            if r["split"] == split]


def pretrain(dataset: str, features: Path, manifest_dir: Path, out: Path, p: TrainParams
             ) -> dict:
    """Pretrains on random windows of the train-split videos with features (status ok)."""
    store = FeatureStore(features, verify=p.verify)
    split = TRAIN_SPLIT[dataset]
    listed = [r["video_id"] for r in read_videos(manifest_dir / "videos.parquet").to_pylist()
              if split in r["split"].split(",")]
    usable = set(store.ids())
    ids = [v for v in listed if v in usable]
    log.info("%s: pretraining on %d of %d %s videos (the others have no usable features)",
             dataset, len(ids), len(listed), split)
    if len(ids) < p.videos_per_batch:
        raise TrainError(f"{len(ids)} usable {dataset} videos cannot fill one batch of "
                         f"train.videos_per_batch = {p.videos_per_batch}")
    verify_features(store, ids)
    prov = provenance(dataset, split, store, manifest_dir, videos=len(ids),
                      videos_missing=len(listed) - len(ids), features_sha256=store.digest(ids))
    ds = PretrainVideos(store, ids, p.clips_per_video, p.seed, window_frames=100 * p.window_s)
    with writer_lock(out, f"train ({dataset})"):    # one run per run folder at a time
        summary = train(out, ds, collate_videos, p, items_per_batch=p.videos_per_batch,
                        epochs=p.epochs, lr=p.lr, lr_decay=p.lr_decay, provenance=prov,
                        restart_on_change=True)
        write_json_atomic({**summary, "provenance": prov}, out / "summary.json")
    return summary


def collate_clips(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def finetune(dataset: str, features: Path, manifest_dir: Path, init: Path | None, out: Path,
             tp: TrainParams, p: FinetuneParams) -> dict:
    """Fine-tunes (or trains from scratch with init None) on the annotated train clips."""
    store = FeatureStore(features, verify=tp.verify)
    split = TRAIN_SPLIT[dataset]
    clips = load_clips(manifest_dir, split)
    ds = AnnotatedClips(store, clips, p.clip_frames or CLIP_FRAMES[dataset])
    if init is not None and not init.is_file():
        raise TrainError(f"{init} not found: run `dvc repro train` first, or set "
                         "finetune.init: none to train from scratch")
    batch = min(p.batch, len(ds))
    if batch < 2:
        raise TrainError(f"{len(ds)} usable {dataset} {split} clips: too few to fine-tune")
    if batch < p.batch:
        log.warning("%s: %d usable clips, fewer than finetune.batch = %d: batches of %d",
                    dataset, len(ds), p.batch, batch)
    verify_features(store, {c.video_id for c in ds.clips})
    prov = provenance(dataset, split, store, manifest_dir, clips=len(ds),
                      clips_missing=len(ds.missing), init=str(init) if init else None,
                      bn_mode=p.bn_mode,
                      features_sha256=store.digest({c.video_id for c in ds.clips}))
    # no per-epoch decay when fine-tuning (avlnet.md); the model config is pretraining's
    tp = dataclasses.replace(tp, seed=tp.seed + 1)
    with writer_lock(out, f"finetune@{dataset}"):
        summary = train(out, ds, collate_clips, tp, items_per_batch=batch, epochs=p.epochs,
                        lr=p.lr, lr_decay=1.0, init_from=init,
                        bn_frozen=p.bn_mode == "frozen", provenance=prov,
                        restart_on_change=True)
        write_json_atomic({**summary, "provenance": prov}, out / "summary.json")
    return summary
