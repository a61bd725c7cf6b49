"""Benchmark: pipeline.download.runner.download() against a local HTTP server with injected latency.

Serves N copies of one tiny mp4 from 127.0.0.1 (a separate process, so its GIL does not compete
with the code measured), each request delayed by a fixed latency, and reports videos/s at each
concurrency, scaling efficiency against linear, and the per-video overhead of our machinery
beyond the transfer itself (a bare urllib GET of the same bytes). Writes
benchmarks/results/download.json (raw numbers) and download.md (table and reading)."""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

RESULTS = Path(__file__).resolve().parent / "results"
_MEDIA_PATH = re.compile(r"^/v/([A-Za-z0-9_-]{11})\.mp4$")
# the benchmark talks to 127.0.0.1 only; an inherited http_proxy must not route it elsewhere
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- server process


class _Server(ThreadingHTTPServer):
    """Serves `body` under /v/<id>.mp4 after `latency_s`; /__stats, /__reset, /__latency?s=."""

    daemon_threads = True
    request_queue_size = 1024  # 32 workers connect at once; the default 5 drops SYNs (1 s+ RTO)

    def __init__(self, body: bytes, latency_s: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body, self.latency_s = body, latency_s
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.stats: dict[str, Any] = {"requests": 0, "methods": {}, "ranged": 0,
                                          "bytes": 0, "busy_s": 0.0, "inflight": 0,
                                          "max_inflight": 0}
            self.per_path: dict[str, int] = {}

    def snapshot(self) -> dict:
        with self.lock:
            counts = list(self.per_path.values())
            return {**self.stats, "latency_s": self.latency_s, "paths": len(counts),
                    "cpu_s": time.process_time(),
                    "per_path_min": min(counts, default=0), "per_path_max": max(counts, default=0)}

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients that hang up early
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/__"):
            self._control()
        else:
            self._media(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._media(head=True)

    def _send(self, status: int, body: bytes, ctype: str, head: bool = False,
              extra: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), **(extra or {})
                     }.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _control(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/__reset":
            self.server.reset()
        elif url.path == "/__latency":
            self.server.latency_s = float(urllib.parse.parse_qs(url.query)["s"][0])
        self._send(200, json.dumps(self.server.snapshot()).encode(), "application/json")

    def _media(self, head: bool) -> None:
        s, t0, sent = self.server, time.monotonic(), 0
        with s.lock:
            s.stats["requests"] += 1
            s.stats["methods"][self.command] = s.stats["methods"].get(self.command, 0) + 1
            s.stats["inflight"] += 1
            s.stats["max_inflight"] = max(s.stats["max_inflight"], s.stats["inflight"])
            s.per_path[self.path] = s.per_path.get(self.path, 0) + 1
        try:
            time.sleep(s.latency_s)
            if not _MEDIA_PATH.match(self.path):
                self._send(404, b"not found", "text/plain", head)
                return
            body, status, extra = s.body, 200, {"Accept-Ranges": "bytes"}
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if m:
                start = int(m[1])
                end = min(int(m[2]) if m[2] else len(body) - 1, len(body) - 1)
                body, status = body[start:end + 1], 206
                extra["Content-Range"] = f"bytes {start}-{end}/{len(s.body)}"
                with s.lock:
                    s.stats["ranged"] += 1
            self._send(status, body, "video/mp4", head, extra)
            sent = 0 if head else len(body)
        finally:
            with s.lock:
                s.stats["inflight"] -= 1
                s.stats["busy_s"] += time.monotonic() - t0
                s.stats["bytes"] += sent


def _serve(conn, body: bytes, latency_s: float) -> None:
    server = _Server(body, latency_s)
    conn.send(server.server_address[1])
    conn.close()
    server.serve_forever()


@contextlib.contextmanager
def media_server(body: bytes, latency_s: float) -> Iterator[str]:
    """Runs the server in its own process; yields its base URL (http://127.0.0.1:PORT)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, body, latency_s), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's media server did not start")
        yield f"http://127.0.0.1:{parent.recv()}"
    finally:
        proc.terminate()
        proc.join(10)


def server_call(base: str, what: str, **query: Any) -> dict:
    """/__stats, /__reset or /__latency on the server -> its stats snapshot."""
    qs = f"?{urllib.parse.urlencode(query)}" if query else ""
    with _OPENER.open(f"{base}/__{what}{qs}", timeout=30) as r:
        return json.loads(r.read())


# --------------------------------------------------------------------------- workload


def make_media(path: Path) -> bytes:
    """One tiny real mp4 (1 s, 64x64 H.264 + AAC), so the pipeline's probe reads a real file."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=1",
           "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "32k",
           "-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path.read_bytes()


def video_ids(n: int, prefix: str = "bench") -> list[str]:
    width = 11 - len(prefix)
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def videos_table(base: str, ids: list[str]):
    import pyarrow as pa
    return pa.table({"video_id": ids, "url": [f"{base}/v/{v}.mp4" for v in ids],
                     "split": ["train"] * len(ids), "duration_s": [1.0] * len(ids)})


def download_params(n: int, c: int):
    from pipeline.config import DownloadParams
    # at least 4 shards per thread keeps every thread busy to the end; no retries or breaker
    return DownloadParams(shard_size=max(1, n // (4 * c)), attempts_per_run=1, verify="size",
                          min_free_gb=0.0, file_root=None, breaker_threshold=10 ** 9)


def cpu_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            vals = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def tree_roles(client) -> dict[str, list[int]]:
    """Pids of the processes a run's CPU is spent in: this driver (client and scheduler),
    the dask workers (their subprocesses are counted when reaped) and their nannies."""
    import psutil
    workers = list(client.run(os.getpid).values())
    nannies = [psutil.Process(w).ppid() for w in workers]
    return {"driver": [os.getpid()], "workers": workers,
            "nannies": [n for n in nannies if n != os.getpid()]}


def tree_cpu(roles: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far per role: own time, and reaped subprocesses' time separately."""
    import psutil
    out: dict[str, float] = {}
    for role, pids in roles.items():
        for pid in pids:
            t = psutil.Process(pid).cpu_times()
            out[role] = out.get(role, 0.0) + t.user + t.system
            out[f"{role}_children"] = out.get(f"{role}_children", 0.0) + t.children_user \
                + t.children_system
    return out


def busy_fraction(a, b) -> float | None:
    """Share of all cores busy between two cpu_busy() samples (1.0 = every core saturated)."""
    if a is None or b is None or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def _summ(xs: list[float]) -> dict:
    if not xs:
        return {}
    s = sorted(xs)
    return {"mean": statistics.fmean(s), "p50": s[len(s) // 2], "p90": s[int(len(s) * 0.9)],
            "max": s[-1]}


# --------------------------------------------------------------------------- measurements


def bare(base: str, ids: list[str], out: Path, concurrency: int) -> dict:
    """The transfer alone: one urllib GET per video, written to disk -> wall and rate."""
    out.mkdir(parents=True, exist_ok=True)

    def one(vid: str) -> None:
        with _OPENER.open(f"{base}/v/{vid}.mp4", timeout=60) as r, open(out / f"{vid}.mp4",
                                                                         "wb") as f:
            shutil.copyfileobj(r, f)

    server_call(base, "reset")
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, ids))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "videos": len(ids), "wall_s": wall,
            "videos_per_s": len(ids) / wall, "per_video_ms": 1e3 * wall / len(ids),
            "server": server_call(base, "stats")}


def _timed(fn: Callable[[], Any], k: int, warm: bool = True) -> dict:
    """Mean wall and CPU (this process plus the subprocesses it waited for) per call, ms,
    after one warm-up call (lazy imports, regex compilation) timed on its own."""
    t0 = time.perf_counter()
    if warm:
        fn()
    first = time.perf_counter() - t0
    ru0, cpu0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), \
        time.perf_counter()
    for _ in range(k):
        fn()
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime
                                                                         - ru0.ru_stime)
    return {"wall_ms": 1e3 * wall / k, "cpu_ms": 1e3 * cpu / k, "calls": k,
            "first_call_ms": 1e3 * first if warm else None}


def components(base: str, tmp: Path, media: Path, k: int, latency_s: float) -> dict:
    """Per-video cost of each piece of fetch.py/download.py at zero server latency, in this
    process: the CPU our machinery spends beyond waiting for the network."""
    import yt_dlp
    from pipeline.download.fetch import Fetcher, ydl_options
    from pipeline.download.ledger import Journal
    from pipeline.media import probe
    from pipeline.data.sources import sha256_file

    p = download_params(k, 1)
    server_call(base, "latency", s=0)
    try:
        out: dict[str, Any] = {}
        it = iter(video_ids(k + 1, "bare0"))
        d = tmp / "c-bare"
        d.mkdir(parents=True)

        def get() -> None:
            vid = next(it)
            with _OPENER.open(f"{base}/v/{vid}.mp4", timeout=60) as r, \
                    open(d / f"{vid}.mp4", "wb") as f:
                shutil.copyfileobj(r, f)
        out["bare_get"] = _timed(get, k)
        out["ytdl_construct"] = _timed(lambda: Fetcher(p, tmp / "c-x", tmp).ydl(), 5)
        ydl = yt_dlp.YoutubeDL(ydl_options(p, tmp / "c-ytdl"), auto_init=False)
        ydl.add_default_info_extractors()  # as Fetcher.ydl() builds it
        it2 = iter(video_ids(k + 1, "ytdl0"))

        def extract() -> None:
            vid = next(it2)
            ydl.extract_info(f"{base}/v/{vid}.mp4", download=True,
                             extra_info={"avl_id": vid, "avl_prefix": vid[:2]})
        out["ytdl_extract_info"] = _timed(extract, k)
        out["probe"] = _timed(lambda: probe(media), k)
        out["sha256"] = _timed(lambda: sha256_file(media), k)
        fetcher = Fetcher(p, tmp / "c-fetch", tmp)
        it3 = iter(video_ids(k + 1, "fetc0"))

        def attempt() -> None:
            vid = next(it3)
            o = fetcher.attempt(vid, f"{base}/v/{vid}.mp4")
            if o["status"] != "available":
                raise RuntimeError(f"Fetcher.attempt failed on the benchmark server: {o}")
        out["fetcher_attempt"] = _timed(attempt, k)
        with Journal(tmp / "c-ledger", "bench", 0) as j:
            row = {"video_id": "x" * 11, "message": None, "elapsed_s": 0.1, "pad": "y" * 400}
            out["journal_append_fsync"] = _timed(lambda: j.append(row), k)
        return out
    finally:
        server_call(base, "latency", s=latency_s)


def _control_rpc(name: str, k: int) -> dict:
    """Runs on a dask worker thread: the cost of download.Control's scheduler round trips."""
    from pipeline.download.runner import Control
    t0 = time.perf_counter()
    ctl = Control(name)
    t1 = time.perf_counter()
    for _ in range(k):
        ctl.emit(video_id="x", status="available", reason=None, kind=None, final=True, bytes=1)
    t2 = time.perf_counter()
    for _ in range(k):
        ctl._read = 0.0  # force the Variable.get a real run makes every 0.5 s per shard task
        ctl.state()
    t3 = time.perf_counter()
    return {"control_init_ms": 1e3 * (t1 - t0), "emit_ms": 1e3 * (t2 - t1) / k,
            "state_get_ms": 1e3 * (t3 - t2) / k}


def connect_only(cluster, threads: int) -> dict:
    """Cluster start-up and teardown with no work, plus Control round trips from all threads
    at once (measured between the two, counted in neither)."""
    from distributed import Queue, Variable

    from pipeline.cluster import connect
    t0 = time.perf_counter()
    with connect(cluster) as client:
        t1 = time.perf_counter()
        name = f"bench-{uuid.uuid4().hex[:8]}"
        Variable(name, client=client).set({})
        Queue(name, client=client)
        rpc = client.gather(client.map(_control_rpc, [name] * threads, [50] * threads,
                                       pure=False))
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    return {"startup_s": t1 - t0, "teardown_s": t3 - t2,
            "control_rpc_ms": {k: statistics.fmean(r[k] for r in rpc) for k in rpc[0]}}


_FAKE_META = {"duration_s": 1.0, "width": 64, "height": 64, "vcodec": "h264", "acodec": "aac",
              "has_audio": True, "has_video": True}


def _stub_probe() -> None:
    """Runs in each worker (--stub-probe what-if): pipeline.download.fetch.probe replaced by a constant."""
    import pipeline.download.fetch
    pipeline.download.fetch.probe = lambda path, timeout_s=60.0: dict(_FAKE_META)


def run_download(base: str, ids: list[str], c: int, workers: int, tmp: Path,
                 stub_probe: bool = False) -> dict:
    """The real download() on a fresh ledger with `workers` x c/workers threads."""
    import pipeline.download.runner as dl
    from pipeline.config import ClusterParams
    from pipeline.download.ledger import read_attempts

    cluster = ClusterParams(workers=workers, threads_per_worker=c // workers, processes=True)
    p = download_params(len(ids), c)
    work = tmp / f"run-c{c}-w{workers}"
    marks: dict[str, Any] = {}
    real_connect = dl.connect

    @contextlib.contextmanager
    def timed_connect(cp, *a, **kw):
        marks["connect"] = time.perf_counter()
        with real_connect(cp, *a, **kw) as client:
            if stub_probe:
                client.run(_stub_probe)
            marks["roles"] = tree_roles(client)
            marks["tree_ready"] = tree_cpu(marks["roles"])
            marks["ready"], marks["cpu_ready"] = time.perf_counter(), cpu_busy()
            yield client
            marks["work_done"], marks["cpu_done"] = time.perf_counter(), cpu_busy()
            marks["tree_done"] = tree_cpu(marks["roles"])
        marks["closed"] = time.perf_counter()

    events: list[float] = []
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    server_cpu0 = server_call(base, "reset")["cpu_s"]
    dl.connect = timed_connect  # patched in our module object only; restored below
    t0 = time.perf_counter()
    try:
        summary = dl.download("bench", videos_table(base, ids), p, cluster, work / "videos",
                              work / "ledger", work / "availability.parquet", work,
                              on_event=lambda ev: events.append(time.perf_counter()))
    finally:
        dl.connect = real_connect
    t1 = time.perf_counter()
    stats = server_call(base, "stats")
    n = len(ids)
    attempts = read_attempts(work / "ledger")
    elapsed = attempts.column("elapsed_s").to_pylist()
    phase = marks["work_done"] - marks["ready"]
    ours_cpu = sum(marks["tree_done"][k] - marks["tree_ready"][k] for k in marks["tree_done"])
    busy = busy_fraction(marks["cpu_ready"], marks["cpu_done"])
    cores = os.cpu_count() or 1
    out = {"concurrency": c, "workers": workers, "threads_per_worker": c // workers,
           "shards": len(set(attempts.column("shard").to_pylist())), "videos": n,
           "status": summary["status"], "reasons": summary["reasons"],
           # other load on the machine skews everything: 1-min load average before the run
           "loadavg_before": load0,
           "wall_total_s": t1 - t0, "plan_s": marks["connect"] - t0,
           "startup_s": marks["ready"] - marks["connect"], "phase_s": phase,
           "teardown_s": marks["closed"] - marks["work_done"], "tail_s": t1 - marks["closed"],
           "first_event_s": events[0] - marks["ready"] if events else None,
           # rate over the middle 80 % of videos: no warm-up (imports, YoutubeDL) or tail
           "steady_videos_per_s": _steady(events),
           "videos_per_s": n / phase, "videos_per_s_with_startup": n / (t1 - t0),
           "cpu_busy_fraction": busy,
           # the machine's busy share not explained by our processes or the server: other
           # load (tests, builds) that skews this run's numbers when it is large
           "foreign_cpu_fraction": None if busy is None else busy - (
               ours_cpu + stats["cpu_s"] - server_cpu0) / (cores * (phase + 1e-9)),
           # our own processes' CPU during the phase, ms per video, by role; "workers" is the
           # workers' Python threads (GIL-bound per process), "workers_children" their subprocesses
           "cpu_ms_per_video": {k: 1e3 * (marks["tree_done"][k] - marks["tree_ready"][k]) / n
                                for k in marks["tree_done"]},
           # cores' worth of each worker process's own CPU: near 1.0 means its GIL is the limit
           "worker_process_cores": (marks["tree_done"]["workers"]
                                    - marks["tree_ready"]["workers"]) / phase / workers,
           "attempt_s": _summ(elapsed),
           # share of thread-time spent inside Fetcher.attempt; the rest is our loop around it
           "in_attempt_fraction": sum(elapsed) / (c * phase),
           "server": {**stats, "requests_per_video": stats["requests"] / n,
                      "mean_inflight": stats["busy_s"] / phase}}
    shutil.rmtree(work, ignore_errors=True)
    return out


def _steady(events: list[float]) -> float | None:
    """Videos/s between the 10th and 90th percentile completion (driver receive times, which
    the driver's 0.2 s poll quantises)."""
    lo, hi = len(events) // 10, len(events) - 1 - len(events) // 10
    return (hi - lo) / (events[hi] - events[lo]) if hi > lo and events[hi] > events[lo] else None


# --------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def limit(r: dict) -> str:
    """What bounds a run: a worker process's GIL (its threads use ~1 core), all CPUs, the
    latency (near-linear), or nothing saturated (threads idle between videos)."""
    if r["concurrency"] == 1 or (r["steady_efficiency"] or 0) >= 0.8:
        return "latency"
    if r["worker_process_cores"] >= 0.85:
        return "GIL"
    if (r["cpu_busy_fraction"] or 0) >= 0.85:
        return "CPU"
    return "unsaturated"


def analyse(res: dict) -> dict:
    """Derived numbers: efficiency per run, per-video overhead at C=1 and where it goes."""
    lat, n, cores = res["settings"]["latency_s"], res["settings"]["videos"], \
        res["machine"]["cpu_count"]
    runs = res["runs"]
    one = next((r for r in runs if r["concurrency"] == 1), None)
    for r in runs:
        r["cpu_ms_per_video_total"] = sum(r["cpu_ms_per_video"].values())
        r["latency_bound_videos_per_s"] = r["concurrency"] / (
            r["server"]["requests_per_video"] * lat)
        r["efficiency"] = (r["videos_per_s"] / (r["concurrency"] * one["videos_per_s"])
                           if one else None)
        r["steady_efficiency"] = (r["steady_videos_per_s"] / (r["concurrency"]
                                                              * one["steady_videos_per_s"])
                                  if one and one["steady_videos_per_s"]
                                  and r["steady_videos_per_s"] else None)
        r["limit"] = limit(r)
    res["analysis"] = {}
    if one is None:
        return res
    bare1 = next(b for b in res["bare"] if b["concurrency"] == 1)
    rpv = one["server"]["requests_per_video"]
    ours, attempt = 1e3 * one["phase_s"] / n, 1e3 * one["attempt_s"]["mean"]
    # ceilings from the leanest run: at C=1 time-proportional costs (scheduler ticks, the
    # workers' event loops) are spread over few videos and inflate the per-video CPU
    lean = min(runs, key=lambda r: r["cpu_ms_per_video_total"])
    worker_ms = min(r["cpu_ms_per_video"]["workers"] for r in runs)
    res["analysis"] = {
        "ours_per_video_ms": ours, "bare_per_video_ms": bare1["per_video_ms"],
        "overhead_vs_bare_ms": ours - bare1["per_video_ms"],
        "requests_per_video": rpv, "latency_budget_ms": 1e3 * rpv * lat,
        "overhead_beyond_latency_ms": ours - 1e3 * rpv * lat,
        # inside Fetcher.attempt beyond the server's latency: yt-dlp, probe, sha256, disk
        "attempt_beyond_latency_ms": attempt - 1e3 * rpv * lat,
        # between attempts: Control round trips, journal fsync, shard tasks, warm-up, tail
        "outside_attempt_ms": ours - attempt,
        "cpu_per_video_ms": one["cpu_ms_per_video_total"],
        "lean_cpu_per_video_ms": lean["cpu_ms_per_video_total"],
        "worker_python_cpu_per_video_ms": worker_ms,
        # where linear scaling must stop: every core busy with our CPU work ...
        "cpu_bound_videos_per_s": cores * 1e3 / lean["cpu_ms_per_video_total"],
        # ... or one worker process's Python threads holding its GIL all the time
        "gil_bound_videos_per_s_per_process": 1e3 / worker_ms if worker_ms else None,
    }
    return res


def markdown(res: dict) -> str:
    """The results table and a short reading, all from `res` (nothing hard-coded)."""
    s, a, m, c = res["settings"], res["analysis"], res["machine"], res["components"]
    lines = [f"# download() benchmark: {s['videos']} videos, {1e3 * s['latency_s']:.0f} ms "
             f"latency per request"
             + (" (WHAT-IF: probe stubbed out in the workers)" if s.get("stub_probe") else ""),
             "",
             f"{m['date']}, {m['cpu_count']} CPUs, Python {m['python']}, yt-dlp {m['yt_dlp']}, "
             f"distributed {m['distributed']}; one {res['media_bytes']}-byte mp4 served under "
             f"every id. Generated by `python -m benchmarks.download`.", "",
             "videos/s: over the download phase (cluster up until every shard task is done); "
             "incl. start-up: over the whole download() call; steady: the middle 80 % of "
             "videos. Efficiency = rate(C) / (C x rate(1)), phase (steady). Latency-bound = "
             "C / (requests per video x latency). CPU: all cores busy (machine) / our "
             "processes' CPU per video. GIL: one worker process's own CPU in cores. Limit: "
             "GIL when that is >= 0.85, CPU when the machine is >= 85 % busy, latency when "
             "steady efficiency is >= 80 %, else unsaturated.", "",
             "| C | layout | videos/s | incl. start-up | steady | efficiency | latency-bound | "
             "phase s | first video s | mean attempt ms | server in-flight mean/max | "
             "CPU busy / ours ms per video | GIL | limit |", "|" + "---|" * 14]
    for r in res["runs"]:
        st = r["steady_videos_per_s"]
        lines.append(
            f"| {r['concurrency']} | {r['workers']}x{r['threads_per_worker']} | "
            f"{r['videos_per_s']:.2f} | {r['videos_per_s_with_startup']:.2f} | "
            f"{'n/a' if st is None else f'{st:.2f}'} | {_pct(r['efficiency'])} "
            f"({_pct(r['steady_efficiency'])}) | {r['latency_bound_videos_per_s']:.0f} | "
            f"{r['phase_s']:.1f} | {r['first_event_s'] or 0:.2f} | "
            f"{1e3 * r['attempt_s']['mean']:.0f} | "
            f"{r['server']['mean_inflight']:.1f}/{r['server']['max_inflight']} | "
            f"{_pct(r['cpu_busy_fraction'])} / {r['cpu_ms_per_video_total']:.0f} | "
            f"{r['worker_process_cores']:.2f} | {r['limit']} |")
    lines += ["", "| bare urllib GET, C | videos/s | ms per video |", "|---|---|---|"]
    lines += [f"| {b['concurrency']} | {b['videos_per_s']:.2f} | {b['per_video_ms']:.1f} |"
              for b in res["bare"]]
    lines += ["", "| piece, zero latency, one process | wall ms | CPU ms (incl. children) | "
              "first call ms |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['wall_ms']:.1f} | {v['cpu_ms']:.1f} | {v['first_call_ms']:.0f} |"
              for k, v in c.items()]
    lines += ["", "| cluster layout | connect() start-up s | teardown s | Control emit ms | "
              "Control state get ms (all threads at once) |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['startup_s']:.2f} | {v['teardown_s']:.2f} | "
              f"{v['control_rpc_ms']['emit_ms']:.1f} | {v['control_rpc_ms']['state_get_ms']:.1f} |"
              for k, v in res["cluster"].items()]
    if not a:
        return "\n".join(lines) + "\n"
    one = next(r for r in res["runs"] if r["concurrency"] == 1)
    roles = ", ".join(f"{k} {v:.0f}" for k, v in one["cpu_ms_per_video"].items() if v >= 0.5)
    methods = ", ".join(f"{k} x{v / s['videos']:.2f}" for k, v in
                        one["server"]["methods"].items())
    lines += ["", "## Reading", "",
              f"- Per video at C=1, download() takes {a['ours_per_video_ms']:.0f} ms against "
              f"{a['bare_per_video_ms']:.0f} ms for a bare GET of the same bytes: our machinery "
              f"adds {a['overhead_vs_bare_ms']:.0f} ms. yt-dlp makes "
              f"{a['requests_per_video']:.2f} requests per video ({methods}), a latency "
              f"budget of {a['latency_budget_ms']:.0f} ms; beyond it "
              f"{a['overhead_beyond_latency_ms']:.0f} ms remain: "
              f"{a['attempt_beyond_latency_ms']:.0f} ms inside Fetcher.attempt and "
              f"{a['outside_attempt_ms']:.0f} ms between attempts (Control, journal, tasks, "
              "warm-up).",
              f"- Inside the attempt the CPU goes to the media probe ({c['probe']['cpu_ms']:.1f} "
              f"ms), yt-dlp ({c['ytdl_extract_info']['cpu_ms']:.0f} ms) and "
              f"sha256 ({c['sha256']['cpu_ms']:.1f} ms); each thread's first video also builds "
              f"a YoutubeDL ({c['ytdl_construct']['cpu_ms']:.0f} ms CPU). In the C=1 run our "
              f"processes used {a['cpu_per_video_ms']:.0f} ms CPU per video ({roles}).",
              ]
    multi = [r for r in res["runs"] if r["concurrency"] > 1]
    if multi:
        best = max(multi, key=lambda r: r["videos_per_s"])
        worst = max(multi, key=lambda r: r["concurrency"] * 1e6 - r["videos_per_s"])
        eff = ", ".join(f"C={r['concurrency']} ({r['workers']}x{r['threads_per_worker']}) "
                        f"{_pct(r['efficiency'])}" for r in multi)
        gil = a["gil_bound_videos_per_s_per_process"]
        lines.append(
            f"- Scaling vs linear: {eff}. The best rate, {best['videos_per_s']:.1f} videos/s "
            f"(C={best['concurrency']}, {best['workers']}x{best['threads_per_worker']}), is "
            f"against a CPU ceiling of ~{a['cpu_bound_videos_per_s']:.0f} videos/s "
            f"({m['cpu_count']} cores / {a['lean_cpu_per_video_ms']:.0f} ms CPU per video)"
            + (f" and a GIL ceiling of ~{gil:.0f} videos/s per worker process (its Python "
               f"threads spend {a['worker_python_cpu_per_video_ms']:.0f} ms CPU per video)"
               if gil else "")
            + f": latency dominates only while C x {a['lean_cpu_per_video_ms']:.0f} ms CPU is "
            f"well below {m['cpu_count']} cores x {a['ours_per_video_ms']:.0f} ms, i.e. C << "
            f"{m['cpu_count'] * a['ours_per_video_ms'] / a['lean_cpu_per_video_ms']:.0f} "
            "here.")
        lines.append(
            f"- At C={worst['concurrency']} ({worst['workers']}x{worst['threads_per_worker']})"
            f" the mean attempt took {1e3 * worst['attempt_s']['mean']:.0f} ms (C=1: "
            f"{1e3 * one['attempt_s']['mean']:.0f} ms), the server averaged "
            f"{worst['server']['mean_inflight']:.1f} requests in flight, the machine's CPUs "
            f"were {_pct(worst['cpu_busy_fraction'])} busy (other load: "
            f"{_pct(worst['foreign_cpu_fraction'])}), threads spent "
            f"{_pct(worst['in_attempt_fraction'])} of their time inside attempts, our CPU per "
            "video was "
            f"{worst['cpu_ms_per_video_total']:.0f} ms (C=1: {a['cpu_per_video_ms']:.0f} ms) "
            f"and each worker process's own threads used {worst['worker_process_cores']:.2f} "
            f"cores, so it is {worst['limit']}-bound. Its phase rate is "
            f"{_pct(1 - worst['videos_per_s'] / worst['steady_videos_per_s'])} below its "
            f"steady rate: the first video arrived {worst['first_event_s'] or 0:.1f} s after "
            f"the cluster was up (C=1: {one['first_event_s'] or 0:.1f} s; each thread builds "
            "its own YoutubeDL), and the last shards run on few threads.")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import distributed
    from pipeline.download.fetch import ytdlp_version
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "yt_dlp": ytdlp_version(),
            "distributed": distributed.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.download", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=300, help="videos served and fetched per run")
    ap.add_argument("--latency-ms", type=float, default=100.0,
                    help="delay the server adds before every response, ms")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                    help="total worker threads per run (1 is needed for overhead/efficiency)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                    help="dask worker-process layouts tried for each concurrency (threads are "
                         "split evenly; layouts that do not divide C are skipped)")
    ap.add_argument("--components", type=int, default=30,
                    help="videos per zero-latency component timing")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 48 videos, concurrency 1 and 4, one process")
    ap.add_argument("--stub-probe", action="store_true",
                    help="what-if: replace pipeline.download.fetch.probe in the workers by a constant, "
                         "to see the scaling without probing cost (not the real pipeline; use "
                         "with --out elsewhere)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args(argv)
    if args.quick:
        args.videos, args.concurrency, args.processes = 48, [1, 4], [1]
        args.components = 10
    if args.videos < 1 or min(args.concurrency) < 1 or min(args.processes) < 1:
        ap.error("--videos, --concurrency and --processes must be >= 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lat = args.latency_ms / 1e3
    for var in ("no_proxy", "NO_PROXY"):  # yt-dlp in the workers honours proxy variables too
        os.environ[var] = ",".join(filter(None, [os.environ.get(var), "127.0.0.1"]))

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="avl-bench-") as td:
        tmp = Path(td)
        body = make_media(tmp / "media.mp4")
        res: dict[str, Any] = {"machine": machine(), "media_bytes": len(body),
                               "settings": {"videos": args.videos, "latency_s": lat,
                                            "concurrency": args.concurrency,
                                            "processes": args.processes, "quick": args.quick,
                                            "stub_probe": args.stub_probe}}
        ids = video_ids(args.videos)
        with media_server(body, lat) as base:
            res["components"] = components(base, tmp / "components", tmp / "media.mp4",
                                           args.components, lat)
            say("components (ms, wall/cpu): " + ", ".join(
                f"{k} {v['wall_ms']:.1f}/{v['cpu_ms']:.1f}" for k, v in
                res["components"].items()))
            res["bare"] = []
            for c in sorted(set(args.concurrency)):
                b = bare(base, ids, tmp / f"bare-{c}", c)
                res["bare"].append(b)
                say(f"bare GET C={c}: {b['wall_s']:.1f} s, {b['videos_per_s']:.1f} videos/s")
            res["cluster"], res["runs"] = {}, []
            from pipeline.config import ClusterParams
            for c in args.concurrency:
                for w in args.processes:
                    if c % w:
                        continue
                    layout = f"{w}x{c // w}"
                    if layout not in res["cluster"]:
                        res["cluster"][layout] = connect_only(
                            ClusterParams(workers=w, threads_per_worker=c // w), c)
                    r = run_download(base, ids, c, w, tmp, args.stub_probe)
                    res["runs"].append(r)
                    bad = {k: v for k, v in r["status"].items() if k != "available"}
                    say(f"download() C={c} ({layout}): phase {r['phase_s']:.1f} s, "
                        f"{r['videos_per_s']:.2f} videos/s ({r['videos_per_s_with_startup']:.2f} "
                        f"with {r['startup_s']:.1f} s start-up), attempt mean "
                        f"{1e3 * r['attempt_s']['mean']:.0f} ms, "
                        f"{r['server']['requests_per_video']:.2f} req/video"
                        + (f"; NOT AVAILABLE: {bad} {r['reasons']}" if bad else ""))
    res = analyse(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "download.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (args.out / "download.md").write_text(markdown(res))
    say(f"wrote {args.out / 'download.json'} and {args.out / 'download.md'}")
    return 0 if all(set(r["status"]) == {"available"} for r in res["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
