"""Fetcher.attempt against a local HTTP server (a real mp4; 403/404/410/429/500; stall, refused,
truncated), hostile ids and URLs, and the ledger's parquet schemas. Offline, 127.0.0.1 only."""
from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.download.runner
from pipeline.config import ClusterParams, DownloadParams
from pipeline.download.runner import DownloadError, download
from pipeline.download.fetch import Fetcher, UrlRejected, check_id, resolve_url
from pipeline.download.ledger import (ATTEMPT_SCHEMA, AVAILABILITY_SCHEMA, LedgerError, attempts_table,
                             current_status, read_availability, write_availability)

STALL_S = 10.0   # far longer than socket_timeout_s; released when the server shuts down


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    """A real 2 s 320x240 H.264 + AAC mp4 (~30 kB)."""
    out = tmp_path_factory.mktemp("media") / "x.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=10", "-f", "lavfi", "-i", "sine", "-t", "2",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(out)], check=True,
                   timeout=60)
    return out


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that time out or hang up mid-body are the point of these tests


@pytest.fixture(scope="module")
def server(mp4):
    """Yields (base URL, a port with nothing listening, the list of paths requested)."""
    body = mp4.read_bytes()
    release = threading.Event()
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def head(self, status, length, ctype="video/mp4"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            name = self.path.lstrip("/").split("?")[0]
            if name == "ok.mp4":
                self.head(200, len(body))
                self.wfile.write(body)
            elif name.startswith("status"):            # status403.mp4 -> 403
                code = int(name[6:9])
                self.head(code, 4, "text/plain")
                self.wfile.write(b"nope")
            elif name == "stall.mp4":                  # no answer at all
                release.wait(STALL_S)
                self.close_connection = True
            elif name == "stallbody.mp4":              # headers and a little, then nothing
                self.head(200, len(body))
                self.wfile.write(body[:2000])
                self.wfile.flush()
                release.wait(STALL_S)
                self.close_connection = True
            elif name == "garbage.mp4":                # says mp4, is not media
                junk = bytes(range(256)) * 20
                self.head(200, len(junk))
                self.wfile.write(junk)
            elif name == "truncated.mp4":              # promises the whole file, sends half
                self.head(200, len(body))
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.head(404, 9, "text/plain")
                self.wfile.write(b"not found")

        def log_message(self, *args):
            pass

    srv = _QuietServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", dead, seen
    finally:
        release.set()
        srv.shutdown()
        srv.server_close()


def params(**kw) -> DownloadParams:
    base = dict(socket_timeout_s=0.5, retries=0, fragment_retries=0, extractor_retries=0,
                attempts_per_run=1, backoff_s=0.0, min_free_gb=0.0)
    return DownloadParams(**{**base, **kw})


@pytest.fixture
def fetcher(tmp_path) -> Fetcher:
    return Fetcher(params(), videos_dir=tmp_path / "v", root=tmp_path)


# --------------------------------------------------------------------------- HTTP outcomes


def test_ok_downloads_probes_and_hashes(fetcher, server, mp4, tmp_path):
    out = fetcher.attempt("okVideo_-01", f"{server[0]}/ok.mp4")
    assert out["status"] == "available", out["message"]
    assert out["path"] == "v/ok/okVideo_-01.mp4"
    f = tmp_path / "v" / "ok" / "okVideo_-01.mp4"
    assert f.read_bytes() == mp4.read_bytes()
    assert out["sha256"] == hashlib.sha256(mp4.read_bytes()).hexdigest()
    assert out["filesize"] == mp4.stat().st_size
    assert out["duration_s"] == pytest.approx(2.0, abs=0.1)
    assert (out["width"], out["height"], out["vcodec"], out["acodec"], out["has_audio"]) == \
        (320, 240, "h264", "aac", True)
    assert out["format_id"] and out["ytdlp_version"]
    assert (out["reason"], out["kind"], out["message"], out["exc_class"], out["http_status"]) == \
        (None, None, None, None, None)
    # the outcome dict is exactly the outcome part of an attempt row
    assert set(out) == set(ATTEMPT_SCHEMA.names) - {
        "attempt_id", "run_id", "video_id", "shard", "url", "started_at", "finished_at",
        "elapsed_s", "worker"}
    assert sorted(p.name for p in (tmp_path / "v").rglob("*") if p.is_file()) == \
        ["okVideo_-01.mp4"]


@pytest.mark.parametrize("path, status, reason, http_status", [
    ("status403.mp4", "transient_failure", "forbidden", 403),
    ("status404.mp4", "unavailable", "not_found", 404),
    ("status410.mp4", "unavailable", "not_found", 410),
    ("status429.mp4", "pending", "rate_limited", 429),
    ("status500.mp4", "transient_failure", "network", 500),
    ("stall.mp4", "transient_failure", "network", None),
    ("stallbody.mp4", "transient_failure", "network", None),
    ("truncated.mp4", "transient_failure", "network", None),
    (None, "transient_failure", "network", None),            # connection refused
])
def test_failures_are_classified_and_leave_no_finished_file(fetcher, server, tmp_path, path,
                                                            status, reason, http_status):
    base, dead, _ = server
    url = f"{base}/{path}" if path else f"http://127.0.0.1:{dead}/x.mp4"
    t0 = time.monotonic()
    out = fetcher.attempt("failVideo01", url)
    assert time.monotonic() - t0 < 5.0          # socket_timeout_s, not the 10 s stall
    assert (out["status"], out["reason"]) == (status, reason), out["message"]
    assert out["http_status"] == http_status
    assert out["kind"] == {"pending": "throttled", "unavailable": "permanent"}.get(status,
                                                                                   "transient")
    assert out["message"].startswith("ERROR:")
    assert out["path"] is None and out["sha256"] is None and out["filesize"] is None
    left = [p for p in (tmp_path / "v").rglob("*") if p.is_file()] \
        if (tmp_path / "v").exists() else []
    assert all(p.name.endswith(".part") for p in left), left
    assert not (tmp_path / "v" / "fa" / "failVideo01.mp4").exists()


def test_truncated_body_keeps_only_a_part_file(fetcher, server, tmp_path):
    out = fetcher.attempt("truncVideo1", f"{server[0]}/truncated.mp4")
    assert out["status"] == "transient_failure"
    names = sorted(p.name for p in (tmp_path / "v").rglob("*") if p.is_file())
    assert names in ([], ["truncVideo1.mp4.part"])


def test_not_media_is_file_invalid_and_removed(fetcher, server, tmp_path):
    """Downloaded but not media: permanent (a re-download gets the same bytes), not transient."""
    out = fetcher.attempt("junkVideo01", f"{server[0]}/garbage.mp4")
    assert (out["status"], out["reason"], out["kind"], out["exc_class"]) == \
        ("unavailable", "file_invalid", "permanent", "ProbeError")
    assert "junkVideo01.mp4" in out["message"] and out["path"] is None
    assert [p for p in (tmp_path / "v").rglob("*") if p.is_file()] == []


def test_a_retry_after_a_failure_succeeds(fetcher, server, mp4, tmp_path):
    """A transient failure does not poison the reused YoutubeDL or the file name."""
    base = server[0]
    assert fetcher.attempt("againVideo1", f"{base}/truncated.mp4")["status"] == \
        "transient_failure"
    out = fetcher.attempt("againVideo1", f"{base}/ok.mp4")
    assert out["status"] == "available", out["message"]
    assert (tmp_path / out["path"]).read_bytes() == mp4.read_bytes()   # restarted, not appended
    assert [p.name for p in (tmp_path / "v").rglob("*") if p.is_file()] == ["againVideo1.mp4"]


# --------------------------------------------------------------------------- hostile ids

HOSTILE_IDS = ["../../etc/pa", "a/b", "", "abc/defghij", "...........", ".hidden",
               "abc defghij", "abcdefghij ", " abcdefghij", "abcdefghij/", "abcdefghij\\",
               "x" * 201, "abcdefghij\u00e9", "abc\x00defghij",
               "\nabcdefghij", None, 12345678901, b"abcdefghijk",
               # "$" (not \Z) with .match would let the trailing newline in
               "abcdefghijk\n", "abcdefghijk\r", "abcdefghijk\x00"]


@pytest.mark.parametrize("vid", HOSTILE_IDS)
def test_check_id_rejects(vid):
    with pytest.raises(ValueError, match="refusing video id"):
        check_id(vid)


@pytest.mark.parametrize("vid", ["dQw4w9WgXcQ", "a-b_c-d_e-f", "___________", "-----------",
                                 "00000000000",
                                 # own media's ids (custom.stable_id, LSMDC clip ids)
                                 "abcdefghij", "my_clip-3fa9c2b1e0",
                                 "0001_American_Beauty_00.00.51.926-00.00.54.129"])
def test_check_id_accepts(vid):
    assert check_id(vid) == vid


@pytest.mark.parametrize("vid", ["../../etc/pa", "a/b", "", "abc/defghij", "..abcdefghi",
                                 "abc defghij", "abcdefghijk\n"])
def test_attempt_rejects_hostile_ids_before_any_request(vid, server, tmp_path):
    base, _, seen = server
    before = len(seen)
    f = Fetcher(params(), videos_dir=tmp_path / "v", root=tmp_path)
    with pytest.raises(ValueError, match="refusing video id"):
        f.attempt(vid, f"{base}/ok.mp4")
    assert len(seen) == before
    assert list(tmp_path.iterdir()) == []


def _no_cluster(*a, **kw):
    raise AssertionError("a cluster was started for a table with a hostile id")


@pytest.mark.parametrize("bad", ["../../etc/pa", "abc/defghij", "", "abcdefghijk\n"])
def test_download_refuses_a_hostile_id_before_any_work(bad, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.download.runner, "connect", _no_cluster)
    videos = pa.table({"video_id": ["dQw4w9WgXcQ", bad],
                       "url": ["https://www.youtube.com/watch?v=dQw4w9WgXcQ"] * 2,
                       "split": ["train", "train"], "duration_s": [10.0, 10.0]})
    with pytest.raises(DownloadError, match=r"row 1"):
        download("x", videos, params(), ClusterParams(workers=1, threads_per_worker=1,
                                                      processes=False),
                 videos_dir=tmp_path / "videos", ledger_dir=tmp_path / "ledger",
                 availability_path=tmp_path / "availability.parquet", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- URLs


@pytest.fixture
def project(tmp_path, mp4) -> Path:
    """tmp_path as a project root with data/demo (the file root) and traps around it."""
    demo = tmp_path / "data" / "demo"
    demo.mkdir(parents=True)
    (demo / "sub dir").mkdir()
    for p in (demo / "x.mp4", demo / "sub dir" / "y.mp4", tmp_path / "secret.mp4"):
        p.write_bytes(mp4.read_bytes())
    (tmp_path / "data" / "demo-evil").mkdir()
    (tmp_path / "data" / "demo-evil" / "x.mp4").write_bytes(mp4.read_bytes())
    os.symlink("/etc", demo / "etc_link")
    os.symlink(tmp_path / "secret.mp4", demo / "escape.mp4")
    return tmp_path


def test_resolve_url_accepts(project):
    root, x = Path("data/demo"), (project / "data" / "demo" / "x.mp4").resolve()
    assert resolve_url("file:data/demo/x.mp4", root, project) == x.as_uri()
    assert resolve_url(x.as_uri(), root, project) == x.as_uri()
    assert resolve_url(f"file://localhost{x}", root, project) == x.as_uri()
    assert resolve_url("file:data/demo/sub%20dir/y.mp4", root, project) == \
        (project / "data" / "demo" / "sub dir" / "y.mp4").resolve().as_uri()
    assert resolve_url("file:data/demo/x.mp4", project / "data" / "demo", project) == \
        x.as_uri()                                     # an absolute file_root
    for url in ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "http://127.0.0.1:1/x.mp4",
                "HTTPS://example.com/x"):
        assert resolve_url(url, None, project) == url


@pytest.mark.parametrize("url", [
    "ftp://example.com/x.mp4", "javascript:alert(1)", "data:video/mp4;base64,AAAA",
    "//example.com/x.mp4", "", "x.mp4", "data/demo/x.mp4",
    "file:///etc/passwd", "file:../x", "file:../../etc/passwd", "file:/etc/passwd",
    "file:data/demo/../../secret.mp4", "file:data/demo/%2e%2e/%2e%2e/secret.mp4",
    "file:secret.mp4", "file:data", "file:data/demo-evil/x.mp4",
    "file:data/demo/etc_link/passwd", "file:data/demo/escape.mp4",
    "file://otherhost/x", "file://otherhost{demo}/x.mp4", "file://localhost/etc/passwd",
    "FILE:///etc/passwd",
])
def test_resolve_url_rejects(url, project):
    url = url.format(demo=project / "data" / "demo")
    with pytest.raises(UrlRejected, match="refusing URL"):
        resolve_url(url, Path("data/demo"), project)


@pytest.mark.parametrize("url", ["file:data/demo/x.mp4", "file:///etc/passwd",
                                 "file://localhost/tmp/x.mp4"])
def test_resolve_url_rejects_every_file_url_without_a_file_root(url, project):
    with pytest.raises(UrlRejected, match="file: URLs are disabled"):
        resolve_url(url, None, project)


def test_attempt_file_url_under_root(project, mp4):
    f = Fetcher(params(file_root="data/demo"), videos_dir=project / "videos", root=project)
    out = f.attempt("demoVideo01", "file:data/demo/x.mp4")
    assert out["status"] == "available", out["message"]
    assert out["path"] == "videos/de/demoVideo01.mp4"
    assert out["sha256"] == hashlib.sha256(mp4.read_bytes()).hexdigest()


def test_attempt_missing_file_under_root_is_not_found(project):
    f = Fetcher(params(file_root="data/demo"), videos_dir=project / "videos", root=project)
    out = f.attempt("goneVideo01", "file:data/demo/gone.mp4")
    assert (out["status"], out["reason"], out["kind"]) == ("unavailable", "not_found",
                                                           "permanent")
    assert not (project / "videos").exists() or not list((project / "videos").rglob("*.mp4"))


@pytest.mark.parametrize("url, file_root", [("file:secret.mp4", "data/demo"),
                                            ("file:data/demo/escape.mp4", "data/demo"),
                                            ("file:data/demo/x.mp4", None),
                                            ("ftp://127.0.0.1/x.mp4", None)])
def test_attempt_records_a_rejected_url(project, url, file_root):
    f = Fetcher(params(file_root=file_root), videos_dir=project / "videos", root=project)
    out = f.attempt("rejectVid01", url)
    assert (out["status"], out["reason"], out["kind"], out["exc_class"]) == \
        ("transient_failure", "url_rejected", "configuration", "UrlRejected")
    assert not (project / "videos").exists()


def test_http_page_cannot_pull_a_file_outside_file_root(project):
    """Regression: file_root must hold for URLs yt-dlp finds, not only the manifest's: a page
    whose <video src> is a file:// URL (generic extractor) must not copy a local file."""
    secret = project / "secret.mp4"
    page = (f'<html><head><title>t</title></head><body><video src="{secret.as_uri()}">'
            '</video></body></html>').encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    srv = _QuietServer(("127.0.0.1", 0), Page)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        f = Fetcher(params(file_root="data/demo"), videos_dir=project / "videos", root=project)
        out = f.attempt("pageVideo01", f"http://127.0.0.1:{srv.server_address[1]}/page.html")
    finally:
        srv.shutdown()
        srv.server_close()
    assert out["status"] != "available"
    videos = project / "videos"
    assert not (videos.exists() and list(videos.rglob("*.mp4")))


# --------------------------------------------------------------------------- ledger schemas

ATTEMPT_COLUMNS = [
    ("attempt_id", "string"), ("run_id", "string"), ("video_id", "string"), ("shard", "int32"),
    ("url", "string"), ("started_at", "timestamp[us, tz=UTC]"),
    ("finished_at", "timestamp[us, tz=UTC]"), ("elapsed_s", "double"), ("status", "string"),
    ("reason", "string"), ("kind", "string"), ("message", "string"), ("exc_class", "string"),
    ("http_status", "int32"), ("ytdlp_version", "string"), ("path", "string"),
    ("filesize", "int64"), ("sha256", "string"), ("duration_s", "double"), ("width", "int32"),
    ("height", "int32"), ("vcodec", "string"), ("acodec", "string"), ("has_audio", "bool"),
    ("format_id", "string"), ("worker", "string")]
ATTEMPT_REQUIRED = {"attempt_id", "run_id", "video_id", "shard", "url", "started_at",
                    "finished_at", "elapsed_s", "status"}
AVAILABILITY_COLUMNS = [
    ("video_id", "string"), ("url", "string"), ("split", "string"), ("status", "string"),
    ("reason", "string"), ("kind", "string"), ("message", "string"), ("exc_class", "string"),
    ("http_status", "int32"), ("ytdlp_version", "string"), ("path", "string"),
    ("filesize", "int64"), ("sha256", "string"), ("duration_s", "double"), ("width", "int32"),
    ("height", "int32"), ("vcodec", "string"), ("acodec", "string"), ("has_audio", "bool"),
    ("format_id", "string"), ("attempts", "int32"), ("first_seen", "timestamp[us, tz=UTC]"),
    ("last_checked", "timestamp[us, tz=UTC]")]
AVAILABILITY_REQUIRED = {"video_id", "url", "split", "status", "attempts"}


def test_attempt_schema_is_stable():
    assert [(f.name, str(f.type)) for f in ATTEMPT_SCHEMA] == ATTEMPT_COLUMNS
    assert {f.name for f in ATTEMPT_SCHEMA if not f.nullable} == ATTEMPT_REQUIRED


def test_availability_schema_is_stable():
    assert [(f.name, str(f.type)) for f in AVAILABILITY_SCHEMA] == AVAILABILITY_COLUMNS
    assert {f.name for f in AVAILABILITY_SCHEMA if not f.nullable} == AVAILABILITY_REQUIRED


T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)


def _attempt(vid: str, n: int, status: str, reason: str | None, ok: bool = False) -> dict:
    return {"attempt_id": f"{vid}-{n}", "run_id": "r1", "video_id": vid, "shard": 0,
            "url": f"https://www.youtube.com/watch?v={vid}", "started_at": T0 + timedelta(n),
            "finished_at": (T0 + timedelta(n, 5)).isoformat(), "elapsed_s": 5.0,
            "status": status, "reason": reason, "kind": None if ok else "permanent",
            "message": None if ok else "ERROR: [youtube] Video unavailable",
            "exc_class": None if ok else "ExtractorError", "http_status": None if ok else 404,
            "ytdlp_version": "2026.10.26", "path": "videos/aa/x.mp4" if ok else None,
            "filesize": 2 ** 40 if ok else None, "sha256": "ab" * 32 if ok else None,
            "duration_s": 2.5 if ok else None, "width": 320 if ok else None,
            "height": 240 if ok else None, "vcodec": "h264" if ok else None,
            "acodec": None, "has_audio": False if ok else None, "format_id": "18" if ok else None,
            "worker": "host:1"}


def test_read_availability_round_trips(tmp_path):
    videos = pa.table({"video_id": ["AAAAAAAAAA1", "AAAAAAAAAA2", "AAAAAAAAAA3"],
                       "url": ["u1", "u2", "u3"], "split": ["train", "val", "train"],
                       "duration_s": [1.0, 2.0, 3.0]})
    attempts = attempts_table([_attempt("AAAAAAAAAA1", 0, "unavailable", "not_found"),
                               _attempt("AAAAAAAAAA1", 1, "available", None, ok=True),
                               _attempt("AAAAAAAAAA2", 0, "unavailable", "private")])
    table = current_status(videos, attempts)
    path = tmp_path / "manifests" / "x" / "availability.parquet"
    write_availability(table, path)
    back = read_availability(path)
    assert back.schema.equals(AVAILABILITY_SCHEMA)
    assert back.equals(table)
    rows = {r["video_id"]: r for r in back.to_pylist()}
    assert rows["AAAAAAAAAA1"]["status"] == "available" and rows["AAAAAAAAAA1"]["attempts"] == 2
    assert rows["AAAAAAAAAA1"]["filesize"] == 2 ** 40
    assert rows["AAAAAAAAAA1"]["first_seen"] == T0
    assert rows["AAAAAAAAAA1"]["last_checked"] == T0 + timedelta(1, 5)
    assert (rows["AAAAAAAAAA2"]["reason"], rows["AAAAAAAAAA2"]["http_status"]) == ("private", 404)
    assert (rows["AAAAAAAAAA3"]["status"], rows["AAAAAAAAAA3"]["attempts"],
            rows["AAAAAAAAAA3"]["first_seen"]) == ("pending", 0, None)
    assert [p.name for p in path.parent.iterdir()] == ["availability.parquet"]   # no temp left

    # extra columns and another column order are tolerated; the schema comes back exact
    shuffled = table.select(list(reversed(table.column_names))).append_column(
        "extra", pa.array([1, 2, 3]))
    pq.write_table(shuffled, tmp_path / "shuffled.parquet")
    assert read_availability(tmp_path / "shuffled.parquet").equals(table)


def test_read_availability_refuses_other_tables(tmp_path):
    pq.write_table(pa.table({"video_id": ["AAAAAAAAAA1"], "status": ["available"]}),
                   tmp_path / "old.parquet")
    with pytest.raises(LedgerError, match=r"not an availability ledger.*'url'"):
        read_availability(tmp_path / "old.parquet")
