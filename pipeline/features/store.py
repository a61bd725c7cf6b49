"""Feature stores: sharded HDF5 (default) or Parquet shards, index.parquet, one reader API.

Layout of a store folder (features.md "Stores"):

    recipe.json               the recipe of the features (what every shard was made with)
    shard-NNNNN.h5            (or .parquet) many videos each; written as .part, renamed when done
    shard-NNNNN.h5.sum.json   the shard's sha256 and size, written before the rename
    index.parquet             one row per listed video: status, shard (and its sha256), row
                              counts, durations
    stale/<UTC time>/         shards moved aside (another recipe, or proven corrupt): never
                              deleted by a stage; delete them by hand when no longer needed
    .avl-writer.lock          the one-writer lock of the extract stage (pipeline/safety.py)

Arrays per video, time along the axis named in FEATURES: `resnet152` (T2d, 2048) rows at ~1 s,
`resnext101` (T3d, 2048) rows of 2/3 s, `logmel` (40, Ta) frames of 10 ms (mel x time, as the
reference stores it; the Parquet shards keep it time-major internally and the reader transposes).
HDF5 arrays are chunked along time, so a 10 s window reads a few chunks, not the video.

A shard is done when it has its final name and opens with its completion marker (HDF5: root
attribute `complete`; Parquet: footer metadata `complete`); its per-video rows (every status,
failures included) live inside it (HDF5: root attribute `index`; Parquet: scalar columns), so
index.parquet can always be rebuilt from the shards alone.

Checked bytes: every shard's sha256 and size are recorded in its `.sum.json` sidecar and in the
index (`shard_sha256`, `shard_bytes`); readers check them once per shard (FeatureStore's
`verify`), and the arrays carry their own checksums too (HDF5 fletcher32 per chunk, Parquet page
CRCs), verified by the libraries on every read.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.manifest import write_parquet_atomic
from pipeline.safety import UserError, check_safe_id
from pipeline.data.sources import sha256_file as file_sha256

log = logging.getLogger(__name__)

# feature name -> (width, time axis of the array as read)
FEATURES: dict[str, tuple[int, int]] = {"resnet152": (2048, 0), "resnext101": (2048, 0),
                                        "logmel": (40, 1)}
CHUNK_ROWS = {"resnet152": 32, "resnext101": 48, "logmel": 1024}   # HDF5 chunk length in time

# features.md statuses, most severe first: a video's status is the first that applies
OK = "ok"
AV_MISMATCH = "av_length_mismatch"   # video and audio lengths differ (extract.max_av_mismatch_s)
STATUSES = ("probe_error", "decode_error", "truncated", "too_short_2d", "too_short_3d",
            "no_audio_stream", "silent_audio", AV_MISMATCH, OK, "not_downloaded")
FAILED = ("probe_error", "decode_error", "truncated")   # count against max_failure_fraction
EXT = {"hdf5": ".h5", "parquet": ".parquet"}
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(h5|parquet)$")
SUM_SUFFIX = ".sum.json"             # the checksum sidecar of a shard: shard-NNNNN.h5.sum.json
VERIFY = ("sha256", "size", "none")
# errno values that say the machine refused a read (not that the bytes are bad)
_ENV_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.EAGAIN, errno.EWOULDBLOCK,
               errno.ENOLCK, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EBUSY,
               errno.ETIMEDOUT, errno.ESTALE, errno.ENXIO, errno.ENODEV}

INDEX_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),     # STATUSES
    pa.field("flags", pa.string()),              # every status that applies, comma-joined
    pa.field("message", pa.string()),            # what went wrong (error text), null when ok
    pa.field("shard", pa.string()),              # file name in the store, null if none
    pa.field("row", pa.int32()),                 # Parquet row (= row group) of the video
    pa.field("shard_sha256", pa.string()),       # of the shard file's bytes (its .sum.json)
    pa.field("shard_bytes", pa.int64()),         # size of the shard file
    pa.field("n_resnet152", pa.int32()),         # rows stored (0 when none)
    pa.field("n_resnext101", pa.int32()),
    pa.field("n_logmel", pa.int32()),            # spectrogram frames (10 ms)
    pa.field("duration_s", pa.float64()),        # container duration (probe)
    pa.field("decoded_s", pa.float64()),         # media actually decoded
    pa.field("video_s", pa.float64()),           # video decoded (3D frames / 24 fps), s
    pa.field("audio_s", pa.float64()),           # audio decoded (samples / 16 kHz), s
    pa.field("has_audio", pa.bool_()),
    pa.field("width", pa.int32()),               # displayed size (after rotation)
    pa.field("height", pa.int32()),
    pa.field("rotation", pa.int32()),            # degrees of the display matrix
    pa.field("source_sha256", pa.string()),      # of the media file the features came from
    pa.field("recipe_sha256", pa.string()),
    pa.field("extract_s", pa.float64()),         # wall seconds spent on the video
])
_PLACE_FIELDS = ("shard", "row", "shard_sha256", "shard_bytes")   # where a row lives
_ROW_FIELDS = [f.name for f in INDEX_SCHEMA if f.name not in _PLACE_FIELDS]


class StoreError(UserError):
    """A store that cannot be read: no index, a missing, corrupt or unreadable shard, an unknown
    video. One line naming the file (stages report it and exit 2)."""


class ShardUnreadable(StoreError):
    """A finished shard this machine cannot read now (permission, I/O error, a lock): not proof
    that its bytes are bad, so it is never moved aside or replaced."""


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


# --------------------------------------------------------------------------- checksums


def sum_path(shard: Path) -> Path:
    """The checksum sidecar of `shard` (shard-NNNNN.h5 -> shard-NNNNN.h5.sum.json)."""
    shard = Path(shard)
    return shard.with_name(shard.name + SUM_SUFFIX)


def write_sum(shard: Path, sha256: str, size: int) -> None:
    """Writes the sidecar of `shard` durably: temp name, fsync, rename."""
    path = sum_path(shard)
    tmp = path.with_name(path.name + ".part")
    data = json.dumps({"file": Path(shard).name, "sha256": sha256, "bytes": size},
                      sort_keys=True) + "\n"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_sum(shard: Path) -> dict | None:
    """{sha256, bytes} recorded for `shard`, None when it has no sidecar (a store made before
    checksums); ValueError when the sidecar is garbled, ShardUnreadable when it cannot be read."""
    path = sum_path(shard)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ShardUnreadable(_unreadable(path, e)) from None
    try:
        d = json.loads(text)
        if (not isinstance(d, dict) or d.get("file") != Path(shard).name
                or not isinstance(d.get("sha256"), str) or len(d["sha256"]) != 64
                or not isinstance(d.get("bytes"), int)):
            raise ValueError("not a checksum record of this shard")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name} is garbled ({str(e).splitlines()[0][:100]})") from None
    return d


def check_bytes(path: Path, sha256: str | None, size: int | None, verify: str) -> str | None:
    """Why `path` is not the file recorded (size, then sha256 when verify is sha256), or None
    when it matches. ShardUnreadable when it cannot be read (that proves nothing)."""
    if verify == "none":
        return None
    try:
        actual = Path(path).stat().st_size
        if size is not None and actual != size:
            return f"{actual} bytes where {size} were recorded (truncated or overwritten)"
        if verify == "sha256" and sha256:
            got = file_sha256(path)
            if got != sha256:
                return f"sha256 {got[:16]}... where {sha256[:16]}... was recorded (bytes changed)"
    except OSError as e:
        raise ShardUnreadable(_unreadable(path, e)) from None
    return None


def _unreadable(path: Path, e: BaseException) -> str:
    what = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
    return (f"{path}: cannot read this finished shard ({type(e).__name__}: {what}); it is kept "
            "as it is: fix the cause (permissions, the disk, another program holding it open), "
            "then re-run")


def _env_error(e: BaseException) -> bool:
    """True when `e` says the machine refused the read (not that the bytes are bad)."""
    return isinstance(e, OSError) and (isinstance(e, (PermissionError, FileNotFoundError))
                                       or e.errno in _ENV_ERRNOS)


class ShardCorrupt(StoreError):
    """A finished shard whose bytes are proven bad: checksum or size mismatch, garbled or
    truncated contents, no completion marker under its final name."""


# --------------------------------------------------------------------------- writers


class ShardWriter:
    """Writes one shard under `<path>.part`; close() marks it complete, fsyncs, records its
    checksum (`<path>.sum.json`) and renames it.

    One writer per shard, one process per writer (features.md), inside a run holding the
    store's writer lock. Use as a context manager: an exception (or kill) leaves only the .part
    file, which the next run (holding the lock) removes."""

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
        # ids become HDF5 group names: checked here too, whatever the caller checked
        check_safe_id(rec.video_id, f"{self.path}: video id")
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
                # fletcher32: every chunk carries a checksum that HDF5 checks on each read
                g.create_dataset(name, data=a, chunks=tuple(chunks), fletcher32=True)
            for k, v in rec.row().items():
                if v is not None:
                    g.attrs[k] = v
        else:
            self._write_parquet_row(rec, row)
        self.rows.append(row)

    def _write_parquet_row(self, rec: VideoRecord, row: dict) -> None:
        dtype = pa.float16() if self.recipe.get("dtype", "float16") == "float16" else pa.float32()
        if self._pq is None:
            fields = [f for f in INDEX_SCHEMA if f.name not in _PLACE_FIELDS]
            fields += [pa.field(n, pa.list_(pa.list_(dtype, w))) for n, (w, _) in FEATURES.items()]
            self._schema = pa.schema(fields, metadata={"recipe": json.dumps(self.recipe,
                                                                           sort_keys=True)})
            # plain encoding for the features: dictionary pages cost time and do not pay off
            # for high-cardinality float rows; page CRCs are checked by readers that ask
            self._pq = pq.ParquetWriter(self.tmp, self._schema, compression="none",
                                        use_dictionary=[f.name for f in INDEX_SCHEMA
                                                        if f.type == pa.string()],
                                        write_page_checksum=True)
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
                cols[f.name] = pa.array([row.get(f.name)], f.type)
        # one row group per video: the reader fetches one video without the others
        self._pq.write_table(pa.table(cols, schema=self._schema))

    def close(self) -> list[dict]:
        """Marks complete, syncs, records the checksum, renames -> the index rows of the shard
        (with shard_sha256 and shard_bytes)."""
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
        size, digest = self.tmp.stat().st_size, file_sha256(self.tmp)
        # the sidecar before the rename: a shard under its final name always has its checksum
        write_sum(self.path, digest, size)
        os.replace(self.tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        for r in self.rows:
            r.update(shard_sha256=digest, shard_bytes=size)
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


def read_shard_rows(path: Path, trusted: bool = False) -> tuple[dict, list[dict]]:
    """(recipe, index rows) of a complete shard. ShardUnreadable when the machine refuses the
    read (permission, I/O error, a lock held elsewhere); ShardCorrupt when the contents are bad
    (no completion marker, garbled, truncated), unless `trusted` (its bytes were just checked
    against the recorded sha256, so bad contents prove nothing about them: ShardUnreadable)."""
    path = Path(path)
    try:
        if path.suffix == ".h5":
            import h5py
            with h5py.File(path, "r") as f:
                if not f.attrs.get("complete", False):
                    raise ShardCorrupt(f"{path}: no completion marker under its final name")
                return json.loads(f.attrs["recipe"]), json.loads(f.attrs["index"])
        pf = pq.ParquetFile(path)
        meta = pf.metadata.metadata or {}
        if meta.get(b"complete") != b"true":
            raise ShardCorrupt(f"{path}: no completion marker under its final name")
        recipe = json.loads(pf.schema_arrow.metadata[b"recipe"])
        if meta.get(b"empty") == b"true":
            return recipe, []
        names = set(pf.schema_arrow.names)    # shards of older versions lack newer columns
        t = pf.read(columns=[c for c in _ROW_FIELDS if c in names])
        rows = t.to_pylist()
        for i, r in enumerate(rows):
            r.update(shard=path.name, row=i)
        return recipe, rows
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - the shard boundary: any failure is classified
        if _env_error(e) or trusted:
            raise ShardUnreadable(_unreadable(path, e)) from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ShardCorrupt(f"{path}: garbled or truncated ({type(e).__name__}: {first})") \
            from None


def check_shard(path: Path, verify: str = "size") -> tuple[dict, list[dict], bool]:
    """(recipe, rows with shard_sha256/shard_bytes, whether a checksum was recorded) of a
    finished shard, its bytes checked against its sidecar as `verify` says. ShardCorrupt when
    proven bad, ShardUnreadable when it cannot be read now."""
    path = Path(path)
    try:
        recorded = read_sum(path)
    except ValueError as e:
        raise ShardCorrupt(f"{path}: {e}") from None
    if recorded is not None:
        why = check_bytes(path, recorded["sha256"], recorded["bytes"], verify)
        if why:
            raise ShardCorrupt(f"{path}: {why}")
    recipe, rows = read_shard_rows(path, trusted=recorded is not None and verify == "sha256")
    if recorded is not None:
        for r in rows:
            r.update(shard_sha256=recorded["sha256"], shard_bytes=recorded["bytes"])
    return recipe, rows, recorded is not None


class Scan(NamedTuple):
    """What a store folder holds (scan)."""

    done: list[tuple[Path, dict, list[dict]]]   # finished, checked shards: (path, recipe, rows)
    partial: list[Path]                         # .part files, sidecars without their shard
    bad: list[tuple[Path, str]]                 # finished shards proven bad: (path, why)
    unsummed: list[Path]                        # finished shards without a recorded checksum


def scan(store: Path, verify: str = "size") -> Scan:
    """Classifies the files of a store folder (shards by number).

    `partial`: what an interrupted writer left (.part files; checksum sidecars whose shard was
    never renamed), to be removed only by a run holding the store's writer lock. `bad`: shards
    under their final name proven bad (ShardCorrupt): to be moved aside, never deleted.
    A shard that cannot be read now (ShardUnreadable) is not proof of anything: it is raised,
    and the caller stops."""
    done, partial, bad, unsummed = [], [], [], []
    root = Path(store)
    if not root.is_dir():
        return Scan(done, partial, bad, unsummed)
    entries = sorted(root.iterdir())
    names = {p.name for p in entries}
    for p in entries:
        n = p.name
        if n.startswith("shard-") and n.endswith(".part"):
            partial.append(p)
        elif n.endswith(SUM_SUFFIX) and shard_number(n[:-len(SUM_SUFFIX)]) is not None:
            if n[:-len(SUM_SUFFIX)] not in names:
                partial.append(p)
        elif shard_number(n) is not None:
            try:
                recipe, rows, summed = check_shard(p, verify)
            except ShardCorrupt as e:
                bad.append((p, str(e)))
                continue
            done.append((p, recipe, rows))
            if not summed:
                unsummed.append(p)
    done.sort(key=lambda d: shard_number(d[0].name))
    return Scan(done, partial, bad, unsummed)


def write_index(rows: Iterable[dict], path: Path) -> pa.Table:
    """index.parquet from rows (one per video; INDEX_SCHEMA), sorted by video_id, atomically."""
    rows = sorted(rows, key=lambda r: r["video_id"])
    # Arrow reads the dicts itself (keys not in the schema ignored, missing ones null): a
    # dict per row built on top of `rows` took 42 s and GBs at 1.24 M videos (issue 16)
    table = pa.Table.from_struct_array(pa.array(rows, type=pa.struct(list(INDEX_SCHEMA)))) \
        .cast(INDEX_SCHEMA)
    write_parquet_atomic(table, Path(path))
    return table


# --------------------------------------------------------------------------- reader


class FeatureStore:
    """Reads a store folder, HDF5 or Parquet alike:

        store = FeatureStore("data/features/demo")
        store.ids()                                  # videos with status ok
        store.read("abcdefghijk", "resnext101", 15, 30)   # rows 15..29 -> (15, 2048)
        store.read("abcdefghijk", "logmel", 0, 1000)      # frames 0..999 -> (40, 1000)

    `verify` says how each shard is checked the first time this object opens it, against the
    sha256 and size recorded at extraction: "sha256" (reads the whole file once), "size"
    (cheap), "none". The arrays' own checksums (HDF5 fletcher32, Parquet page CRCs) are checked
    on every read whatever `verify` says. Any failure to read is a StoreError naming the shard.
    verify_shards() checks up front (before DataLoader workers fork, say).

    Files open lazily and stay open; the object pickles without them (DataLoader workers), and
    keeps what it has verified."""

    def __init__(self, root: str | Path, verify: str = "sha256"):
        if verify not in VERIFY:
            raise ValueError(f"verify must be one of {VERIFY}, not {verify!r}")
        self.root = Path(root)
        self.verify = verify
        index = self.index_path = self.root / "index.parquet"
        if not index.is_file():
            raise StoreError(f"{index}: no index; run the extract stage for this dataset first "
                             f"({self._fix()})")
        try:
            self.index = pq.read_table(index)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise StoreError(f"{index}: unreadable index ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:200]}); {self._fix()} to "
                             "rebuild it") from None
        need = ["video_id", "status", "shard", "row", *(f"n_{n}" for n in FEATURES)]
        missing = [c for c in need if c not in self.index.column_names]
        if missing:
            raise StoreError(f"{index}: not a feature index (missing columns {missing}); "
                             f"{self._fix()} to rebuild it")
        # a tuple per video, string values shared between rows: a dict per row took 2 GB of
        # the 3.7 GB a 1.24 M-video index held (issue 16); indexes of older versions lack
        # newer columns (None)
        names = list(self.index.column_names)
        names += [f.name for f in INDEX_SCHEMA if f.name not in names]
        self._names = tuple(names)
        at = {n: i for i, n in enumerate(names)}
        self._status, self._shard = at["status"], at["shard"]
        vid_at, sha, size = at["video_id"], at["shard_sha256"], at["shard_bytes"]
        self._rows: dict[str, tuple] = {}
        self._sums: dict[str, tuple[str, int | None]] = {}   # shard -> recorded (sha256, bytes)
        for i, r in enumerate(zip(*(self._column(n) for n in names))):
            where = f"{index}, row {i}"
            vid = check_safe_id(r[vid_at], f"{where}, field 'video_id'")
            if vid in self._rows:
                raise StoreError(f"{where}: video_id {vid!r} listed twice; {self._fix()}")
            shard = r[self._shard]
            if shard is not None and shard_number(shard) is None:
                raise StoreError(f"{where} ({vid}), field 'shard': {shard!r} is not a shard "
                                 f"file name of this store; {self._fix()}")
            self._rows[vid] = r
            if shard and r[sha]:
                self._sums.setdefault(shard, (r[sha], r[size]))
        recipe_file = self.root / "recipe.json"
        try:
            self.recipe = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
        except (OSError, ValueError) as e:
            raise StoreError(f"{recipe_file}: unreadable ({type(e).__name__}: {e}); "
                             f"{self._fix()}") from None
        self._files: dict[str, Any] = {}
        self._verified: set[str] = set()

    def _fix(self) -> str:
        return f"re-run `dvc repro extract@{self.root.name}`"

    def _column(self, name: str) -> list:
        """A column of the index as Python values, equal strings one object."""
        if name not in self.index.column_names:
            return [None] * self.index.num_rows
        col = self.index.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return col.to_pylist()
        enc = col.combine_chunks().dictionary_encode()
        values = enc.dictionary.to_pylist() + [None]
        return [values[i] for i in enc.indices.fill_null(-1).to_numpy().tolist()]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._rows

    def ids(self, statuses: tuple[str, ...] = (OK,)) -> list[str]:
        """Video ids whose status is in `statuses`, sorted."""
        return sorted(v for v, r in self._rows.items() if r[self._status] in statuses)

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
        """The video's index row (status, row counts, durations, ...), a new dict each call."""
        try:
            return dict(zip(self._names, self._rows[video_id]))
        except KeyError:
            raise StoreError(f"{video_id!r} is not in {self.index_path}") from None

    def verify_shards(self, video_ids: Iterable[str] | None = None) -> int:
        """Checks now (as `verify` says) every shard holding `video_ids` (default: every
        video) -> how many were checked; StoreError naming the first bad one."""
        if video_ids is None:
            shards = sorted({r[self._shard] for r in self._rows.values() if r[self._shard]})
        else:
            shards = sorted({s for s in (self.info(v)["shard"] for v in video_ids) if s})
        todo = [s for s in shards if s not in self._verified]
        for s in todo:
            self._check(s)
        return len(todo)

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
        try:
            if r["shard"].endswith(".h5"):
                ds = f["videos"][video_id][feature]
                return ds[:, sl] if FEATURES[feature][1] else ds[sl]
            col = f.read_row_group(r["row"], columns=[feature]).column(0)[0]
            inner = col.values                                    # (T, w) fixed-size lists
            a = inner.flatten().to_numpy(zero_copy_only=False).reshape(len(inner), -1)[sl]
            return a.T if FEATURES[feature][1] else a
        except Exception as e:  # noqa: BLE001 - any failed read of stored bytes is the shard's
            raise self._read_error(self.root / r["shard"], e, f" ({video_id}, {feature})") \
                from None

    def _recorded(self, shard: str) -> tuple[str | None, int | None]:
        """(sha256, bytes) the index records for `shard`; else its sidecar's; else (None, None)
        for a store made before checksums."""
        path = self.root / shard
        indexed = self._sums.get(shard)
        try:
            side = read_sum(path)
        except ValueError as e:
            raise ShardCorrupt(f"{path}: {e}; {self._fix()}") from None
        if indexed and side and (side["sha256"], side["bytes"]) != indexed:
            raise StoreError(f"{path}: its checksum file and {self.index_path} disagree (the "
                             f"store was changed after the index was written); {self._fix()}")
        if indexed:
            return indexed
        if side:
            return side["sha256"], side["bytes"]
        return None, None

    def _check(self, shard: str) -> None:
        path = self.root / shard
        if not path.is_file():
            raise StoreError(f"{path}: shard listed in {self.index_path} is missing; "
                             f"{self._fix()}")
        if self.verify != "none":
            sha, size = self._recorded(shard)
            if sha is None and size is None:
                log.warning("%s: no recorded checksum (a store made before checksums); not "
                            "verified: %s records one", path, self._fix())
            else:
                why = check_bytes(path, sha, size, self.verify)
                if why:
                    raise ShardCorrupt(f"{path}: {why}; the shard is corrupt: {self._fix()} "
                                       "(it moves the shard to stale/ and extracts its videos "
                                       "again)")
        self._verified.add(shard)

    def _read_error(self, path: Path, e: BaseException, what: str = "") -> StoreError:
        if isinstance(e, StoreError):
            return e
        if _env_error(e):
            return ShardUnreadable(_unreadable(path, e))
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return ShardCorrupt(f"{path}: cannot read{what} ({type(e).__name__}: {first}); the "
                            f"shard is damaged: {self._fix()}")

    def _open(self, shard: str):
        f = self._files.get(shard)
        if f is None:
            if shard not in self._verified:
                self._check(shard)
            path = self.root / shard
            try:
                if shard.endswith(".h5"):
                    import h5py
                    f = h5py.File(path, "r")
                else:
                    f = pq.ParquetFile(path, page_checksum_verification=True)
            except Exception as e:  # noqa: BLE001 - any failure to open is the shard's
                raise self._read_error(path, e) from None
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
