"""One's own media (kind `custom`): a folder of files and/or a list of URLs or paths, with
optional clip annotations (CSV, JSONL or YouCook2-format JSON) -> a canonical Manifest.

Ids: a YouTube URL keeps its 11-character id; anything else gets a stable, path-safe id made of
a readable slug of its name and 10 hex digits of the sha256 of that name (the path relative to
the media folder, or the URL), so the same file or URL gets the same id on every machine and
re-run. The original name is kept in the manifest's `name` column. Local files are referenced
where they are (file: URLs under the media folder, never copied); the download stage probes and
hashes them and records a status for each, as it does for downloads."""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from pipeline.config import CustomManifestParams
from pipeline.data.datasets.common import (WHOLE_VIDEO_S, OwnVideos, file_url, load_json,
                                           roles, stable_id)
from pipeline.data.manifest import Manifest, ManifestError, parse_time
from pipeline.data.sources import OwnInputs, source_folder

log = logging.getLogger(__name__)

_YOUTUBE = re.compile(r"\A(?:https?://)?(?:www\.|m\.)?(?:youtube\.com/(?:watch\?(?:.*&)?v=|"
                      r"shorts/|embed/)|youtu\.be/)([A-Za-z0-9_-]{11})(?:[&?#/].*)?\Z")


def prepare(dataset: str, kind: str, params: Any, manifests: Path = Path("manifests")
            ) -> list[Path]:
    """Sets up an own dataset's folders: data/sources/<name>/ (its inputs, a DVC dependency of
    manifest@<name>; with media/ when the media folder is the default) and
    manifests/<name>/source.yaml (no official files; the stages' common dependency). Keeps what
    exists. -> the paths created."""
    made = []
    folder = source_folder(dataset)
    media = getattr(params, "media", None)
    for d in [folder] + ([folder / media] if media and not os.path.isabs(media) else []):
        if not d.exists():
            d.mkdir(parents=True)
            made.append(d)
    spec = manifests / dataset / "source.yaml"
    if not spec.exists():
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(f"# {dataset}: a {kind} dataset (own media). No official files: its "
                        f"inputs are in {folder}/\n# and its settings in params.yaml "
                        f"manifest.{dataset}.\nfiles: []\n")
        made.append(spec)
    return made


def youtube_id(url: str) -> str | None:
    m = _YOUTUBE.match(url.strip())
    return m.group(1) if m else None


def scan_media(root: Path, extensions: list[str], dataset: str) -> Iterator[Path]:
    """Media files under `root`, recursively, sorted; hidden files and folders skipped."""
    if not root.is_dir():
        raise ManifestError(root, None, None, f"media folder not found: put the files there or "
                            f"set manifest.{dataset}.media in params.yaml")
    exts = {e.lower().lstrip(".") for e in extensions}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            if exts and fn.rsplit(".", 1)[-1].lower() not in exts:
                continue
            yield Path(dirpath) / fn


def read_rows(path: Path) -> Iterator[tuple[Any, dict]]:
    """(row label, dict) of a CSV (with a header) or JSONL file, by the file's ending."""
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ManifestError(path, f"line {i}", None,
                                            f"not JSON ({e.msg})") from None
                    if not isinstance(obj, dict):
                        raise ManifestError(path, f"line {i}", None, "expected a JSON object")
                    yield f"line {i}", obj
            return
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ManifestError(path, 1, None, "empty file, expected a header row")
            for row in reader:
                if None in row:
                    raise ManifestError(path, reader.line_num, None, "more fields than the "
                                        f"header names ({','.join(reader.fieldnames)})")
                clean = {k.strip(): (v.strip() if isinstance(v, str) else v)
                         for k, v in row.items() if k is not None}
                if all(not v for v in clean.values()):
                    continue
                yield reader.line_num, clean
    except UnicodeDecodeError as e:
        raise ManifestError(path, None, None, f"not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise ManifestError(path, None, None, f"malformed CSV: {e}") from None


def _split(value: Any, default: str, path: Path, row: Any) -> str:
    s = str(value).strip() if value not in (None, "") else default
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", s):
        raise ManifestError(path, row, "split", f"{s!r} is not a plain split name "
                            "(a-z, 0-9, _ and -)")
    return s


def parse(inputs: OwnInputs, params: CustomManifestParams) -> Manifest:
    """The dataset's videos (folder and/or list) and clips (annotations, or whole videos)."""
    ds = inputs.dataset
    videos = OwnVideos(ds)
    media = inputs.media_root(params.media)
    if params.media is not None:
        for f in scan_media(media, params.extensions, ds):
            rel = f.relative_to(media).as_posix()
            videos.add(stable_id(rel), file_url(f), rel, None, f"{media}")
    if params.media_list is not None:
        lst = inputs.file("media_list", params.media_list, "media_list")
        _read_list(lst, videos, media, params, ds)
    if not videos.rows:
        raise ManifestError(media or inputs.path(params.media_list or ""), None, None,
                            "no media found (check the folder and manifest."
                            f"{ds}.extensions)")
    clips: list[dict] = []
    if params.annotations is not None:
        ann = inputs.file("annotations", params.annotations, "annotations")
        clips = _read_annotations(ann, videos, params.split)
    else:
        for vid, v in videos.rows.items():
            clips.append({"clip_id": f"{vid}:0", "video_id": vid,
                          "split": v["_split"] or params.split, "start_s": 0.0,
                          "end_s": v["duration_s"] or WHOLE_VIDEO_S, "text": v["title"],
                          "source": "whole video", "_row": v["_row"]})
    return _manifest(ds, videos, clips, params.split)


def _manifest(ds: str, videos: OwnVideos, clips: list[dict], default_split: str) -> Manifest:
    by_video: dict[str, set[str]] = {}
    for c in clips:
        by_video.setdefault(c["video_id"], set()).add(c["split"])
    splits = set()
    rows = []
    for vid, v in videos.rows.items():
        s = sorted(by_video.get(vid) or {v["_split"] or default_split})
        splits.update(s)
        rows.append({**{k: v[k] for k in ("video_id", "url", "name", "title", "duration_s",
                                          "_row")}, "split": ",".join(s)})
    m = Manifest(ds, tuple(sorted(splits)), videos=rows, clips=clips,
                 video_extra={"name": pa.string(), "title": pa.string()})
    m.youtube_ids = False
    m.roles = roles(m.splits, default_split)
    return m


def _read_list(path: Path, videos: OwnVideos, media: Path | None, params: CustomManifestParams,
               ds: str) -> None:
    for row, r in read_rows(path):
        url, rel = r.get("url") or None, r.get("path") or None
        if (url is None) == (rel is None):
            raise ManifestError(path, row, "url", "give exactly one of `url` and `path`")
        duration = parse_time(r["duration"], path, row, "duration") \
            if r.get("duration") not in (None, "") else None
        split = _split(r.get("split"), params.split, path, row) if r.get("split") else None
        title = str(r["title"]) if r.get("title") not in (None, "") else None
        if rel is not None:
            if media is None:
                raise ManifestError(path, row, "path", f"local paths need a media folder: set "
                                    f"manifest.{ds}.media (paths are relative to it)")
            f = Path(os.path.normpath(media / rel))
            if not (f == media or media in f.parents):
                raise ManifestError(path, row, "path", f"{rel!r} leads outside the media "
                                    f"folder {media}; refusing it")
            name, link = f.relative_to(media).as_posix(), file_url(f)
        else:
            url = str(url).strip()
            if not url.startswith(("http://", "https://")):
                raise ManifestError(path, row, "url", f"{url!r}: only http(s) URLs (local "
                                    "files go in the `path` column)")
            name, link = url, url
        vid = r.get("id") or (youtube_id(link) if url else None) or stable_id(name)
        if not isinstance(vid, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}",
                                                        vid):
            raise ManifestError(path, row, "id", f"{vid!r} is not path-safe (letters, digits, "
                                "'_', '-', '.')")
        videos.add(vid, link, name, split, f"{path.name}:{row}", duration, title)


def _read_annotations(path: Path, videos: OwnVideos, default_split: str) -> list[dict]:
    if path.suffix.lower() == ".json":
        return _youcook2_json(path, videos, default_split)
    clips = []
    counts: dict[str, int] = {}
    for row, r in read_rows(path):
        ref = str(r.get("video") or r.get("video_id") or r.get("id") or r.get("path")
                  or r.get("url") or "")
        if not ref:
            raise ManifestError(path, row, "video", "missing (the id, file name or URL of the "
                                "annotated media)")
        vid = videos.find(ref)
        if vid is None:
            raise ManifestError(path, row, "video", f"{ref!r} is none of the dataset's media "
                                "(by id, relative path, file name or URL)")
        start = parse_time(r.get("start", 0), path, row, "start")
        end = parse_time(r["end"], path, row, "end") if r.get("end") not in (None, "") \
            else (videos.rows[vid]["duration_s"] or WHOLE_VIDEO_S)
        n = counts[vid] = counts.get(vid, -1) + 1
        text = r.get("text")
        clips.append({"clip_id": str(r.get("clip_id") or f"{vid}:{n}"), "video_id": vid,
                      "split": _split(r.get("split"), videos.rows[vid]["_split"]
                                      or default_split, path, row),
                      "start_s": start, "end_s": end,
                      "text": None if text in (None, "") else str(text),
                      "source": f"{path.name}:{row}", "_row": row})
    return clips


def _youcook2_json(path: Path, videos: OwnVideos, default_split: str) -> list[dict]:
    """{"database": {key: {"subset", "annotations": [{"id", "segment", "sentence"}]}}}: keys
    name the media (id, relative path, file name or stem)."""
    data = load_json(path)
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise ManifestError(path, None, "database", "expected a YouCook2-format JSON "
                            '({"database": {video: {...}}})')
    subsets = {"training": "train", "validation": "val", "testing": "test"}
    clips = []
    for key, entry in db.items():
        row = f"database.{key}"
        vid = videos.find(str(key))
        if vid is None:
            raise ManifestError(path, row, None, f"{key!r} is none of the dataset's media")
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), list):
            raise ManifestError(path, row, "annotations", "expected a list")
        sub = entry.get("subset")
        split = _split(subsets.get(sub, sub), default_split, path, row)
        for j, ann in enumerate(entry["annotations"]):
            arow = f"{row}.annotations[{j}]"
            seg = ann.get("segment") if isinstance(ann, dict) else None
            if not isinstance(seg, list) or len(seg) != 2:
                raise ManifestError(path, arow, "segment", f"expected [start, end], got {seg!r}")
            start, end = (parse_time(t, path, arow, "segment") for t in seg)
            clips.append({"clip_id": f"{vid}:{ann.get('id', j)}", "video_id": vid,
                          "split": split, "start_s": start, "end_s": end,
                          "text": ann.get("sentence"), "source": f"{path.name}:{arow}",
                          "_row": arow})
    return clips


__all__ = ["OwnInputs", "WHOLE_VIDEO_S", "file_url", "parse", "prepare", "read_rows",
           "scan_media", "stable_id", "youtube_id"]
