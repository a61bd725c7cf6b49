"""MSR-VTT: videodatainfo JSON + JSFusion split lists -> canonical videos and clips."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa

from pipeline.config import MsrvttManifestParams
from pipeline.data.datasets.common import load_json, read_csv, require, youtube_url
from pipeline.data.manifest import Manifest, ManifestError, check_video_id, parse_time
from pipeline.data.sources import Sources

SPLITS = ("train_7k", "train_9k", "test_1k_a")
OFFICIAL_SPLITS = ("train", "validate", "test")
# columns of each split list: the 1k-A test list carries its one query sentence per clip
LIST_COLUMNS = {"test_1k_a": ["key", "vid_key", "video_id", "sentence"],
                "train_9k": ["video_id"], "train_7k": ["video_id"]}
CLIP_KEY = re.compile(r"^video[0-9]{1,6}$")
YOUTUBE_HOSTS = ("www.youtube.com", "youtube.com", "m.youtube.com")


def parse(sources: Sources, params: MsrvttManifestParams) -> Manifest:
    """The MSR-VTT clips of the split lists named in params.splits (source names = split names)."""
    lists = {s: sources.get(s) for s in SPLITS if s in params.splits}
    return parse_files(sources.get("videodatainfo"), lists, "msrvtt")


def _read_list(path: Path, split: str) -> list[tuple[int, str, str | None]]:
    """(line, clip key, JSFusion sentence or None) per row of a split list; keys checked."""
    if split not in LIST_COLUMNS:
        raise ValueError(f"unknown MSR-VTT split {split!r} (known: {list(SPLITS)})")
    out, seen = [], {}
    for line, row in read_csv(path, LIST_COLUMNS[split]):
        key = row["video_id"]
        if not CLIP_KEY.match(key):
            raise ManifestError(path, line, "video_id", f"{key!r} is not an MSR-VTT clip key "
                                "(videoN)")
        if key in seen:
            raise ManifestError(path, line, "video_id", f"duplicate clip key {key!r} (first at "
                                f"row {seen[key]})")
        seen[key] = line
        out.append((line, key, row.get("sentence")))
    return out


def read_split_list(path: Path, split: str) -> list[str]:
    """The MSR-VTT clip keys ("video9770", ...) of one split list, in file order.

    `split` names the list's format: "test_1k_a" (key,vid_key,video_id,sentence) or
    "train_9k"/"train_7k" (video_id)."""
    return [key for _, key, _ in _read_list(path, split)]


def youtube_id_from_url(url: str, path: Path, row: str, fld: str = "url") -> str:
    """The validated YouTube id of a watch URL (https://www.youtube.com/watch?v=ID)."""
    parts = urlsplit(url.strip())
    ids = parse_qs(parts.query).get("v", [])
    if (parts.scheme not in ("http", "https") or parts.netloc.lower() not in YOUTUBE_HOSTS
            or parts.path != "/watch" or len(ids) != 1):
        raise ManifestError(path, row, fld, f"{url!r} is not a YouTube watch URL "
                            "(https://www.youtube.com/watch?v=ID)")
    return check_video_id(ids[0], path, row, fld)


def _read_info(path: Path) -> tuple[dict[str, dict], dict[str, list[tuple[int, str]]]]:
    """videodatainfo -> ({clip key: checked entry}, {clip key: [(sen_id, caption)]})."""
    data = load_json(path)
    clips: dict[str, dict] = {}
    for i, entry in enumerate(require(data, "videos", list, path, None)):
        row = f"videos[{i}]"
        key = require(entry, "video_id", str, path, row)
        if not CLIP_KEY.match(key):
            raise ManifestError(path, row, "video_id", f"{key!r} is not an MSR-VTT clip key "
                                "(videoN)")
        if key in clips:
            raise ManifestError(path, row, "video_id", f"duplicate clip key {key!r} (first at "
                                f"{clips[key]['row']})")
        split = require(entry, "split", str, path, row)
        if split not in OFFICIAL_SPLITS:
            raise ManifestError(path, row, "split", f"unknown split {split!r} "
                                f"(known: {list(OFFICIAL_SPLITS)})")
        start = parse_time(require(entry, "start time", (int, float), path, row), path, row,
                           "start time")
        end = parse_time(require(entry, "end time", (int, float), path, row), path, row,
                         "end time")
        if not start < end:
            raise ManifestError(path, row, "end time", f"start {start} s is not before end "
                                f"{end} s")
        clips[key] = {"row": row, "video_id": youtube_id_from_url(
                          require(entry, "url", str, path, row), path, row),
                      "start_s": start, "end_s": end, "official_split": split,
                      "category": require(entry, "category", int, path, row)}
    captions: dict[str, list[tuple[int, str]]] = {}
    for i, sen in enumerate(require(data, "sentences", list, path, None)):
        row = f"sentences[{i}]"
        key = require(sen, "video_id", str, path, row)
        if key not in clips:
            raise ManifestError(path, row, "video_id", f"caption for clip {key!r} that is not "
                                "in 'videos'")
        captions.setdefault(key, []).append((require(sen, "sen_id", int, path, row),
                                             require(sen, "caption", str, path, row)))
    for caps in captions.values():
        caps.sort()
    return clips, captions


def parse_files(info_path: Path, split_lists: dict[str, Path], dataset: str) -> Manifest:
    """videodatainfo JSON + {canonical split: split list path} -> Manifest.

    One video row per distinct YouTube id (split = sorted comma-joined canonical splits), one
    clip row per (split, clip key); clip_id is the MSR-VTT key, times are the clip's position in
    the YouTube video, text is the JSFusion sentence (test_1k_a) or the first caption."""
    info, captions = _read_info(info_path)
    m = Manifest(dataset, tuple(split_lists),
                 clip_extra={"category": pa.int32(), "captions": pa.list_(pa.string()),
                             "official_split": pa.string()})
    video_splits: dict[str, set[str]] = {}
    video_rows: dict[str, str] = {}
    for split, list_path in split_lists.items():
        for line, key, sentence in _read_list(list_path, split):
            row = f"{list_path.name}:{line}"
            if key not in info:
                raise ManifestError(list_path, line, "video_id", f"clip {key!r} is not in "
                                    f"{info_path.name}")
            entry = info[key]
            caps = [c for _, c in captions.get(key, [])]
            vid = entry["video_id"]
            video_splits.setdefault(vid, set()).add(split)
            video_rows.setdefault(vid, f"{info_path.name}:{entry['row']}")
            m.clips.append({"clip_id": key, "video_id": vid, "split": split,
                            "start_s": entry["start_s"], "end_s": entry["end_s"],
                            "text": sentence if sentence is not None else
                            (caps[0] if caps else None),
                            "source": row, "_row": row, "category": entry["category"],
                            "captions": caps, "official_split": entry["official_split"]})
    for vid, splits in video_splits.items():
        m.videos.append({"video_id": vid, "url": youtube_url(vid),
                         "split": ",".join(sorted(splits)), "duration_s": None,
                         "_row": video_rows[vid]})
    return m
