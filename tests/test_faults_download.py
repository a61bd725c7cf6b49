"""Fault injection for download, ledger and audit (issue 18, items 5, 7 and 9): downloads that
are not media, unreadable and special files, changed URLs, two runs on one ledger, corrupt or
hostile ledger files and manifests. Each asserts what survives and that the error is one line
naming the file. Offline: 127.0.0.1 servers and file: URLs under a tmp file_root."""
from __future__ import annotations

import collections
import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import ClusterParams, DownloadParams
from pipeline.download.runner import download
from pipeline.download.ledger import Journal, read_attempts, read_availability
from stages import audit as audit_stage
from stages import download as download_stage
from tests.conftest import ROOT

CLUSTER = ClusterParams(workers=1, threads_per_worker=2, processes=False)


# --------------------------------------------------------------------------- media and servers


def _ffmpeg(out: Path, src: str) -> bytes:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    f"{src}=size=64x48:rate=5", "-f", "lavfi", "-i", "sine", "-t", "1",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(out)], check=True,
                   timeout=60)
    return out.read_bytes()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, bytes]:
    """ok (ffmpeg's default: moov atom at the end), other (different bytes), moovcut (the same
    file cut before its moov atom: unreadable), random bytes, empty."""
    d = tmp_path_factory.mktemp("media")
    ok, other = _ffmpeg(d / "ok.mp4", "testsrc"), _ffmpeg(d / "other.mp4", "testsrc2")
    assert ok.rfind(b"moov") > ok.find(b"mdat") > 0      # moov at the end, as in the issue
    return {"ok": ok, "other": other, "moovcut": ok[:ok.rfind(b"moov") - 4],
            "random": os.urandom(5000), "empty": b""}


SLOW = {"s": 0.12}   # latency of /slow/..., seconds; a test may change it between runs


@pytest.fixture(scope="module")
def server(media):
    """Serves media[name] at /<name>.mp4 with a correct Content-Length, /status/N answers N, and
    /slow/<name>.mp4 after SLOW["s"]. Yields (base URL, a port nothing listens on, hit paths)."""
    hits: list[str] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            parts = self.path.strip("/").split("/")
            if parts[0] == "status":
                status, body = int(parts[1]), b"nope"
            else:
                if parts[0] == "slow":
                    time.sleep(SLOW["s"])
                status, body = 200, media.get(parts[-1].split(".")[0], b"")
            self.send_response(status)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    # a port bound and never listened on: connections to it are refused, and no server started
    # later in the module can take it (a port closed again was, once, and answered 404)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    dead = held.getsockname()[1]
    yield f"http://127.0.0.1:{srv.server_address[1]}", dead, hits
    held.close()
    srv.shutdown()
    srv.server_close()


# --------------------------------------------------------------------------- project helpers


def params(**kw) -> DownloadParams:
    base = dict(socket_timeout_s=2.0, retries=0, fragment_retries=0, extractor_retries=0,
                attempts_per_run=1, backoff_s=0.0, min_free_gb=0.0, breaker_threshold=1000,
                file_root="src")
    return DownloadParams(**{**base, **kw})


def project(tmp: Path, urls: dict[str, str], **download_params) -> Path:
    """tmp as a project: params.yaml (in-process cluster), m/videos.parquet, src/ (file_root)."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["cluster"].update(workers=1, threads_per_worker=2, processes=False)
    data["download"].update(attempts_per_run=1, backoff_s=0.0, min_free_gb=0.0, retries=0,
                            fragment_retries=0, extractor_retries=0, socket_timeout_s=2.0,
                            file_root="src", **download_params)
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))
    (tmp / "src").mkdir(exist_ok=True)
    write_videos(tmp, urls)
    return tmp


def write_videos(proj: Path, urls: dict[str, str]) -> None:
    (proj / "m").mkdir(exist_ok=True)
    pq.write_table(videos_table(urls), proj / "m" / "videos.parquet")


def videos_table(urls: dict[str, str]) -> pa.Table:
    ids = sorted(urls)
    return pa.table({"video_id": ids, "url": [urls[i] for i in ids],
                     "split": ["train"] * len(ids), "duration_s": [1.0] * len(ids)})


ARGS = ["--dataset", "demo", "--manifest", "m", "--videos", "v", "--ledger", "l"]


def stage(proj: Path, monkeypatch, caplog, *extra: str) -> tuple[int, list[str]]:
    """Runs the download stage in-process in `proj` -> (exit code, its ERROR lines)."""
    monkeypatch.chdir(proj)
    caplog.clear()
    caplog.set_level(logging.INFO)
    rc = download_stage.main([*ARGS, *extra])
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def run_in_process(proj: Path, urls: dict[str, str], **kw) -> dict:
    return download("demo", videos_table(urls), params(**kw.pop("p", {})), CLUSTER,
                    videos_dir=proj / "v", ledger_dir=proj / "l",
                    availability_path=proj / "m" / "availability.parquet", root=proj, **kw)


def rows(proj: Path) -> dict[str, dict]:
    return {r["video_id"]: r for r in
            read_availability(proj / "m" / "availability.parquet").to_pylist()}


def attempt_counts(proj: Path) -> dict[str, int]:
    return dict(collections.Counter(read_attempts(proj / "l").column("video_id").to_pylist()))


def one_line(errors: list[str], *names) -> str:
    """The single ERROR line, which names every one of `names`."""
    assert len(errors) == 1, errors
    line = errors[0]
    assert "\n" not in line and "Traceback" not in line, line
    for n in names:
        assert str(n) in line, (n, line)
    return line


def tree(folder: Path) -> dict[str, bytes]:
    """Every regular file under folder -> its bytes (what must survive byte-identical); the
    writer lock's holder note aside, which each run rewrites by design."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".avl-writer.lock"}


# --------------------------------------------------------------------------- item 7: taxonomy


def test_downloads_that_are_not_media_are_permanent_and_rechecked_only_on_request(
        tmp_path, server, media, monkeypatch, caplog):
    base = server[0]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "empty.mp4").write_bytes(media["empty"])
    urls = {"okMoovEnd01": f"{base}/ok.mp4",             # moov at the end, complete: fine
            "randomBytes": f"{base}/random.mp4", "moovCutOff1": f"{base}/moovcut.mp4",
            "zeroBytes01": "file:src/empty.mp4"}
    proj = project(tmp_path, urls)
    rc, errors = stage(proj, monkeypatch, caplog)
    assert (rc, errors) == (0, [])                       # no network advice, dvc repro goes on
    st = rows(proj)
    assert st["okMoovEnd01"]["status"] == "available"
    for vid in ("randomBytes", "moovCutOff1", "zeroBytes01"):
        r = st[vid]
        assert (r["status"], r["reason"], r["kind"]) == ("unavailable", "file_invalid",
                                                         "permanent"), (vid, r["message"])
        assert r["path"] is None and r["message"]
    assert "not media" in caplog.text and "--recheck-unavailable" in caplog.text
    assert [p.name for p in (proj / "v").rglob("*") if p.is_file()] == ["okMoovEnd01.mp4"]

    # a re-run leaves them be: no attempt, nothing "failed"
    rc, errors = stage(proj, monkeypatch, caplog)
    assert (rc, errors) == (0, [])
    assert set(attempt_counts(proj).values()) == {1}
    # on request they are checked again
    (proj / "src" / "empty.mp4").write_bytes(media["ok"])
    rc, _ = stage(proj, monkeypatch, caplog, "--recheck-unavailable")
    assert rc == 0
    assert attempt_counts(proj) == {"okMoovEnd01": 1, "randomBytes": 2, "moovCutOff1": 2,
                                    "zeroBytes01": 2}
    assert rows(proj)["zeroBytes01"]["status"] == "available"


def _reads_mode_000() -> bool:
    """Whether this process can read a file with mode 000 (root with CAP_DAC_OVERRIDE can)."""
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        os.chmod(f.name, 0)
        try:
            open(f.name, "rb").close()
            return True
        except PermissionError:
            return False


def _loop(path: Path) -> None:
    """Replaces `path` with a symlink to itself: any read fails with ELOOP, even as root."""
    path.unlink()
    os.symlink(path.name, path)


@pytest.mark.parametrize("fault", ["symlink_loop", pytest.param(
    "chmod_000", marks=pytest.mark.skipif(_reads_mode_000(), reason="reads mode-000 files"))])
def test_an_unreadable_downloaded_file_is_that_videos_local_error(tmp_path, media, fault):
    src = tmp_path / "src"
    src.mkdir()
    urls = {}
    for i in range(3):
        (src / f"{i}.mp4").write_bytes(media["ok"])
        urls[f"goodVideo0{i}"] = f"file:src/{i}.mp4"
    run_in_process(tmp_path, urls)
    before = rows(tmp_path)
    bad = tmp_path / before["goodVideo00"]["path"]
    if fault == "symlink_loop":
        _loop(bad)
    else:
        bad.chmod(0)
    s = run_in_process(tmp_path, urls)      # no crash: the other videos are verified
    st = rows(tmp_path)
    r = st["goodVideo00"]
    assert (r["status"], r["reason"], r["kind"]) == ("transient_failure", "local_error", "local")
    assert str(bad) in r["message"], r["message"]
    assert st["goodVideo01"] == before["goodVideo01"] and st["goodVideo02"] == \
        before["goodVideo02"]
    assert s["by_reason"] == {"local_error": 1, "verified": 2}
    assert os.path.lexists(bad)                          # left as it is, for the user to see

    # once fixed, the next run takes the video back
    bad.unlink()
    run_in_process(tmp_path, urls)
    assert rows(tmp_path)["goodVideo00"]["status"] == "available"


@pytest.mark.skipif(_reads_mode_000(), reason="permissions do not bind this process")
def test_a_videos_folder_that_cannot_be_written_is_local_error(tmp_path, media):
    from pipeline.download.fetch import Fetcher
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_bytes(media["ok"])
    (tmp_path / "v").mkdir(mode=0o555)
    out = Fetcher(params(), tmp_path / "v", tmp_path).attempt("readOnlyVid", "file:src/a.mp4")
    assert (out["status"], out["reason"], out["kind"]) == ("transient_failure", "local_error",
                                                           "local"), out["message"]
    assert "Permission denied" in out["message"]


def test_special_files_are_refused_without_opening_them(tmp_path, media):
    """FIFOs named by a file: URL, sitting at a download's target or replacing a finished copy,
    and a directory at a target: each is that video's status; nothing blocks (timeout)."""
    src = tmp_path / "src"
    src.mkdir()
    for n in ("b", "f"):
        (src / f"{n}.mp4").write_bytes(media["ok"])
    first = {"copyIsFifo1": "file:src/b.mp4"}
    run_in_process(tmp_path, first)
    copy = tmp_path / rows(tmp_path)["copyIsFifo1"]["path"]
    copy.unlink()
    os.mkfifo(copy)
    os.mkfifo(src / "e.mp4")
    (tmp_path / "v" / "ta").mkdir(parents=True)
    os.mkfifo(tmp_path / "v" / "ta" / "targetFifo1.mp4")
    (tmp_path / "v" / "ta" / "targetDir01.mp4").mkdir()
    urls = {**first, "sourceFifo1": "file:src/e.mp4", "targetFifo1": "file:src/f.mp4",
            "targetDir01": "file:src/f.mp4", "fineVideo01": "file:src/f.mp4"}
    proj = project(tmp_path, urls)
    p = subprocess.run([sys.executable, "-m", "stages.download", *ARGS], cwd=proj,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 1, p.stderr                   # 4 of 5 failed: advice, not a crash
    assert "Traceback" not in p.stderr
    one_line([x for x in p.stderr.splitlines() if " ERROR " in x], "4 of 5 videos tried",
             "most often local_error (3)", "cannot be read or written")
    st = rows(proj)
    assert (st["sourceFifo1"]["status"], st["sourceFifo1"]["reason"]) == \
        ("transient_failure", "url_rejected")
    assert "a FIFO" in st["sourceFifo1"]["message"]
    for vid, what in (("copyIsFifo1", "a FIFO"), ("targetFifo1", "a FIFO"),
                      ("targetDir01", "a directory")):
        assert (st[vid]["reason"], st[vid]["kind"]) == ("local_error", "local"), vid
        assert what in st[vid]["message"], st[vid]["message"]
    assert st["fineVideo01"]["status"] == "available"
    assert (src / "e.mp4").is_fifo() and copy.is_fifo()  # refused, not removed


def test_a_changed_url_is_fetched_again_and_the_old_copy_moved_aside(tmp_path, media):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.mp4").write_bytes(media["ok"])
    (src / "b.mp4").write_bytes(media["other"])
    urls = {"urlChanged1": "file:src/a.mp4", "wasMissing1": "file:src/gone.mp4",
            "unchanged01": "file:src/a.mp4"}
    run_in_process(tmp_path, urls)
    assert rows(tmp_path)["wasMissing1"]["reason"] == "not_found"      # permanent
    old = tmp_path / rows(tmp_path)["urlChanged1"]["path"]

    urls.update(urlChanged1="file:src/b.mp4", wasMissing1="file:src/a.mp4")
    s = run_in_process(tmp_path, urls)                   # no --recheck-unavailable needed
    assert attempt_counts(tmp_path) == {"urlChanged1": 2, "wasMissing1": 2, "unchanged01": 1}
    st = rows(tmp_path)
    assert (tmp_path / st["urlChanged1"]["path"]).read_bytes() == media["other"]
    assert st["wasMissing1"]["status"] == "available"
    assert s["tried"] == 2 and s["checked"] == 1
    aside = tmp_path / "v" / "stale" / s["run_id"] / old.relative_to(tmp_path / "v")
    assert aside.read_bytes() == media["ok"]             # the old copy survives, byte-identical
    assert (aside.parents[1] / "README.txt").is_file()


@pytest.mark.parametrize("kind, advice", [
    ("network", "check the network connection"),
    ("rate_limited", "rate-limiting this machine"),
    ("url_rejected", "URLs are refused"),
])
def test_the_final_advice_follows_the_dominant_reason(kind, advice, tmp_path, server,
                                                      monkeypatch, caplog):
    base, dead, _ = server
    url = {"network": f"http://127.0.0.1:{dead}/x.mp4", "rate_limited": f"{base}/status/429",
           "url_rejected": "ftp://127.0.0.1/x.mp4"}[kind]
    proj = project(tmp_path, {"failVideo01": url, "failVideo02": url, "okVideo0001":
                              f"{base}/ok.mp4"})
    rc, errors = stage(proj, monkeypatch, caplog)
    assert rc == 1
    line = one_line(errors, f"most often {kind} (2)", advice)
    assert "2 of 3 videos tried" in line


# --------------------------------------------------------------------------- item 5: one writer


def _cmd() -> list[str]:
    return [sys.executable, "-m", "stages.download", *ARGS]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "AVL_LOG_LEVEL": "INFO"}


def _journal_rows(ledger: Path) -> int:
    return read_attempts(ledger).num_rows if ledger.is_dir() else 0


def test_one_writer_per_ledger_and_takeover_after_kill9(tmp_path, server, monkeypatch):
    base = server[0]
    ids = [f"lockVid{i:04d}" for i in range(24)]
    proj = project(tmp_path, {v: f"{base}/slow/ok.mp4" for v in ids})
    monkeypatch.setitem(SLOW, "s", 1.0)       # the first run is still busy when the second starts
    first = subprocess.Popen(_cmd(), cwd=proj, env=_env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and _journal_rows(proj / "l") < 4:
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.05)
        seen = {r["attempt_id"] for r in read_attempts(proj / "l").to_pylist()}
        second = subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        one_line([x for x in second.stderr.splitlines() if " ERROR " in x],
                 "l is being written by download@demo", f"(pid {first.pid} on ")
        assert first.poll() is None, "the first run ended before the second one started"
        # the refused run sealed and removed nothing: every row journaled so far is there
        assert seen <= {r["attempt_id"] for r in read_attempts(proj / "l").to_pylist()}
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    SLOW["s"] = 0.05
    kept = {r["attempt_id"] for r in read_attempts(proj / "l").to_pylist()}
    third = subprocess.run(_cmd(), cwd=proj, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr
    assert "taking over from download@demo" in third.stderr
    attempts = read_attempts(proj / "l").to_pylist()
    assert kept <= {a["attempt_id"] for a in attempts}
    assert sorted(a["video_id"] for a in attempts if a["status"] == "available") == ids


# --------------------------------------------------------------------------- item 9: one line


def _finished(tmp_path: Path, server) -> Path:
    """A project whose download has run once (two available videos)."""
    base = server[0]
    proj = project(tmp_path, {"firstVideo1": f"{base}/ok.mp4", "secondVide1": f"{base}/ok.mp4"})
    run_in_process(proj, {"firstVideo1": f"{base}/ok.mp4", "secondVide1": f"{base}/ok.mp4"})
    return proj


@pytest.mark.parametrize("content", [b"PAR1 this is not parquet PAR1", b""])
def test_a_corrupt_attempts_file_is_one_line_and_kept(content, tmp_path, server, monkeypatch,
                                                      caplog):
    proj = _finished(tmp_path, server)
    bad = next((proj / "l").glob("attempts-*.parquet"))
    bad.write_bytes(content)
    before = {"l": tree(proj / "l"), "m": tree(proj / "m"), "v": tree(proj / "v")}
    rc, errors = stage(proj, monkeypatch, caplog)
    assert rc == 2
    assert "unreadable attempts file" in one_line(errors, bad.relative_to(proj))
    assert {"l": tree(proj / "l"), "m": tree(proj / "m"), "v": tree(proj / "v")} == before


def test_a_corrupt_line_inside_a_journal_is_one_line_and_kept(tmp_path, server, monkeypatch,
                                                              caplog):
    proj = _finished(tmp_path, server)
    row = read_attempts(proj / "l").to_pylist()[0]
    with Journal(proj / "l", "20260101T000000Z-abcdef", 0) as j:
        j.append({**row, "attempt_id": "x1"})
    with open(j.path, "a") as f:
        f.write('{"attempt_id": "x2", "video_id": \x00\x00 garbage}\n')
    with Journal(proj / "l", "20260101T000000Z-abcdef", 0) as j:
        j.append({**row, "attempt_id": "x3"})
    before = j.path.read_bytes()
    rc, errors = stage(proj, monkeypatch, caplog)
    assert rc == 2
    assert "not a JSON attempt row" in one_line(errors, f"l/{j.path.name}, line 2")
    assert j.path.read_bytes() == before                 # not sealed, not cut, not deleted


@pytest.mark.parametrize("field, value, says", [
    ("video_id", "../../evil", "not path-safe"),
    ("video_id", "a/b/c", "not path-safe"),
    ("path", "../../../etc/passwd", "not a file inside the videos folder"),
    ("path", "/etc/passwd", "not a file inside the videos folder"),
])
def test_hostile_attempts_rows_are_refused_before_any_work(field, value, says, tmp_path, server,
                                                           monkeypatch, caplog):
    proj = _finished(tmp_path, server)
    f = next((proj / "l").glob("attempts-*.parquet"))
    t = pq.read_table(f)
    col = t.column(field).to_pylist()
    i = next(k for k, v in enumerate(col) if v is not None)
    col[i] = value
    pq.write_table(t.set_column(t.column_names.index(field), field,
                                pa.array(col, t.schema.field(field).type)), f)
    before = {"l": tree(proj / "l"), "m": tree(proj / "m"), "v": tree(proj / "v")}
    hits = len(server[2])
    rc, errors = stage(proj, monkeypatch, caplog)
    assert rc == 2
    assert says in one_line(errors, f.relative_to(proj), f"row {i}", repr(value))
    assert {"l": tree(proj / "l"), "m": tree(proj / "m"), "v": tree(proj / "v")} == before
    assert len(server[2]) == hits


@pytest.mark.parametrize("table, says", [
    (pa.table({"video_id": ["firstVideo1"], "split": ["train"]}), "field 'url': missing column"),
    (pa.table({"video_id": ["firstVideo1"], "url": [None], "split": ["train"]},
              schema=pa.schema([("video_id", pa.string()), ("url", pa.string()),
                                ("split", pa.string())])), "row 0, field 'url': empty"),
    (pa.table({"video_id": ["../../evil"], "url": ["http://x"], "split": ["train"]}),
     "not path-safe"),
    (pa.table({"video_id": ["firstVideo1", "firstVideo1"], "url": ["http://x"] * 2,
               "split": ["train"] * 2}), "duplicate video id"),
])
def test_a_bad_videos_parquet_is_one_line(table, says, tmp_path, monkeypatch, caplog):
    proj = project(tmp_path, {})
    pq.write_table(table, proj / "m" / "videos.parquet")
    rc, errors = stage(proj, monkeypatch, caplog)
    assert rc == 2
    one_line(errors, Path("m") / "videos.parquet", says)
    assert not (proj / "l").exists() and not (proj / "m" / "availability.parquet").exists()


def test_a_corrupt_videos_parquet_is_one_line(tmp_path, monkeypatch, caplog):
    proj = project(tmp_path, {})
    (proj / "m" / "videos.parquet").write_bytes(b"not parquet at all")
    rc, errors = stage(proj, monkeypatch, caplog)
    assert rc == 2
    assert "unreadable" in one_line(errors, Path("m") / "videos.parquet")


@pytest.mark.parametrize("content", [b"PAR1 garbage PAR1", b""])
def test_audit_isolates_a_dataset_with_a_corrupt_ledger(content, tmp_path, monkeypatch, caplog):
    """The corrupt dataset's reports and baseline stay as they were; the others are audited;
    the stage names the file in one error line and exits 2."""
    from tests.test_audit import attempt, make_manifest, write_ledger
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("datasets: {demo: demo, youcook2: youcook2}\n")
    for ds in ("demo", "youcook2"):
        mdir = Path("manifests", ds)
        make_manifest(mdir, ds, {"DDDDDDDDDD1": "train"}, [("d1:0", "DDDDDDDDDD1", "train")])
        write_ledger(mdir, [attempt("DDDDDDDDDD1", "available", has_audio=True)])
    assert audit_stage.main([]) == 0
    reports = tmp_path / "reports" / "availability"
    before = tree(reports)
    bad = Path("manifests", "youcook2", "availability.parquet")
    bad.write_bytes(content)
    (reports / "demo.md").unlink()                        # demo's reports are rewritten
    caplog.clear()
    assert audit_stage.main([]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "unreadable availability ledger" in one_line(errors, bad)
    after = tree(reports)
    assert {k: v for k, v in after.items() if k.startswith("youcook2")} == \
        {k: v for k, v in before.items() if k.startswith("youcook2")}
    assert "demo.md" in after
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["datasets"]["youcook2"]["status"] == "bad_inputs"
    assert summary["datasets"]["demo"]["status"] == "audited"
    assert bad.read_bytes() == content
