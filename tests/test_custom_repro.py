"""Own media end to end with `dvc repro`: a `custom` dataset pointed at a folder of generated
files (good, corrupt, silent, no audio, names with spaces and unicode) and a URL list served on
127.0.0.1 goes manifest -> download -> extract -> evaluate with the demo-trained model; every
file gets a status, local files are referenced where they are (never copied)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import copy_project
from tests.test_custom import make_media, own_folder
from tests.test_dvc_repro import TINY_CLUSTER, TINY_DEMO, TINY_EXTRACT, TINY_FINETUNE, \
    TINY_TEXT, TINY_TRAIN, _run, _set_params

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("git") is None,
                                reason="needs ffmpeg and git")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two media files (one with a space in its URL) and a 404 on a local HTTP server."""
    import http.server
    import threading
    folder = tmp_path_factory.mktemp("www")
    make_media(folder / "talk.mp4", seconds=5)
    make_media(folder / "second talk.mp4", seconds=4, audio="sine=frequency=880")
    handler = type("H", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a: None})
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(folder), **k))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def project(tmp_path_factory, served) -> Path:
    dest = copy_project(tmp_path_factory.mktemp("own") / "p")

    def tiny(d):
        d["demo"].update(TINY_DEMO)
        d["cluster"].update(TINY_CLUSTER)
        d["extract"].update(TINY_EXTRACT)
        d["train"].update(TINY_TRAIN)
        d["finetune"].update(TINY_FINETUNE)
        d["text"]["train"].update(TINY_TEXT["train"])
        d["text"]["finetune"].update(TINY_TEXT["finetune"])
        d["datasets"]["mine"] = "custom"
        # the demo model's backbones: seeded random, so its features are comparable offline
        d["extract"].update(weights_2d="random", weights_3d="random")
        d["manifest"]["mine"] = {"media": "media", "media_list": "list.csv"}
        d["evaluate"].update(datasets=["demo", "mine"], settings=["zero_shot"])
    _set_params(dest, tiny)
    base = dest / "data/sources/mine"
    own_folder(base)
    (base / "list.csv").write_text(
        f"url,split\n{served}/talk.mp4,test\n{served}/second%20talk.mp4,test\n"
        f"{served}/gone.mp4,test\n")
    _run(dest, "git", "init", "-q")
    _run(dest, "git", "add", "-A")
    _run(dest, "git", "commit", "-qm", "clone")
    _run(dest, sys.executable, "-m", "stages.sources", "mine")   # prepares manifests/mine
    _run(dest, "dvc", "repro")
    return dest


def test_every_file_has_a_status_and_local_files_are_referenced(project):
    videos = {v["video_id"]: v for v in
              pq.read_table(project / "manifests/mine/videos.parquet").to_pylist()}
    avail = {a["video_id"]: a for a in
             pq.read_table(project / "manifests/mine/availability.parquet").to_pylist()}
    assert set(avail) == set(videos) and len(videos) == 8
    by_name = {videos[v]["name"]: a for v, a in avail.items()}
    for name in ("good.mp4", "silent.mp4", "noaudio.mp4", "sub dir/Crème brûlée #1.mkv"):
        a = by_name[name]
        assert a["status"] == "available", (name, a["message"])
        # referenced in place: the ledger names the file in data/sources, nothing copied
        assert a["path"] == f"data/sources/mine/media/{name}"
    assert by_name["noaudio.mp4"]["has_audio"] is False
    assert by_name["corrupt.mp4"]["status"] == "unavailable"
    assert by_name["corrupt.mp4"]["reason"] == "file_invalid"
    assert (project / "data/sources/mine/media/corrupt.mp4").is_file()   # never deleted
    served = {n: a for n, a in by_name.items() if n.startswith("http")}
    assert sorted(a["status"] for a in served.values()) == ["available", "available",
                                                            "unavailable"]
    copies = [p for p in (project / "data/videos/mine").rglob("*") if p.is_file()]
    assert len(copies) == 2 and all(p.stat().st_size > 1000 for p in copies)   # only the URLs

    index = {r["video_id"]: r["status"] for r in
             pq.read_table(project / "data/features/mine/index.parquet").to_pylist()}
    status = {videos[v]["name"]: s for v, s in index.items()}
    assert status["good.mp4"] == "ok" and status["sub dir/Crème brûlée #1.mkv"] == "ok"
    assert status["silent.mp4"] == "silent_audio"
    assert status["noaudio.mp4"] == "no_audio_stream"
    assert status["corrupt.mp4"] == "not_downloaded"


def test_evaluated_with_the_demo_model(project):
    recall = json.loads((project / "reports/recall/mine.json").read_text())
    assert any(k.startswith("zero_shot/") and "R@1" in k for k in recall)
    assert (project / "reports/recall/mine.md").is_file()
    assert "up to date" in _run(project, "dvc", "status")
