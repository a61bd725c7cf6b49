"""Readers shared by the dataset parsers: JSON and CSV with errors that name file and row."""
from __future__ import annotations

import csv
import json
from pathlib import Path
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
