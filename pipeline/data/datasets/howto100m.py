"""HowTo100M: HowTo100M_v1.csv (+ optional caption.json ASR clips) -> canonical videos/clips."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pyarrow as pa

from pipeline.config import HowTo100MManifestParams
from pipeline.data.datasets.common import load_json, read_csv, require, youtube_url
from pipeline.data.manifest import YOUTUBE_ID, Manifest, ManifestError, check_video_id, parse_time
from pipeline.data.sources import Sources

log = logging.getLogger(__name__)

COLUMNS = ["video_id", "category_1", "category_2", "rank", "task_id"]
INT32_MAX = 2**31 - 1
NUMBER = (int, float)


def parse(sources: Sources, params: HowTo100MManifestParams) -> Manifest:
    """All HowTo100M videos (split "train"); ASR caption clips too if params.captions."""
    return parse_files(sources.get("videos"),
                       sources.get("captions") if params.captions else None, "howto100m")


def parse_files(csv_path: Path, caption_path: Path | None, dataset: str) -> Manifest:
    """HowTo100M_v1.csv and optionally caption.json -> Manifest (1.2 M videos: kept cheap)."""
    m = Manifest(dataset, ("train",),
                 video_extra={"category_1": pa.string(), "category_2": pa.string(),
                              "rank": pa.int32(), "task_id": pa.string()})
    first: dict[str, int] = {}
    shared: dict[str, str] = {}  # ~25 % less memory on the 1.2 M-row listing
    for line, row in read_csv(csv_path, COLUMNS):
        vid = row["video_id"]
        if not YOUTUBE_ID.match(vid):  # the fast path; check_video_id words the error
            check_video_id(vid, csv_path, line)
        if vid in first:
            raise ManifestError(csv_path, line, "video_id", f"duplicate video id {vid!r} "
                                f"(first at row {first[vid]})")
        first[vid] = line
        rank = row["rank"]
        if not (rank.isascii() and rank.isdigit()) or int(rank) > INT32_MAX:
            raise ManifestError(csv_path, line, "rank", f"expected a non-negative integer, "
                                f"got {rank!r}")
        for k in ("category_1", "category_2", "task_id"):  # few distinct values: share them
            row[k] = shared.setdefault(row[k], row[k])
        row.update(url=youtube_url(vid), split="train", duration_s=None, _row=line, rank=int(rank))
        m.videos.append(row)
    if caption_path is not None:
        _add_captions(m, caption_path, first)
    return m


def _time(value: object, path: Path, row: str, fld: str) -> float:
    if type(value) not in NUMBER:
        raise ManifestError(path, row, fld, f"expected a time in seconds, got {value!r}")
    return parse_time(value, path, row, fld)


def _add_captions(m: Manifest, path: Path, known: dict[str, int]) -> None:
    """Appends one clip per caption of caption.json ({vid: {start, end, text}}) of a known video.

    ASR segments with start >= end cannot be clips: they are skipped and counted (one warning),
    while missing, negative or non-finite times are errors."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ManifestError(path, None, None, f"expected an object {{video_id: {{start, end, "
                            f"text}}}}, got {type(data).__name__}")
    unknown = empty = 0
    for vid, entry in data.items():
        if vid not in known:
            unknown += 1
            continue
        starts = require(entry, "start", list, path, vid)
        ends = require(entry, "end", list, path, vid)
        texts = require(entry, "text", list, path, vid)
        if not len(starts) == len(ends) == len(texts):
            raise ManifestError(path, vid, "start/end/text", f"lists differ in length: "
                                f"{len(starts)} starts, {len(ends)} ends, {len(texts)} texts")
        for i, (s, e, text) in enumerate(zip(starts, ends, texts)):
            row = f"{vid}[{i}]"
            # fast path: ~136 M captions; _time words the errors
            if type(s) not in NUMBER or not 0 <= s < math.inf:
                s = _time(s, path, row, "start")
            if type(e) not in NUMBER or not 0 <= e < math.inf:
                e = _time(e, path, row, "end")
            if not isinstance(text, str):
                raise ManifestError(path, row, "text", f"expected str, got "
                                    f"{type(text).__name__} {text!r}")
            if not s < e:
                empty += 1
                continue
            m.clips.append({"clip_id": f"{vid}:{i}", "video_id": vid, "split": "train",
                            "start_s": float(s), "end_s": float(e), "text": text,
                            "source": f"{path.name}:{row}", "_row": row})
    if unknown:
        log.warning("%s: skipped the captions of %d videos that are not in the video list",
                    path, unknown)
    if empty:
        log.warning("%s: skipped %d captions whose start is not before their end", path, empty)
