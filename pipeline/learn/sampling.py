"""AVLnet window arithmetic (avlnet.md "Pretraining" and "Fine-tuning"): which spectrogram frames
and which 2D / 3D feature rows a clip covers. Pure functions on integers; the data loaders use
them to read only the needed window from the feature store."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAMES_PER_S = 100            # log-Mel frames per second (hop 160 at 16 kHz)
HOP = 160                     # samples per frame
RATE = 16000                  # samples per second
WINDOW_FRAMES = 1000          # a 10 s pretraining window
ROWS_PER_S_2D = 1.0           # ResNet-152 rows per second
ROWS_PER_S_3D = 1.5           # ResNeXt-101 rows per second
# audio frames per annotated clip (avlnet.md); the demo's segments are 3 to 8 s (padding with
# 0 dB, the loudest level, would otherwise dominate its short clips)
CLIP_FRAMES = {"youcook2": 5120, "crosstask": 5120, "msrvtt": 3072, "demo": 512}
TRAIN_SPLIT = {"youcook2": "train", "crosstask": "train", "msrvtt": "train_9k", "demo": "train",
               "howto100m": "train"}
EVAL_SPLIT = {"youcook2": "val", "crosstask": "val", "msrvtt": "test_1k_a", "demo": "val"}
OWN_CLIP_FRAMES = 5120   # own media's clips at most, unless its manifest says otherwise
CLIP_FRAMES_STEP = 256   # own media: the longest clip's frames, rounded up to a multiple of this


def _recorded(manifest_dir: Path) -> dict:
    """The roles and clip length an own-media manifest recorded in its manifest.json."""
    try:
        data = json.loads((Path(manifest_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {**data.get("roles", {}), "clip_frames": data.get("clip_frames")}


def train_split(dataset: str, manifest_dir: Path) -> str | None:
    """The split training reads: the built-in table, else what the manifest records; None for
    own media without a train split (pretraining then uses every video)."""
    return TRAIN_SPLIT.get(dataset) or _recorded(manifest_dir).get("train")


def eval_split(dataset: str, manifest_dir: Path) -> str:
    """The split evaluated: the built-in table, else what the manifest records (test/val)."""
    return EVAL_SPLIT.get(dataset) or _recorded(manifest_dir).get("eval") or "test"


def clip_frames_of(dataset: str, manifest_dir: Path) -> int:
    """Audio frames per annotated clip: the built-in table, else the manifest's, else own
    media's longest clip (clips.parquet) rounded up to CLIP_FRAMES_STEP, at most 5120: a
    dataset of 5-15 s clips padded to 51 s would spend 4x the compute on padding, which the
    pooled audio embedding also sees (see CLIP_FRAMES)."""
    return CLIP_FRAMES.get(dataset) or _recorded(manifest_dir).get("clip_frames") \
        or _longest_clip_frames(manifest_dir)


def _longest_clip_frames(manifest_dir: Path) -> int:
    import pyarrow.parquet as pq
    try:
        t = pq.read_table(Path(manifest_dir) / "clips.parquet", columns=["start_s", "end_s"])
    except (OSError, ValueError, KeyError):
        return OWN_CLIP_FRAMES
    longest = max((e - s for s, e in zip(t["start_s"].to_pylist(), t["end_s"].to_pylist())
                   if s is not None and e is not None), default=None)
    if longest is None:
        return OWN_CLIP_FRAMES
    steps = -(-int(np.ceil(longest * FRAMES_PER_S)) // CLIP_FRAMES_STEP)
    return int(min(OWN_CLIP_FRAMES, max(1, steps) * CLIP_FRAMES_STEP))


def whole_seconds(frames: int) -> int:
    """Duration in whole seconds of a spectrogram with `frames` frames (or a window of that
    many): int((frames * 160 + 200) / 16000). 6250 -> 62, 1000 -> 10."""
    return int((frames * HOP + 200) / RATE)


def start_range(total_frames: int, window_frames: int = WINDOW_FRAMES) -> int:
    """How many whole-second starts a video offers: starts are drawn from
    {0, ..., max(1, D - W - 1) - 1} (6250 frames -> 51, i.e. 0..50; short videos -> 1)."""
    return max(1, whole_seconds(total_frames) - whole_seconds(window_frames) - 1)


def draw_starts(total_frames: int, m: int, rng: np.random.Generator,
                window_frames: int = WINDOW_FRAMES) -> np.ndarray:
    """M starts (seconds), uniform with replacement over start_range."""
    return rng.integers(0, start_range(total_frames, window_frames), size=m)


@dataclass(frozen=True)
class Window:
    """One clip: spectrogram frames [audio_start, audio_start + audio_len) of which `nframes`
    are real (the rest zero padding), and inclusive 2D / 3D feature row ranges."""

    audio_start: int
    audio_len: int
    nframes: int
    rows2d: tuple[int, int]      # first, last (inclusive)
    rows3d: tuple[int, int]


def window(start_s: int, total_frames: int, window_frames: int = WINDOW_FRAMES) -> Window:
    """The window starting at whole second `start_s`: audio from frame max(0, 100 s - 2), length
    window_frames (nframes = the real frames there); visual [s, s + W] rows int(s * rate) ..
    int((s + W) * rate) inclusive at 1 and 1.5 rows/s. s = 3 -> audio frame 298."""
    a0 = max(0, FRAMES_PER_S * start_s - 2)
    nframes = max(0, min(window_frames, total_frames - a0))
    w = whole_seconds(window_frames)
    return Window(a0, window_frames, nframes,
                  (int(start_s * ROWS_PER_S_2D), int((start_s + w) * ROWS_PER_S_2D)),
                  (int(start_s * ROWS_PER_S_3D), int((start_s + w) * ROWS_PER_S_3D)))


def pad_or_crop(spec: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """(40, T) -> ((40, length), nframes): zero-padded (0 dB, the loudest level: the reference's
    pad value) or cropped; nframes is the original length, not clipped (avlnet.md)."""
    n = spec.shape[1]
    if n >= length:
        return spec[:, :length], n
    out = np.zeros((spec.shape[0], length), spec.dtype)
    out[:, :n] = spec
    return out, n
