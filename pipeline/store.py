"""Feature stores: sharded HDF5 (default) or Parquet shards, index.parquet, one reader API.

Layout of a store folder (features.md "Stores"):

    recipe.json               the recipe of the features (what every shard was made with)
    shard-NNNNN.h5            (or .parquet) many videos each; written as .part, renamed when done
    index.parquet             one row per listed video: status, shard, row counts, durations

Arrays per video, time along the axis named in FEATURES: `resnet152` (T2d, 2048) rows at ~1 s,
`resnext101` (T3d, 2048) rows of 2/3 s, `logmel` (40, Ta) frames of 10 ms (mel x time, as the
reference stores it; the Parquet shards keep it time-major internally and the reader transposes).
HDF5 arrays are chunked along time, so a 10 s window reads a few chunks, not the video.

A shard is done when it has its final name and opens with its completion marker (HDF5: root
attribute `complete`; Parquet: footer metadata `complete`); its per-video rows (every status,
failures included) live inside it (HDF5: root attribute `index`; Parquet: scalar columns), so
index.parquet can always be rebuilt from the shards alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.manifest import write_parquet_atomic

log = logging.getLogger(__name__)

# feature name -> (width, time axis of the array as read)
FEATURES: dict[str, tuple[int, int]] = {"resnet152": (2048, 0), "resnext101": (2048, 0),
                                        "logmel": (40, 1)}
CHUNK_ROWS = {"resnet152": 32, "resnext101": 48, "logmel": 1024}   # HDF5 chunk length in time

# features.md statuses, most severe first: a video's status is the first that applies
OK = "ok"
STATUSES = ("probe_error", "decode_error", "truncated", "too_short_2d", "too_short_3d",
            "no_audio_stream", "silent_audio", OK, "not_downloaded")
FAILED = ("probe_error", "decode_error", "truncated")   # count against max_failure_fraction
EXT = {"hdf5": ".h5", "parquet": ".parquet"}
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(h5|parquet)$")

INDEX_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),     # STATUSES
    pa.field("flags", pa.string()),              # every status that applies, comma-joined
    pa.field("message", pa.string()),            # what went wrong (error text), null when ok
    pa.field("shard", pa.string()),              # file name in the store, null if none
    pa.field("row", pa.int32()),                 # Parquet row (= row group) of the video
    pa.field("n_resnet152", pa.int32()),         # rows stored (0 when none)
    pa.field("n_resnext101", pa.int32()),
    pa.field("n_logmel", pa.int32()),            # spectrogram frames (10 ms)
    pa.field("duration_s", pa.float64()),        # container duration (probe)
    pa.field("decoded_s", pa.float64()),         # media actually decoded
    pa.field("has_audio", pa.bool_()),
    pa.field("width", pa.int32()),               # displayed size (after rotation)
    pa.field("height", pa.int32()),
    pa.field("rotation", pa.int32()),            # degrees of the display matrix
    pa.field("source_sha256", pa.string()),      # of the media file the features came from
    pa.field("recipe_sha256", pa.string()),
    pa.field("extract_s", pa.float64()),         # wall seconds spent on the video
])
_ROW_FIELDS = [f.name for f in INDEX_SCHEMA if f.name not in ("shard", "row")]


class StoreError(RuntimeError):
    """A store that cannot be read: no index, a missing or incomplete shard, an unknown video."""


@dataclass
class VideoRecord:
    """One video's outcome: its index fields and arrays (float16/float32, see FEATURES)."""

    video_id: str
    status: str
    info: dict[str, Any] = field(default_factory=dict)    # the other INDEX_SCHEMA fields
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        r = {k: self.info.get(k) for k in _ROW_FIELDS}
        r.update(video_id=self.video_id, status=self.status)
        for name in FEATURES:
            a = self.arrays.get(name)
            r[f"n_{name}"] = 0 if a is None else int(a.shape[FEATURES[name][1]])
        return r


def recipe_sha256(recipe: dict) -> str:
    """Hash of the canonical JSON of a recipe without its `environment` (library and code
    versions, recorded but not hashed): names the exact feature definition."""
    core = {k: v for k, v in recipe.items() if k != "environment"}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def shard_name(number: int, fmt: str) -> str:
    return f"shard-{number:05d}{EXT[fmt]}"


def shard_number(name: str) -> int | None:
    m = _SHARD_RE.match(name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- writers


class ShardWriter:
    """Writes one shard under `<path>.part`; close() marks it complete, fsyncs and renames it.

    One writer per shard, one process per writer (features.md). Use as a context manager: an
    exception (or kill) leaves only the .part file, which the next run removes."""

    def __init__(self, path: Path, recipe: dict):
        self.path = Path(path)
        self.fmt = "parquet" if self.path.suffix == ".parquet" else "hdf5"
        self.tmp = self.path.with_name(self.path.name + ".part")
        self.recipe = recipe
        self.rows: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.unlink(missing_ok=True)
        if self.fmt == "hdf5":
            import h5py
            self._h5 = h5py.File(self.tmp, "w")
            self._h5.attrs["recipe"] = json.dumps(recipe, sort_keys=True)
            self._h5.attrs["recipe_sha256"] = recipe_sha256(recipe)
            self._h5.create_group("videos")
        else:
            self._pq = None
            self._empty = False

    def add(self, rec: VideoRecord) -> None:
        row = rec.row()
        row.update(shard=self.path.name, row=len(self.rows))
        if self.fmt == "hdf5":
            g = self._h5["videos"].create_group(rec.video_id)
            for name, a in rec.arrays.items():
                axis = FEATURES[name][1]
                if a.shape[axis] == 0:
                    g.create_dataset(name, data=a)
                    continue
                chunks = list(a.shape)
                chunks[axis] = min(a.shape[axis], CHUNK_ROWS[name])
                g.create_dataset(name, data=a, chunks=tuple(chunks))
            for k, v in rec.row().items():
                if v is not None:
                    g.attrs[k] = v
        else:
            self._write_parquet_row(rec, row)
        self.rows.append(row)

    def _write_parquet_row(self, rec: VideoRecord, row: dict) -> None:
        dtype = pa.float16() if self.recipe.get("dtype", "float16") == "float16" else pa.float32()
        if self._pq is None:
            fields = [f for f in INDEX_SCHEMA if f.name not in ("shard", "row")]
            fields += [pa.field(n, pa.list_(pa.list_(dtype, w))) for n, (w, _) in FEATURES.items()]
            self._schema = pa.schema(fields, metadata={"recipe": json.dumps(self.recipe,
                                                                           sort_keys=True)})
            # plain encoding for the features: dictionary pages cost time and do not pay off
            # for high-cardinality float rows
            self._pq = pq.ParquetWriter(self.tmp, self._schema, compression="none",
                                        use_dictionary=[f.name for f in INDEX_SCHEMA
                                                        if f.type == pa.string()])
        cols = {}
        for f in self._schema:
            if f.name in FEATURES:
                a = rec.arrays.get(f.name)
                if a is None:
                    cols[f.name] = pa.nulls(1, f.type)
                    continue
                w, axis = FEATURES[f.name]
                rows = a.T if axis == 1 else a          # time-major (T, w)
                flat = pa.array(np.ascontiguousarray(rows).reshape(-1), type=dtype)
                inner = pa.FixedSizeListArray.from_arrays(flat, w)
                cols[f.name] = pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()),
                                                        inner)
            else:
                cols[f.name] = pa.array([row[f.name]], f.type)
        # one row group per video: the reader fetches one video without the others
        self._pq.write_table(pa.table(cols, schema=self._schema))

    def close(self) -> list[dict]:
        """Marks complete, syncs, renames -> the index rows of the shard."""
        if self.fmt == "hdf5":
            self._h5.attrs["index"] = json.dumps(self.rows)
            self._h5.attrs["complete"] = True           # the completion marker, written last
            self._h5.close()
        else:
            if self._pq is None:                        # a shard can hold only failures... or none
                self._write_parquet_row(VideoRecord("", "empty"), {})
                self._empty = True
            self._pq.add_key_value_metadata({"complete": "true",
                                             "empty": "true" if self._empty else "false"})
            self._pq.close()
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return self.rows

    def abort(self) -> None:
        try:
            if self.fmt == "hdf5":
                self._h5.close()
            elif self._pq is not None:
                self._pq.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.abort()


# --------------------------------------------------------------------------- shard scanning


def read_shard_rows(path: Path) -> tuple[dict, list[dict]]:
    """(recipe, index rows) of a complete shard; StoreError when it is incomplete or unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".h5":
            import h5py
            with h5py.File(path, "r") as f:
                if not f.attrs.get("complete", False):
                    raise StoreError(f"{path}: no completion marker")
                return json.loads(f.attrs["recipe"]), json.loads(f.attrs["index"])
        pf = pq.ParquetFile(path)
        meta = pf.metadata.metadata or {}
        if meta.get(b"complete") != b"true":
            raise StoreError(f"{path}: no completion marker")
        recipe = json.loads(pf.schema_arrow.metadata[b"recipe"])
        if meta.get(b"empty") == b"true":
            return recipe, []
        t = pf.read(columns=_ROW_FIELDS)
        rows = t.to_pylist()
        for i, r in enumerate(rows):
            r.update(shard=path.name, row=i)
        return recipe, rows
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is an incomplete shard
        raise StoreError(f"{path}: unreadable shard ({type(e).__name__}: {e})") from None


def scan(store: Path) -> tuple[list[tuple[Path, dict, list[dict]]], list[Path]]:
    """Complete shards of a store folder, by number -> ([(path, recipe, rows)], leftovers) where
    leftovers are .part files and shards that do not open complete (crashed writers)."""
    done, leftovers = [], []
    if not Path(store).is_dir():
        return done, leftovers
    for p in sorted(Path(store).iterdir()):
        if p.name.endswith(".part") and p.name.startswith("shard-"):
            leftovers.append(p)
        elif shard_number(p.name) is not None:
            try:
                recipe, rows = read_shard_rows(p)
            except StoreError as e:
                log.warning("%s", e)
                leftovers.append(p)
                continue
            done.append((p, recipe, rows))
    done.sort(key=lambda d: shard_number(d[0].name))
    return done, leftovers


def write_index(rows: Iterable[dict], path: Path) -> pa.Table:
    """index.parquet from rows (one per video; INDEX_SCHEMA), sorted by video_id, atomically."""
    rows = sorted(rows, key=lambda r: r["video_id"])
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in INDEX_SCHEMA} for r in rows],
                                 schema=INDEX_SCHEMA)
    write_parquet_atomic(table, Path(path))
    return table


# --------------------------------------------------------------------------- reader


class FeatureStore:
    """Reads a store folder, HDF5 or Parquet alike:

        store = FeatureStore("data/features/demo")
        store.ids()                                  # videos with status ok
        store.read("abcdefghijk", "resnext101", 15, 30)   # rows 15..29 -> (15, 2048)
        store.read("abcdefghijk", "logmel", 0, 1000)      # frames 0..999 -> (40, 1000)

    Files open lazily and stay open; the object pickles without them (DataLoader workers)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index = self.root / "index.parquet"
        if not index.is_file():
            raise StoreError(f"{index}: no index; run the extract stage for this dataset first")
        self.index = pq.read_table(index)
        self._rows = {r["video_id"]: r for r in self.index.to_pylist()}
        recipe_file = self.root / "recipe.json"
        self.recipe = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
        self._files: dict[str, Any] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._rows

    def ids(self, statuses: tuple[str, ...] = (OK,)) -> list[str]:
        """Video ids whose status is in `statuses`, sorted."""
        return sorted(v for v, r in self._rows.items() if r["status"] in statuses)

    def digest(self, video_ids: Iterable[str]) -> str:
        """sha256 naming the features of `video_ids`: each one's source media hash, recipe hash,
        row counts and place in the store (shard, row). A model trained on these videos is
        stale once this changes (a video downloaded again, extracted again or with another
        recipe), even when the ids are the same. Shards are never rewritten in place, so a
        re-extracted video always lands in a new shard."""
        keys = ("video_id", "status", "source_sha256", "recipe_sha256", "n_resnet152",
                "n_resnext101", "n_logmel", "shard", "row")
        rows = [[self.info(v)[k] for k in keys] for v in sorted(video_ids)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def info(self, video_id: str) -> dict:
        """The video's index row (status, row counts, durations, ...)."""
        try:
            return self._rows[video_id]
        except KeyError:
            raise StoreError(f"{video_id!r} is not in {self.root}/index.parquet") from None

    def read(self, video_id: str, feature: str, start: int | None = None,
             stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) along time of one feature (layout in FEATURES), as stored
        (float16 by default). A window reads only the chunks it covers (HDF5)."""
        if feature not in FEATURES:
            raise StoreError(f"unknown feature {feature!r}; the store has {list(FEATURES)}")
        r = self.info(video_id)
        if not r["shard"] or not r[f"n_{feature}"]:
            width, axis = FEATURES[feature]
            return np.zeros((width, 0) if axis else (0, width), np.float16)
        sl = slice(start, stop)
        f = self._open(r["shard"])
        if r["shard"].endswith(".h5"):
            ds = f["videos"][video_id][feature]
            return ds[:, sl] if FEATURES[feature][1] else ds[sl]
        col = f.read_row_group(r["row"], columns=[feature]).column(0)[0]
        inner = col.values                                    # (T, w) fixed-size lists
        a = inner.flatten().to_numpy(zero_copy_only=False).reshape(len(inner), -1)[sl]
        return a.T if FEATURES[feature][1] else a

    def _open(self, shard: str):
        f = self._files.get(shard)
        if f is None:
            path = self.root / shard
            if not path.is_file():
                raise StoreError(f"{path}: shard listed in the index is missing; re-run extract")
            if shard.endswith(".h5"):
                import h5py
                f = h5py.File(path, "r")
            else:
                f = pq.ParquetFile(path)
            self._files[shard] = f
        return f

    def close(self) -> None:
        for f in self._files.values():
            if hasattr(f, "close"):
                f.close()
        self._files.clear()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *_) -> None:
        self.close()
