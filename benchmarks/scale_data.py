"""Synthetic HowTo100M-shaped bookkeeping inputs at any size, no media (issue 16).

generate(root, n) writes, under `root`, what the stages would find after a first download of
n listed videos, a resumed download killed mid-run and an extraction that got through almost
every downloaded video:

    sources/howto100m/HowTo100M_v1.csv     the official listing (video_id, category_1,
                                           category_2, rank, task_id), rows grouped by task
    manifests/howto100m/                   videos.parquet, clips.parquet (empty), manifest.json
                                           as write_manifest leaves them; availability.parquet
                                           as current_status + write_availability leave it
    data/ledger/howto100m/                 run 1's sealed attempts (500 videos a shard), run 2's
                                           sealed shards and 4 leftover journals (killed)
    data/videos/howto100m/                 empty: the ledger's paths point into it
    seal/attempts-<run>-shard-00000.jsonl  one journal of n attempt rows (one per video)
    data/features/howto100m/               shards (HDF5 attributes only: recipe, index,
                                           completion marker; no arrays), their .sum.json
                                           sidecars, recipe.json, index.parquet
    reports/availability/howto100m/        an earlier audit's snapshot.parquet
    truth.json                             the generated counts the steps must reproduce

Outcomes follow a plausible mix (MIX: ~80 % available, the rest unavailable for the
taxonomy's reasons, age-restricted, transient, throttled, never tried); each failure has the
yt-dlp message of its reason, each available video a path, size, sha256, duration and codecs.
Seeded: the same (n, seed) gives the same files."""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.download.availability import KIND_STATUS, RULES

DATASET = "howto100m"
RUN1, RUN2 = "20251020T080000Z-a1b2c3", "20251103T090000Z-d4e5f6"
SEAL_RUN = "20251110T100000Z-0f1e2d"
T_RUN1 = datetime(2025, 10, 20, 8, tzinfo=timezone.utc)
T_RUN2 = datetime(2025, 11, 3, 9, tzinfo=timezone.utc)
T_SEAL = datetime(2025, 11, 10, 10, tzinfo=timezone.utc)
SNAPSHOT_DATE = "2025-10-30T12:00:00+00:00"
SHARD_SIZE = 500          # download.shard_size
STORE_SHARD = 64          # extract.shard_videos
RUN2_SHARE = 0.01         # videos run 2 retried (their run-1 attempts were network failures)
LEFTOVER_JOURNALS = 4     # run 2's shards in flight when it was killed
NOT_EXTRACTED = 0.01      # available videos downloaded after the last extraction
YTDLP = "2025.10.22"

# final outcome -> share of the listing; "never" = pending, never tried (run 1 stopped early)
MIX = {"available": 0.80, "private": 0.05, "removed_by_uploader": 0.03,
       "account_terminated": 0.035, "copyright": 0.005, "policy_removed": 0.005,
       "unavailable_unspecified": 0.02, "geo_blocked": 0.003, "age_restricted": 0.008,
       "members_only": 0.001, "network": 0.01, "extractor_broken": 0.002, "bot_check": 0.01,
       "never": 0.021}
MESSAGES = {
    "private": "Private video. Sign in if you've been granted access to this video",
    "removed_by_uploader": "This video has been removed by the uploader",
    "account_terminated": "This video is no longer available because the YouTube account "
                          "associated with this video has been terminated.",
    "copyright": "This video is no longer available due to a copyright claim by Studio71",
    "policy_removed": "This video has been removed for violating YouTube's Terms of Service",
    "unavailable_unspecified": "Video unavailable",
    "geo_blocked": "The uploader has not made this video available in your country",
    "age_restricted": "Sign in to confirm your age. This video may be inappropriate for some "
                      "users.",
    "members_only": "Join this channel to get access to members-only content like this video, "
                    "and other exclusive perks.",
    "network": "Unable to download webpage: <urlopen error timed out> (caused by "
               "TransportError('timed out'))",
    "extractor_broken": "nsig extraction failed: Some formats may be missing",
    "bot_check": "Sign in to confirm you're not a bot. Use --cookies-from-browser or --cookies "
                 "for the authentication.",
}
EXC_CLASS = {"network": "TransportError", "geo_blocked": "GeoRestrictedError"}
# store statuses of extracted videos with audio (no audio: no_audio_stream)
STORE_MIX = {"ok": 0.985, "silent_audio": 0.004, "decode_error": 0.004, "truncated": 0.003,
             "av_length_mismatch": 0.003, "too_short_2d": 0.001}
SIZES = [(640, 360), (480, 360), (1280, 720), (854, 480)]
CATEGORIES = ["Food and Entertaining", "Hobbies and Crafts", "Home and Garden",
              "Cars & Other Vehicles", "Pets and Animals", "Holidays and Traditions",
              "Personal Care and Style", "Sports and Fitness", "Health",
              "Education and Communications", "Arts and Entertainment",
              "Computers and Electronics"]
ID_CHARS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                         np.uint8)
ID_LAST = np.frombuffer(b"AEIMQUYcgkosw048", np.uint8)   # YouTube ids end in one of these


def paths(root: Path) -> dict[str, Path]:
    """Where generate() puts each input under `root` (and the steps read them)."""
    root = Path(root)
    return {"root": root, "csv": root / "sources" / DATASET / "HowTo100M_v1.csv",
            "manifest": root / "manifests" / DATASET,
            "ledger": root / "data" / "ledger" / DATASET,
            "videos": root / "data" / "videos" / DATASET,
            "seal": root / "seal" / f"attempts-{SEAL_RUN}-shard-00000.jsonl",
            "features": root / "data" / "features" / DATASET,
            "snapshot": root / "reports" / "availability" / DATASET / "snapshot.parquet",
            "truth": root / "truth.json"}


def make_ids(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct valid 11-character YouTube ids."""
    out: dict[str, None] = {}
    while len(out) < n:
        k = n - len(out) + 16
        body = ID_CHARS[rng.integers(0, 64, size=(k, 10))]
        last = ID_LAST[rng.integers(0, 16, size=(k, 1))]
        raw = np.concatenate([body, last], axis=1).tobytes()
        out.update(dict.fromkeys(raw[i:i + 11].decode() for i in range(0, len(raw), 11)))
    return list(out)[:n]


def listing(ids: list[str], rng: np.random.Generator) -> list[tuple[str, str, str, int, str]]:
    """HowTo100M_v1.csv rows (video_id, category_1, category_2, rank, task_id), grouped by task
    as the official file is: ~52 videos a task, 12 top categories, ~20 sub-categories each."""
    n = len(ids)
    n_tasks = max(1, n // 52)
    task_of = np.sort(rng.integers(0, n_tasks, size=n))
    rank = np.empty(n, np.int64)
    rows = []
    first = np.searchsorted(task_of, np.arange(n_tasks))
    for i, (vid, t) in enumerate(zip(ids, task_of.tolist())):
        rank[i] = i - first[t] + 1
        c1 = CATEGORIES[t % len(CATEGORIES)]
        c2 = f"{c1.split()[0]} topic {t * 7 % 20:02d}"
        rows.append((vid, c1, c2, int(rank[i]), str(10001 + t)))
    return rows


def _pick(keys: list[str], shares: list[float], n: int, rng: np.random.Generator) -> list[str]:
    p = np.asarray(shares, float)
    return [keys[i] for i in rng.choice(len(keys), size=n, p=p / p.sum()).tolist()]


class _Attempts:
    """Attempt rows as the download's workers write them (runner.run_shard's record)."""

    def __init__(self, rng: random.Random, kinds: dict[str, str]):
        self.rng, self.kinds = rng, kinds

    def row(self, run: str, shard: int, vid: str, outcome: str, t: datetime, media: dict | None,
            k: int) -> dict:
        elapsed = 2.0 + 25.0 * self.rng.random() if outcome == "available" else 1.5
        base = {"attempt_id": "%032x" % self.rng.getrandbits(128), "run_id": run,
                "video_id": vid, "shard": shard, "url": f"https://www.youtube.com/watch?v={vid}",
                "started_at": t, "finished_at": t + timedelta(seconds=elapsed),
                "elapsed_s": elapsed, "worker": f"node{k % 4}:{4100 + k % 8}",
                "ytdlp_version": YTDLP}
        if outcome == "available":
            return {**base, "status": "available", "reason": None, "kind": None,
                    "message": None, "exc_class": None, "http_status": None, **media}
        kind = self.kinds[outcome]
        return {**base, "status": KIND_STATUS[kind], "reason": outcome, "kind": kind,
                "message": f"ERROR: [youtube] {vid}: {MESSAGES[outcome]}",
                "exc_class": EXC_CLASS.get(outcome, "ExtractorError"), "http_status": None,
                "path": None, "filesize": None, "sha256": None, "duration_s": None,
                "width": None, "height": None, "vcodec": None, "acodec": None,
                "has_audio": None, "format_id": None}


def _media(vid: str, rng: random.Random) -> dict:
    """What a download records of an available video's file (probe, size, sha256)."""
    dur = round(min(7200.0, max(6.0, rng.lognormvariate(5.75, 0.7))), 3)   # mean ~400 s
    w, h = SIZES[rng.randrange(len(SIZES))]
    audio = rng.random() < 0.985
    return {"path": f"data/videos/{DATASET}/{vid[:2]}/{vid}.mp4",
            "filesize": int(dur * 200_000 * (0.7 + 0.6 * rng.random())),
            "sha256": hashlib.sha256(vid.encode()).hexdigest(), "duration_s": dur,
            "width": w, "height": h, "vcodec": "avc1.4d401e",
            "acodec": "mp4a.40.2" if audio else None, "has_audio": audio,
            "format_id": "18" if h <= 360 else "136+140"}


def _journal(path: Path, rows: list[dict]) -> None:
    """JSON lines as ledger.Journal.append writes them (one fsync per row skipped here)."""
    from pipeline.download.ledger import journal_line
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(journal_line(r) for r in rows)


def _write_table(table: pa.Table, path: Path) -> None:
    from pipeline.data.manifest import write_parquet_atomic
    write_parquet_atomic(table, path)


def write_listing(p: dict, rows: list[tuple]) -> None:
    import csv
    p["csv"].parent.mkdir(parents=True, exist_ok=True)
    with open(p["csv"], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["video_id", "category_1", "category_2", "rank", "task_id"])
        w.writerows(rows)


def write_manifest_files(p: dict, rows: list[tuple]) -> None:
    """videos.parquet, clips.parquet and manifest.json as manifest.write_manifest writes them
    for this listing (checked against it in tests/test_bench_scale.py)."""
    from pipeline.config import HowTo100MManifestParams, to_dict
    from pipeline.data.manifest import (CLIP_FIELDS, VIDEO_FIELDS, split_checksum,
                                        write_json_atomic)
    srt = sorted(rows)
    schema = pa.schema(VIDEO_FIELDS + [pa.field("category_1", pa.string()),
                                       pa.field("category_2", pa.string()),
                                       pa.field("rank", pa.int32()),
                                       pa.field("task_id", pa.string())])
    cols = list(zip(*srt))
    table = pa.Table.from_pydict({
        "video_id": list(cols[0]), "url": [f"https://www.youtube.com/watch?v={v}" for v in cols[0]],
        "split": ["train"] * len(srt), "duration_s": pa.nulls(len(srt), pa.float64()),
        "category_1": list(cols[1]), "category_2": list(cols[2]), "rank": list(cols[3]),
        "task_id": list(cols[4])}, schema=schema)
    _write_table(table, p["manifest"] / "videos.parquet")
    _write_table(pa.schema(CLIP_FIELDS).empty_table(), p["manifest"] / "clips.parquet")
    write_json_atomic({"dataset": DATASET, "videos": len(srt), "clips": 0,
                       "splits": {"train": {"videos": len(srt), "clips": 0,
                                            "clip_checksum": split_checksum([])}},
                       "sources": {}, "params": to_dict(HowTo100MManifestParams())},
                      p["manifest"] / "manifest.json")


def recipe() -> dict:
    """The feature recipe of the store: seeded random weights (no weight files needed), as
    extract() builds it from EXTRACT_PARAMS."""
    from pipeline.features.extract import build_recipe
    from pipeline.features.weights import resolve_weights
    return build_recipe(extract_params(), resolve_weights("resnet152", "random")[1],
                        resolve_weights("resnext101", "random")[1])


def extract_params():
    """The extraction settings of the generated store and of the benchmark's extract step:
    seeded random weights (nothing to load), shards checked by size (the sha256 check reads
    every shard's bytes: I/O, not bookkeeping), no free-space floor."""
    from pipeline.config import ExtractParams
    return ExtractParams(weights_2d="random", weights_3d="random", verify="size",
                         min_free_gb=0.0)


def generate(root: Path, n: int, seed: int = 0) -> dict:
    """Writes every input (see the module docstring) under `root` -> the truth: counts the
    steps must reproduce (also written to truth.json)."""
    import h5py

    from pipeline.download.ledger import (AVAILABILITY_SCHEMA, AVAILABLE, PENDING, TRANSIENT,
                                          attempts_table, write_availability)
    from pipeline.features.store import recipe_sha256, shard_name, write_index, write_sum

    p = paths(root)
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    ids = make_ids(n, rng)
    rows = listing(ids, rng)
    write_listing(p, rows)
    write_manifest_files(p, rows)
    kinds = {r: k for r, k, _ in RULES}
    keys = list(MIX)
    final = dict(zip(ids, _pick(keys, [MIX[k] for k in keys], n, rng)))
    srt = sorted(ids)
    tried = [v for v in srt if final[v] != "never"]
    run2 = set(prng.sample(tried, int(len(tried) * RUN2_SHARE)))
    media = {v: _media(v, prng) for v in srt if final[v] == "available"}
    att = _Attempts(prng, kinds)
    retried = ("network", "extractor_broken", "bot_check")   # retryable: 3 tries in a run
    # per video: [attempts, first attempt's start, latest attempt] (run 1, then run 2)
    history: dict[str, list] = {}
    p["ledger"].mkdir(parents=True, exist_ok=True)
    p["videos"].mkdir(parents=True, exist_ok=True)
    t = T_RUN1
    for s in range(0, len(tried), SHARD_SIZE):
        shard, out = s // SHARD_SIZE, []
        for k, v in enumerate(tried[s:s + SHARD_SIZE]):
            first = "network" if v in run2 else final[v]
            for _ in range(3 if first in retried else 1):
                out.append(att.row(RUN1, shard, v, first, t, media.get(v), k))
                t += timedelta(seconds=0.25)
        for r in out:
            h = history.setdefault(r["video_id"], [0, r["started_at"], None])
            h[0] += 1
            h[2] = r
        _write_table(attempts_table(out), p["ledger"] / f"attempts-{RUN1}-shard-{shard:05d}.parquet")
    again = sorted(run2)
    shards2 = [again[s:s + SHARD_SIZE] for s in range(0, len(again), SHARD_SIZE)]
    t = T_RUN2
    for shard, vids in enumerate(shards2):
        out = []
        for k, v in enumerate(vids):
            for _ in range(3 if final[v] in retried else 1):
                out.append(att.row(RUN2, shard, v, final[v], t, media.get(v), k))
                t += timedelta(seconds=0.25)
        for r in out:
            h = history[r["video_id"]]
            h[0] += 1
            h[2] = r
        name = f"attempts-{RUN2}-shard-{shard:05d}"
        if shard >= len(shards2) - LEFTOVER_JOURNALS:    # in flight when run 2 was killed
            _journal(p["ledger"] / f"{name}.jsonl", out)
        else:
            _write_table(attempts_table(out), p["ledger"] / f"{name}.parquet")

    # availability.parquet: each listed video's latest attempt (ledger.current_status)
    from pipeline.download.ledger import _OUTCOME
    outcome = [f.name for f in _OUTCOME]
    cur = []
    for v in srt:
        h = history.get(v)
        row = {"video_id": v, "url": f"https://www.youtube.com/watch?v={v}", "split": "train"}
        if h is None:
            row.update({k: None for k in outcome}, status=PENDING, attempts=0, first_seen=None,
                       last_checked=None)
        else:
            row.update({k: h[2][k] for k in outcome}, attempts=h[0], first_seen=h[1],
                       last_checked=h[2]["finished_at"])
        cur.append(row)
    avail = pa.Table.from_pydict({f.name: [r[f.name] for r in cur] for f in AVAILABILITY_SCHEMA},
                                 schema=AVAILABILITY_SCHEMA)
    write_availability(avail, p["manifest"] / "availability.parquet")
    status = Counter(r["status"] for r in cur)
    reasons = Counter(r["reason"] for r in cur if r["reason"])
    del history, cur, avail

    # the journal of one whole run, for the sealing step
    seal_rows = [att.row(SEAL_RUN, 0, v, final[v] if final[v] != "never" else "network",
                         T_SEAL + timedelta(seconds=0.25 * i), media.get(v), i)
                 for i, v in enumerate(srt)]
    _journal(p["seal"], seal_rows)
    del seal_rows

    # the feature store: extract's shards (longest videos first, 64 a shard) and index
    rec = recipe()
    rhash = recipe_sha256(rec)
    done = [v for v in media if prng.random() >= NOT_EXTRACTED]
    done.sort(key=lambda v: -media[v]["duration_s"])
    store_keys = list(STORE_MIX)
    drawn = iter(_pick(store_keys, [STORE_MIX[k] for k in store_keys], len(done), rng))
    index: dict[str, dict] = {}
    p["features"].mkdir(parents=True, exist_ok=True)
    for s in range(0, len(done), STORE_SHARD):
        name = shard_name(s // STORE_SHARD, "hdf5")
        srows = []
        for i, v in enumerate(done[s:s + STORE_SHARD]):
            m = media[v]
            st = next(drawn)
            st = st if m["has_audio"] else "no_audio_stream"
            srows.append(_store_row(v, st, m, rhash, name, i, prng))
        path = p["features"] / name
        with h5py.File(path, "w") as f:           # what ShardWriter leaves, minus the arrays
            f.attrs["recipe"] = json.dumps(rec, sort_keys=True)
            f.attrs["recipe_sha256"] = rhash
            f.create_group("videos")
            f.attrs["index"] = json.dumps(srows)
            f.attrs["complete"] = True
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        write_sum(path, digest, len(data))
        for r in srows:
            index[r["video_id"]] = {**r, "shard_sha256": digest, "shard_bytes": len(data)}
    for v in srt:                                 # extract._write_store_index's other rows
        if v not in index:
            st, reason = status_of(final[v], kinds), _reason(final[v])
            why = st if st != AVAILABLE else "available but not extracted"
            index[v] = {"video_id": v, "status": "not_downloaded", "flags": "not_downloaded",
                        "message": f"ledger: {why}" + (f" ({reason})" if reason else ""),
                        "n_resnet152": 0, "n_resnext101": 0, "n_logmel": 0,
                        "recipe_sha256": rhash}
    irows = [index[v] for v in srt]
    write_index(irows, p["features"] / "index.parquet")
    (p["features"] / "recipe.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    store = Counter(r["status"] for r in irows)
    n_shards = math.ceil(len(done) / STORE_SHARD)
    del index, irows

    # an earlier audit's snapshot: some videos changed since
    from pipeline.download.audit import SNAPSHOT_SCHEMA
    snap = []
    for v in srt:
        st, reason = status_of(final[v], kinds), _reason(final[v])
        audio = media[v]["has_audio"] if v in media else None
        x = prng.random()
        if v in run2:                         # run 2 had not run yet
            st, reason, audio = TRANSIENT, "network", None
        elif st == AVAILABLE and x < 0.002:   # came back since
            st, reason, audio = "unavailable", "private", None
        elif st == "unavailable" and x < 0.05:    # newly gone since
            st, reason, audio = AVAILABLE, None, True
        elif st != PENDING and x > 0.98:          # first tried since
            st, reason, audio = PENDING, None, None
        snap.append({"video_id": v, "status": st, "reason": reason, "has_audio": audio})
    snap_t = pa.Table.from_pylist(snap, schema=SNAPSHOT_SCHEMA)
    _write_table(snap_t.replace_schema_metadata({"audit_date": SNAPSHOT_DATE,
                                                 "dataset": DATASET}), p["snapshot"])

    leftover = min(LEFTOVER_JOURNALS, len(shards2))
    todo_fetch = status.get(PENDING, 0) + status.get(TRANSIENT, 0)
    truth = {"n": n, "seed": seed, "status": dict(sorted(status.items())),
             "reasons": dict(sorted(reasons.items())),
             "attempt_files": math.ceil(len(tried) / SHARD_SIZE) + len(shards2),
             "leftover_journals": leftover,
             "plan": {"checked": status.get(AVAILABLE, 0), "tried": todo_fetch,
                      "todo": status.get(AVAILABLE, 0) + todo_fetch},
             "usable": sum(1 for v in media.values() if v["has_audio"]),
             "store": dict(sorted(store.items())), "store_shards": n_shards,
             "extract_todo": len(media) - len(done), "recipe_sha256": rhash}
    p["truth"].write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return truth


def status_of(outcome: str, kinds: dict[str, str]) -> str:
    """The ledger status a final outcome leaves a video in."""
    if outcome == "available":
        return "available"
    if outcome == "never":
        return "pending"
    return KIND_STATUS[kinds[outcome]]


def _reason(outcome: str) -> str | None:
    return None if outcome in ("available", "never") else outcome


def _store_row(vid: str, status: str, m: dict, rhash: str, shard: str, row: int,
               rng: random.Random) -> dict:
    """One video's row inside a shard, as VideoRecord.row() + ShardWriter.add make it."""
    dur = m["duration_s"]
    failed = status in ("decode_error", "truncated")
    n2, n3 = int(dur), math.ceil(int(dur * 24) / 16)
    na = 1 + int(dur * 100) if m["has_audio"] else 0
    if status == "too_short_2d":
        n2 = 0
    if failed:
        n2 = n3 = na = 0
    message = {"decode_error": "ffmpeg exited with status 1: Invalid data found when "
                               "processing input",
               "truncated": f"decoded {dur / 2:.1f} s of {dur:.1f} s"}.get(status)
    return {"video_id": vid, "status": status, "flags": status, "message": message,
            "n_resnet152": n2, "n_resnext101": n3, "n_logmel": na, "duration_s": dur,
            "decoded_s": None if failed else dur, "video_s": None if failed else n3 * 16 / 24,
            "audio_s": (na - 1) / 100 if na else None, "has_audio": m["has_audio"],
            "width": m["width"], "height": m["height"], "rotation": 0,
            "source_sha256": m["sha256"], "recipe_sha256": rhash,
            "extract_s": round(dur / 8 * (0.8 + 0.4 * rng.random()), 3), "shard": shard,
            "row": row}
