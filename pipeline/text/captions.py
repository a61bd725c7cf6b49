"""HowTo100M's ASR captions (`caption.json`) streamed into a Parquet caption store (extensions.md
§1).

`caption.json` maps video id -> {"start": [...], "end": [...], "text": [...]} (~1.2 M videos,
~136 M captions, several GB): it is read with ijson's C backend one video at a time, never whole.

Layout of a caption store folder:

    captions-NNNNN.parquet   video_id, start (s), end (s), text, caption (index of the caption in
                             the video's list in caption.json); videos in file order, each one's
                             kept captions contiguous; a row group holds whole videos
                             (`group_videos` of them), so one video is one row group read
    index.parquet            video_id (sorted), shard (file name), row_group, offset (first row
                             inside the row group), count: one row per video with >= 1 kept caption
    report.json              the source (path, size, mtime_ns), the video list's digest, counts,
                             skips per reason with examples; written last (the completion marker)

The store is written into `<out_dir>.part` and renamed into place when done, so a killed run never
leaves a store that looks finished. Per-entry problems are counted skips (REASONS), whole-file
problems a CaptionError.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import OrderedDict
from datetime import datetime, timezone
from itertools import compress
from pathlib import Path
from typing import Any, Iterator

import ijson
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.data.manifest import write_json_atomic
from pipeline.safety import UserError, move_aside, writer_lock

log = logging.getLogger(__name__)

FORMAT = "avl-captions/2"    # 2: index.parquet has first_start
REPORT, INDEX = "report.json", "index.parquet"
SHARD_FMT = "captions-{:05d}.parquet"
# per-caption skips, in the order they are tested (a caption is counted under the first)
CAPTION_REASONS = ("bad_time", "bad_text", "empty_span", "outside_duration")
# whole-video skips (their captions are counted under the same reason in `skipped`)
VIDEO_REASONS = ("unknown_video", "bad_entry", "duplicate_video")
REASONS = VIDEO_REASONS + CAPTION_REASONS
CLIPPED = "end_clipped"               # kept, end clipped to the video's duration
MAX_EXAMPLES = 20
READ_BUF = 1 << 20                    # bytes ijson reads at a time
HOWTO = ("HowTo100M's ASR captions are `caption.json` inside the captions zip of HowTo100M "
         "(https://www.di.ens.fr/willow/research/howto100m/, 'HowTo100M.zip' / captions); unzip "
         "it and place caption.json at")

SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("start", pa.float64(), nullable=False),       # seconds from the video's start
    pa.field("end", pa.float64(), nullable=False),         # seconds, > start
    pa.field("text", pa.string(), nullable=False),         # as in caption.json
    pa.field("caption", pa.int32(), nullable=False),       # index in the video's original list
])
INDEX_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),        # file name inside the store
    pa.field("row_group", pa.int32(), nullable=False),
    pa.field("offset", pa.int32(), nullable=False),        # first row inside the row group
    pa.field("count", pa.int32(), nullable=False),         # kept captions (>= 1)
    # the earliest kept start, s: which videos have a caption inside their features is known
    # from the index alone (CaptionClips checks 1.2 M videos without reading a row group)
    pa.field("first_start", pa.float64(), nullable=False),
])

# the index while it is built: the shard as its number (names are written as a dictionary)
_IX_MEM = pa.schema([INDEX_SCHEMA.field("video_id"), pa.field("shard", pa.int32()),
                     *(INDEX_SCHEMA.field(k) for k in ("row_group", "offset", "count",
                                                       "first_start"))])
_NUM = frozenset((float, int))        # bool is its own type: JSON true is not a time
_STR = frozenset((str,))
_MISSING = object()


@contextlib.contextmanager
def _jemalloc() -> Iterator[None]:
    """Arrow allocates from jemalloc (where pyarrow has it) while the block runs: it hands the
    row groups' freed pages back within a second, where the default mimalloc pool kept ~25 MiB
    more resident, growing with the file early on (benchmarks/captions.py). Process-wide, but
    harmless to other threads: every buffer frees into the pool it came from. (The Parquet
    writer takes some buffers from the default pool whatever its memory_pool says.)"""
    try:
        pool = pa.jemalloc_memory_pool()
    except (NotImplementedError, pa.ArrowException):
        yield
        return
    old = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(old)


class CaptionError(UserError):
    """A caption file or caption store that cannot be used: one line naming it and the fix."""


# --------------------------------------------------------------------------- small helpers


def _stat(source: Path) -> os.stat_result:
    try:
        st = source.stat()
    except FileNotFoundError:
        raise CaptionError(f"{source}: no such file. {HOWTO} {source}") from None
    except OSError as e:
        raise CaptionError(f"{source}: cannot read it ({e.strerror})") from None
    if not source.is_file():
        raise CaptionError(f"{source}: not a file. {HOWTO} {source}")
    return st


def videos_digest(videos: dict[str, float | None] | None) -> str | None:
    """sha256 of the sorted (video id, duration) pairs; None when there is no video list. NaN
    reads as None (unknown, as a float64 column of durations holds it); CaptionError on any
    other duration that is not a finite number >= 0."""
    if videos is None:
        return None
    h = hashlib.sha256()
    for vid in sorted(videos):
        d = videos[vid]
        if isinstance(d, float) and math.isnan(d):
            d = None
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) \
                    or d < 0:
                raise CaptionError(f"video list: duration of {vid!r} is {d!r}, not a finite "
                                   "number of seconds >= 0 (or None when unknown)")
            d = float(d)
        h.update(f"{vid}\t{d!r}\n".encode())
    return h.hexdigest()


def _show(x: Any) -> Any:
    """A JSON-safe, short rendering of a value from caption.json, for the report's examples."""
    if x is None or isinstance(x, (bool, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, str):
        return x if len(x) <= 80 else x[:77] + "..."
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


def _finished(out_dir: Path) -> dict | None:
    """The report of a finished store in `out_dir`, or None."""
    try:
        report = json.loads((out_dir / REPORT).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("format") != FORMAT \
            or not (out_dir / INDEX).is_file():
        return None
    return report


def _same_input(report: dict, st: os.stat_result, digest: str | None) -> bool:
    src = report.get("source") or {}
    return (src.get("size") == st.st_size and src.get("mtime_ns") == st.st_mtime_ns
            and report.get("videos_digest") == digest)


# --------------------------------------------------------------------------- writing


class _Writer:
    """Buffers one row group of whole videos as column arrays, writes it with ParquetWriter, and
    rolls to a new shard once the current one holds `shard_captions` rows."""

    def __init__(self, folder: Path, shard_captions: int, group_videos: int) -> None:
        self.folder, self.shard_captions, self.group_videos = folder, shard_captions, group_videos
        self.shards: list[dict] = []
        self.index: list[pa.Table] = []      # one table per closed shard (_IX_MEM)
        self._pq: pq.ParquetWriter | None = None
        self._shard_rows = 0
        self._rg = 0
        self._ix: dict[str, list] = {k: [] for k in ("video_id", "row_group", "offset", "count",
                                                     "first_start")}
        self._reset_group()

    def _reset_group(self) -> None:
        self._ids: list[str] = []
        self._counts: list[int] = []
        self._starts: list[np.ndarray] = []
        self._ends: list[np.ndarray] = []
        self._caps: list[np.ndarray] = []
        self._texts: list[str] = []
        self._rows = 0

    def add(self, vid: str, starts: np.ndarray, ends: np.ndarray, caps: np.ndarray,
            texts) -> None:
        """One video's kept captions (float64 s, float64 s, int indices, iterable of str)."""
        self._ids.append(vid)
        self._counts.append(len(starts))
        self._starts.append(starts)
        self._ends.append(ends)
        self._caps.append(caps)
        self._texts.extend(texts)
        self._rows += len(starts)
        if len(self._ids) >= self.group_videos \
                or self._shard_rows + self._rows >= self.shard_captions:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered videos as one row group (opening a shard if none is open)."""
        if not self._ids:
            return
        if self._pq is None:
            name = SHARD_FMT.format(len(self.shards))
            self.shards.append({"name": name, "rows": 0, "row_groups": 0, "videos": 0})
            self._pq = pq.ParquetWriter(self.folder / name, SCHEMA, compression="zstd",
                                        use_dictionary=["video_id"],
                                        write_statistics=["video_id"])
        n = len(self._ids)
        counts = np.asarray(self._counts, dtype=np.int64)
        vid = pa.array(self._ids, pa.string()).take(np.repeat(np.arange(n), counts))
        table = pa.Table.from_arrays(
            [vid, pa.array(np.concatenate(self._starts)), pa.array(np.concatenate(self._ends)),
             pa.array(self._texts, pa.string()),
             pa.array(np.concatenate(self._caps).astype(np.int32))], schema=SCHEMA)
        self._pq.write_table(table, row_group_size=self._rows)
        offsets = np.zeros(n, dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        self._ix["video_id"].extend(self._ids)
        self._ix["row_group"].append(np.full(n, self._rg, dtype=np.int32))
        self._ix["offset"].append(offsets.astype(np.int32))
        self._ix["count"].append(counts.astype(np.int32))
        self._ix["first_start"].append(np.array([x.min() for x in self._starts], np.float64))
        s = self.shards[-1]
        s["rows"] += self._rows
        s["row_groups"] += 1
        s["videos"] += n
        self._rg += 1
        self._shard_rows += self._rows
        self._reset_group()
        if self._shard_rows >= self.shard_captions:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._pq is None:
            return
        self._pq.close()
        self._pq = None
        s = self.shards[-1]
        s["bytes"] = (self.folder / s["name"]).stat().st_size
        ix = self._ix
        n = len(ix["video_id"])
        self.index.append(pa.Table.from_arrays(
            [pa.array(ix["video_id"], pa.string()),
             pa.array(np.full(n, len(self.shards) - 1, np.int32)),
             pa.array(np.concatenate(ix["row_group"])), pa.array(np.concatenate(ix["offset"])),
             pa.array(np.concatenate(ix["count"])),
             pa.array(np.concatenate(ix["first_start"]))], schema=_IX_MEM))
        self._ix = {k: [] for k in ix}
        self._shard_rows = 0
        self._rg = 0

    def close(self) -> pa.Table:
        """Flushes and closes everything -> the index in file order (_IX_MEM: shard numbers)."""
        self.flush()
        self._close_shard()
        index = pa.concat_tables(self.index) if self.index else _IX_MEM.empty_table()
        self.index = []
        return index

    def abort(self) -> None:
        if self._pq is not None:
            try:
                self._pq.close()
            except Exception:          # already failing; the .part folder is removed next
                pass
            self._pq = None


class _Tally:
    """Counts and examples per reason."""

    def __init__(self) -> None:
        self.skipped = dict.fromkeys(REASONS, 0)          # captions
        self.skipped_videos = dict.fromkeys(VIDEO_REASONS, 0)
        self.clipped = 0
        self.examples: dict[str, list] = {r: [] for r in REASONS + (CLIPPED,)}

    def video(self, reason: str, vid: str, captions: int, **detail: Any) -> None:
        self.skipped[reason] += captions
        self.skipped_videos[reason] += 1
        ex = self.examples[reason]
        if len(ex) < MAX_EXAMPLES:
            ex.append({"video_id": vid, "captions": captions,
                       **{k: _show(v) for k, v in detail.items()}})

    def captions(self, reason: str, vid: str, idx: np.ndarray, s: list, e: list, t: list,
                 **detail: Any) -> None:
        if reason == CLIPPED:
            self.clipped += len(idx)
        else:
            self.skipped[reason] += len(idx)
        ex = self.examples[reason]
        for i in idx[:MAX_EXAMPLES - len(ex)].tolist():
            ex.append({"video_id": vid, "caption": i, "start": _show(s[i]), "end": _show(e[i]),
                       "text": _show(t[i]), **detail})


def _entry_lists(entry: Any) -> tuple[list, list, list] | str:
    """(start, end, text) lists of a video entry, or why it is a bad entry."""
    if type(entry) is not dict:
        return f"entry is {type(entry).__name__}, not an object"
    s, e, t = entry.get("start"), entry.get("end"), entry.get("text")
    for key, v in (("start", s), ("end", e), ("text", t)):
        if type(v) is not list:
            return f"'{key}' is " + ("missing" if v is None and key not in entry
                                     else f"{type(v).__name__}, not a list")
    if not len(s) == len(e) == len(t):
        return f"lists differ in length: start {len(s)}, end {len(e)}, text {len(t)}"
    return s, e, t


def _times(s: list, e: list, t: list) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                np.ndarray | None]:
    """float64 starts and ends (NaN where not a number) and masks of non-number times and
    non-string texts (None when there are none). One numpy call per list in the usual case."""
    if set(map(type, s)) <= _NUM and set(map(type, e)) <= _NUM:
        try:
            st, en, bad_t = np.array(s, np.float64), np.array(e, np.float64), None
        except OverflowError:                 # an int beyond float range
            st = en = None
    else:
        st = en = None
    if st is None:
        n = len(s)
        st, en, bad_t = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
        for arr, vals in ((st, s), (en, e)):
            for i, v in enumerate(vals):
                if type(v) in _NUM:
                    try:
                        arr[i] = v
                        continue
                    except OverflowError:
                        pass
                bad_t[i] = True
    bad_x = None
    if not set(map(type, t)) <= _STR:
        bad_x = np.fromiter((type(x) is not str for x in t), bool, len(t))
    return st, en, bad_t, bad_x


def _video(vid: str, entry: Any, duration: float | None, w: _Writer, tally: _Tally) -> int:
    """Checks one video's captions and hands the kept ones to `w` -> number of captions read."""
    lists = _entry_lists(entry)
    if isinstance(lists, str):
        n = max((len(v) for v in entry.values() if type(v) is list), default=0) \
            if type(entry) is dict else 0
        tally.video("bad_entry", vid, n, why=lists)
        return n
    s, e, t = lists
    n = len(t)
    if n == 0:
        return 0
    if not vid or "\x00" in vid:
        tally.video("bad_entry", vid, n, why="empty video id or NUL in it")
        return n
    st, en, bad_t, bad_x = _times(s, e, t)
    # the usual case, one pass: finite, non-negative, non-empty spans, inside the duration
    ok = (st >= 0) & (st < en) & (en < np.inf)
    if bad_t is None and bad_x is None and ok.all() and (duration is None
                                                         or en.max() <= duration):
        w.add(vid, st, en, np.arange(n), t)
        return n
    # reason codes: 0 kept, 1.. CAPTION_REASONS (the first that applies)
    code = np.zeros(n, np.int8)
    masks = [~((st >= 0) & np.isfinite(st) & np.isfinite(en)), bad_x, ~(st < en),
             None if duration is None else st >= duration]
    if bad_t is not None:
        masks[0] |= bad_t
    for k, m in enumerate(masks, 1):
        if m is not None:
            code[(code == 0) & m] = k
    for k, reason in enumerate(CAPTION_REASONS, 1):
        idx = np.flatnonzero(code == k)
        if len(idx):
            tally.captions(reason, vid, idx, s, e, t,
                           **({"duration": duration} if reason == "outside_duration" else {}))
    keep = code == 0
    if duration is not None:
        clip = keep & (en > duration)
        if clip.any():
            tally.captions(CLIPPED, vid, np.flatnonzero(clip), s, e, t, duration=duration)
            en = np.where(clip, duration, en)
    if keep.any():
        w.add(vid, st[keep], en[keep], np.flatnonzero(keep), compress(t, keep.tolist()))
    return n


def _json_error(source: Path, e: Exception, pos: int, size: int) -> CaptionError:
    lines = str(e.args[0] if e.args else e)
    if isinstance(e.args[0] if e.args else None, bytes):
        lines = e.args[0].decode("utf-8", "replace")
    lines = [x.strip() for x in lines.splitlines() if x.strip()]
    why = lines[0] if lines else type(e).__name__
    near = f" near {lines[1][:60]!r}" if len(lines) > 2 else ""
    if "premature EOF" in why:
        return CaptionError(f"{source}: truncated or malformed at byte {pos} of {size} (the JSON "
                            "ends before its top-level object closes: an interrupted download "
                            "or unzip?); unzip caption.json again from the HowTo100M captions "
                            "zip")
    return CaptionError(f"{source}: truncated or malformed at byte {pos} of {size} ({why}"
                        f"{near}); caption.json must be strict JSON (no NaN/Infinity): unzip it "
                        "again from the HowTo100M captions zip")


def _open_object(f, source: Path, size: int) -> None:
    """Positions `f` at the top-level object (after a UTF-8 BOM) or raises CaptionError."""
    head = f.read(4096)
    start = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    first = head[start:].lstrip()[:1]
    if first != b"{":
        what = ("empty" if size == 0 else "whitespace only" if not first else
                "a list at the top level" if first == b"[" else
                f"not JSON (starts with {head[start:start + 20]!r})")
        raise CaptionError(f"{source}: {what}; expected a JSON object mapping video id -> "
                           "{start, end, text} (HowTo100M's caption.json). " f"{HOWTO} {source}")
    f.seek(start)


def ingest_captions(source: Path, out_dir: Path, *, videos: dict[str, float | None] | None = None,
                    shard_captions: int = 1_000_000, group_videos: int = 256,
                    progress: bool = True) -> dict:
    """Streams HowTo100M's `caption.json` at `source` into a caption store in `out_dir` -> the
    store's report (also out_dir/report.json).

    `videos` (optional) maps the known video ids to their duration in seconds (None: unknown):
    other videos are skipped (`unknown_video`), captions starting at/after the duration are
    skipped (`outside_duration`) and ends past it clipped (`end_clipped`). A finished store
    made from the same source (size, mtime_ns) and the same `videos` is reused as it is.
    Memory: one row group of `group_videos` videos, plus the index (~30 bytes a video: ~35 MB
    for HowTo100M's 1.2 M), sorted at the end; flat in the number of captions."""
    source, out_dir = Path(source), Path(out_dir)
    if shard_captions < 1 or group_videos < 1:
        raise ValueError("shard_captions and group_videos must be >= 1")
    st = _stat(source)
    digest = videos_digest(videos)
    part = out_dir.with_name(out_dir.name + ".part")
    report = _finished(out_dir)
    if report is not None and _same_input(report, st, digest):
        log.info("%s: already ingested from %s (same size, mtime and video list); reusing it",
                 out_dir, source)
        return report
    with writer_lock(part, "captions"):
        report = _finished(out_dir)          # another run may have finished it meanwhile
        if report is not None and _same_input(report, st, digest):
            log.info("%s: finished by another run meanwhile; reusing it", out_dir)
            return report
        for p in part.iterdir():             # a killed run's leftovers (the lock file stays)
            if p.name != ".avl-writer.lock":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        try:
            with _jemalloc():
                report = _ingest(source, st, part, videos, digest, shard_captions,
                                 group_videos, progress)
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)
            raise
        if out_dir.exists() or out_dir.is_symlink():
            move_aside([out_dir], out_dir.parent,
                       f"caption store {out_dir.name} replaced by a new ingest of {source}")
        os.replace(part, out_dir)
    c = report["counts"]
    log.info("%s: %d captions of %d videos from %s (%s skipped)", out_dir, c["captions"],
             c["videos"], source, sum(report["skipped"].values()))
    return report


def _ingest(source: Path, st: os.stat_result, part: Path, videos: dict | None,
            digest: str | None, shard_captions: int, group_videos: int, progress: bool) -> dict:
    t0 = time.perf_counter()
    w = _Writer(part, shard_captions, group_videos)
    tally = _Tally()
    entries = read = 0
    size = st.st_size
    with open(source, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="captions",
                                       disable=not progress, mininterval=1.0) as bar:
        _open_object(f, source, size)
        done = f.tell()
        try:
            try:
                for vid, entry in ijson.kvitems(f, "", use_float=True, buf_size=READ_BUF):
                    entries += 1
                    duration = None
                    if videos is not None:
                        duration = videos.get(vid, _MISSING)
                        if duration is _MISSING:
                            lists = _entry_lists(entry)
                            n = 0 if isinstance(lists, str) else len(lists[2])
                            tally.video("unknown_video", vid, n)
                            read += n
                            continue
                        if duration != duration:      # NaN: unknown, like None
                            duration = None
                    read += _video(vid, entry, duration, w, tally)
                    if entries % 1024 == 0:
                        pos = f.tell()
                        bar.update(pos - done)
                        done = pos
                        bar.set_postfix(videos=entries, skipped=sum(tally.skipped.values()),
                                        refresh=False)
            except ijson.JSONError as e:
                raise _json_error(source, e, f.tell(), size) from None
            index = w.close()
        except BaseException:
            w.abort()
            raise
        bar.update(f.tell() - done)
    now = source.stat()
    if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise CaptionError(f"{source}: changed while it was being read; re-run when nothing "
                           "writes it")
    index = _dedupe(index, tally)
    names = pa.array([s["name"] for s in w.shards], pa.string())
    shard = pa.DictionaryArray.from_arrays(index["shard"].combine_chunks(), names)
    # without the Arrow schema the dictionary reads back as the plain string of INDEX_SCHEMA
    pq.write_table(index.set_column(1, "shard", shard), part / INDEX, compression="zstd",
                   store_schema=False, use_dictionary=["shard"], row_group_size=1 << 16)
    kept = int(pc.sum(index["count"]).as_py() or 0)
    assert kept + sum(tally.skipped.values()) == read, "caption counts do not add up"
    report = {
        "format": FORMAT,
        "source": {"path": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "videos_digest": digest,
        "videos_listed": None if videos is None else len(videos),
        "settings": {"shard_captions": shard_captions, "group_videos": group_videos},
        "counts": {"entries": entries, "videos": index.num_rows, "captions": kept,
                   "captions_read": read, CLIPPED: tally.clipped, "shards": len(w.shards)},
        "skipped": tally.skipped,                 # captions, per reason
        "skipped_videos": tally.skipped_videos,   # whole videos, per reason
        "examples": {k: v for k, v in tally.examples.items() if v},
        "shards": w.shards,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(report, part / REPORT)      # last: the completion marker
    return report


def _dedupe(index: pa.Table, tally: _Tally) -> pa.Table:
    """The index sorted by video_id, keeping a video id's first entry in the file when
    caption.json repeats a key (the later ones are counted as `duplicate_video`)."""
    index = index.take(pc.sort_indices(index["video_id"]))   # stable: file order among equals
    n = index.num_rows
    if n > 1:
        ids = index["video_id"]
        dup = pc.equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        if dup.any():
            where = np.flatnonzero(dup) + 1
            for vid, count in zip(pc.take(ids, where).to_pylist(),
                                  pc.take(index["count"], where).to_pylist()):
                tally.video("duplicate_video", vid, count)
            index = index.filter(pa.array(np.concatenate([[True], ~dup])))
    return index


# --------------------------------------------------------------------------- reading


def _fixed_width(ids: pa.ChunkedArray) -> np.ndarray:
    """UTF-8 bytes of string column `ids` as a numpy 'S<w>' array (no Python objects)."""
    a = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    a = a.cast(pa.large_string())
    n = len(a)
    offsets = np.frombuffer(a.buffers()[1], np.int64)[a.offset:a.offset + n + 1]
    data = np.frombuffer(a.buffers()[2], np.uint8) if a.buffers()[2] is not None \
        else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    width = max(int(lengths.max()) if n else 1, 1)
    out = np.zeros((n, width), np.uint8)   # (videos, bytes)
    first = offsets[:-1]
    for j in range(width):
        m = lengths > j
        out[m, j] = data[first[m] + j]
    return out.view(f"S{width}").ravel()


class CaptionStore:
    """Reads a caption store: `get(video_id)` -> (starts s float64, ends s float64, texts), one
    row group read per video (the last CACHE_GROUPS decoded row groups kept, LRU). Picklable:
    open files and the cache are dropped and reopened lazily (DataLoader workers, fork)."""

    CACHE_GROUPS = 8

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        report = _finished(self.root)
        if report is None:
            raise CaptionError(f"{self.root}: not a finished caption store (no readable "
                               f"{REPORT} / {INDEX}); re-run the captions stage")
        self._report = report
        try:
            t = pq.read_table(self.root / INDEX)
            t = t.select([f.name for f in INDEX_SCHEMA]).cast(INDEX_SCHEMA)
        except (OSError, KeyError, ValueError, pa.ArrowException) as e:
            raise CaptionError(f"{self.root / INDEX}: unreadable ({e}); the caption store is "
                               "damaged: re-run the captions stage") from None
        if t.num_rows != report["counts"]["videos"]:
            raise CaptionError(f"{self.root}: index.parquet lists {t.num_rows} videos, "
                               f"report.json {report['counts']['videos']}; the caption store "
                               "is damaged: re-run the captions stage")
        keys = _fixed_width(t["video_id"])
        order = None
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            if not (keys[1:] > keys[:-1]).all():
                raise CaptionError(f"{self.root / INDEX}: repeats a video id; the caption "
                                   "store is damaged: re-run the captions stage")
        shard = t["shard"].combine_chunks().dictionary_encode()
        cols = {"shard": np.asarray(shard.indices), "row_group": t["row_group"].to_numpy(),
                "offset": t["offset"].to_numpy(), "count": t["count"].to_numpy(),
                "first_start": t["first_start"].to_numpy()}
        if order is not None:
            cols = {k: v[order] for k, v in cols.items()}
        self._keys = keys
        self._ids = t["video_id"] if order is None else t["video_id"].take(order)
        self._shards: list[str] = shard.dictionary.to_pylist()
        self._shard, self._rg = cols["shard"], cols["row_group"]
        self._off, self._count = cols["offset"], cols["count"]
        self._first = cols["first_start"]
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._files: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[tuple[int, int], tuple] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_files", "_cache", "_pid"):
            state.pop(k)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def report(self) -> dict:
        """The store's report.json."""
        return self._report

    def __len__(self) -> int:
        return len(self._keys)

    def ids(self) -> list[str]:
        """Every video with at least one kept caption, sorted."""
        return self._ids.to_pylist()

    def _find(self, video_id: str) -> int:
        if not isinstance(video_id, str):
            return -1
        key = video_id.encode("utf-8")
        if len(key) > self._keys.dtype.itemsize or key.endswith(b"\0"):
            return -1
        i = int(np.searchsorted(self._keys, key))
        return i if i < len(self._keys) and self._keys[i] == key else -1

    def __contains__(self, video_id: object) -> bool:
        return self._find(video_id) >= 0   # type: ignore[arg-type]

    def first_start(self, video_id: str) -> float | None:
        """The earliest start of the video's kept captions, s (from the index: no row group
        read); None when the store has no caption of `video_id`."""
        i = self._find(video_id)
        return None if i < 0 else float(self._first[i])

    def _group(self, shard: int, rg: int) -> tuple:
        if self._pid != os.getpid():       # forked: the parent's handles are not ours
            self._reset()
        key = (shard, rg)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        path = self.root / self._shards[shard]
        try:
            f = self._files.get(shard)
            if f is None:
                f = self._files[shard] = pq.ParquetFile(path)
            t = f.read_row_group(rg, columns=["video_id", "start", "end", "text"])
            hit = (t["video_id"].combine_chunks(), t["start"].to_numpy(),
                   t["end"].to_numpy(), t["text"].combine_chunks())
        except (OSError, ValueError, IndexError, pa.ArrowException) as e:
            raise CaptionError(f"{path}: cannot read row group {rg} ({e}); the caption store "
                               f"{self.root} is damaged: re-run the captions stage") from None
        self._cache[key] = hit
        if len(self._cache) > self.CACHE_GROUPS:
            self._cache.popitem(last=False)
        return hit

    def get(self, video_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The video's kept captions in file order -> (starts (N,) float64 s, ends (N,) float64
        s, N texts). KeyError when the store has no caption of `video_id`."""
        i = self._find(video_id)
        if i < 0:
            raise KeyError(video_id)
        shard, rg = int(self._shard[i]), int(self._rg[i])
        off, n = int(self._off[i]), int(self._count[i])
        ids, starts, ends, texts = self._group(shard, rg)
        if off + n > len(ids) or ids[off].as_py() != video_id \
                or ids[off + n - 1].as_py() != video_id:
            raise CaptionError(f"{self.root / self._shards[shard]}: row group {rg} does not "
                               f"hold {video_id!r} where index.parquet says; the caption store "
                               "is damaged: re-run the captions stage")
        return (starts[off:off + n].copy(), ends[off:off + n].copy(),
                texts.slice(off, n).to_pylist())
