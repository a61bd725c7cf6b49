"""Download stage resume: kill -9 mid-run loses no ledger rows and no file counts as done early;
re-runs fetch only what is missing, re-fetch changed or deleted files, stop at the disk floor."""
from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.download.ledger import (Journal, attempts_table, read_attempts, read_availability,
                             read_journal, seal_journal)
from tests.conftest import ROOT

N = 24
IDS = [f"vid{i:03d}-abcd"[:11] for i in range(N)]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("media") / "x.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", "1", "-c:v", "libx264",
                    "-c:a", "aac", "-shortest", str(out)], check=True)
    return out.read_bytes()


@pytest.fixture
def slow_server(media):
    """Serves `media` at /v/<id>.mp4 with 120 ms latency per request; counts requests."""
    hits: list[str] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            time.sleep(0.12)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(media)))
            self.end_headers()
            self.wfile.write(media)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()
    srv.server_close()


def _project(tmp_path: Path, base: str, **download) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["cluster"].update(workers=1, threads_per_worker=2, processes=False)
    data["download"].update(attempts_per_run=1, backoff_s=0.0, min_free_gb=0.0, **download)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    videos = pa.table({"video_id": IDS, "url": [f"{base}/v/{i}.mp4" for i in IDS],
                       "split": ["train"] * N, "duration_s": [1.0] * N})
    (tmp_path / "m").mkdir(exist_ok=True)
    pq.write_table(videos, tmp_path / "m" / "videos.parquet")
    return tmp_path


def _cmd() -> list[str]:
    return [sys.executable, "-m", "stages.download", "--dataset", "demo", "--manifest", "m",
            "--videos", "v", "--ledger", "l"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "AVL_LOG_LEVEL": "INFO"}


def _journal_rows(ledger: Path) -> list[dict]:
    """Attempts recorded so far: sealed shards and live journals."""
    return read_attempts(ledger).to_pylist() if ledger.is_dir() else []


def test_kill9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, slow_server, media):
    base, hits = slow_server
    proj = _project(tmp_path, base)
    proc = subprocess.Popen(_cmd(), cwd=proj, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(_journal_rows(proj / "l")) < 6:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["attempt_id"]: r for r in _journal_rows(proj / "l")}
    assert 6 <= len(before) < N, "the kill did not land mid-run"
    # no file that counts as done is partial: anything under its final name is whole
    for f in (proj / "v").rglob("*"):
        if f.is_file() and not f.name.endswith((".part", ".ytdl")):
            assert f.read_bytes() == media, f"{f} is partial but has a final name"

    p = subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "sealed" in p.stderr  # the killed run's journals were turned into history
    attempts = read_attempts(proj / "l").to_pylist()
    ids = [a["attempt_id"] for a in attempts]
    assert len(ids) == len(set(ids))
    assert set(before) <= set(ids), "rows journaled before the kill were lost"
    ok = [a["video_id"] for a in attempts if a["status"] == "available"]
    assert sorted(ok) == sorted(IDS), "each video available exactly once"
    avail = read_availability(proj / "m" / "availability.parquet").to_pylist()
    assert [r["status"] for r in avail] == ["available"] * N
    assert all(r["attempts"] == 1 and r["sha256"] and r["has_audio"] for r in avail)
    assert not list((proj / "l").glob("*.jsonl"))

    # a third run changes nothing: no requests, no new attempts, identical availability
    snapshot = (proj / "m" / "availability.parquet").read_bytes()
    n_hits = len(hits)
    p = subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert len(hits) == n_hits
    assert read_attempts(proj / "l").num_rows == len(ids)
    assert (proj / "m" / "availability.parquet").read_bytes() == snapshot


def test_changed_or_deleted_files_are_fetched_again(tmp_path, slow_server, media):
    base, hits = slow_server
    proj = _project(tmp_path, base, verify="sha256")
    assert subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True).returncode == 0
    rows = {r["video_id"]: r for r in
            read_availability(proj / "m" / "availability.parquet").to_pylist()}
    (proj / rows[IDS[0]]["path"]).unlink()
    with open(proj / rows[IDS[1]]["path"], "r+b") as f:  # same size, other bytes
        f.seek(100)
        f.write(b"\x00" * 8)
    n_hits = len(hits)
    p = subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    per_video = {}
    for a in read_attempts(proj / "l").to_pylist():
        per_video[a["video_id"]] = per_video.get(a["video_id"], 0) + 1
    assert per_video[IDS[0]] == 2 and per_video[IDS[1]] == 2
    assert all(per_video[v] == 1 for v in IDS[2:])
    assert len(hits) > n_hits
    rows = {r["video_id"]: r for r in
            read_availability(proj / "m" / "availability.parquet").to_pylist()}
    assert rows[IDS[1]]["status"] == "available" and rows[IDS[1]]["attempts"] == 2
    for vid in IDS[:2]:  # really fetched again: the bytes are the server's, not the damaged ones
        assert (proj / rows[vid]["path"]).read_bytes() == media
        assert rows[vid]["sha256"] == rows[IDS[2]]["sha256"]


def test_rewritten_local_source_is_fetched_again(tmp_path, media):
    """A file: source rewritten after its download (the demo regenerated with other params)
    makes its copy stale: the next run fetches it again, so extraction sees the new bytes."""
    proj = _project(tmp_path, "file:src", verify="sha256", file_root="src")
    (proj / "src" / "v").mkdir(parents=True)
    for vid in IDS:
        (proj / "src" / "v" / f"{vid}.mp4").write_bytes(media)
    assert subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True).returncode == 0
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=5",
                    "-f", "lavfi", "-i", "sine=frequency=880", "-t", "1", "-c:v", "libx264",
                    "-c:a", "aac", "-shortest", str(tmp_path / "other.mp4")], check=True)
    other = (tmp_path / "other.mp4").read_bytes()
    assert other != media
    (proj / "src" / "v" / f"{IDS[0]}.mp4").write_bytes(other)
    (proj / "src" / "v" / f"{IDS[1]}.mp4").unlink()   # gone at the source: the copy stands
    p = subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"{IDS[0]}: its source" in p.stderr and "changed since it was downloaded" in p.stderr
    per_video: dict[str, int] = {}
    for a in read_attempts(proj / "l").to_pylist():
        per_video[a["video_id"]] = per_video.get(a["video_id"], 0) + 1
    assert per_video[IDS[0]] == 2 and all(per_video[v] == 1 for v in IDS[1:])
    rows = {r["video_id"]: r for r in
            read_availability(proj / "m" / "availability.parquet").to_pylist()}
    assert (proj / rows[IDS[0]]["path"]).read_bytes() == other
    assert rows[IDS[0]]["sha256"] != rows[IDS[2]]["sha256"]
    assert rows[IDS[1]]["status"] == "available"
    assert (proj / rows[IDS[1]]["path"]).read_bytes() == media


def test_disk_floor_stops_cleanly_and_keeps_videos_pending(tmp_path, slow_server):
    base, hits = slow_server
    proj = _project(tmp_path, base)
    data = yaml.safe_load((proj / "params.yaml").read_text())
    data["download"]["min_free_gb"] = 1e9
    (proj / "params.yaml").write_text(yaml.safe_dump(data))
    p = subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True, text=True)
    assert p.returncode == 2
    assert "below download.min_free_gb" in p.stderr and "re-run to resume" in p.stderr
    assert not hits
    avail = read_availability(proj / "m" / "availability.parquet").to_pylist()
    assert {r["status"] for r in avail} == {"pending"}


def test_torn_journal_line_is_ignored_and_sealing_is_idempotent(tmp_path):
    row = {"attempt_id": "a1", "run_id": "r", "video_id": IDS[0], "shard": 0, "url": "http://x",
           "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00",
           "elapsed_s": 1.0, "status": "pending", "reason": "bot_check", "kind": "throttled"}
    with Journal(tmp_path, "r", 3) as j:
        j.append(row)
        j.append({**row, "attempt_id": "a2"})
    with open(j.path, "a") as f:
        f.write('{"attempt_id": "a3", "vid')  # killed mid-write
    assert [r["attempt_id"] for r in read_journal(j.path)] == ["a1", "a2"]
    # a crash between writing the parquet and removing the journal: both exist
    out = j.path.with_suffix(".parquet")
    pq.write_table(attempts_table(read_journal(j.path)), out)
    assert read_attempts(tmp_path).num_rows == 2  # deduplicated by attempt_id
    seal_journal(j.path)
    assert not j.path.exists() and read_attempts(tmp_path).num_rows == 2
