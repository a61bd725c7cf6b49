"""YouCook2: youcookii_annotations_trainval.json -> canonical videos and clips (also the demo)."""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import pyarrow as pa

from pipeline.config import SourceParams
from pipeline.data.datasets.common import load_json, require, youtube_url
from pipeline.data.manifest import Manifest, ManifestError, check_video_id, parse_time
from pipeline.data.sources import Sources

log = logging.getLogger(__name__)

SUBSETS = {"training": "train", "validation": "val"}  # the test split has no public segments


def parse(sources: Sources, params: SourceParams) -> Manifest:
    """The official YouCook2 train/val annotations (1,333 + 457 videos)."""
    return parse_file(sources.get("annotations"), "youcook2")


def _url(entry: dict, vid: str, path: Path, row: str, file_urls: bool) -> str:
    url = require(entry, "video_url", str, path, row)
    if file_urls:
        # the demo: a project-relative file URL, resolved under an allowed root at download
        rel = PurePosixPath(url.removeprefix("file:"))
        if not url.startswith("file:") or rel.is_absolute() or ".." in rel.parts:
            raise ManifestError(path, row, "video_url", f"expected file:<relative path> "
                                f"without '..', got {url!r}")
        return url
    if url.strip() not in (youtube_url(vid), youtube_url(vid).replace("https:", "http:")):
        # the official JSON has two such entries ('cc', and one naming another video): the
        # key is what the segments were annotated on, so the key's URL wins
        log.warning("%s: %s lists video_url %r; using %s", path.name, row, url, youtube_url(vid))
    return youtube_url(vid)


def parse_file(path: Path, dataset: str, file_urls: bool = False) -> Manifest:
    """Parses a YouCook2-format JSON ({"database": {id: {...}}}) into a Manifest."""
    data = load_json(path)
    db = require(data, "database", dict, path, None)
    m = Manifest(dataset, ("train", "val"), video_extra={"recipe_type": pa.string()})
    for vid, entry in db.items():
        row = f"database.{vid}"
        check_video_id(vid, path, row, "database key")
        subset = require(entry, "subset", str, path, row)
        if subset not in SUBSETS:
            raise ManifestError(path, row, "subset", f"unknown split {subset!r} "
                                f"(known: {sorted(SUBSETS)})")
        split = SUBSETS[subset]
        duration = parse_time(require(entry, "duration", (int, float), path, row),
                              path, row, "duration")
        m.videos.append({"video_id": vid, "url": _url(entry, vid, path, row, file_urls),
                         "split": split, "duration_s": duration, "_row": row,
                         "recipe_type": str(entry.get("recipe_type", ""))})
        for j, ann in enumerate(require(entry, "annotations", list, path, row)):
            arow = f"{row}.annotations[{j}]"
            seg = require(ann, "segment", list, path, arow)
            if len(seg) != 2:
                raise ManifestError(path, arow, "segment", f"expected [start, end], got {seg!r}")
            start, end = (parse_time(t, path, arow, "segment") for t in seg)
            ann_id = require(ann, "id", int, path, arow)
            m.clips.append({"clip_id": f"{vid}:{ann_id}", "video_id": vid, "split": split,
                            "start_s": start, "end_s": end, "_row": arow, "source": f"{path.name}:{arow}",
                            "text": require(ann, "sentence", str, path, arow)})
    return m
