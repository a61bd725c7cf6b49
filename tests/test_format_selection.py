"""The default format selection (params download.format / format_sort) on a YouTube-like format
list: DASH video-only and audio-only formats plus a combined one, served from 127.0.0.1. It must
pick the smallest video at >= 360p and the smallest audio, and merge them into one file."""
from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading

import pytest
from yt_dlp.extractor.common import InfoExtractor

from pipeline.config import DownloadParams
from pipeline.download.fetch import Fetcher

sys.modules.setdefault("tests.test_format_selection", sys.modules[__name__])
BASE: list[str] = []     # the local server's URL, set by the fixture
FORMATS: list[dict] = []


class FormatsIE(InfoExtractor):
    IE_NAME = "FakeFormats"
    _VALID_URL = r"https?://formats\.youtube\.test/watch\?v=(?P<id>[A-Za-z0-9_-]{11})"

    def _real_extract(self, url):
        return {"id": self._match_id(url), "title": "t",
                "formats": [{**f, "url": f"{BASE[0]}/{f['file']}"} for f in FORMATS]}


def _ffmpeg(out, *args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(out)], check=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    for h in (240, 360, 720):
        _ffmpeg(d / f"v{h}.mp4", "-f", "lavfi", "-i", f"testsrc=size={h * 4 // 3}x{h}:rate=10",
                "-t", "1", "-an", "-c:v", "libx264")
    for br in ("32k", "128k"):
        _ffmpeg(d / f"a{br}.m4a", "-f", "lavfi", "-i", "sine", "-t", "1", "-c:a", "aac",
                "-b:a", br)
    _ffmpeg(d / "c360.mp4", "-f", "lavfi", "-i", "testsrc=size=480x360:rate=10", "-f", "lavfi",
            "-i", "sine", "-t", "1", "-c:v", "libx264", "-c:a", "aac", "-shortest")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(d))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    BASE[:] = [f"http://127.0.0.1:{srv.server_address[1]}"]
    size = {p.name: p.stat().st_size for p in d.iterdir()}
    video = dict(ext="mp4", acodec="none", vcodec="avc1.4d401e", protocol="https")
    audio = dict(ext="m4a", vcodec="none", acodec="mp4a.40.2", protocol="https")
    FORMATS[:] = [
        {"format_id": "160", "file": "v240.mp4", "height": 240, "width": 320, **video},
        {"format_id": "134", "file": "v360.mp4", "height": 360, "width": 480, **video},
        {"format_id": "136", "file": "v720.mp4", "height": 720, "width": 960, **video},
        {"format_id": "139", "file": "a32k.m4a", **audio},
        {"format_id": "140", "file": "a128k.m4a", **audio},
        {"format_id": "18", "file": "c360.mp4", "height": 360, "width": 480, "ext": "mp4",
         "vcodec": "avc1.42001E", "acodec": "mp4a.40.2", "protocol": "https"},
    ]
    for f in FORMATS:
        f["filesize"] = size[f["file"]]
    yield
    srv.shutdown()
    srv.server_close()


def test_default_selection_is_smallest_360p_video_plus_smallest_audio(tmp_path, served):
    f = Fetcher(DownloadParams(), tmp_path / "v", tmp_path, extractors=(FormatsIE,))
    out = f.attempt("fmtsel-0001", "https://formats.youtube.test/watch?v=fmtsel-0001")
    assert out["status"] == "available", out["message"]
    assert out["format_id"] == "134+139"
    assert (out["height"], out["has_audio"]) == (360, True)
    assert out["path"] == "v/fm/fmtsel-0001.mp4"  # merged into the first container choice


def test_without_a_360p_video_the_best_below_is_taken(tmp_path, served):
    saved = list(FORMATS)
    FORMATS[:] = [x for x in saved if x["format_id"] in ("160", "139", "140")]
    try:
        f = Fetcher(DownloadParams(), tmp_path / "v", tmp_path, extractors=(FormatsIE,))
        out = f.attempt("fmtsel-0002", "https://formats.youtube.test/watch?v=fmtsel-0002")
    finally:
        FORMATS[:] = saved
    assert out["status"] == "available", out["message"]
    assert out["format_id"] == "160+139" and out["height"] == 240 and out["has_audio"]
