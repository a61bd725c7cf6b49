"""Availability ledger: crash-safe per-shard attempt journals, the append-only attempts history
(data/ledger/<ds>/attempts-*.parquet) and the current status per video (availability.parquet)."""
from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.manifest import write_parquet_atomic
from pipeline.safety import UserError, check_safe_id, resolve_inside

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
        rec = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
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


def read_journal(path: Path) -> list[dict]:
    """Complete rows of a journal; a torn (half-written) last line is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                log.warning("%s: ignoring a torn last line (the run was killed mid-write)", path)
                break
            rows.append(json.loads(line))
    return rows


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
    attempt_id, so no attempt is lost or counted twice."""
    out = path.with_suffix(".parquet")
    rows = read_journal(path)
    if out.exists():
        sealed = pq.read_table(out, schema=ATTEMPT_SCHEMA)
        have = set(sealed.column("attempt_id").to_pylist())
        new = [r for r in rows if r["attempt_id"] not in have]
        if new:
            write_parquet_atomic(pa.concat_tables([sealed, attempts_table(new)]), out)
    elif rows:
        write_parquet_atomic(attempts_table(rows), out)
    path.unlink()
    return out


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


def read_attempts(ledger_dir: Path) -> pa.Table:
    """Every recorded attempt (sealed parquet files plus live journals), deduplicated by
    attempt_id, sorted by (video_id, finished_at, attempt_id)."""
    tables, seen = [], set()
    for p in iter_attempt_files(ledger_dir):
        t = pq.read_table(p, schema=ATTEMPT_SCHEMA) if p.suffix == ".parquet" \
            else attempts_table(read_journal(p))
        keep = [i for i, a in enumerate(t.column("attempt_id").to_pylist()) if a not in seen]
        seen.update(t.column("attempt_id").to_pylist())
        tables.append(t.take(pa.array(keep, pa.int64())) if len(keep) != t.num_rows else t)
    if not tables:
        return ATTEMPT_SCHEMA.empty_table()
    t = pa.concat_tables(tables)
    return t.sort_by([("video_id", "ascending"), ("finished_at", "ascending"),
                      ("attempt_id", "ascending")])


def current_status(videos: pa.Table, attempts: pa.Table) -> pa.Table:
    """One row per manifest video: its latest attempt's outcome (PENDING if never tried), the
    attempt count and first/last timestamps. Deterministic for the same inputs."""
    latest: dict[str, dict] = {}
    count: dict[str, int] = {}
    first: dict[str, datetime] = {}
    for a in attempts.to_pylist():  # sorted by (video_id, finished_at): the last one wins
        vid = a["video_id"]
        latest[vid] = a
        count[vid] = count.get(vid, 0) + 1
        first.setdefault(vid, a["started_at"])
    outcome = [f.name for f in _OUTCOME]
    rows = []
    for v in sorted(videos.select(["video_id", "url", "split"]).to_pylist(),
                    key=lambda r: r["video_id"]):
        a = latest.get(v["video_id"])
        row = dict(v)
        if a is None:
            row.update({k: None for k in outcome}, status=PENDING, attempts=0, first_seen=None,
                       last_checked=None)
        else:
            row.update({k: a[k] for k in outcome}, attempts=count[v["video_id"]],
                       first_seen=first[v["video_id"]], last_checked=a["finished_at"])
        rows.append(row)
    cols = {f.name: [r[f.name] for r in rows] for f in AVAILABILITY_SCHEMA}
    return pa.Table.from_pydict(cols, schema=AVAILABILITY_SCHEMA)


def write_availability(table: pa.Table, path: Path) -> None:
    write_parquet_atomic(table, path)


class LedgerError(UserError):
    """A ledger file (availability.parquet, an attempts file) that cannot be trusted."""


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
    for i, (vid, rel) in enumerate(zip(t.column("video_id").to_pylist(),
                                       t.column("path").to_pylist())):
        check_safe_id(vid, f"{path}, row {i}, field 'video_id'")
        if vid in seen:
            raise LedgerError(f"{path}, row {i}: video_id {vid!r} listed twice; {fix}")
        seen.add(vid)
        if rel is not None and root is not None and videos_dir is not None:
            resolve_inside(root, rel, [videos_dir], f"{path}, row {i} ({vid}), field 'path'")
    return t
