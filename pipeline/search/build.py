"""Index build (stage index@<dataset>): embed a dataset's annotated clips or sliding windows with
one checkpoint and store the candidates' (video-side) vectors for spoken-query search.

data/search/<ds>/ (written into a temp folder beside it, then renamed into place):
  <space>/index.faiss, ann.json   one VectorIndex per candidate space (model.SPACES: "video";
                                  MMV: "video_va" and "video_vat"); vector i is item i
  items.parquet   item_id, video_id, clip_id (null for a window over no annotated clip),
                  split, start_s, end_s, text (the clip's annotation, or null)
  record.json     checkpoint (path, sha256, arch, model config, setting), dataset, units,
                  window, clip frames, feature recipe sha256, counts (items, videos and clips
                  without features), the spaces and which query kind searches which, created

A video's item video input is exactly evaluation's (avdata.AnnotatedClips): max over the 2D
rows int(start)..int(end) and the 3D rows int(1.5 start)..int(1.5 end), each L2-normalised, of
the streams the checkpoint's model takes (its recorded train.model.visual)."""
from __future__ import annotations

import logging
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from models.avlnet import visual_of
from pipeline.data.manifest import read_clips, read_videos, write_json_atomic, \
    write_parquet_atomic
from pipeline.features.store import FeatureStore, recipe_sha256
from pipeline.learn.avdata import check_visual, checked_batches, pooled_streams, read_item, \
    video_vectors
from pipeline.learn.runs import verify_features
from pipeline.learn.sampling import clip_frames_of
from pipeline.search.model import QUERY_SPACE, SPACES, SearchError, arch_of, \
    candidate_vectors, load_search_model

log = logging.getLogger(__name__)

UNITS = ("clips", "windows")
ITEMS_SCHEMA = pa.schema([
    pa.field("item_id", pa.int64(), nullable=False),    # row of the vectors in every space
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("clip_id", pa.string()),                   # null: a window over no annotated clip
    pa.field("split", pa.string()),                     # the clip's (windows: the video's)
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("text", pa.string()),                      # the clip's annotation, or null
])
MIN_OVERLAP = 0.5   # a window takes a clip's id and text when they overlap this much of the shorter


def setting_checkpoint(setting: str, dataset: str, models: Path) -> Path:
    """search.setting -> checkpoint file: zero_shot = models/pretrain/final.pt, fine_tuned =
    models/finetune-<dataset>/final.pt, anything else a path from the project root."""
    if setting == "zero_shot":
        return Path(models) / "pretrain" / "final.pt"
    if setting == "fine_tuned":
        return Path(models) / f"finetune-{dataset}" / "final.pt"
    return Path(setting)


def windows(duration_s: float, window_s: float, hop_s: float) -> list[tuple[float, float]]:
    """Sliding windows [start, end) over a video of duration_s s: starts 0, hop, ... while the
    window fits, plus one ending at the end when the last one stops short of it; one window
    [0, duration] when the video is shorter than a window; none for an empty video."""
    if duration_s <= 0:
        return []
    if duration_s <= window_s:
        return [(0.0, float(duration_s))]
    n = int(math.floor((duration_s - window_s) / hop_s + 1e-9)) + 1
    out = [(round(i * hop_s, 6), round(i * hop_s + window_s, 6)) for i in range(n)]
    if out[-1][1] < duration_s - 1e-6:
        out.append((round(duration_s - window_s, 6), float(duration_s)))
    return out


def _best_clip(clips: list[dict], start: float, end: float) -> dict | None:
    """The clip overlapping [start, end) most, if by at least MIN_OVERLAP of the shorter."""
    best, best_ov = None, 0.0
    for c in clips:
        ov = min(end, c["end_s"]) - max(start, c["start_s"])
        if ov > best_ov and ov >= MIN_OVERLAP * min(end - start, c["end_s"] - c["start_s"]):
            best, best_ov = c, ov
    return best


def plan_items(store: FeatureStore, manifest_dir: Path, units: str, splits: list[str],
               window_s: float, hop_s: float) -> tuple[list[dict], dict]:
    """The items to index (rows of ITEMS_SCHEMA) and the counts record.json keeps. clips: the
    manifest's clips of `splits` (all when empty) whose video has features; windows: sliding
    windows over every listed video (of `splits`) with features, each labelled with the clip
    it overlaps most (_best_clip). Videos (and clips) without features are counted."""
    if units not in UNITS:
        raise SearchError(f"search.units is {units!r}; choose one of {', '.join(UNITS)}")
    ok = set(store.ids())
    clips = [c for c in read_clips(manifest_dir / "clips.parquet").to_pylist()
             if not splits or c["split"] in splits]
    rows: list[dict] = []
    if units == "clips":
        listed = sorted({c["video_id"] for c in clips})
        for c in clips:
            if c["video_id"] in ok:
                rows.append({"video_id": c["video_id"], "clip_id": c["clip_id"],
                             "split": c["split"], "start_s": float(c["start_s"]),
                             "end_s": float(c["end_s"]), "text": c.get("text")})
        clips_missing = sum(1 for c in clips if c["video_id"] not in ok)
    else:
        if window_s <= 0 or hop_s <= 0:
            raise SearchError(f"search.window_s ({window_s}) and search.hop_s ({hop_s}) must "
                              "be positive")
        videos = [v for v in read_videos(manifest_dir / "videos.parquet").to_pylist()
                  if not splits or set(v["split"].split(",")) & set(splits)]
        listed = [v["video_id"] for v in videos]
        by_video: dict[str, list[dict]] = {}
        for c in clips:
            by_video.setdefault(c["video_id"], []).append(c)
        for v in videos:
            vid = v["video_id"]
            if vid not in ok:
                continue
            info = store.info(vid)
            # seconds the video features cover (1 row/s 2D, 1.5 rows/s 3D, 100 frames/s audio)
            dur = max(info["n_resnet152"] or 0, (info["n_resnext101"] or 0) / 1.5,
                      (info["n_logmel"] or 0) / 100)
            for s, e in windows(dur, window_s, hop_s):
                c = _best_clip(by_video.get(vid, []), s, e)
                rows.append({"video_id": vid, "clip_id": c and c["clip_id"],
                             "split": c["split"] if c else v["split"], "start_s": s,
                             "end_s": e, "text": c.get("text") if c else None})
        clips_missing = None
    for i, r in enumerate(rows):
        r["item_id"] = i
    without = [v for v in listed if v not in ok]
    counts = {"videos_listed": len(listed), "videos_with_features": len(listed) - len(without),
              "videos_without_features": len(without),
              "videos_without_features_ids": without[:100],
              "clips_without_features": clips_missing}
    if without:
        log.warning("%s: %d of %d videos have no usable features and are not indexed (first: "
                    "%s)", manifest_dir, len(without), len(listed), ", ".join(without[:5]))
    return rows, counts


class SegmentVideos(Dataset):
    """Item i = the video input of segment i ({"video": (V,) float32}: V = 4096 for visual
    2d3d, 2048 for 2d or 3d), as AnnotatedClips builds it; reads only the feature rows the
    segment covers. StoreError when the store lacks a feature `visual` needs."""

    def __init__(self, store: FeatureStore, rows: list[dict], visual: str = "2d3d"):
        self.store, self.rows, self.visual = store, rows, visual
        check_visual(store, visual, {r["video_id"] for r in rows})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        return read_item(self.store, r["video_id"], lambda: self._item(r))

    def _item(self, r: dict) -> dict:
        s, e, vid = r["start_s"], r["end_s"], r["video_id"]
        pooled = pooled_streams(self.store, vid, self.visual, (int(s), int(e)),
                                (int(s * 1.5), int(e * 1.5)))
        return {"video": video_vectors([pooled])[0]}


def embed_candidates(model: torch.nn.Module, arch: str, ds: Dataset, batch: int,
                     device: torch.device) -> dict[str, np.ndarray]:
    """Every item's candidate vectors -> space -> (n, D) float32."""
    out: dict[str, list[torch.Tensor]] = {}
    loader = DataLoader(ds, batch_size=batch, collate_fn=lambda b: torch.stack(
        [x["video"] for x in b]))
    for video in checked_batches(loader):
        for k, x in candidate_vectors(model, arch, video.to(device)).items():
            out.setdefault(k, []).append(x)
    return {k: torch.cat(x).numpy().astype(np.float32) for k, x in out.items()}


def build_index(dataset: str, features: Path, manifest_dir: Path, checkpoint: Path, out: Path,
                *, setting: str = "", units: str = "clips", splits: list[str] | None = None,
                window_s: float = 5.0, hop_s: float = 2.5, clip_frames: int = 0,
                batch: int = 64, device: str = "cpu", verify: str = "sha256",
                ann_kind: str = "auto", exact_max: int = 50_000, seed: int = 0,
                threads: int | None = None) -> dict:
    """Embeds the items (plan_items) with `checkpoint` and writes the index folder `out`
    (module docstring) -> its record. SearchError (one line) for a missing or unusable
    checkpoint, or nothing to index; the old index stays in place until the new one is
    complete. clip_frames: audio frames a query is padded or cropped to (0: the dataset's)."""
    from pipeline.search.ann import VectorIndex
    dev = torch.device(device if device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    if not Path(checkpoint).is_file():
        raise SearchError(f"{checkpoint}: checkpoint not found (search.setting {setting!r}); "
                          "run its training stage first, or set search.setting to a file")
    mf = load_search_model(checkpoint, dev)
    arch = arch_of(mf)
    store = FeatureStore(features, verify=verify)
    rows, counts = plan_items(store, manifest_dir, units, list(splits or []), window_s, hop_s)
    if not rows:
        raise SearchError(f"{dataset}: nothing to index ({units} of splits "
                          f"{splits or 'all'}: {counts['videos_with_features']} of "
                          f"{counts['videos_listed']} videos have features); run extract@"
                          f"{dataset} or check search.splits")
    vids = sorted({r["video_id"] for r in rows})
    verify_features(store, vids)
    log.info("%s: embedding %d %s of %d videos with %s (%s)", dataset, len(rows), units,
             len(vids), checkpoint, arch)
    vectors = embed_candidates(mf.model, arch, SegmentVideos(store, rows, visual_of(mf.model)),
                               batch, dev)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        spaces = {}
        for space in SPACES[arch]:
            idx = VectorIndex.build(vectors[space], kind=ann_kind, exact_max=exact_max,
                                    seed=seed, threads=threads)
            idx.save(tmp / space)
            spaces[space] = {"kind": idx.kind, "n": idx.n, "dim": idx.dim}
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA),
                             tmp / "items.parquet")
        record = {
            "dataset": dataset, "units": units, "splits": list(splits or []),
            "window_s": window_s if units == "windows" else None,
            "hop_s": hop_s if units == "windows" else None,
            "clip_frames": clip_frames or clip_frames_of(dataset, manifest_dir),
            "checkpoint": str(checkpoint), "checkpoint_sha256": mf.sha256, "setting": setting,
            "arch": arch, "model_config": mf.config, "config_source": mf.config_source,
            "features": str(features), "manifest": str(manifest_dir),
            "recipe_sha256": recipe_sha256(store.recipe) if store.recipe else None,
            "features_sha256": store.digest(vids), "n_items": len(rows), "spaces": spaces,
            "query_spaces": QUERY_SPACE[arch], **counts,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(record, tmp / "record.json")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: %d items indexed in %s (%s)", dataset, len(rows), out,
             ", ".join(f"{k}: {v['kind']} {v['dim']}-d" for k, v in spaces.items()))
    return record
