"""Speech-segmented clips for own media without clip annotations (issue 15 item 1; the
YouCook-Japanese recipe, extensions.md §4): speech segments per video -> clips of min_s..max_s
-> N train / val / test clips with each video in one split -> an annotations CSV that the
`custom` manifest kind reads, and a provenance JSON beside it.

Detection is the analysis's own (pipeline.analysis.speech: silero-vad, streamed, so memory does
not grow with a video's length), journalled per video in the same format (a crash or a re-run
with the same detector keeps the finished videos; a replaced file is analysed again).

Clip rules, per video (`Clipping`):
1. segments whose gap is <= merge_gap_s join one group;
2. a group longer than max_s is cut into ceil(length / max_s) pieces of min_s..max_s, each cut
   at the pause (a gap's midpoint) nearest the even cut that keeps every piece within bounds,
   else at the even cut itself (inside speech);
3. a piece shorter than min_s is widened to min_s with the audio around it, evenly on both
   sides, within the video and without overlapping its neighbours; where that room is missing
   it joins the previous clip, else the next piece, when the joined span stays <= max_s; else
   (or with extend_short false) it is dropped and counted (reason too_short, with its speech).
Splits (`Draw`): the videos with clips are shuffled (seeded) and the first round(test_fraction
* V) go to test, the next round(val_fraction * V) to val, the rest to train (a split with a
fraction > 0 gets at least one video when there are three or more); then n_<split> clips are
drawn at random from that split's clips (0 = all; fewer available: all, with a warning).

<out>.csv                  video (path relative to the media folder), start, end, text (empty),
                           split: `manifest.<name>.annotations` of a custom dataset
<out stem>.provenance.json detector, rules, draw, per-video status (ok / no_speech / no_audio /
                           failed) with counts, clips kept and dropped by reason, media size+mtime
<out stem>.progress.jsonl  the per-video journal"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
from pathlib import Path

import numpy as np

from pipeline.analysis.speech import Detector, detect_all, media_key, overlap
from pipeline.data.manifest import write_json_atomic
from pipeline.safety import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CSV_COLUMNS = ["video", "start", "end", "text", "split"]


class SegmentError(UserError):
    """An empty media folder, no speech in any video, too many unreadable files, bad rules."""


@dataclasses.dataclass(frozen=True)
class Clipping:
    """How speech segments become clips (seconds)."""

    min_s: float = 5.0            # shortest clip (AVLnet's YouCook-Japanese: 5 s)
    max_s: float = 50.0           # longest clip (YouCook-Japanese: 50 s)
    merge_gap_s: float = 2.0      # segments this close join one clip
    extend_short: bool = True     # widen short pieces with context to min_s (else drop them)

    def __post_init__(self) -> None:
        if not (0 < self.min_s and self.max_s >= 2 * self.min_s):
            raise SegmentError(f"clip lengths min_s={self.min_s}, max_s={self.max_s}: need "
                               "0 < min_s and max_s >= 2 * min_s (so a long segment can be cut "
                               "into pieces within both); change segment.min_s / max_s")


@dataclasses.dataclass(frozen=True)
class Draw:
    """Which videos go to which split, and how many clips each split gets."""

    val_fraction: float = 0.2     # share of the videos (with clips) in val
    test_fraction: float = 0.2    # share in test; train gets the rest
    n_train: int = 0              # clips drawn per split; 0 = all of them
    n_val: int = 0
    n_test: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.val_fraction and 0 <= self.test_fraction
                and self.val_fraction + self.test_fraction <= 1):
            raise SegmentError(f"val_fraction={self.val_fraction}, test_fraction="
                               f"{self.test_fraction}: need two shares >= 0 summing to <= 1")


# --------------------------------------------------------------------------- clips of a video


def merge(segments: list, gap_s: float) -> list[list[tuple[float, float]]]:
    """Speech segments [(start, end)] (seconds, any order) -> groups of segments whose
    neighbours are at most gap_s apart, in time order."""
    groups: list[list[tuple[float, float]]] = []
    for a, b in sorted((float(s[0]), float(s[1])) for s in segments):
        if groups and a - groups[-1][-1][1] <= gap_s:
            groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    return groups


def cut(group: list[tuple[float, float]], r: Clipping) -> list[tuple[float, float]]:
    """One group -> pieces [(start, end)] covering it: itself when at most max_s long, else
    ceil(length / max_s) pieces of min_s..max_s cut at pauses where the bounds allow (rule 2)."""
    a, b = group[0][0], group[-1][1]
    n = math.ceil((b - a) / r.max_s - 1e-9)
    if n <= 1:
        return [(a, b)]
    pauses = [(x[1] + y[0]) / 2 for x, y in zip(group, group[1:])]
    cuts = [a]
    for k in range(1, n):
        prev, left = cuts[-1], n - k            # pieces still to make after this cut
        even = prev + (b - prev) / (left + 1)   # within bounds by construction
        lo = max(prev + r.min_s, b - left * r.max_s)
        hi = min(prev + r.max_s, b - left * r.min_s)
        ok = [p for p in pauses if lo <= p <= hi]
        cuts.append(min(ok, key=lambda p: abs(p - even)) if ok else even)
    cuts.append(b)
    return list(zip(cuts[:-1], cuts[1:]))


def widen(pieces: list[tuple[float, float]], duration_s: float, r: Clipping
          ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Rule 3: pieces in time order -> (clips, dropped pieces). A piece shorter than min_s
    grows evenly into the context (the room left on one side goes to the other), bounded by the
    video and its neighbours; without the room it joins the previous clip or the next piece
    (joined span <= max_s), else it is dropped."""
    kept: list[tuple[float, float]] = []
    dropped: list[tuple[float, float]] = []
    carried = None                        # a short piece waiting to join the next one
    for i, (a, b) in enumerate(pieces):
        if carried is not None:
            if b - carried[0] <= r.max_s:
                a = carried[0]
            else:
                dropped.append(carried)
            carried = None
        need = r.min_s - (b - a)
        lo = kept[-1][1] if kept else 0.0
        hi = pieces[i + 1][0] if i + 1 < len(pieces) else duration_s
        room_l, room_r = max(0.0, a - lo), max(0.0, hi - b)
        if need <= 1e-9:
            kept.append((a, b))
        elif not r.extend_short:
            dropped.append((a, b))
        elif room_l + room_r >= need - 1e-9:
            left = min(room_l, max(need / 2, need - room_r))
            kept.append((a - left, b + (need - left)))
        elif kept and b - kept[-1][0] <= r.max_s:
            kept[-1] = (kept[-1][0], b)
        elif i + 1 < len(pieces):
            carried = (a, b)
        else:
            dropped.append((a, b))
    return kept, dropped


def video_clips(segments: list, duration_s: float, r: Clipping
                ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """A video's speech segments and length -> (clips, dropped pieces), seconds, time order."""
    pieces = [p for g in merge(segments, r.merge_gap_s) for p in cut(g, r)]
    return widen(pieces, duration_s, r)


# --------------------------------------------------------------------------- splits


def assign_splits(videos: list[str], d: Draw) -> dict[str, str]:
    """Video names -> split (train / val / test), seeded, each video in one split."""
    names = sorted(videos)
    n = len(names)
    order = [names[i] for i in np.random.default_rng(d.seed).permutation(n)]
    counts = {}
    for s, f in (("test", d.test_fraction), ("val", d.val_fraction)):
        k = round(f * n)
        counts[s] = max(k, 1) if f > 0 and n >= 3 else k
    counts["test"] = min(counts["test"], n)
    counts["val"] = min(counts["val"], n - counts["test"])
    out = {}
    for i, v in enumerate(order):
        out[v] = ("test" if i < counts["test"] else
                  "val" if i < counts["test"] + counts["val"] else "train")
    return out


def draw(clips: list[dict], d: Draw) -> tuple[list[dict], dict[str, dict]]:
    """Clips (dicts with video, start, end, split) -> (the drawn ones in video/time order,
    per split {available, wanted, drawn}). n_<split> = 0 takes all of a split's clips."""
    rng = np.random.default_rng([d.seed, 1])    # a stream apart from the video shuffle
    chosen, stats = [], {}
    for s in SPLITS:
        pool = sorted((c for c in clips if c["split"] == s),
                      key=lambda c: (c["video"], c["start"]))
        want = getattr(d, f"n_{s}")
        k = len(pool) if want == 0 else min(want, len(pool))
        if want and k < want:
            log.warning("segment: only %d %s clips for n_%s=%d: taking all of them",
                        len(pool), s, s, want)
        pick = sorted(rng.choice(len(pool), size=k, replace=False)) if k < len(pool) \
            else range(len(pool))
        chosen += [pool[i] for i in pick]
        stats[s] = {"available": len(pool), "wanted": want, "drawn": k}
    return sorted(chosen, key=lambda c: (c["video"], c["start"])), stats


# --------------------------------------------------------------------------- files


def media_files(folder: Path, extensions: list[str]) -> dict[str, Path]:
    """The media folder's files (custom.scan_media's rules: recursive, sorted, hidden skipped,
    by extension) -> posix path relative to the folder -> file. SegmentError when none."""
    from pipeline.data.datasets.custom import scan_media
    folder = Path(folder)
    if not folder.is_dir():
        raise SegmentError(f"{folder}: media folder not found; put the media there or pass "
                           "--media")
    files = {f.relative_to(folder).as_posix(): f for f in scan_media(folder, extensions, "")}
    if not files:
        exts = ", ".join(extensions) or "any"
        raise SegmentError(f"{folder}: no media files (extensions: {exts}); add media there "
                           "or change manifest.<name>.extensions")
    return files


def write_csv_atomic(rows: list[dict], path: Path) -> None:
    """The annotations CSV (CSV_COLUMNS), written to a temporary name and renamed."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for c in rows:
        w.writerow({"video": c["video"], "start": f"{c['start']:.3f}",
                    "end": f"{c['end']:.3f}", "text": "", "split": c["split"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def side_paths(out: Path) -> tuple[Path, Path]:
    """The provenance JSON and the journal beside the CSV `out`."""
    return (out.with_name(out.stem + ".provenance.json"),
            out.with_name(out.stem + ".progress.jsonl"))


# --------------------------------------------------------------------------- build


def build(media: Path, out: Path, d: Detector, r: Clipping, dr: Draw, *,
          extensions: list[str], max_failed_fraction: float = 0.5, label: str = "segment"
          ) -> dict:
    """Media folder -> the annotations CSV `out`, its provenance JSON and journal (module
    doc) -> the provenance. Per-video problems are statuses; SegmentError (after writing the
    provenance) when no video has speech or more than max_failed_fraction fail to decode."""
    if d.asr != "none":
        raise SegmentError("the segmenter uses the voice activity detector alone: asr none")
    media = Path(media)
    files = media_files(media, extensions)
    if out.resolve().parent == media.resolve() or media.resolve() in out.resolve().parents:
        raise SegmentError(f"{out}: inside the media folder {media}; write it beside it")
    prov_path, journal = side_paths(out)
    journal.parent.mkdir(parents=True, exist_ok=True)
    entries = detect_all(files, journal, d, label)

    videos, candidates, dropped = {}, [], []
    for name, e in entries.items():
        status = e["status"]
        if status == "ok" and not e["segments"]:
            status = "no_speech"
        clips, short = video_clips(e["segments"], e["duration_s"], r) \
            if status == "ok" else ([], [])
        candidates += [{"video": name, "start": a, "end": b} for a, b in clips]
        dropped += [{"video": name, "start": a, "end": b, "reason": "too_short"}
                    for a, b in short]
        speech = sum(b - a for a, b in e["segments"])
        videos[name] = {"status": status, "error": e["error"], "duration_s": e["duration_s"],
                        "media": media_key(files[name]), "segments": len(e["segments"]),
                        "speech_s": round(speech, 3), "clips": len(clips),
                        "too_short": len(short),
                        "speech_in_clips_s": round(overlap_all(clips, e["segments"]), 3)}
    split_of = assign_splits(sorted({c["video"] for c in candidates}), dr)
    for c in candidates:
        c["split"] = split_of[c["video"]]
    for name, v in videos.items():
        v["split"] = split_of.get(name)
    chosen, per_split = draw(candidates, dr)
    picked = {(c["video"], c["start"]) for c in chosen}
    not_drawn = [c for c in candidates if (c["video"], c["start"]) not in picked]

    statuses = [v["status"] for v in videos.values()]
    speech_s = sum(v["speech_s"] for v in videos.values())
    prov = {
        "media_folder": str(media), "annotations": str(out), "detector": "silero-vad",
        "detector_settings": dataclasses.asdict(d), "clipping": dataclasses.asdict(r),
        "draw": dataclasses.asdict(dr), "seed": dr.seed, "extensions": list(extensions),
        "max_failed_fraction": max_failed_fraction,
        "video_status": {s: statuses.count(s) for s in sorted(set(statuses))},
        "videos_total": len(videos),
        "speech_s": round(speech_s, 3),
        "speech_in_candidate_clips_s": round(sum(v["speech_in_clips_s"]
                                                 for v in videos.values()), 3),
        "clips": {"candidates": len(candidates), "kept": len(chosen),
                  "dropped": {"too_short": len(dropped), "not_drawn": len(not_drawn)},
                  "too_short_speech_s": round(sum(
                      overlap(x["start"], x["end"], entries[x["video"]]["segments"])
                      for x in dropped), 3),
                  "per_split": per_split},
        "split_videos": {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS},
        "dropped_too_short": dropped,
        "videos": videos,
    }
    write_json_atomic(prov, prov_path)
    n_failed = statuses.count("failed")
    problem = None
    if n_failed > max_failed_fraction * len(videos):
        problem = (f"{media}: {n_failed} of {len(videos)} files could not be decoded (more "
                   f"than max_failed_fraction={max_failed_fraction}; errors in {prov_path}); "
                   "fix or remove them")
    elif not candidates:
        problem = _no_clips_message(media, statuses, d, r, prov_path)
    if problem:
        out.unlink(missing_ok=True)          # no stale CSV of an earlier run
        raise SegmentError(problem)
    write_csv_atomic(chosen, out)
    log.info("%s: %d files (%s); %d candidate clips, %d too short dropped, %d kept (%s), "
             "%.0f%% of %.0f s speech in candidate clips -> %s", label, len(videos),
             ", ".join(f"{k} {v}" for k, v in prov["video_status"].items()), len(candidates),
             len(dropped), len(chosen),
             ", ".join(f"{s} {per_split[s]['drawn']}" for s in SPLITS),
             100 * prov["speech_in_candidate_clips_s"] / max(speech_s, 1e-9), speech_s, out)
    return prov


def overlap_all(clips: list[tuple[float, float]], segments: list) -> float:
    """Seconds of the segments covered by the (disjoint) clips."""
    return sum(overlap(a, b, segments) for a, b in clips)


def _no_clips_message(media: Path, statuses: list[str], d: Detector, r: Clipping,
                      prov: Path) -> str:
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    if statuses.count("ok") + statuses.count("no_speech") == 0:
        return (f"{media}: no file has readable audio ({counts}); see {prov}, and give media "
                "with an audio track")
    if statuses.count("ok") == 0:
        return (f"{media}: no speech found in any file ({counts}) at segment.threshold="
                f"{d.threshold}; lower the threshold (e.g. {max(0.05, d.threshold / 2):g}) "
                "or check that the audio holds speech")
    return (f"{media}: speech found but every piece was shorter than min_s={r.min_s} s with "
            f"no room to widen it ({counts}); lower segment.min_s or raise "
            f"segment.merge_gap_s (now {r.merge_gap_s} s)")
