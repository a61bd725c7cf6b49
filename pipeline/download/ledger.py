"""Availability ledger: crash-safe per-shard attempt journals, the append-only attempts history
(data/ledger/<ds>/attempts-*.parquet) and the current status per video (availability.parquet)."""
from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.manifest import write_parquet_atomic
from pipeline.safety import UnsafeInputError, UserError, check_safe_id, inside_checker

log = logging.getLogger(__name__)

# statuses (datasets.md): the only values the `status` column takes
AVAILABLE = "available"
UNAVAILABLE = "unavailable"
NEEDS_AUTH = "needs_auth"
TRANSIENT = "transient_failure"
PENDING = "pending"
STATUSES = (AVAILABLE, UNAVAILABLE, NEEDS_AUTH, TRANSIENT, PENDING)

TS = pa.timestamp("us", tz="UTC")

# what every attempt and every current row carries about the outcome
_OUTCOME = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),          # taxonomy reason (availability.REASONS), null if ok
    pa.field("kind", pa.string()),            # transient / permanent / needs_auth / regional / ...
    pa.field("message", pa.string()),         # raw yt-dlp (or local) error message
    pa.field("exc_class", pa.string()),       # class of the underlying exception
    pa.field("http_status", pa.int32()),
    pa.field("ytdlp_version", pa.string()),
    pa.field("path", pa.string()),            # media file, relative to the project root
    pa.field("filesize", pa.int64()),         # bytes
    pa.field("sha256", pa.string()),
    pa.field("duration_s", pa.float64()),     # container duration (libavformat, as ffprobe), s
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("vcodec", pa.string()),
    pa.field("acodec", pa.string()),          # null when there is no audio stream
    pa.field("has_audio", pa.bool_()),
    pa.field("format_id", pa.string()),       # yt-dlp format id(s) chosen
]

ATTEMPT_SCHEMA = pa.schema([
    pa.field("attempt_id", pa.string(), nullable=False),   # unique: dedupes journal replays
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("started_at", TS, nullable=False),
    pa.field("finished_at", TS, nullable=False),
    pa.field("elapsed_s", pa.float64(), nullable=False),
    *_OUTCOME,
    pa.field("worker", pa.string()),
])

AVAILABILITY_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    *_OUTCOME,
    pa.field("attempts", pa.int32(), nullable=False),     # attempts recorded, all runs
    pa.field("first_seen", TS),                           # first attempt's start
    pa.field("last_checked", TS),                         # latest attempt's end
])

# what every attempt row must carry (the schema's non-nullable fields)
REQUIRED = [f.name for f in ATTEMPT_SCHEMA if not f.nullable]

_SHARD_RE = re.compile(r"^attempts-(?P<run>[0-9A-Za-z_-]+)-shard-(?P<shard>\d{5})\.(jsonl|parquet)$")


def now() -> datetime:
    return datetime.now(timezone.utc)


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


class Journal:
    """Append-only JSON-lines journal of one shard's attempts in one run.

    Each row is written with one write() and fsync'd before the next video starts, so a kill -9
    loses at most the attempt in flight (whose video then stays pending). A torn last line is
    ignored on replay; `attempt_id` makes replays idempotent."""

    def __init__(self, ledger_dir: Path, run_id: str, shard: int):
        ledger_dir.mkdir(parents=True, exist_ok=True)
        self.path = ledger_dir / f"attempts-{run_id}-shard-{shard:05d}.jsonl"
        _drop_torn_tail(self.path)    # a re-run shard appends after complete lines only
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        self._f.write(journal_line(row))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """Cuts a half-written last line (a killed writer) off an existing journal."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            log.warning("%s: dropping a torn last line before appending", path)
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


class LedgerError(UserError):
    """A ledger file (availability.parquet, an attempts file) that cannot be trusted."""


def _set_aside_hint(path: Path) -> str:
    return (f"move it out of {path.parent} to go on without the attempts it holds (those "
            "videos are tried again), or restore it from a backup")


def journal_line(row: dict) -> str:
    """An attempt row as one JSON line of a journal (timestamps in ISO 8601)."""
    rec = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
    return json.dumps(rec, sort_keys=True) + "\n"


def read_journal(path: Path) -> list[dict]:
    """Complete rows of a journal; a torn (half-written) last line is skipped. A complete line
    that is not an attempt row (corrupt, edited) raises LedgerError naming file and line."""
    return list(_journal_rows(path))


def _journal_rows(path: Path) -> Iterator[dict]:
    """read_journal's rows one at a time (same checks, same order)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                log.warning("%s: ignoring a torn last line (the run was killed mid-write)", path)
                break
            try:
                row = json.loads(line)
            except ValueError as e:   # JSONDecodeError and UnicodeDecodeError alike
                raise LedgerError(f"{path}, line {n}: not a JSON attempt row ({e}); "
                                  f"{_set_aside_hint(path)}") from None
            missing = [k for k in REQUIRED if not isinstance(row, dict) or row.get(k) is None]
            if missing:
                raise LedgerError(f"{path}, line {n}: not an attempt row (missing {missing}); "
                                  f"{_set_aside_hint(path)}")
            yield row


def attempts_table(rows: Iterable[dict]) -> pa.Table:
    """Rows (dicts, timestamps as datetime or ISO strings) -> a table in ATTEMPT_SCHEMA."""
    rows = list(rows)
    cols = {}
    for f in ATTEMPT_SCHEMA:
        vals = [r.get(f.name) for r in rows]
        if f.type == TS:
            vals = [_ts(v) for v in vals]
        cols[f.name] = vals
    return pa.Table.from_pydict(cols, schema=ATTEMPT_SCHEMA)


def seal_journal(path: Path) -> Path:
    """Turns a finished (or crashed run's) journal into attempts-*.parquet, then removes it.

    Idempotent: if the parquet exists already (a crash between rename and unlink, or a shard
    task re-run after its first run sealed), the rows it lacks are merged into it by
    attempt_id, so no attempt is lost or counted twice. Rows are converted SEAL_BATCH at a
    time, so a journal's rows never all live as dicts at once (issue 16: one of 1.24 M rows
    took 5.4 GB)."""
    out = path.with_suffix(".parquet")
    sealed = _read_sealed(out) if out.exists() else None
    have = set(sealed.column("attempt_id").to_pylist()) if sealed is not None else set()
    parts: list[pa.Table] = []
    batch: list[dict] = []
    for row in _journal_rows(path):
        if row["attempt_id"] not in have:    # rows sealed already are neither converted again
            batch.append(row)                # nor counted twice
        if len(batch) == SEAL_BATCH:
            parts.append(_journal_table(batch, path))
            batch = []
    if batch:
        parts.append(_journal_table(batch, path))
    if parts:   # one chunk per column, as one conversion of all rows made: the same bytes
        new = pa.concat_tables(parts).combine_chunks()
        write_parquet_atomic(new if sealed is None else pa.concat_tables([sealed, new]), out)
    path.unlink()
    return out


SEAL_BATCH = 50_000   # journal rows converted to Arrow at a time when sealing


def _read_sealed(path: Path) -> pa.Table:
    """A sealed attempts-*.parquet, or LedgerError naming it (corrupt, empty, other schema)."""
    try:
        return pq.read_table(path, schema=ATTEMPT_SCHEMA)
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise   # the machine (permissions, I/O): the stage reports it naming the file
        raise LedgerError(f"{path}: unreadable attempts file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); "
                          f"{_set_aside_hint(path)}") from None


def _journal_table(rows: list[dict], path: Path) -> pa.Table:
    try:
        return attempts_table(rows)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise LedgerError(f"{path}: a row has a field of the wrong type ({e}); "
                          f"{_set_aside_hint(path)}") from None


def seal_leftovers(ledger_dir: Path) -> int:
    """Seals journals left by killed runs; returns how many were sealed."""
    n = 0
    if ledger_dir.is_dir():
        for p in sorted(ledger_dir.glob("attempts-*.jsonl")):
            seal_journal(p)
            n += 1
    return n


def iter_attempt_files(ledger_dir: Path) -> Iterator[Path]:
    if ledger_dir.is_dir():
        for p in sorted(ledger_dir.iterdir()):
            if _SHARD_RE.match(p.name):
                yield p


def read_attempts(ledger_dir: Path, root: Path | None = None,
                  videos_dir: Path | None = None) -> pa.Table:
    """Every recorded attempt (sealed parquet files plus live journals), deduplicated by
    attempt_id, sorted by (video_id, finished_at, attempt_id).

    Every file is checked before its rows are used: readable, required fields present, known
    statuses, path-safe video ids and, with `root` and `videos_dir`, media paths inside
    videos_dir. LedgerError / UnsafeInputError name the file and row otherwise."""
    tables = []
    inside = _inside_check(root, videos_dir)   # one for all files: it caches folders
    for p in iter_attempt_files(ledger_dir):
        t = _read_sealed(p) if p.suffix == ".parquet" else _journal_table(read_journal(p), p)
        _check_attempts(t, p, videos_dir, inside)
        tables.append(t)
    if not tables:
        return ATTEMPT_SCHEMA.empty_table()
    t = _first_file_only(tables)
    return t.sort_by([("video_id", "ascending"), ("finished_at", "ascending"),
                      ("attempt_id", "ascending")])


def _first_file_only(tables: list[pa.Table]) -> pa.Table:
    """The tables' rows, each attempt_id kept from the first table that has it (a journal
    replayed into a file sealed already repeats rows); one table may repeat an id.

    In Arrow (issue 16: a Python set of 1.3 M ids, built beside each file's rows, held GBs)."""
    import numpy as np
    import pyarrow.compute as pc
    t = pa.concat_tables(tables)
    ids = t.column("attempt_id")
    if pc.count_distinct(ids).as_py() == t.num_rows:
        return t
    first = pc.index_in(ids, value_set=pa.concat_arrays(ids.chunks)).to_numpy()  # 1st row
    table_of = np.repeat(np.arange(len(tables)), [x.num_rows for x in tables])
    return t.filter(pa.array(table_of[first] == table_of))


def _check_attempts(t: pa.Table, path: Path, videos_dir: Path | None,
                    inside: Callable[[object], bool] | None) -> None:
    """Raises LedgerError / UnsafeInputError naming `path` and the row when a row of `t` lacks
    a required field, has an unknown status or an unsafe id, or (with `inside`, from
    _inside_check) a media path outside `videos_dir`."""
    for name in REQUIRED:
        if t.column(name).null_count:
            row = t.column(name).to_pylist().index(None)
            raise LedgerError(f"{path}, row {row}: field {name!r} is empty; "
                              f"{_set_aside_hint(path)}")
    for i, (vid, status, rel) in enumerate(zip(t.column("video_id").to_pylist(),
                                               t.column("status").to_pylist(),
                                               t.column("path").to_pylist())):
        check_safe_id(vid, f"{path}, row {i}, field 'video_id'")
        if status not in STATUSES:
            raise LedgerError(f"{path}, row {i}: unknown status {status!r} (known: "
                              f"{', '.join(STATUSES)}); {_set_aside_hint(path)}")
        if rel is not None and inside is not None and not inside(rel):
            raise UnsafeInputError(
                f"{path}, row {i} ({vid}), field 'path': {rel!r} is not a file inside the "
                f"videos folder {videos_dir}; refusing the ledger (edited by hand? or the "
                "videos folder moved: then pass its old place as --videos)")


def _inside_check(root: Path | None, videos_dir: Path | None):
    """A test `rel -> bool`: the root-relative path lies inside videos_dir (None: no check).

    Lexical on the recorded path, which the download stage builds from the resolved videos
    folder (relative to `root` as given), so a symlinked videos folder passes and `..` cannot
    escape; no syscall per row."""
    if root is None or videos_dir is None:
        return None
    bases = [(Path(root) / d).resolve() for d in media_dirs(videos_dir)]
    root = os.path.abspath(root)
    absolute_ok = any(os.path.isabs(d) for d in media_dirs(videos_dir))
    # the parents of a file are its folder and the folder's parents, and media share a few
    # thousand folders: the answer is cached per folder as written in `rel` (issue 16: a Path
    # per row took most of read_attempts' 77 s at 1.24 M videos)
    heads: dict[str, bool] = {}

    def folder_inside(folder: str) -> bool:
        p = Path(folder)
        return any(b == p or b in p.parents for b in bases)

    def inside(rel: object) -> bool:
        if not isinstance(rel, str) or not rel or "\0" in rel:
            return False
        if os.path.isabs(rel) and not absolute_ok:
            return False
        head, sep, name = rel.rpartition("/")
        if name and name not in (".", ".."):   # normpath keeps a plain last name as it is
            ok = heads.get(head + sep)
            if ok is None:
                ok = heads[head + sep] = folder_inside(
                    os.path.normpath(os.path.join(root, head + sep)))
            return ok
        full = os.path.normpath(os.path.join(root, rel))
        folder = os.path.dirname(full)
        return folder != full and folder_inside(folder)   # the root has no parents
    return inside


def media_dirs(videos_dir) -> list[Path]:
    """The folders media paths may lie in: the videos folder, plus (for own media, referenced
    where they are) the dataset's media folder; `videos_dir` is one path or a sequence."""
    if isinstance(videos_dir, (list, tuple)):
        return [Path(d) for d in videos_dir]
    return [Path(videos_dir)]


def latest_urls(attempts: pa.Table) -> dict[str, str]:
    """video_id -> the URL of its latest attempt (what its file, if any, was fetched from)."""
    return dict(zip(attempts.column("video_id").to_pylist(), attempts.column("url").to_pylist()))


def current_status(videos: pa.Table, attempts: pa.Table) -> pa.Table:
    """One row per manifest video (sorted by video_id): its latest attempt's outcome (PENDING if
    never tried), the attempt count and first/last timestamps. "Latest" and "first" are by row
    order in `attempts` (read_attempts sorts by (video_id, finished_at, attempt_id)).
    Deterministic for the same inputs.

    Columnar (issue 16): a row per attempt as a dict took 58 s and most of 7 GB at 1.24 M
    videos."""
    import numpy as np
    import pyarrow.compute as pc
    v = videos.select(["video_id", "url", "split"])
    v = v.take(pc.sort_indices(v, sort_keys=[("video_id", "ascending")]))   # stable
    none = pa.nulls(v.num_rows, pa.int64())
    first = last = count = none
    if attempts.num_rows and v.num_rows:
        groups = pa.table({"video_id": attempts.column("video_id"),
                           "i": np.arange(attempts.num_rows, dtype=np.int64)}) \
            .group_by("video_id", use_threads=False) \
            .aggregate([("i", "min"), ("i", "max"), ("i", "count")])
        at = pc.index_in(v.column("video_id"), value_set=groups.column("video_id"))
        first, last, count = (groups.column(c).take(at) for c in ("i_min", "i_max", "i_count"))

    def latest(name: str, rows=None) -> pa.ChunkedArray | pa.Array:
        col = attempts.column(name)
        return col.take(last if rows is None else rows) if attempts.num_rows \
            else pa.nulls(v.num_rows, col.type)

    cols = {"video_id": v.column("video_id"), "url": v.column("url"),
            "split": v.column("split")}
    cols.update({f.name: latest(f.name) for f in _OUTCOME})
    cols["status"] = pc.fill_null(cols["status"], PENDING)
    cols["attempts"] = pc.fill_null(count, 0)
    cols["first_seen"] = latest("started_at", first)
    cols["last_checked"] = latest("finished_at")
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in AVAILABILITY_SCHEMA],
                                schema=AVAILABILITY_SCHEMA)


def sample_videos(videos: pa.Table, max_videos: int = 0, splits=()) -> pa.Table:
    """The rows of a manifest's videos table a download takes (download.max_videos, .splits):
    those in any of `splits` (a video's `split` is comma-joined; empty: all), then the first
    `max_videos` by video_id (0: all). Row order as in `videos`."""
    keep = None
    if splits:
        wanted = set(splits)
        keep = [bool(wanted & set(s.split(","))) for s in videos.column("split").to_pylist()]
        videos = videos.filter(pa.array(keep, pa.bool_()))
    if max_videos and videos.num_rows > max_videos:
        chosen = set(sorted(videos.column("video_id").to_pylist())[:max_videos])
        videos = videos.filter(pa.array([v in chosen for v in
                                         videos.column("video_id").to_pylist()], pa.bool_()))
    return videos


# schema metadata key of availability.parquet: the sample the download took (JSON), for the audit
SELECTION_KEY = b"avl_selection"


def write_availability(table: pa.Table, path: Path, selection: dict | None = None) -> None:
    """Writes availability.parquet; `selection` ({"max_videos": N, "splits": [...]}, the
    download's sample; None or empty: the whole manifest) goes into its schema metadata."""
    if selection and (selection.get("max_videos") or selection.get("splits")):
        meta = {**(table.schema.metadata or {}), SELECTION_KEY: json.dumps(
            {"max_videos": int(selection.get("max_videos") or 0),
             "splits": list(selection.get("splits") or [])}).encode()}
        table = table.replace_schema_metadata(meta)
    write_parquet_atomic(table, path)


def read_selection(path: Path) -> dict | None:
    """The sample recorded in availability.parquet by write_availability, or None (the whole
    manifest). LedgerError when the record is not one."""
    meta = pq.read_schema(path).metadata or {}
    if SELECTION_KEY not in meta:
        return None
    try:
        sel = json.loads(meta[SELECTION_KEY])
        out = {"max_videos": int(sel["max_videos"]), "splits": [str(x) for x in sel["splits"]]}
        if out["max_videos"] < 0:
            raise ValueError("max_videos < 0")
    except (ValueError, KeyError, TypeError) as e:
        raise LedgerError(f"{path}: unreadable sample record ({type(e).__name__}: {e}); re-run "
                          "the download stage to rebuild it") from None
    return out


def read_availability(path: Path, root: Path | None = None,
                      videos_dir: Path | None = None) -> pa.Table:
    """Reads manifests/<ds>/availability.parquet, checking the ledger schema and that every
    video_id is path-safe; with `root` and `videos_dir` (relative to root) also that every
    `path` stays inside videos_dir. LedgerError (one line naming the file) otherwise."""
    path = Path(path)
    fix = "re-run the download stage to rebuild it (it resumes from data/ledger/)"
    try:
        t = pq.read_table(path)
    except FileNotFoundError:
        raise LedgerError(f"{path}: not found; run the download stage for this dataset first") \
            from None
    except (pa.ArrowException, OSError) as e:
        raise LedgerError(f"{path}: unreadable availability ledger "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {fix}") from None
    missing = [f.name for f in AVAILABILITY_SCHEMA if f.name not in t.column_names]
    if missing:
        raise LedgerError(f"{path}: not an availability ledger (missing columns {missing}); "
                          f"{fix}")
    try:
        t = t.select(AVAILABILITY_SCHEMA.names).cast(AVAILABILITY_SCHEMA)
    except (pa.ArrowException, ValueError) as e:
        raise LedgerError(f"{path}: columns of the wrong type ({str(e).splitlines()[0][:200]}); "
                          f"{fix}") from None
    seen = set()
    inside = inside_checker(root, media_dirs(videos_dir)) \
        if root is not None and videos_dir is not None else None
    for i, (vid, rel) in enumerate(zip(t.column("video_id").to_pylist(),
                                       t.column("path").to_pylist())):
        check_safe_id(vid, f"{path}, row {i}, field 'video_id'")
        if vid in seen:
            raise LedgerError(f"{path}, row {i}: video_id {vid!r} listed twice; {fix}")
        seen.add(vid)
        if rel is not None and inside is not None:
            inside(rel, f"{path}, row {i} ({vid}), field 'path'")
    return t
