"""Readers shared by the dataset parsers: JSON and CSV with errors that name file and row."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from pipeline.data.manifest import ManifestError


def load_json(path: Path) -> Any:
    """Parses a JSON file; a truncated or invalid one raises ManifestError with line/column."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=lambda pairs: _no_duplicates(pairs, path))
    except json.JSONDecodeError as e:
        raise ManifestError(path, f"line {e.lineno} col {e.colno}", None,
                            f"truncated or invalid JSON ({e.msg}); re-download the file") from None
    except UnicodeDecodeError as e:
        raise ManifestError(path, None, None, f"not UTF-8 text: {e}") from None


def _no_duplicates(pairs: list[tuple[str, Any]], path: Path) -> dict:
    # json.load would silently keep the last of two equal keys: a duplicate id must be loud
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(path, k, None, f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


def read_csv(path: Path, columns: list[str], header: bool = True) -> Iterator[tuple[int, dict]]:
    """Yields (line number, row dict) of a CSV with exactly `columns`.

    With header=True the header must name the columns (any order; extra columns are an error so
    that a wrong file is never half-read); with header=False each row must have len(columns)
    fields."""
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise ManifestError(path, None, None, "file not found") from None
    with f:
        reader = csv.reader(f)
        names = columns
        if header:
            try:
                names = [c.strip() for c in next(reader)]
            except StopIteration:
                raise ManifestError(path, 1, None, "empty file, expected a header row "
                                    f"{','.join(columns)}") from None
            if sorted(names) != sorted(columns):
                raise ManifestError(path, 1, None, f"wrong columns {names}, expected "
                                    f"{columns}")
        try:
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(names):
                    raise ManifestError(path, reader.line_num, None, f"expected {len(names)} "
                                        f"fields ({','.join(names)}), got {len(row)}")
                yield reader.line_num, dict(zip(names, (c.strip() for c in row)))
        except UnicodeDecodeError as e:
            raise ManifestError(path, reader.line_num + 1, None, f"not UTF-8 text: {e}") from None
        except csv.Error as e:
            raise ManifestError(path, reader.line_num, None, f"malformed CSV: {e}") from None


def require(obj: Any, key: str, tp: type | tuple[type, ...], path: Path, row: Any) -> Any:
    """obj[key] checked for presence and type, else ManifestError naming the field."""
    if not isinstance(obj, dict) or key not in obj:
        raise ManifestError(path, row, key, "missing")
    value = obj[key]
    if not isinstance(value, tp) or isinstance(value, bool):
        want = tp.__name__ if isinstance(tp, type) else " or ".join(t.__name__ for t in tp)
        raise ManifestError(path, row, key, f"expected {want}, got {type(value).__name__} "
                            f"{value!r}")
    return value


def youtube_url(video_id: str) -> str:
    """The canonical watch URL of a validated YouTube id."""
    return f"https://www.youtube.com/watch?v={video_id}"


# --------------------------------------------------------------------------- own media
# (custom and lsmdc parsers)

# a clip without an end (an unannotated URL of unknown length) runs to the end of the video:
# features are sliced up to here, so any real video ends before it
WHOLE_VIDEO_S = 86400.0
def file_url(path: Path) -> str:
    """A file: URL: project-relative when the file lies inside the project (portable across
    clones), else absolute."""
    here = Path.cwd().absolute()
    try:
        posix = path.absolute().relative_to(here).as_posix()
    except ValueError:
        posix = path.absolute().as_posix()
    return "file:" + urllib.parse.quote(posix)   # spaces, '%', '#', unicode survive the URL


def stable_id(name: str) -> str:
    """A path-safe id for `name` (a relative path or a URL): slug-<10 hex of sha256(name)>."""
    stem = PurePosixPath(name.split("?")[0].rstrip("/")).stem if "://" not in name \
        else name.split("://", 1)[1]
    ascii_ = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_).strip("_-")[:40] or "media"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


class OwnVideos:
    """The videos found so far, by id, with the names that may refer to each."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.rows: dict[str, dict] = {}
        self.by_name: dict[str, str] = {}

    def add(self, vid: str, url: str, name: str, split: str | None, where: str,
            duration: float | None = None, title: str | None = None) -> None:
        if vid in self.rows:
            if self.rows[vid]["url"] != url:
                raise ManifestError(where, None, "id", f"id {vid!r} names two media "
                                    f"({self.rows[vid]['url']} and {url})")
            return  # the same file listed twice (in the folder and in the list)
        self.rows[vid] = {"video_id": vid, "url": url, "name": name, "title": title,
                          "duration_s": duration, "_split": split, "_row": where}
        for key in {vid, name, url, PurePosixPath(name).name, PurePosixPath(name).stem}:
            self.by_name.setdefault(key, vid)   # first wins: ambiguous stems stay with the first

    def find(self, ref: str) -> str | None:
        return self.by_name.get(ref.strip())


def roles(splits: tuple[str, ...], default_split: str) -> dict[str, str]:
    """Which split evaluation (test, else val, else the default) and fine-tuning (train, when
    there is one) use."""
    out = {"eval": next((s for s in ("test", "val") if s in splits), default_split)}
    if "train" in splits:
        out["train"] = "train"
    return out
