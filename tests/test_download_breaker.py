"""Fast, honest failure (issue 12, item 3): the network goes down in the middle of a download
of 1,000 listed videos; the stage stops by itself after a few attempts with one line saying
what is wrong; once the network is back, a re-run keeps everything journaled before (ledger
rows, media files byte-identical, never fetched again) and downloads the rest. Offline: a media
server on 127.0.0.1 that shuts down (connections refused) after a number of requests."""
from __future__ import annotations

import http.server
import itertools
import logging
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.download.ledger import read_attempts, read_availability
from stages import download as download_stage
from tests.conftest import ROOT

N = 1000
IDS = [f"vid{i:04d}abcd" for i in range(N)]
LIMIT = 40           # requests the server answers before it goes down
THRESHOLD = 5        # download.breaker_threshold


@pytest.fixture(scope="module")
def media(tiny_mp4) -> bytes:
    return tiny_mp4


class Site:
    """Serves `media` at /v/<id>.mp4 on one 127.0.0.1 port. start(limit): after `limit`
    requests the server shuts down and closes its listening socket (connections are then
    refused); start() again brings it back on the same port."""

    def __init__(self, media: bytes):
        self.media, self.port, self.hits = media, 0, []
        self.srv: http.server.ThreadingHTTPServer | None = None

    def start(self, limit: int | None = None) -> None:
        site, count = self, itertools.count(1)   # next() is atomic: each request its number

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                site.hits.append(self.path)
                n = next(count)
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(site.media)))
                self.end_headers()
                self.wfile.write(site.media)
                if limit is not None and n == limit:   # the network goes down
                    threading.Thread(target=site.stop, daemon=True).start()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, args=(0.02,), daemon=True).start()

    def stop(self) -> None:
        if self.srv is not None:
            srv, self.srv = self.srv, None
            srv.shutdown()
            srv.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def site(media):
    s = Site(media)
    yield s
    s.stop()


def _project(tmp: Path, base: str) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["cluster"].update(workers=1, threads_per_worker=2, processes=False)
    data["download"].update(attempts_per_run=1, backoff_s=0.0, min_free_gb=0.0, retries=0,
                            fragment_retries=0, extractor_retries=0, socket_timeout_s=2.0,
                            breaker_threshold=THRESHOLD, breaker_cooldown_s=0.5)
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))
    (tmp / "m").mkdir()
    pq.write_table(pa.table({"video_id": IDS, "url": [f"{base}/v/{i}.mp4" for i in IDS],
                             "split": ["train"] * N, "duration_s": [1.0] * N}),
                   tmp / "m" / "videos.parquet")
    return tmp


def _stage(proj: Path, monkeypatch, caplog) -> tuple[int, list[str]]:
    monkeypatch.chdir(proj)
    caplog.clear()
    caplog.set_level(logging.INFO)
    rc = download_stage.main(["--dataset", "demo", "--manifest", "m", "--videos", "v",
                              "--ledger", "l"])
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _files(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every media file -> (bytes, inode, mtime): a file fetched again would change."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*.mp4"))}


def test_network_down_mid_run_stops_fast_with_one_line_and_resumes_losing_nothing(
        tmp_path, site, monkeypatch, caplog, media):
    site.start(limit=LIMIT)
    proj = _project(tmp_path, site.base)

    rc, errors = _stage(proj, monkeypatch, caplog)
    assert rc == 2
    assert len(errors) == 1, errors
    line = errors[0]
    assert "\n" not in line and "Traceback" not in line
    assert "the network looks unreachable" in line and f"{THRESHOLD} videos in a row" in line
    assert "Connection refused" in line or "connection" in line.lower()
    assert "download.proxy" in line and "re-run" in line
    attempts = read_attempts(proj / "l").to_pylist()
    ok = [a for a in attempts if a["status"] == "available"]
    failed = [a for a in attempts if a["status"] != "available"]
    assert ok, "the server went down before any download"
    assert {a["reason"] for a in failed} == {"network"}
    # stopped by itself after a few attempts, not one per listed video
    assert len(failed) <= 3 * THRESHOLD, len(failed)
    assert len(attempts) <= LIMIT + 3 * THRESHOLD
    before = {a["attempt_id"]: a for a in attempts}
    files = _files(proj / "v")
    assert len(files) == len(ok) and all(b == media for b, _, _ in files.values())
    avail = {r["video_id"]: r["status"] for r in
             read_availability(proj / "m" / "availability.parquet").to_pylist()}
    assert sum(s == "available" for s in avail.values()) == len(ok)
    assert sum(s == "pending" for s in avail.values()) == N - len(attempts)
    assert not list((proj / "l").glob("*.jsonl"))       # every journal sealed

    # the network is back (same address): the re-run keeps everything and does the rest
    site.start()
    hits_before = len(site.hits)
    rc, errors = _stage(proj, monkeypatch, caplog)
    assert (rc, errors) == (0, [])
    after = {a["attempt_id"]: a for a in read_attempts(proj / "l").to_pylist()}
    assert set(before) <= set(after)
    assert all(after[k] == v for k, v in before.items())    # journaled rows unchanged
    now = _files(proj / "v")
    assert {k: now[k] for k in files} == files              # byte-identical, not re-fetched
    refetched = {os.path.basename(h).split(".")[0] for h in site.hits[hits_before:]} \
        & {a["video_id"] for a in ok}
    assert not refetched
    avail = read_availability(proj / "m" / "availability.parquet").to_pylist()
    assert [r["status"] for r in avail] == ["available"] * N
    assert len(now) == N
