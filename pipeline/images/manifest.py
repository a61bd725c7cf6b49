"""Image + spoken caption manifests: Places Audio Captions JSON (DAVEnet's format) or a CSV
list (image,audio[,split]) -> one pairs table (pair_id, image, audio, split, status, error).

Hostile paths (absolute, or `..` leading outside the base folder) refuse the whole file with an
UnsafeInputError naming the item; a missing file is recorded as a status, never dropped."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.data.manifest import ManifestError, write_parquet_atomic
from pipeline.safety import check_safe_id, inside_checker

log = logging.getLogger(__name__)

OK = "ok"
MISSING_IMAGE = "missing_image"
MISSING_AUDIO = "missing_audio"
BAD_IMAGE = "bad_image"        # not decodable as an image (corrupt, truncated, not an image)
BAD_AUDIO = "bad_audio"        # not a readable PCM wav
EMPTY_AUDIO = "empty_audio"    # a wav with no samples
STATUSES = (OK, MISSING_IMAGE, MISSING_AUDIO, BAD_IMAGE, BAD_AUDIO, EMPTY_AUDIO)

PAIR_FIELDS = [
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("image", pa.string(), nullable=False),    # absolute, normalised
    pa.field("audio", pa.string(), nullable=False),    # absolute, normalised
    pa.field("split", pa.string(), nullable=False),
    pa.field("speaker", pa.string()),
    pa.field("text", pa.string()),                     # Places asr_text, when given
    pa.field("label", pa.string()),                    # what the pair shows (optional)
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("source", pa.string(), nullable=False),   # file and item the pair came from
]


def _base(manifest: Path, value: Any, key: str) -> Path:
    """A base folder of the JSON: absolute as given, relative to the JSON file's folder."""
    if not isinstance(value, str) or not value:
        raise ManifestError(manifest, None, key, "expected a non-empty folder path (Places "
                                                 "Audio Captions JSON: image_base_path, "
                                                 "audio_base_path, data)")
    return (manifest.parent / value).resolve() if not os.path.isabs(value) else Path(value)


def _status(image: str, audio: str) -> tuple[str, str | None]:
    if not os.path.isfile(image):
        return MISSING_IMAGE, f"image file not found: {image}"
    if not os.path.isfile(audio):
        return MISSING_AUDIO, f"audio file not found: {audio}"
    return OK, None


def _pair(pid: str, image: str, audio: str, split: str, source: str,
          speaker: Any = None, text: Any = None, label: Any = None) -> dict:
    status, error = _status(image, audio)
    return {"pair_id": pid, "image": image, "audio": audio, "split": split,
            "speaker": None if speaker is None else str(speaker),
            "text": None if text is None else str(text),
            "label": None if label in (None, "") else str(label), "status": status,
            "error": error, "source": source}


def read_places_json(path: Path, split: str) -> list[dict]:
    """A Places Audio Captions JSON ({image_base_path, audio_base_path, data: [{wav, image,
    uttid?, speaker?, asr_text?, label?}]}; bases absolute or relative to the JSON's folder;
    label: what the pair shows, for the label recall, e.g. the demo's concept) -> pair
    rows of `split`. pair_id: uttid when given (path-safe), else <file stem>-<item index>.
    ManifestError for a malformed file, UnsafeInputError for a hostile path or id."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(path, None, None, f"not a readable JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ManifestError(path, None, "data", "expected an object with a `data` list (Places "
                                                "Audio Captions / DAVEnet format)")
    img_base = _base(path, doc.get("image_base_path"), "image_base_path")
    aud_base = _base(path, doc.get("audio_base_path"), "audio_base_path")
    in_img, in_aud = inside_checker(img_base, ["."]), inside_checker(aud_base, ["."])
    rows, seen = [], set()
    for i, item in enumerate(doc["data"]):
        where = f"{path}, data[{i}]"
        if not isinstance(item, dict):
            raise ManifestError(path, i, None, "expected an object with `wav` and `image`")
        for key in ("wav", "image"):
            if key not in item:
                raise ManifestError(path, i, key, "missing (each item needs `wav` and `image`)")
        image = in_img(item["image"], f"{where}, field 'image' (base {img_base})")
        audio = in_aud(item["wav"], f"{where}, field 'wav' (base {aud_base})")
        pid = item.get("uttid")
        pid = (check_safe_id(pid, f"{where}, field 'uttid'") if pid is not None
               else f"{path.stem}-{i:07d}")
        if pid in seen:
            raise ManifestError(path, i, "uttid", f"duplicate pair id {pid!r}")
        seen.add(pid)
        rows.append(_pair(pid, image, audio, split, f"{path.name}:{i}", item.get("speaker"),
                          item.get("asr_text"), item.get("label")))
    return rows


def read_pair_list(path: Path, split: str = "train") -> list[dict]:
    """A CSV with a header `image,audio[,split][,label]` (paths relative to the CSV's folder)
    -> pair rows; `split` for rows without one. pair_id: <file stem>-<row index>."""
    path = Path(path)
    root = path.parent.resolve()
    check = inside_checker(root, ["."])
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            items = list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ManifestError(path, None, None, f"not a readable CSV file ({e})") from None
    missing = {"image", "audio"} - set(header)
    if missing:
        raise ManifestError(path, None, None, f"the header lacks {sorted(missing)}; expected "
                                              f"image,audio[,split][,label], got {header}")
    rows = []
    for i, item in enumerate(items):
        where = f"{path}, row {i + 2}"        # header is line 1
        image = check(item["image"], f"{where}, column 'image'")
        audio = check(item["audio"], f"{where}, column 'audio'")
        sp = (item.get("split") or split).strip()
        if not sp:
            raise ManifestError(path, i + 2, "split", "empty split")
        rows.append(_pair(f"{path.stem}-{i:07d}", image, audio, sp, f"{path.name}:{i + 2}",
                          label=item.get("label")))
    return rows


def read_pairs(sources: list[tuple[Path, str]]) -> list[dict]:
    """(file, split) pairs -> all rows; .json files as Places JSON, anything else as CSV.
    ManifestError when two files give the same pair id."""
    rows: list[dict] = []
    for path, split in sources:
        got = (read_places_json(path, split) if Path(path).suffix.lower() == ".json"
               else read_pair_list(path, split))
        rows += got
        log.info("%s: %d pairs (%s)", path, len(got), split)
    ids = [r["pair_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ManifestError(sources[-1][0], None, "pair_id", f"pair id {dup!r} is in several "
                                                             "files; give each file its own ids")
    return rows


def pairs_table(rows: list[dict]) -> pa.Table:
    """Rows -> the pairs table (PAIR_FIELDS)."""
    schema = pa.schema(PAIR_FIELDS)
    return pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in schema},
                                schema=schema)


def write_pairs(rows: list[dict], path: Path) -> dict:
    """Writes the pairs table atomically -> counts {split: {status: n}}."""
    write_parquet_atomic(pairs_table(rows), Path(path))
    return count_statuses(rows)


def count_statuses(rows: list[dict]) -> dict[str, dict[str, int]]:
    """{split: {status: n}} over `rows`."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        d = out.setdefault(r["split"], {})
        d[r["status"]] = d.get(r["status"], 0) + 1
    return out
