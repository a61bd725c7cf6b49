"""The evaluation's examples page in a real browser (headless Chromium): every image decodes
and every audio player loads its metadata, on the synthetic project of test_evaluate.py with and
without media files; a page with a broken image and a broken player fails the same check.
Skipped when chromium is missing, unless env CI is set (then a failure: CI must install it)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.download.ledger import AVAILABILITY_SCHEMA
from pipeline.evaluate import pages
from pipeline.evaluate.recall import evaluate
from pipeline.learn.runs import pretrain
from tests.browser import chromium_path, render_check
from tests.test_evaluate import TP, build_project


@pytest.fixture(scope="module", autouse=True)
def chromium():
    exe = chromium_path()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: install it "
                        "(bash setup.sh --test, or apt-get install chromium)")
        pytest.skip("chromium not installed (bash setup.sh --test installs it; with env CI "
                    "set this is a failure)")
    return exe


def _mp4(path, seconds: int, hue: int, freq: int) -> None:
    """A small test-pattern video (96x64, 4 fps, its hue turned) with a sine tone."""
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=96x64:rate=4,hue=h={hue}", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}", "-t", str(seconds), "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
                   check=True, timeout=60)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """test_evaluate.py's synthetic project (features and manifest, no media files)."""
    return build_project(tmp_path_factory.mktemp("pages"))


@pytest.fixture(scope="module")
def checkpoint(project):
    """A model pretrained for 2 steps (the page, not the recall, is under test here)."""
    out = project / "models" / "pretrain"
    pretrain("demo", project / "features", project / "manifest", out,
             dataclasses.replace(TP, epochs=1))
    return out / "final.pt"


@pytest.fixture(scope="module")
def ledger(project):
    """Media files for 7 of the 8 val videos (14 s, like their features) and an availability
    ledger pointing at them; synthvid023 is listed without a file."""
    videos = project / "videos"
    videos.mkdir(exist_ok=True)
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(16, 24):
        vid = f"synthvid{i:03d}"
        rel = None
        if i < 23:
            rel = f"videos/{vid}.mp4"
            _mp4(project / rel, 14, 45 * (i - 16), 220 + 60 * (i - 16))
        rows.append({"video_id": vid, "url": f"file:{vid}", "split": "val",
                     "status": "ok" if rel else "failed", "path": rel, "attempts": 1,
                     "first_seen": now, "last_checked": now})
    path = project / "manifest" / "availability.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=AVAILABILITY_SCHEMA), path)
    return path


def _report(project, checkpoint, out, **kw):
    evaluate("demo", project / "features", project / "manifest", {"zero_shot": checkpoint},
             out, examples=2, **kw)
    return out / "demo.html"


def test_report_without_media_renders(project, checkpoint, tmp_path):
    page = _report(project, checkpoint, tmp_path)
    r = render_check(page)
    # spectrograms only: 2 queries x (1 A->V + 5 V->A), no audio (no media file)
    assert r["img_total"] == 12 and r["img_ok"] == r["img_total"], r
    assert r["audio_total"] == 0, r


def test_report_with_media_renders_every_frame_and_player(project, checkpoint, ledger,
                                                          tmp_path):
    page = _report(project, checkpoint, tmp_path, availability=ledger, videos_root=project)
    text = page.read_text()
    assert text.count('<audio controls preload="metadata" src="data:audio/mpeg;base64,') > 0
    r = render_check(page)
    assert r["img_total"] > 12 and r["img_ok"] == r["img_total"], r
    # A->V: 2 query players; V->A: 5 per query; clips of synthvid023 (no file) have none
    assert r["audio_total"] >= 8 and r["audio_ok"] == r["audio_total"], r
    assert all(state >= 1 and err == 0 for state, err in r["audio_states"]), r
    assert page.stat().st_size < 3_000_000


def test_pages_helpers_render_and_a_broken_page_fails(tiny_mp4, tmp_path):
    media = tmp_path / "x.mp4"
    media.write_bytes(tiny_mp4)
    frame, audio = pages.frame_png(media, 0.5), pages.audio_data_uri(media, 0.0, 1.0)
    wave = pages.audio_data_uri_from_wave(0.3 * np.sin(np.arange(8000) / 5), 16000)
    assert frame and audio and wave.startswith("data:audio/")
    assert pages.frame_png(tmp_path / "nope.mp4", 0.5) is None
    assert pages.audio_data_uri(media, 5.0, 6.0) is None          # past the end: no audio
    good = tmp_path / "good.html"
    good.write_text(pages.page("good", "<p>x</p>", [
        pages.img_tag(frame), pages.audio_tag(audio), pages.audio_tag(wave),
        pages.img_tag(pages.spectrogram_png(np.random.default_rng(0).random((40, 50))))]))
    r = render_check(good)
    assert (r["img_ok"], r["img_total"], r["audio_ok"], r["audio_total"]) == (2, 2, 2, 2), r
    bad = tmp_path / "bad.html"
    bad.write_text(pages.page("bad", "", [pages.img_tag(frame), pages.img_tag("AAAA"),
                                          pages.audio_tag("data:audio/mpeg;base64,AAAA"),
                                          pages.audio_tag(audio)]))
    r = render_check(bad)
    assert (r["img_ok"], r["img_total"], r["audio_ok"], r["audio_total"]) == (1, 2, 1, 2), r


def test_render_check_says_when_chromium_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("CHROMIUM", "no-such-browser-here")
    page = tmp_path / "p.html"
    page.write_text(pages.page("t", "", []))
    with pytest.raises(RuntimeError, match="chromium not found"):
        render_check(page)
    assert shutil.which("no-such-browser-here") is None
