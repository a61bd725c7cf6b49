"""Download a dataset's videos on dask.distributed: shards, resume, circuit breaker, ledger.

The driver (this process) plans shards from the manifest and the ledger, submits one task per
shard, and follows the workers' per-video events to show progress and run the circuit breaker.
Each shard task writes only its own journal; at the end (or after a crash, on the next run) the
journals are sealed into the attempts history and availability.parquet is rebuilt from it."""
from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import math
import os
import random
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
from tqdm import tqdm

from pipeline.cluster import connect, follow
from pipeline.config import ClusterParams, DownloadParams, to_dict
from pipeline.download.breaker import (Breaker, Hold, counts_as_failure, reached_site, short,
                                       stop_line)
from pipeline.download.fetch import (Fetcher, backoff, check_id, file_ok, local_failure, new_attempt_id,
                            source_unchanged, thread_fetcher)
from pipeline.download.ledger import (AVAILABLE, NEEDS_AUTH, PENDING, TRANSIENT, Journal,
                             current_status, latest_urls, now, read_attempts, read_journal,
                             sample_videos, seal_journal, seal_leftovers, write_availability)
from pipeline.data.manifest import write_json_atomic
from pipeline.safety import STALE_DIR, UserError, writer_lock

log = logging.getLogger(__name__)

RETRYABLE_KINDS = ("transient", "throttled")


class DownloadError(UserError):
    """A download run that cannot start or must stop (bad manifest, low disk)."""


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard task needs; plain data, so it pickles to any worker."""

    run_id: str
    shard: int
    videos: tuple                  # ((video_id, url, previous available row or None), ...);
                                   # the row: path, filesize, sha256, url it was fetched from
    params: DownloadParams
    videos_dir: str
    ledger_dir: str
    root: str
    control: str                   # name of the run's dask Variable and Queue
    pace_s: float = 0.0
    extractors: tuple = ()         # "module:Class" yt-dlp extractors tried first (tests)


# run name -> {"pause_until": epoch s, "stop": reason, "epoch": the breaker's answers}: pushed
# into every worker process by the driver (Client.run) when the breaker trips or answers or a
# stop is needed, so checking it costs nothing
_STATE: dict[str, dict] = {}
# run name -> this worker process's failures in a row (breaker.Hold)
_HOLDS: dict[str, Hold] = {}
_HOLDS_LOCK = threading.Lock()


def _push_state(name: str, state: dict) -> None:
    _STATE[name] = state


def _drop_state(name: str) -> None:
    _STATE.pop(name, None)
    _HOLDS.pop(name, None)


class Control:
    """Worker side of the run's control channel: events go out fire-and-forget (dask's
    log_event), pause/stop come in through the process-wide state the driver pushes."""

    def __init__(self, name: str, p: DownloadParams):
        from distributed import Variable, get_worker
        self.name, self.worker = name, get_worker()
        if name not in _STATE:  # a worker that joined mid-run: the last state the driver set
            _STATE[name] = Variable(name).get(timeout=30) or {}
        with _HOLDS_LOCK:
            _HOLDS.setdefault(name, Hold(p.breaker_threshold, p.breaker_window_s))

    def state(self) -> dict:
        return _STATE.get(self.name, {})

    def epoch(self) -> int:
        return self.state().get("epoch", 0)

    def emit(self, **event: Any) -> None:
        self.worker.log_event(self.name, event)

    def stopped(self) -> str | None:
        return self.state().get("stop")

    def note(self, out: dict, started: int) -> None:
        """One attempt's outcome (started in epoch `started`) into this process's hold; tells
        the driver when the process starts holding."""
        hold = _HOLDS.get(self.name)
        if hold is not None and hold.note(time.time(), started, self.epoch(),
                                          counts_as_failure(out["reason"]),
                                          reached_site(out["status"], out["reason"],
                                                       out["kind"])):
            self.emit(hold=started, reason=out["reason"])

    def held(self) -> bool:
        hold = _HOLDS.get(self.name)
        return hold is not None and hold.held(self.epoch())

    def wait_if_paused(self) -> None:
        """Blocks while the driver pauses the run, or while this process holds after a run of
        network failures and the driver has not answered yet; returns at once on a stop."""
        while not self.stopped():
            wait = self.state().get("pause_until", 0.0) - time.time()
            if wait > 0:
                time.sleep(min(0.25, wait))
            elif self.held():
                time.sleep(0.05)
            else:
                return


def _load_extractor(spec: str):
    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name)


def _done_in_journal(path: Path) -> set[str]:
    """Videos a re-scheduled shard task already finished in this run (worker died mid-shard)."""
    if not path.exists():
        return set()
    return {r["video_id"] for r in read_journal(path)
            if r["status"] == AVAILABLE or r["kind"] not in RETRYABLE_KINDS}


def run_shard(job: ShardJob) -> dict:
    """Runs on a worker: tries each video of the shard, journaling every attempt. -> counts."""
    ctl = Control(job.control, job.params)
    root, videos_dir = Path(job.root), Path(job.videos_dir)
    key = (repr(job.params), job.videos_dir, job.root, job.extractors, job.pace_s)
    fetcher = thread_fetcher(key, lambda: Fetcher(
        job.params, videos_dir, root, tuple(_load_extractor(e) for e in job.extractors),
        job.pace_s))
    rng = random.Random(f"{job.run_id}-{job.shard}")
    worker = f"{socket.gethostname()}:{os.getpid()}"
    floor = job.params.min_free_gb * 1e9
    counts: collections.Counter = collections.Counter()
    journal = Journal(Path(job.ledger_dir), job.run_id, job.shard)
    done = _done_in_journal(journal.path)

    def record(video_id: str, url: str, out: dict, started, t0: float, final: bool,
               epoch: int | None = None) -> None:
        journal.append({"attempt_id": new_attempt_id(), "run_id": job.run_id,
                        "video_id": video_id, "shard": job.shard, "url": url,
                        "started_at": started, "finished_at": now(),
                        "elapsed_s": time.monotonic() - t0, "worker": worker, **out})
        # epoch: the breaker's answers when the attempt started (None: no network attempt)
        ctl.emit(video_id=video_id, status=out["status"], reason=out["reason"],
                 kind=out["kind"], final=final, bytes=out["filesize"] or 0, epoch=epoch)
        if epoch is not None:
            ctl.note(out, epoch)

    def count(out: dict) -> None:   # a video's last outcome in this run
        counts[f"status:{out['status']}"] += 1
        counts[f"reason:{out['reason'] or out['status']}"] += 1
        if out["status"] in (TRANSIENT, PENDING):
            counts[f"retry:{out['reason']}"] += 1

    with journal:
        for video_id, url, prev in job.videos:
            if ctl.stopped():
                break
            if video_id in done:
                continue
            check_id(video_id)
            if prev is not None:
                started, t0 = now(), time.monotonic()
                try:
                    why = _why_stale(fetcher, root, url, prev, job.params.verify)
                    if why is None:
                        counts["reason:verified"] += 1
                        ctl.emit(video_id=video_id, status=AVAILABLE, reason="verified",
                                 kind=None)
                        continue
                    log.warning("%s: %s; fetching it again", video_id, why)
                    if not job.params.reference_root:   # own media are never moved
                        _set_aside(root / prev["path"], videos_dir, job.run_id,
                                   f"{video_id}: {why}")
                except OSError as e:   # this video's file cannot be read or moved: its status
                    out = local_failure(e)
                    record(video_id, url, out, started, t0, True)
                    count(out)
                    continue
            videos_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(videos_dir).free
            if free < floor:
                ctl.emit(stop=f"free space at {videos_dir} is {free / 1e9:.2f} GB, below "
                              f"download.min_free_gb = {job.params.min_free_gb} GB")
                break
            out = None
            for k in range(1, job.params.attempts_per_run + 1):
                ctl.wait_if_paused()
                if ctl.stopped():
                    break
                started, t0, epoch = now(), time.monotonic(), ctl.epoch()
                out = fetcher.attempt(video_id, url)
                final = out["status"] == AVAILABLE or out["kind"] not in RETRYABLE_KINDS \
                    or k == job.params.attempts_per_run
                record(video_id, url, out, started, t0, final, epoch)
                if final:
                    break
                time.sleep(backoff(job.params, k, rng))
            if out is not None:
                count(out)
    seal_journal(journal.path)
    return dict(counts)


def _why_stale(fetcher: Fetcher, root: Path, url: str, prev: dict, verify: str) -> str | None:
    """Why an available video's copy must be fetched again (its URL changed, its file: source
    was rewritten, the copy is missing or changed), or None when it stands. OSError when the
    copy cannot be read or is a special file (never opened)."""
    if prev.get("url", url) != url:
        return f"its URL changed from {prev['url']} to {url} since it was downloaded"
    source = fetcher.source_file(url)
    try:
        fresh = source_unchanged(source, prev, verify)
    except OSError as e:   # an unreadable source is like a gone one: the copy stands
        log.warning("cannot read %s to compare it with its copy (%s); keeping the copy",
                    source, e.strerror or e)
        fresh = True
    if not fresh:
        return f"its source {source} changed since it was downloaded"
    if not file_ok(root, prev, verify):
        return f"{prev['path']} is missing or changed since it was downloaded"
    return None


def _set_aside(path: Path, videos_dir: Path, run_id: str, why: str) -> None:
    """Moves a copy about to be replaced to <videos>/stale/<run id>/ rather than deleting it
    (a video gone from YouTube may have no other copy; yt-dlp would take a file left in
    place as already downloaded)."""
    if not os.path.lexists(path):
        return
    base = videos_dir / STALE_DIR / run_id
    dest = base / os.path.relpath(os.path.abspath(path), os.path.abspath(videos_dir))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):   # one README per run, whichever thread is first
        fd = os.open(base / "README.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f"Downloaded copies replaced by download run {run_id}: their URL or source "
                    "changed, or the copy no longer matched the ledger.\nDelete this folder "
                    "once you no longer need them.\n")
    os.replace(path, dest)
    log.warning("moved %s to %s (%s)", path, dest, why)


# --------------------------------------------------------------------------- driver


def plan(videos: pa.Table, current: pa.Table, p: DownloadParams, recheck: bool,
         fetched_from: dict[str, str] | None = None) -> list[tuple[str, str, dict | None]]:
    """Which videos this run touches: pending and transient ones; available ones for a file
    check (and a re-fetch when their URL changed); unavailable / needs_auth only on re-check
    (needs_auth also when cookies are set) or when their URL changed. `fetched_from`: video ->
    the URL of its latest attempt (ledger.latest_urls)."""
    # the columns read below as lists, not a dict per row (issue 16: 19 s and GBs at 1.24 M
    # videos)
    col = {c: current.column(c).to_pylist() for c in ("video_id", "status", "path",
                                                      "filesize", "sha256")
           if c in current.column_names}
    at = {vid: i for i, vid in enumerate(col["video_id"])}
    fetched_from = fetched_from or {}
    todo = []
    for vid, url in sorted(zip(videos.column("video_id").to_pylist(),
                               videos.column("url").to_pylist()), key=lambda r: r[0]):
        i = at.get(vid)
        status = col["status"][i] if i is not None else PENDING
        if status == AVAILABLE:  # only what the file check needs travels to the workers
            todo.append((vid, url, {**{k: col[k][i] for k in ("path", "filesize", "sha256")},
                                    "url": fetched_from.get(vid, url)}))
        elif (status in (PENDING, TRANSIENT) or recheck or fetched_from.get(vid, url) != url
              or (status == NEEDS_AUTH and p.cookiefile)):
            todo.append((vid, url, None))
    return todo


def _fetches(todo: list) -> list:
    """The planned videos that will be downloaded (new, or available under another URL)."""
    return [t for t in todo if t[2] is None or t[2]["url"] != t[1]]


def disk_estimate(todo: list, current: pa.Table, videos: pa.Table, p: DownloadParams) -> float:
    """Bytes the videos still to fetch will take: the mean size so far, or duration x rate."""
    sizes = [s for s in current.column("filesize").to_pylist() if s]
    new = [v for v, _, _ in _fetches(todo)]
    if sizes:
        return len(new) * sum(sizes) / len(sizes)
    dur = dict(zip(videos.column("video_id").to_pylist(), videos.column("duration_s").to_pylist()))
    return sum((dur.get(v) or 300.0) / 60 * p.est_mb_per_minute * 1e6 for v in new)


def _postfix(counts: collections.Counter) -> str:
    return " ".join(f"{k}={n}" for k, n in sorted(counts.items()))


def download(dataset: str, videos: pa.Table, p: DownloadParams, cluster: ClusterParams,
             videos_dir: Path, ledger_dir: Path, availability_path: Path, root: Path,
             recheck: bool = False, extractors: tuple[str, ...] = (),
             on_event: Callable[[dict], None] | None = None) -> dict:
    """Downloads what the ledger says is still needed and rebuilds availability.parquet.

    videos: the manifest's videos table (video_id, url, split, duration_s). Holds the ledger's
    writer lock for the whole run (LockError naming the holder when another run has it); every
    attempts file is checked before any work. Returns a summary with counts per status and
    reason; raises DownloadError when it had to stop early."""
    for i, vid in enumerate(videos.column("video_id").to_pylist()):
        try:
            check_id(vid)
        except ValueError as e:
            raise DownloadError(f"videos table row {i}: {e}") from None
    with writer_lock(ledger_dir, f"download@{dataset}", p.lock_wait_s):
        return _download(dataset, videos, p, cluster, videos_dir, ledger_dir, availability_path,
                         root, recheck, extractors, on_event)


def _media_dirs(videos_dir: Path, p: DownloadParams) -> list[Path]:
    """Where the ledger's media paths may point: the videos folder, and own media's folder."""
    return [videos_dir] + ([Path(p.reference_root)] if p.reference_root else [])


def _download(dataset, videos, p, cluster, videos_dir, ledger_dir, availability_path, root,
              recheck, extractors, on_event) -> dict:
    # checked before anything changes
    attempts = read_attempts(ledger_dir, root, _media_dirs(videos_dir, p))
    sealed = seal_leftovers(ledger_dir)
    if sealed:
        log.info("sealed %d journal(s) left by an interrupted run", sealed)
        del attempts   # one attempts table at a time (issue 16: 1.3 M rows at HowTo100M size)
        attempts = read_attempts(ledger_dir, root, _media_dirs(videos_dir, p))
    current = current_status(videos, attempts)
    selected = _select(dataset, videos, p)
    todo = plan(selected, current, p, recheck, latest_urls(attempts))
    del attempts
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    n_new = len(_fetches(todo))
    videos_dir.mkdir(parents=True, exist_ok=True)
    need, free = disk_estimate(todo, current, videos, p), shutil.disk_usage(videos_dir).free
    log.info("%s: %d videos listed%s; this run checks %d downloaded files and tries %d videos; "
             "disk: ~%.2f GB needed, %.2f GB free at %s (floor %.1f GB)", dataset,
             videos.num_rows, f", {selected.num_rows} in the sample (download.max_videos = "
             f"{p.max_videos}, download.splits = {p.splits or 'all'})"
             if selected.num_rows != videos.num_rows or p.max_videos or p.splits else "",
             len(todo) - n_new, n_new, need / 1e9, free / 1e9, videos_dir, p.min_free_gb)
    if need > free - p.min_free_gb * 1e9:
        log.warning("the estimate exceeds the free space above the floor: the run will stop "
                    "cleanly at the floor; free space or point data/videos elsewhere")
    summary: dict[str, Any] = {"dataset": dataset, "run_id": run_id, "listed": videos.num_rows,
                               "selected": selected.num_rows, "tried": n_new,
                               "checked": len(todo) - n_new, "transient": 0, "attempted": 0,
                               "retry_reasons": {}}
    stop_reason = None
    if todo:
        # the breaker probes the first manifest video that downloaded before, if any (over
        # the network: a local file tells nothing about it)
        good = {r["video_id"] for r in current.select(["video_id", "status"]).to_pylist()
                if r["status"] == AVAILABLE}
        known = [(v["video_id"], v["url"]) for v in videos.select(["video_id", "url"])
                 .to_pylist() if v["video_id"] in good and _remote(v["url"])][:1]
        stop_reason, counts, outcomes, retry, trips = _run(
            dataset, todo, p, cluster, videos_dir, ledger_dir, root, run_id, extractors,
            on_event, known)
        summary.update(by_reason=dict(sorted(counts.items())), breaker_trips=trips,
                       outcomes=dict(sorted(outcomes.items())),
                       transient=outcomes.get(TRANSIENT, 0) + outcomes.get(PENDING, 0),
                       attempted=sum(outcomes.values()), retry_reasons=dict(sorted(retry.items())))
    del current
    seal_leftovers(ledger_dir)
    final = current_status(videos, read_attempts(ledger_dir, root, _media_dirs(videos_dir, p)))
    write_availability(final, availability_path, {"max_videos": p.max_videos,
                                                  "splits": p.splits})
    statuses = collections.Counter(final.column("status").to_pylist())
    reasons = collections.Counter(r for r in final.column("reason").to_pylist() if r)
    summary.update(status=dict(sorted(statuses.items())), reasons=dict(sorted(reasons.items())),
                   params=to_dict(p), stopped=stop_reason)
    write_json_atomic(summary, ledger_dir / "runs" / f"{run_id}.json")
    if stop_reason:   # (the breaker's line says how to re-run already)
        raise DownloadError(f"stopped early: {stop_reason}. Everything done so far is in the "
                            "ledger" + ("" if "re-run" in stop_reason else "; re-run to resume"))
    return summary


def _select(dataset: str, videos: pa.Table, p: DownloadParams) -> pa.Table:
    """The sample this run downloads (download.max_videos, download.splits). DownloadError when
    `splits` names none of the dataset's splits (a typo would silently download nothing)."""
    if p.splits:
        have = {s for v in videos.column("split").to_pylist() for s in v.split(",")}
        unknown = [s for s in p.splits if s not in have]
        if len(unknown) == len(p.splits) and videos.num_rows:
            raise DownloadError(f"download.splits {p.splits} names none of {dataset}'s splits "
                                f"({', '.join(sorted(have))}); fix it in params.yaml (it applies "
                                "to every dataset; [] = all)")
        if unknown:
            log.warning("%s: download.splits %s are not splits of this dataset (%s)", dataset,
                        unknown, ", ".join(sorted(have)))
    return sample_videos(videos, p.max_videos, p.splits)


def _remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


class _Prober:
    """The breaker's probe, run by the driver: which video (the first manifest video that
    downloaded before, else one downloaded in this run, else the next listed one not tried
    yet) and one request for it (no retries)."""

    def __init__(self, p: DownloadParams, videos_dir: Path, root: Path, extractors: tuple,
                 todo: list, known: list[tuple[str, str]]):
        self.args = (replace(p, retries=0, fragment_retries=0, extractor_retries=0,
                             sleep_interval_s=0.0, max_sleep_interval_s=0.0,
                             sleep_requests_s=0.0), videos_dir, root, extractors)
        self.fetcher: Fetcher | None = None
        self.known = list(known)
        self.todo = [(v, u) for v, u, _ in _fetches(todo)]
        self.urls = dict(self.todo)
        self.tried: set[str] = set()
        self.target: tuple[str, str, bool] | None = None   # (video_id, url, downloaded before)

    def heard(self, ev: dict) -> None:
        """A worker event: which videos were tried, and which downloaded."""
        if ev.get("epoch") is None or "video_id" not in ev:
            return
        self.tried.add(ev["video_id"])
        if ev["status"] == AVAILABLE and not self.known:
            url = self.urls.get(ev["video_id"])
            if url is not None and _remote(url):
                self.known.append((ev["video_id"], url))

    def pick(self) -> tuple[str, str, bool] | None:
        if self.known:
            return (*self.known[0], True)
        return next(((v, u, False) for v, u in self.todo if v not in self.tried), None)

    def probe(self, target: tuple[str, str, bool]):
        """-> None (the site answered) or the failure's Outcome."""
        if self.fetcher is None:
            p, videos_dir, root, extractors = self.args
            self.fetcher = Fetcher(p, videos_dir, root,
                                   tuple(_load_extractor(e) for e in extractors))
        return self.fetcher.probe(target[0], target[1])


def _run(dataset, todo, p, cluster, videos_dir, ledger_dir, root, run_id, extractors,
         on_event, known=()):
    """Submits the shards and follows them: progress, circuit breaker, stop. -> (stop reason,
    counts by reason, counts by status, counts of retryable failures by reason, breaker trips);
    counts come from the shard results."""
    from distributed import Variable
    name = f"avl-download-{run_id}"
    with connect(cluster) as client:
        slots = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()) or 1
        pace = 3600.0 * slots / p.max_videos_per_hour if p.max_videos_per_hour else 0.0
        var = Variable(name, client=client)

        def set_state(state: dict) -> None:
            var.set(state)                      # for workers that join later
            client.run(_push_state, name, state)

        set_state({})
        # 4 shards per thread keep every thread busy to the end; >= 8 videos amortise a shard
        size = max(1, min(p.shard_size, max(8, math.ceil(len(todo) / (4 * slots)))))
        # absolute paths: a worker started elsewhere (another machine, another folder) writes
        # into this project's folders on the shared file system, not under its own cwd
        jobs = [ShardJob(run_id, i, tuple(todo[s:s + size]), p, str(Path(videos_dir).absolute()),
                         str(Path(ledger_dir).absolute()), str(Path(root).absolute()), name, pace,
                         tuple(extractors))
                for i, s in enumerate(range(0, len(todo), size))]
        log.info("%s: %d shards of up to %d videos on %d worker threads%s", dataset, len(jobs),
                 size, slots, f", paced to {p.max_videos_per_hour:g} videos/h"
                 if pace else "")
        events: collections.deque = collections.deque()
        client.subscribe_topic(name, lambda ev: events.append(ev[1]))
        futures = client.map(run_shard, jobs, pure=False)
        breaker = Breaker(p.breaker_threshold, p.breaker_window_s, p.breaker_cooldown_s)
        prober = _Prober(p, videos_dir, root, tuple(extractors), todo, known)
        shown: collections.Counter = collections.Counter()
        stop_reason = None
        bar = tqdm(total=len(todo), desc=f"download@{dataset}", unit="video", smoothing=0.05,
                   mininterval=0.5 if os.isatty(2) else 10.0)

        def stop(reason: str) -> None:
            nonlocal stop_reason
            stop_reason, breaker.phase = reason, "stopped"
            set_state({"stop": reason, "epoch": breaker.epoch})

        def trip(why: str) -> None:
            # workers wait for the driver's answer, however long the probe takes
            set_state({"pause_until": time.time() + 3600.0, "epoch": breaker.epoch})
            prober.target = prober.pick()
            log.warning("circuit breaker tripped (%d): %s (most recently %s); all workers "
                        "paused while %s is probed", breaker.trips, why, breaker.last_reason,
                        prober.target[0] if prober.target else "nothing (no video left)")

        def handle(ev: dict) -> None:
            if on_event:
                on_event(ev)
            if "stop" in ev:
                if stop_reason is None:
                    log.warning("stopping all workers: %s", ev["stop"])
                    stop(ev["stop"])
                return
            if "hold" in ev:          # a worker process saw `threshold` failures in a row
                if breaker.hold(ev["hold"], ev.get("reason")):
                    trip(f"a worker process saw {p.breaker_threshold} network/throttling "
                         "failures in a row")
                return
            prober.heard(ev)
            if ev.get("epoch") is not None and breaker.attempt(
                    time.time(), ev["epoch"], ev["reason"], ev["status"], ev["kind"]):
                trip(f"{p.breaker_threshold} network/throttling failures in a row")
            if ev.get("final", True):
                shown[ev["reason"] or ev["status"]] += 1
                bar.update(1)
                bar.set_postfix_str(_postfix(shown), refresh=False)

        def tick() -> None:
            if stop_reason is not None or not breaker.probe_due(time.time()):
                return
            target = prober.target
            out = prober.probe(target) if target else None
            failed = out is not None and counts_as_failure(out.reason)
            verdict = breaker.probed(time.time(), failed)
            if verdict == "resume":
                log.warning("circuit breaker: %s; workers resume", "no video left to probe"
                            if target is None else f"the probe of {target[0]} got through "
                            "(the failures were those videos' own)")
                set_state({"epoch": breaker.epoch})
            elif verdict == "cool":
                log.warning("CIRCUIT BREAKER: the probe of %s fails too (%s: %s); pausing ALL "
                            "workers for %g s (until %s UTC), then probing it again",
                            target[0], out.reason, short(out.message), p.breaker_cooldown_s,
                            datetime.fromtimestamp(breaker.until, timezone.utc)
                            .strftime("%H:%M:%S"))
                set_state({"pause_until": breaker.until + 3600.0, "epoch": breaker.epoch})
            else:
                stop(stop_line(out.reason, p.breaker_threshold, target[0], target[2],
                               p.breaker_cooldown_s, out.message))

        try:
            results = follow(futures, events, handle, tick)  # a bug in a worker surfaces here
        except BaseException:
            with contextlib.suppress(Exception):
                set_state({"stop": "driver interrupted"})
            client.cancel(futures)
            raise
        finally:
            bar.close()
            with contextlib.suppress(Exception):  # an external scheduler keeps named state
                client.unsubscribe_topic(name)
                var.delete()
                client.run(_drop_state, name)
    total: collections.Counter = collections.Counter()
    for r in results:
        total.update(r)
    reasons = {k[7:]: n for k, n in total.items() if k.startswith("reason:")}
    statuses = {k[7:]: n for k, n in total.items() if k.startswith("status:")}
    retry = {k[6:]: n for k, n in total.items() if k.startswith("retry:")}
    log.info("%s: %s", dataset, _postfix(collections.Counter(reasons)) or "nothing to do")
    return stop_reason, reasons, statuses, retry, breaker.trips
