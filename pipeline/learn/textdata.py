"""AVLnet-Text data (extensions.md §1): caption clips of HowTo100M videos for pretraining with
text (the reference's `random_audio_windows=0` path), and the caption text of annotated clips.

Caption clips: a video's ASR captions are drawn uniformly with replacement, each grown into a
clip of at least `min_time` seconds by merging its neighbours (merge_captions); the clip's audio
is the spectrogram frames of [start, end] and its video the inclusive feature rows of that span
(caption_window). Items depend only on (seed, epoch, index), as in avdata, so the batches are
the same whatever the number of loader workers and after a resume."""
from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.features.store import FeatureStore
from pipeline.learn.avdata import AnnotatedClips, VideoItems, check_visual, collate_videos, \
    pooled_streams, video_vectors
from pipeline.learn.sampling import (HOP, RATE, ROWS_PER_S_2D, ROWS_PER_S_3D, Window,
                                     pad_or_crop)

log = logging.getLogger(__name__)

__all__ = ["CAPTION_FRAMES", "MIN_TIME", "CaptionClips", "TextClips", "caption_window",
           "collate_videos", "merge_captions", "text_coverage", "time_to_frame"]

MIN_TIME = {"tri": 8.0, "fused": 10.0}        # seconds a caption clip grows to (reference cmds)
CAPTION_FRAMES = {"tri": 800, "fused": 1000}  # audio frames per caption clip (crop / zero pad)
N_FFT = 400                                   # the STFT window librosa's offset is half of


class Captions(Protocol):
    """What CaptionClips needs of pipeline.text.captions.CaptionStore."""

    def get(self, video_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]: ...
    def __contains__(self, video_id: str) -> bool: ...


class Words(Protocol):
    """What this module needs of pipeline.text.words.WordVectors."""

    dim: int

    def encode(self, text_or_tokens, max_words: int = 20) -> np.ndarray: ...


def merge_captions(starts: Sequence[float], ends: Sequence[float], i: int, min_time: float
                   ) -> tuple[float, float, list[int]]:
    """Grows caption i into a clip of at least `min_time` s, as the reference does -> (start
    s, end s, caption indices in merge order, i first).

    The clip is always captions first..last by index, with span ends[last] - starts[first].
    While that span is below min_time (a span exactly equal stops it) it takes one neighbour:
    when both exist, the one giving the smaller span (ends[last+1] - starts[first] forward,
    ends[last] - starts[first-1] backward), backward on a tie; else whichever exists; it stops
    when none is left (a 1-caption video stays short). Reference quirks kept on purpose:
    start/end are the first caption's start and the last one's end, not the min / max over
    the merged captions, so a nested or overlapping neighbour can shrink the span (and a
    later step then merges more); and the words follow merge order, not time order."""
    first = last = i
    order = [i]
    n = len(starts)
    span = ends[last] - starts[first]
    while span < min_time:
        if first > 0 and last < n - 1:
            forward = ends[last + 1] - starts[first]
            backward = ends[last] - starts[first - 1]
            go_back = backward <= forward
        elif first > 0:
            go_back = True
        elif last < n - 1:
            go_back = False
        else:
            break
        if go_back:
            first -= 1
            order.append(first)
        else:
            last += 1
            order.append(last)
        span = ends[last] - starts[first]
    return float(starts[first]), float(ends[last]), order


def time_to_frame(t: float) -> int:
    """The spectrogram frame of time t s as the reference computes it (librosa.time_to_frames,
    sr 16000, hop 160, n_fft 400): samples truncated toward zero, minus n_fft // 2, floor-
    divided by the hop: 3.0 -> 298, 0.5 -> 48, 0.0 -> -2 (negative below 12.5 ms)."""
    return (int(t * RATE) - N_FFT // 2) // HOP


def caption_window(start_s: float, end_s: float, total_frames: int, frames: int) -> Window:
    """The audio and feature rows of a caption clip [start_s, end_s] of a video with
    `total_frames` spectrogram frames.

    Audio: frames [time_to_frame(start), time_to_frame(end)), the start clamped at 0 (the
    reference lacks the clamp here, so its clips starting before 12.5 ms get an empty slice:
    a deliberate fix) and the end at the features' length, read from audio_start, cropped or
    zero-padded to `frames` (800 Tri / 1000 Fused). nframes = the real frames kept, at most
    `frames` (the reference's _zero_pad_audio returns min(length, frames) here; annotated
    clips instead report the uncropped length). Rows: 2D int(start)..int(end), 3D int(1.5
    start)..int(1.5 end), inclusive and not clipped (pooled_rows clips them to the video)."""
    a0 = max(0, time_to_frame(start_s))
    a1 = min(max(0, time_to_frame(end_s)), total_frames, a0 + frames)
    return Window(a0, frames, max(0, a1 - a0),
                  (int(start_s * ROWS_PER_S_2D), int(end_s * ROWS_PER_S_2D)),
                  (int(start_s * ROWS_PER_S_3D), int(end_s * ROWS_PER_S_3D)))


def usable_captions(starts: np.ndarray, total_frames: int) -> np.ndarray:
    """Mask of the captions starting before the end of the spectrogram (a caption starting at
    or after it has no audio: never drawn nor merged)."""
    samples = (np.asarray(starts, np.float64) * RATE).astype(np.int64)  # as time_to_frame
    return np.maximum(0, (samples - N_FFT // 2) // HOP) < total_frames


class CaptionClips(VideoItems):
    """One item = one video: M caption clips (caption drawn uniformly with replacement among
    the video's usable captions, merged to >= min_time s).

    -> {'spec': (M, 40, frames) float32, 'nframes': (M,) int64, 'video': (M, V) float32
        ([normalised max-pooled 2D || 3D], V = 4096; visual 2d or 3d: that stream, 2048),
        'text': (M, max_words, dim) float32 (the merged captions' texts joined in merge order),
        'video_index': (M,) int64, 'start_s', 'end_s': (M,) float32 (the merged span)}. Batch
        with collate_videos.

    Videos not ok in the store, without captions, without audio or whose captions all start
    past the end of the features are left out at construction, counted by reason in
    `skipped` and logged. `dropped_captions` counts the captions of kept videos starting past
    the features' end; a CaptionStore is checked from its index alone (first_start: 1.2 M
    videos without reading their captions), so there such captions are left out when an item
    is drawn instead (its report already counts those past the manifest's duration)."""

    def __init__(self, store: FeatureStore, captions: Captions, words: Words,
                 video_ids: Iterable[str], clips_per_video: int, min_time: float,
                 frames: int, seed: int = 0, max_words: int = 20, visual: str = "2d3d"):
        self.store, self.captions, self.words, self.visual = store, captions, words, visual
        self.m, self.min_time, self.frames = clips_per_video, float(min_time), frames
        self.seed, self.max_words, self.epoch = seed, max_words, 0
        ok = set(store.ids())
        skipped: Counter = Counter()
        self.ids: list[str] = []
        self.dropped_captions = 0
        asked = 0
        for vid in video_ids:
            asked += 1
            reason, dropped = self._check(vid, ok)
            if reason:
                skipped[reason] += 1
            else:
                self.ids.append(vid)
                self.dropped_captions += dropped
        self.skipped: dict[str, int] = dict(skipped)
        check_visual(store, visual, self.ids)
        if self.skipped:
            log.warning("caption clips: %d of %d videos left out (%s)", sum(skipped.values()),
                        asked, ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
        if self.dropped_captions:
            log.info("caption clips: %d captions start past the end of their video's "
                     "features and are never drawn", self.dropped_captions)

    def _check(self, vid: str, ok: set[str]) -> tuple[str | None, int]:
        """(why the video is left out or None, captions dropped)."""
        if vid not in ok:
            return "no_features", 0
        if vid not in self.captions:
            return "no_captions", 0
        total = self.store.info(vid)["n_logmel"] or 0
        if total == 0:
            return "no_audio", 0
        first = getattr(self.captions, "first_start", None)
        if first is not None:      # CaptionStore: from its index, no row group read
            t0 = first(vid)
            if t0 is None:
                return "no_captions", 0
            if not usable_captions(np.array([t0]), total)[0]:
                return "captions_outside_features", 0
            return None, 0          # the captions starting past the features: per item
        starts = self.captions.get(vid)[0]
        if len(starts) == 0:
            return "no_captions", 0
        kept = int(usable_captions(starts, total).sum())
        if kept == 0:
            return "captions_outside_features", 0
        return None, len(starts) - kept

    def clips(self, i: int) -> tuple[int, list[tuple[float, float, list[str]]]]:
        """Item i's (spectrogram frames, M merged clips (start s, end s, texts in merge
        order)) in this epoch: seeded per (seed, epoch, item), so any worker draws the same."""
        vid = self.ids[i]
        total = self.store.info(vid)["n_logmel"]
        starts, ends, texts = self.captions.get(vid)
        keep = np.flatnonzero(usable_captions(starts, total))
        starts, ends = np.asarray(starts)[keep], np.asarray(ends)[keep]
        texts = [texts[k] for k in keep]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        out = []
        for j in rng.integers(0, len(keep), size=self.m):
            s, e, order = merge_captions(starts, ends, int(j), self.min_time)
            out.append((s, e, [texts[k] for k in order]))
        return total, out

    def _item(self, i: int) -> dict:
        vid = self.ids[i]
        total, clips = self.clips(i)
        specs, nframes, videos, text = [], [], [], []
        for s, e, texts in clips:
            w = caption_window(s, e, total, self.frames)
            spec = self.store.read(vid, "logmel", w.audio_start, w.audio_start + w.nframes)
            specs.append(pad_or_crop(spec.astype(np.float32), self.frames)[0])
            nframes.append(w.nframes)
            videos.append(pooled_streams(self.store, vid, self.visual, w.rows2d, w.rows3d))
            text.append(self.words.encode(" ".join(t for t in texts if t),
                                          max_words=self.max_words))
        return {"spec": torch.from_numpy(np.stack(specs)),
                "nframes": torch.tensor(nframes, dtype=torch.int64),
                "video": video_vectors(videos),
                "text": torch.from_numpy(np.stack(text).astype(np.float32)),
                "video_index": torch.full((self.m,), i, dtype=torch.int64),
                "start_s": torch.tensor([c[0] for c in clips], dtype=torch.float32),
                "end_s": torch.tensor([c[1] for c in clips], dtype=torch.float32)}


class TextClips(Dataset):
    """Annotated clips with their caption: an AnnotatedClips item plus 'text' (max_words, dim)
    float32. `texts` holds each clip's candidate captions, either a list aligned with
    `clips.clips` or a mapping clip_id -> captions (MSR-VTT has 20 per video). Training draws
    one per (seed, epoch, index); evaluation takes the first (the official one). Clips without
    any caption get an all-zero text, counted in `no_text` and logged."""

    def __init__(self, clips: AnnotatedClips, texts: Sequence[Sequence[str]] |
                 Mapping[str, Sequence[str]], words: Words, train: bool, seed: int = 0,
                 max_words: int = 20):
        if isinstance(texts, Mapping):
            texts = [list(texts.get(c.clip_id, ())) for c in clips.clips]
        elif len(texts) != len(clips.clips):
            raise ValueError(f"{len(texts)} caption lists for {len(clips.clips)} clips: "
                             "texts must be aligned with clips.clips (after missing clips "
                             "were left out) or map clip_id -> captions")
        self.clips, self.words, self.train = clips, words, train
        self.texts = [list(t) for t in texts]
        self.seed, self.max_words, self.epoch = seed, max_words, 0
        self.no_text = sum(1 for t in self.texts if not t)
        if self.no_text:
            log.warning("%d of %d clips have no caption text (their text input is all zero)",
                        self.no_text, len(self.texts))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def with_visual(self, visual: str) -> "TextClips":
        """These clips and captions with the video input of `visual` (a model's)."""
        other = copy.copy(self)
        other.clips = self.clips.with_visual(visual)
        return other

    def __len__(self) -> int:
        return len(self.clips)

    def caption(self, i: int) -> str | None:
        """The caption clip i uses in this epoch (None when it has none)."""
        cands = self.texts[i]
        if not cands:
            return None
        if not self.train:
            return cands[0]
        return cands[int(np.random.default_rng([self.seed, self.epoch, i])
                          .integers(0, len(cands)))]

    def __getitem__(self, i: int) -> dict:
        item = self.clips[i]
        text = self.caption(i)
        if text is None:
            vec = np.zeros((self.max_words, self.words.dim), np.float32)
        else:
            vec = self.words.encode(text, max_words=self.max_words)
        return {**item, "text": torch.from_numpy(np.asarray(vec, np.float32))}


def text_coverage(words: Words, texts: Iterable[str | Sequence[str]]) -> dict:
    """How much of `texts` (captions, or lists of captions) the word vectors know -> {captions,
    tokens, known_tokens, known_fraction, all_oov_captions, all_oov_fraction}. A token is
    known when `token in words`, or, for an object without membership, when encode gives it a
    non-zero vector."""
    from pipeline.text.words import tokenize   # lazy: the word-vector module is optional here

    n_caps = n_tok = n_known = all_oov = 0
    for t in texts:
        for cap in ([t] if isinstance(t, str) else t):
            toks = tokenize(cap)
            if hasattr(words, "__contains__"):
                known = sum(1 for w in toks if w in words)
            else:
                known = int(np.count_nonzero(
                    np.abs(words.encode(toks, max_words=max(1, len(toks)))).sum(axis=1)))
            n_caps, n_tok, n_known = n_caps + 1, n_tok + len(toks), n_known + known
            all_oov += known == 0
    return {"captions": n_caps, "tokens": n_tok, "known_tokens": n_known,
            "known_fraction": n_known / n_tok if n_tok else 0.0,
            "all_oov_captions": all_oov,
            "all_oov_fraction": all_oov / n_caps if n_caps else 0.0}
