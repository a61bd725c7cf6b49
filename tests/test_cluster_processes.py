"""A real dask cluster of separate OS processes (issue 16): a `dask scheduler` and two
`dask worker`s, started like on two machines that share the project folder, run the download
and extract stages (`python -m stages.*`, as dvc runs them, with `cluster.scheduler_address`);
then the same with one worker SIGKILLed mid-shard, and two runs at once on one ledger and one
store. The workers run in a folder of their own, not the project's: every path a task gets is
absolute.

The media come from a local HTTP server that sends each file slowly, with Range support, so
a download is still in flight when its worker is killed and the next worker resumes yt-dlp's
`.part` file. Backbones: seeded random weights."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import Params, to_dict
from pipeline.data.manifest import VIDEO_FIELDS
from pipeline.download.ledger import read_attempts, read_availability
from pipeline.features.store import FeatureStore
from pipeline.safety import read_holder
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                       reason="finds the worker writing a file through /proc (Linux)")]

DS = "youcook2"
IDS = tuple(f"clusterv{i:03d}" for i in range(8))
DASK = str(Path(sys.executable).with_name("dask"))
CHUNKS = 10             # each response body goes out in this many pieces...
CHUNK_PAUSE_S = 0.06    # ...this far apart: ~0.6 s per file, so a kill lands mid-download
TIMEOUT_S = 300


def _env() -> dict[str, str]:
    """The project's code on the path, as a worker on another machine has it; dask's
    profiler off, as docs/guide/cluster.md tells users."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
            "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}


# --------------------------------------------------------------------------- media server


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, bytes]:
    """Eight 2 s H.264 + AAC videos, each with its own tone."""
    d = tmp_path_factory.mktemp("media")
    out = {}
    for i, vid in enumerate(IDS):
        path = d / f"{vid}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                        "testsrc2=size=96x64:rate=12:duration=2", "-f", "lavfi", "-i",
                        f"sine=frequency={300 + 70 * i}:sample_rate=16000:duration=2",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", str(path)], check=True, timeout=60)
        out[vid] = path.read_bytes()
    return out


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass     # a killed worker hangs up mid-body: that is the point


@pytest.fixture(scope="module")
def server(media) -> Iterator[str]:
    """/v/<id>.mp4, sent slowly; honours `Range: bytes=N-` (yt-dlp resuming a .part file)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            m = re.fullmatch(r"/v/(\w+)\.mp4", self.path)
            body = media.get(m.group(1)) if m else None
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if rng and int(rng.group(1)) < len(body):
                start = int(rng.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            part = body[start:]
            step = -(-len(part) // CHUNKS) or 1
            for a in range(0, len(part), step):
                self.wfile.write(part[a:a + step])
                self.wfile.flush()
                time.sleep(CHUNK_PAUSE_S)

        def log_message(self, *args):
            pass

    srv = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------- the cluster


@dataclasses.dataclass
class Cluster:
    address: str
    folder: Path
    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list)
    started: int = 0

    def worker_pids(self) -> list[int]:
        """The live `dask worker` processes (without a nanny, the worker itself)."""
        return [p.pid for p in self.procs[1:] if p.poll() is None]

    def start_worker(self) -> subprocess.Popen:
        """A `dask worker` process (no nanny: killing it kills the worker, as a machine
        going down does), in a folder of its own."""
        name = f"w{self.started}"
        self.started += 1
        wd = self.folder / name
        wd.mkdir()
        log = open(self.folder / f"{name}.log", "wb")
        proc = subprocess.Popen([DASK, "worker", self.address, "--nworkers", "1", "--nthreads",
                                 "1", "--no-nanny", "--no-dashboard", "--name", name,
                                 "--local-directory", str(wd)], cwd=wd, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def workers(self) -> dict[str, dict]:
        from distributed import Client
        with Client(self.address, timeout=30) as c:
            return c.scheduler_info(n_workers=-1)["workers"]

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 120
        while len(self.workers()) != n:
            assert time.monotonic() < deadline, f"{n} workers did not join: {self.logs()}"
            time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.folder.glob("*.log")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """`dask scheduler` and two `dask worker`s, each its own OS process."""
    d = tmp_path_factory.mktemp("cluster")
    sfile = d / "scheduler.json"
    log = open(d / "scheduler.log", "wb")
    sched = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--dashboard-address", ":0", "--scheduler-file", str(sfile)], cwd=d,
                             env=_env(), stdout=log, stderr=subprocess.STDOUT)
    c = Cluster("", d, [sched])
    try:
        deadline = time.monotonic() + 60
        while not (sfile.is_file() and sfile.stat().st_size):
            assert sched.poll() is None and time.monotonic() < deadline, c.logs()
            time.sleep(0.2)
        c.address = json.loads(sfile.read_text())["address"]
        c.start_worker()
        c.start_worker()
        c.wait_for(2)
        yield c
    finally:
        for p in reversed(c.procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in c.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


# --------------------------------------------------------------------------- projects


def make_project(root: Path, base_url: str, address: str) -> Path:
    """A project folder: params.yaml pointing at the cluster, a manifest of IDS."""
    root.mkdir(parents=True, exist_ok=True)
    data = to_dict(Params())
    data["datasets"][DS] = DS
    data["download"].update(file_root=None, min_free_gb=0.0, shard_size=2, socket_timeout_s=20.0,
                            attempts_per_run=2, backoff_s=0.0)
    data["extract"].update(weights_2d="random:3", weights_3d="random:4", shard_videos=2,
                           min_free_gb=0.0, batch_2d=8, batch_3d=4)
    data["cluster"].update(scheduler_address=address)
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    data["extract"]["lock_wait_s"] = data["download"]["lock_wait_s"] = 600.0
    (root / "params-wait.yaml").write_text(yaml.safe_dump(data))
    rows = [{"video_id": v, "url": f"{base_url}/v/{v}.mp4", "split": "val", "duration_s": 2.0}
            for v in IDS]
    (root / "manifests" / DS).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(VIDEO_FIELDS)),
                   root / "manifests" / DS / "videos.parquet")
    return root


def stage(root: Path, name: str, params: str = "params.yaml") -> subprocess.Popen:
    """`python -m stages.<name>` started from the project root, as dvc runs it; its output
    goes to a file beside the project (`.log` of the Popen)."""
    log = root.parent / f"{root.name}-{name}-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", f"stages.{name}", "--dataset", DS,
                                 "--params", params], cwd=root, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log.read_text(errors="replace")


def finish(proc: subprocess.Popen, cluster: Cluster, rc: int = 0) -> str:
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.returncode == rc, f"exit {proc.returncode}\n{output(proc)}\n{cluster.logs()}"
    return output(proc)


def kill_when(cluster: Cluster, proc: subprocess.Popen, pick: Callable[[list[int]], int | None],
              what: str) -> int:
    """Polls until `pick(worker pids)` names one, SIGKILLs it -> the pid."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        assert proc.poll() is None, f"the run ended before any worker was {what}:\n" \
                                    f"{output(proc)}"
        assert time.monotonic() < deadline, f"no worker was {what}"
        pid = pick(cluster.worker_pids())
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.02)


def holders(path_glob: Callable[[], list[Path]], pids: list[int]) -> int | None:
    """The pid of a worker process that has one of the files open now."""
    files = {str(p) for p in path_glob()}
    if not files:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in files:
                        return pid
    return None


def availability(root: Path) -> list[dict]:
    return read_availability(root / "manifests" / DS / "availability.parquet").to_pylist()


def features(root: Path) -> dict[str, dict]:
    """video id -> index row (without timings) and arrays, read through the checked reader."""
    out = {}
    with FeatureStore(root / "data" / "features" / DS) as fs:
        for vid in fs.ids(statuses=tuple({r["status"] for r in fs.index.to_pylist()})):
            row = {k: v for k, v in fs.info(vid).items() if k not in ("extract_s",)}
            out[vid] = {"row": row, **{f: fs.read(vid, f) for f in
                                       ("resnet152", "resnext101", "logmel")}}
    return out


def files_left(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in (root / "data").rglob(pattern) if ".avl-writer" not in p.name)


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, server, cluster) -> Path:
    """Download and extraction on the two workers, nothing killed."""
    root = make_project(tmp_path_factory.mktemp("undisturbed"), server, cluster.address)
    out = finish(stage(root, "download"), cluster)
    assert "on 2 worker threads" in out, out
    out = finish(stage(root, "extract"), cluster)
    assert "on 2 worker(s)" in out, out
    return root


def test_two_worker_processes_download_and_extract(undisturbed, media):
    rows = availability(undisturbed)
    assert sorted(r["video_id"] for r in rows) == list(IDS)
    for r in rows:
        assert r["status"] == "available", r
        assert r["sha256"] == hashlib.sha256(media[r["video_id"]]).hexdigest()
    feats = features(undisturbed)
    assert sorted(feats) == list(IDS)
    assert {f["row"]["status"] for f in feats.values()} == {"ok"}
    # the download shards ran on both worker processes: two machines' worth of work (the
    # store records no worker; the fixture saw extract start "on 2 worker(s)")
    attempts = read_attempts(undisturbed / "data" / "ledger" / DS).to_pylist()
    assert len({a["worker"] for a in attempts}) == 2


def test_a_worker_killed_mid_shard_is_redone_elsewhere_and_nothing_changes(
        tmp_path_factory, server, cluster, undisturbed, media):
    root = make_project(tmp_path_factory.mktemp("killed"), server, cluster.address)
    videos, store = root / "data" / "videos" / DS, root / "data" / "features" / DS

    # download: kill the worker that is writing a video's yt-dlp .part file
    run = stage(root, "download")
    killed = kill_when(cluster, run, lambda ws: holders(
        lambda: list(videos.rglob("*.part")), ws), "downloading")
    finish(run, cluster)
    assert killed not in cluster.worker_pids()
    rows = availability(root)
    assert sorted(r["video_id"] for r in rows) == list(IDS)          # every video exactly once
    assert all(r["status"] == "available" for r in rows), rows
    for r in rows:         # the half-written file was resumed or redone, never kept half
        assert (root / r["path"]).read_bytes() == media[r["video_id"]]
    assert not files_left(root, "*.part")
    attempts = read_attempts(root / "data" / "ledger" / DS).to_pylist()
    finals = [a["video_id"] for a in attempts if a["status"] == "available"]
    assert sorted(finals) == list(IDS), "each video downloaded once, not twice"

    # extraction: kill the worker that has a shard's .part file open
    cluster.start_worker()
    cluster.wait_for(2)
    run = stage(root, "extract")
    killed = kill_when(cluster, run, lambda ws: holders(
        lambda: list(store.glob("shard-*.part")), ws), "writing a shard")
    finish(run, cluster)
    assert killed not in cluster.worker_pids()
    assert not files_left(root, "*.part")
    index = pq.read_table(store / "index.parquet").to_pylist()
    assert sorted(r["video_id"] for r in index) == list(IDS)        # every video exactly once
    got, want = features(root), features(undisturbed)
    assert sorted(got) == sorted(want)
    for vid in IDS:
        g, w = got[vid], want[vid]
        for k in ("status", "shard", "row", "source_sha256", "recipe_sha256", "n_resnet152",
                  "n_resnext101", "n_logmel"):
            assert g["row"][k] == w["row"][k], (vid, k)
        for f in ("resnet152", "resnext101", "logmel"):
            # the same shard of the same videos, batched the same way: the same numbers
            np.testing.assert_array_equal(g[f], w[f], err_msg=f"{vid} {f}")
    cluster.start_worker()
    cluster.wait_for(2)


def test_two_runs_at_once_one_refused_one_waiting_no_duplicates(tmp_path_factory, server,
                                                                 cluster):
    """While one run holds a ledger's or a store's writer lock (held still with SIGSTOP, so
    the others surely meet it), a second run stops with one line naming it, and a third with
    `lock_wait_s` waits, then finds the work done and does nothing twice."""
    root = make_project(tmp_path_factory.mktemp("concurrent"), server, cluster.address)
    for name, folder in (("download", root / "data" / "ledger" / DS),
                         ("extract", root / "data" / "features" / DS)):
        first = stage(root, name)
        deadline = time.monotonic() + TIMEOUT_S
        while read_holder(folder).get("pid") != first.pid:   # it holds the writer lock
            assert first.poll() is None, output(first)
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            refused = finish(stage(root, name), cluster, rc=2)
            errors = [ln for ln in refused.splitlines() if " ERROR " in ln]
            assert len(errors) == 1, refused
            assert f"is being written by {name}@{DS} (pid {first.pid}" in errors[0], errors
            waiting = stage(root, name, "params-wait.yaml")
            while "waiting up to 600 s" not in output(waiting):
                assert waiting.poll() is None, output(waiting)
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        finish(first, cluster)
        finish(waiting, cluster)
    rows = availability(root)
    assert sorted(r["video_id"] for r in rows) == list(IDS)
    assert all(r["status"] == "available" for r in rows), rows
    attempts = read_attempts(root / "data" / "ledger" / DS).to_pylist()
    assert sorted(a["video_id"] for a in attempts) == list(IDS)      # no video fetched twice
    index = pq.read_table(root / "data" / "features" / DS / "index.parquet").to_pylist()
    assert sorted(r["video_id"] for r in index) == list(IDS)
    shards = sorted(p.name for p in (root / "data" / "features" / DS).glob("shard-*.h5"))
    assert shards == sorted({r["shard"] for r in index}), "the waiting run wrote nothing again"
