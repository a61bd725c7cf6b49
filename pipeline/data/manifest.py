"""Canonical manifests: schema, validation and atomic writing of videos/clips parquet files."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.safety import UnsafeInputError, check_safe_id

log = logging.getLogger(__name__)

YOUTUBE_ID = re.compile(r"\A[A-Za-z0-9_-]{11}\Z")  # \Z: "$" would accept a trailing newline

VIDEO_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),   # comma-joined where a video serves several
    pa.field("duration_s", pa.float64()),             # from the listing; null when not given
]
CLIP_FIELDS = [
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("source", pa.string(), nullable=False),  # file and row the clip came from
]


class ManifestError(ValueError):
    """Malformed or hostile annotation input; the message names file, row and field."""

    def __init__(self, file: str | os.PathLike, row: Any, fld: str | None, msg: str):
        self.file, self.row, self.field = str(file), row, fld
        where = f"{self.file}"
        if row is not None:
            where += f", row {row}"
        if fld is not None:
            where += f", field {fld!r}"
        super().__init__(f"{where}: {msg}")


@dataclass
class Manifest:
    """A parsed dataset: rows as dicts, plus the dataset-specific extra columns' types."""

    dataset: str
    splits: tuple[str, ...]                    # the split names this dataset may use
    videos: list[dict] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)
    video_extra: dict[str, pa.DataType] = field(default_factory=dict)
    clip_extra: dict[str, pa.DataType] = field(default_factory=dict)
    # False for own media: ids are any path-safe id (custom.stable_id), not YouTube's
    youtube_ids: bool = True
    # the splits later stages use, recorded in manifest.json: {"train": ..., "eval": ...};
    # the built-in datasets' are in pipeline.learn.sampling (TRAIN_SPLIT, EVAL_SPLIT)
    roles: dict[str, str] = field(default_factory=dict)
    clip_frames: int | None = None   # audio frames per evaluated clip, when not the default


def check_video_id(video_id: Any, file: str, row: Any, fld: str = "video_id") -> str:
    """Returns `video_id` if it is an 11-character YouTube id, else raises ManifestError.

    Only ids that pass become file names later, so none can escape its folder."""
    if not isinstance(video_id, str) or not YOUTUBE_ID.match(video_id):
        raise ManifestError(file, row, fld, f"{video_id!r} is not a valid 11-character YouTube "
                            "id ([A-Za-z0-9_-]); refusing it (ids become file names)")
    return video_id


def parse_time(value: Any, file: str, row: Any, fld: str) -> float:
    """A finite, non-negative time in seconds."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ManifestError(file, row, fld, f"expected a time in seconds, got {value!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ManifestError(file, row, fld, f"expected a finite time >= 0, got {value!r}")
    return t


def split_checksum(clip_ids: Iterable[str]) -> str:
    """sha256 of the sorted clip ids joined by newlines: names the exact split evaluated on."""
    h = hashlib.sha256()
    for cid in sorted(clip_ids):
        h.update(cid.encode())
        h.update(b"\n")
    return h.hexdigest()


def validate(m: Manifest, file: str) -> None:
    """Checks ids, uniqueness, times, splits and references; raises ManifestError on the first."""
    known = set(m.splits)
    seen: dict[str, Any] = {}
    for i, v in enumerate(m.videos):
        if m.youtube_ids:
            vid = check_video_id(v["video_id"], file, v.get("_row", i))
        else:
            vid = v["video_id"]
            try:
                check_safe_id(vid, f"{file}, row {v.get('_row', i)}")
            except UnsafeInputError as e:
                raise ManifestError(file, v.get("_row", i), "video_id", str(e)) from None
        if vid in seen:
            raise ManifestError(file, v.get("_row", i), "video_id",
                                f"duplicate video id {vid!r} (first at row {seen[vid]})")
        seen[vid] = v.get("_row", i)
        for s in v["split"].split(","):
            if s not in known:
                raise ManifestError(file, v.get("_row", i), "split",
                                    f"unknown split {s!r} (known: {sorted(known)})")
    clip_seen: dict[tuple[str, str], Any] = {}
    for i, c in enumerate(m.clips):
        row = c.get("_row", i)
        if c["split"] not in known:
            raise ManifestError(file, row, "split", f"unknown split {c['split']!r} "
                                f"(known: {sorted(known)})")
        if c["video_id"] not in seen:
            raise ManifestError(file, row, "video_id",
                                f"clip refers to video {c['video_id']!r} not in the video list")
        key = (c["split"], c["clip_id"])
        if key in clip_seen:
            raise ManifestError(file, row, "clip_id", f"duplicate clip id {c['clip_id']!r} in "
                                f"split {c['split']!r} (first at row {clip_seen[key]})")
        clip_seen[key] = row
        if not c["start_s"] < c["end_s"]:
            raise ManifestError(file, row, "segment", f"start {c['start_s']} s is not before "
                                f"end {c['end_s']} s")


def _table(rows: list[dict], fields: list[pa.Field], extra: dict[str, pa.DataType]) -> pa.Table:
    schema = pa.schema(fields + [pa.field(k, t) for k, t in extra.items()])
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Writes to a temporary name in the same folder and renames: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_json_atomic(obj: Any, path: Path) -> None:
    """Deterministic, human-readable JSON, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def summarize(m: Manifest) -> dict:
    """Per-split counts and checksums, recorded so results can name their exact split."""
    out = {}
    for s in m.splits:
        clip_ids = [c["clip_id"] for c in m.clips if c["split"] == s]
        vids = {v["video_id"] for v in m.videos if s in v["split"].split(",")}
        out[s] = {"videos": len(vids), "clips": len(clip_ids),
                  "clip_checksum": split_checksum(clip_ids)}
    return out


def write_manifest(m: Manifest, out_dir: Path, sources: dict, params: dict) -> dict:
    """Writes videos.parquet, clips.parquet and manifest.json (counts, checksums, sources)."""
    videos = sorted(m.videos, key=lambda v: v["video_id"])
    clips = sorted(m.clips, key=lambda c: (c["split"], c["video_id"], c["start_s"], c["clip_id"]))
    write_parquet_atomic(_table(videos, VIDEO_FIELDS, m.video_extra), out_dir / "videos.parquet")
    write_parquet_atomic(_table(clips, CLIP_FIELDS, m.clip_extra), out_dir / "clips.parquet")
    summary = {"dataset": m.dataset, "videos": len(videos), "clips": len(clips),
               "splits": summarize(m), "sources": sources, "params": params}
    if m.roles:
        summary["roles"] = m.roles
    if m.clip_frames:
        summary["clip_frames"] = m.clip_frames
    write_json_atomic(summary, out_dir / "manifest.json")
    return summary


def _read_checked(path: Path, fields: list[pa.Field], optional: tuple[str, ...]) -> pa.Table:
    """A manifest table with `fields` cast to their types (extra columns kept; `optional` ones
    added as nulls when absent) and no nulls in required fields; ManifestError naming the
    file, row and field otherwise."""
    path = Path(path)
    fix = "run the manifest stage for this dataset again"
    try:
        t = pq.read_table(path)
    except FileNotFoundError:
        raise ManifestError(path, None, None, f"not found; {fix}") from None
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # the machine (permissions, I/O): the stage reports it naming the file
        raise ManifestError(path, None, None, f"unreadable ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}); {fix}") from None
    for f in fields:
        if f.name not in t.column_names:
            if f.name not in optional:
                raise ManifestError(path, None, f.name, f"missing column (the table has "
                                    f"{t.column_names}); {fix}")
            t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
        col = t.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowException, ValueError) as e:
            raise ManifestError(path, None, f.name, f"expected {f.type}, got {col.type} "
                                f"({str(e).splitlines()[0][:200]}); {fix}") from None
        if not f.nullable and col.null_count:
            raise ManifestError(path, col.to_pylist().index(None), f.name, f"empty; {fix}")
        t = t.set_column(t.column_names.index(f.name), f.name, col)
    return t


def read_videos(path: Path) -> pa.Table:
    """Reads a videos.parquet written by write_manifest, checked before any work: the columns
    of VIDEO_FIELDS (duration_s may be absent: nulls), no empty id, url or split, video ids
    path-safe and unique. ManifestError / UnsafeInputError naming file, row and field."""
    t = _read_checked(path, VIDEO_FIELDS, ("duration_s",))
    seen: dict[str, int] = {}
    for i, vid in enumerate(t.column("video_id").to_pylist()):
        check_safe_id(vid, f"{path}, row {i}, field 'video_id'")
        if vid in seen:
            raise ManifestError(path, i, "video_id", f"duplicate video id {vid!r} (first at "
                                f"row {seen[vid]})")
        seen[vid] = i
    return t


def read_clips(path: Path) -> pa.Table:
    """Reads a clips.parquet written by write_manifest, checked: the columns of CLIP_FIELDS
    (text and source may be absent), no empty required field, path-safe video ids."""
    t = _read_checked(path, CLIP_FIELDS, ("text", "source"))
    for i, vid in enumerate(t.column("video_id").to_pylist()):
        check_safe_id(vid, f"{path}, row {i}, field 'video_id'")
    return t
