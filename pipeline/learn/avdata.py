"""Training and evaluation data from a feature store (avlnet.md): random 10 s windows of whole
videos for pretraining, annotated clips for fine-tuning and evaluation.

Both read only the rows a window needs (FeatureStore.read slices along time) and are seeded so
that an item depends only on (seed, epoch, index): the same batches come out whatever the number
of loader workers, and a resumed run sees exactly the batches it would have seen.

A feature that cannot be read (a truncated or corrupt shard) is a StoreError naming the shard,
in the main process and in loader workers alike (checked_batches unwraps the worker's
traceback text into that one line)."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from models.avlnet import STREAMS, video_input
from pipeline.learn.sampling import CLIP_FRAMES, WINDOW_FRAMES, draw_starts, pad_or_crop, window
from pipeline.features.store import FEATURES, FeatureStore, StoreError
from pipeline.safety import UserError

log = logging.getLogger(__name__)

FEAT_DIM = 2048
FEATURE_OF = {"2d": "resnet152", "3d": "resnext101"}    # visual stream -> store feature
T = TypeVar("T")


def read_item(store: FeatureStore, video_id: str, fn: Callable[[], T]) -> T:
    """fn() (the reads of one item of `video_id`); any failure to read becomes a StoreError
    naming the video's shard, so the stage stops with one line, not a traceback."""
    try:
        return fn()
    except (StoreError, UserError):     # a caption store's or word vectors' own message
        raise
    except Exception as e:  # noqa: BLE001 - the item boundary: a failed read is the shard's
        shard = (store.info(video_id).get("shard") or "?") if video_id in store else "?"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise StoreError(f"{store.root / shard}: cannot read the features of {video_id} "
                         f"({type(e).__name__}: {first}); the shard is damaged: re-run "
                         "extract") from None


def one_line(e: BaseException) -> str:
    """The message of `e`; for an exception re-raised from a DataLoader worker (whose message
    is the worker's whole traceback) the original exception's message only."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    name, sep, msg = last.partition(": ")
    return msg if sep and name.split(".")[-1] == type(e).__name__ else last


def checked_batches(loader: Iterable[T]) -> Iterator[T]:
    """Iterates `loader`; a StoreError from a worker process comes out as one line."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except StoreError as e:
            raise type(e)(one_line(e)) from None
        yield batch


def pooled_rows(store: FeatureStore, video_id: str, feature: str, first: int, last: int
                ) -> np.ndarray:
    """Max over feature rows first..last inclusive (clipped to the rows the video has) -> (2048,)
    float32; zeros when the window holds no row (a video shorter than its window)."""
    n = store.info(video_id)[f"n_{feature}"]
    first, last = max(0, first), min(last, n - 1)
    if last < first:
        return np.zeros(FEAT_DIM, np.float32)
    return store.read(video_id, feature, first, last + 1).astype(np.float32).max(axis=0)


def check_visual(store: FeatureStore, visual: str, video_ids: Iterable[str]) -> None:
    """StoreError naming the store unless it holds the features the streams of `visual`
    (ModelParams.visual) need: a feature its recipe does not name (when the recipe names
    features), or one with no row in any of `video_ids`, is missing (its windows would be
    zeros)."""
    ids = list(video_ids)
    named = [f for f in FEATURES if f in store.recipe]
    for stream in STREAMS[visual]:
        feat = FEATURE_OF[stream]
        if (not named or feat in named) and (
                not ids or any(store.info(v)[f"n_{feat}"] for v in ids)):
            continue
        other = "2d" if stream == "3d" else "3d"
        raise StoreError(f"{store.root}: has no {feat} ({stream.upper()}) features, which a "
                         f"model with visual {visual} needs; extract them (`dvc repro "
                         f"extract@{store.root.name}` with both backbones) or use a model "
                         f"with train.model.visual: {other}")


def pooled_streams(store: FeatureStore, video_id: str, visual: str, rows2d: tuple[int, int],
                   rows3d: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(2D, 3D) max-pooled (2048,) rows of a window (pooled_rows, inclusive row ranges) for
    the streams `visual` takes; None for a stream it does not take (never read)."""
    streams = STREAMS[visual]
    return (pooled_rows(store, video_id, "resnet152", *rows2d) if "2d" in streams else None,
            pooled_rows(store, video_id, "resnext101", *rows3d) if "3d" in streams else None)


def video_vectors(pooled: list[tuple[np.ndarray | None, np.ndarray | None]]) -> torch.Tensor:
    """M windows' pooled_streams -> (M, V) video input (models.avlnet.video_input: V = 4096
    for 2d3d, 2048 for one stream)."""
    v2, v3 = zip(*pooled)
    return video_input(*(None if x[0] is None else torch.from_numpy(np.stack(x))
                         for x in (v2, v3)))


def audio_window(store: FeatureStore, video_id: str, start: int, length: int
                 ) -> tuple[np.ndarray, int]:
    """Spectrogram frames [start, start + length), zero-padded past the end -> ((40, length)
    float32, real frames)."""
    spec = store.read(video_id, "logmel", start, start + length).astype(np.float32)
    out, _ = pad_or_crop(spec, length)
    return out, spec.shape[1]


class VideoItems(Dataset):
    """Base of the datasets whose item is one video of `self.ids` (self._item(i) builds it):
    the epoch the items are seeded by, and reads wrapped by read_item."""

    ids: list[str]
    store: FeatureStore
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return read_item(self.store, self.ids[i], lambda: self._item(i))

    def _item(self, i: int) -> dict:
        raise NotImplementedError


class PretrainVideos(VideoItems):
    """One item = one video: M random 10 s windows at whole-second starts (avlnet.md).

    -> {'spec': (M, 40, F) float32, 'nframes': (M,) int64, 'video': (M, V) float32
        ([normalised max-pooled 2D || 3D], V = 4096; visual 2d or 3d: that stream, V = 2048),
        'video_index': (M,), 'start_s': (M,)}. StoreError when the store lacks a feature
        `visual` needs (check_visual)."""

    def __init__(self, store: FeatureStore, video_ids: list[str], clips_per_video: int,
                 seed: int = 0, window_frames: int = WINDOW_FRAMES, visual: str = "2d3d"):
        self.store, self.ids = store, list(video_ids)
        self.m, self.seed, self.window_frames = clips_per_video, seed, window_frames
        self.epoch, self.visual = 0, visual
        check_visual(store, visual, self.ids)

    def starts(self, i: int) -> tuple[int, np.ndarray]:
        """Item i's (log-Mel frames, M window starts) in this epoch: seeded per (seed, epoch,
        item), so any worker draws the same windows."""
        total = self.store.info(self.ids[i])["n_logmel"]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return total, draw_starts(total, self.m, rng, self.window_frames)

    def _item(self, i: int) -> dict:
        vid = self.ids[i]
        total, starts = self.starts(i)
        specs, nframes, videos = [], [], []
        for s in starts:
            w = window(int(s), total, self.window_frames)
            spec, n = audio_window(self.store, vid, w.audio_start, w.audio_len)
            specs.append(spec)
            nframes.append(n)
            videos.append(pooled_streams(self.store, vid, self.visual, w.rows2d, w.rows3d))
        return {"spec": torch.from_numpy(np.stack(specs)),
                "nframes": torch.tensor(nframes, dtype=torch.int64),
                "video": video_vectors(videos),
                "video_index": torch.full((self.m,), i, dtype=torch.int64),
                "start_s": torch.from_numpy(starts.astype(np.float32))}


def collate_videos(items: list[dict]) -> dict:
    """N videos x M clips -> one batch of N*M clips."""
    return {k: torch.cat([it[k] for it in items]) for k in items[0]}


@dataclass(frozen=True)
class ClipRef:
    clip_id: str
    video_id: str
    start_s: float
    end_s: float


class AnnotatedClips(Dataset):
    """Annotated clips (fine-tuning, evaluation): audio of [start, end) padded or cropped to
    `frames` (5120 YouCook2/CrossTask, 3072 MSR-VTT) with nframes the clip's true length; video
    = normalised max over the 2D rows int(start)..int(end) and 3D rows int(1.5 start)..
    int(1.5 end), of the streams `visual` takes (ModelParams.visual: 2d3d -> 4096-d, 2d or 3d
    -> 2048-d; with_visual gives the same clips for another model). Clips whose video has no
    usable features are left out and listed in `missing` (evaluation counts them, see
    avlnet.md). StoreError when the store lacks a feature `visual` needs (check_visual)."""

    def __init__(self, store: FeatureStore, clips: list[ClipRef], frames: int,
                 visual: str = "2d3d"):
        usable = set(store.ids())
        self.store, self.frames, self.visual = store, frames, visual
        self.clips = [c for c in clips if c.video_id in usable]
        self.missing = [c.clip_id for c in clips if c.video_id not in usable]
        if self.missing:
            log.info("%d of %d clips have no usable features (video not ok in the store)",
                     len(self.missing), len(clips))
        check_visual(store, visual, {c.video_id for c in self.clips})

    @classmethod
    def for_dataset(cls, store: FeatureStore, clips: list[ClipRef], dataset: str,
                    visual: str = "2d3d") -> "AnnotatedClips":
        return cls(store, clips, CLIP_FRAMES[dataset], visual)

    def with_visual(self, visual: str) -> "AnnotatedClips":
        """These clips with the video input of `visual` (a model's, models.avlnet.visual_of);
        StoreError when the store lacks its features."""
        if visual == self.visual:
            return self
        check_visual(self.store, visual, {c.video_id for c in self.clips})
        other = copy.copy(self)
        other.visual = visual
        return other

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        return read_item(self.store, self.clips[i].video_id, lambda: self._item(i))

    def _item(self, i: int) -> dict:
        c = self.clips[i]
        a0, a1 = int(round(c.start_s * 100)), int(round(c.end_s * 100))
        spec = self.store.read(c.video_id, "logmel", a0, a1).astype(np.float32)
        nframes = spec.shape[1]
        spec, _ = pad_or_crop(spec, self.frames)
        pooled = pooled_streams(self.store, c.video_id, self.visual,
                                (int(c.start_s), int(c.end_s)),
                                (int(c.start_s * 1.5), int(c.end_s * 1.5)))
        return {"spec": torch.from_numpy(spec), "nframes": torch.tensor(nframes),
                "video": video_vectors([pooled])[0],
                "index": torch.tensor(i)}
