"""The demo generator: real media, valid annotations, determinism, and concept signatures."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import demo
from pipeline.config import DemoParams
from pipeline.data.datasets.youcook2 import parse_file
from pipeline.data.manifest import validate

# 4 small videos of 10-12 s, so each holds 2 segments; fps 25 and odd sizes catch hard-coding
TINY = dataclasses.replace(DemoParams(), n_videos=4, n_val=1, min_duration_s=10.0,
                           max_duration_s=12.0, segments_per_video=2, n_concepts=12,
                           frame_sizes=["192x144", "256x144"], fps=25)
SR = 16000  # Hz: decode audio as the extraction stage does


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("demo")
    summary = demo.generate(TINY, out, "data/demo")
    return out, summary, json.loads((out / "annotations.json").read_text())["database"]


def _probe(path: Path) -> dict:
    r = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json",
                        str(path)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def _frame(path: Path, t: float, w: int, h: int) -> np.ndarray:
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{t:.3f}", "-i", str(path),
                        "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
                       capture_output=True, check=True)
    return np.frombuffer(r.stdout, np.uint8).reshape(h, w, 3).astype(np.float64)


def _audio(path: Path) -> np.ndarray:
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-ac", "1",
                        "-ar", str(SR), "-f", "f32le", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(r.stdout, np.float32).astype(np.float64)


def _spectrum(x: np.ndarray, n: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean power spectrum over Hann-windowed frames: (freqs Hz, power)."""
    frames = np.stack([x[i:i + n] for i in range(0, len(x) - n + 1, n // 2)])
    p = (np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2).mean(0)
    return np.fft.rfftfreq(n, 1 / SR), p


def _band(f: np.ndarray, p: np.ndarray, hz: float, rel: float) -> float:
    return float(p[(f >= hz * (1 - rel)) & (f <= hz * (1 + rel))].mean())


def test_files_and_streams(tiny):
    out, summary, db = tiny
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(f"{v}.mp4" for v in db)
    assert summary["videos"] == 4 and summary["validation_videos"] == 1
    for vid, entry in db.items():
        info = _probe(out / "videos" / f"{vid}.mp4")
        v = [s for s in info["streams"] if s["codec_type"] == "video"]
        a = [s for s in info["streams"] if s["codec_type"] == "audio"]
        assert len(v) == 1 and len(a) == 1
        assert (v[0]["codec_name"], v[0]["pix_fmt"]) == ("h264", "yuv420p")
        assert f"{v[0]['width']}x{v[0]['height']}" in TINY.frame_sizes
        assert v[0]["r_frame_rate"] == f"{TINY.fps}/1"
        assert (a[0]["codec_name"], a[0]["sample_rate"]) == ("aac", "44100")
        for d in (info["format"]["duration"], v[0]["duration"], a[0]["duration"]):
            assert abs(float(d) - entry["duration"]) < 0.1, (vid, d, entry["duration"])
        assert TINY.min_duration_s - 0.1 <= entry["duration"] <= TINY.max_duration_s + 0.1
        assert entry["video_url"] == f"file:data/demo/videos/{vid}.mp4"


def test_annotations_parse_and_validate(tiny):
    out, summary, db = tiny
    path = out / "annotations.json"
    m = parse_file(path, "demo", file_urls=True)
    validate(m, str(path))
    assert len(m.videos) == 4 and len(m.clips) == summary["segments"]
    assert sorted(v["split"] for v in m.videos) == ["train", "train", "train", "val"]
    assert any(vid.startswith("-") for vid in db)
    for entry in db.values():
        segs = [a["segment"] for a in entry["annotations"]]
        assert segs == sorted(segs)
        for (a, b), nxt in zip(segs, segs[1:] + [[None, None]]):
            assert isinstance(a, int) and isinstance(b, int)
            assert 3 <= b - a <= 8 and b <= entry["duration"]
            # the object lingers after b (demo.VISIBLE_AFTER_S), then >= 1 s of background
            assert nxt[0] is None or b + demo.VISIBLE_AFTER_S + 1 <= nxt[0]
        for ann in entry["annotations"]:
            assert ann["concept"] in ann["sentence"] and ann["concept"] in demo.CONCEPT_BY_NAME


def test_deterministic_bytes(tiny, tmp_path):
    out, _, _ = tiny
    demo.generate(TINY, tmp_path / "again", "data/demo")
    again = tmp_path / "again"
    assert (again / "annotations.json").read_bytes() == (out / "annotations.json").read_bytes()
    for p in (out / "videos").iterdir():
        assert (again / "videos" / p.name).read_bytes() == p.read_bytes(), p.name


def test_different_seed_differs(tmp_path):
    other = dataclasses.replace(TINY, seed=7, min_duration_s=5.0, max_duration_s=6.0,
                                speech=False)
    a = demo.generate(other, tmp_path / "a", "data/demo")
    b = demo.generate(dataclasses.replace(other, seed=8), tmp_path / "b", "data/demo")
    ann = [(tmp_path / d / "annotations.json").read_bytes() for d in ("a", "b")]
    assert ann[0] != ann[1]
    assert a["videos"] == b["videos"] == 4
    ids_a = {p.name for p in (tmp_path / "a/videos").iterdir()}
    assert ids_a.isdisjoint(p.name for p in (tmp_path / "b/videos").iterdir())


def _segments(tiny):
    out, _, db = tiny
    plans = {p.video_id: p for p in demo.plan(TINY)}
    for vid, entry in db.items():
        p = plans[vid]
        segs = [a["segment"] for a in entry["annotations"]]
        assert [[s.start_s, s.end_s] for s in p.segments] == segs
        yield out / "videos" / f"{vid}.mp4", p


def _object_colour(frame: np.ndarray, background: np.ndarray, p) -> str:
    """The concept whose colour the pixels that differ between the frames have; asserts that
    they cover about the object's area."""
    changed = np.abs(frame - background).sum(-1) > 50
    disc = np.pi * (p.height / 6) ** 2        # the object is ~ a third of the height
    assert 0.1 * disc < changed.sum() < 2.0 * disc, (p.video_id, changed.sum(), disc)
    # inner pixels only: x264's halved chroma blends the edges with the background
    inner = changed.copy()
    for ax, k in ((0, 1), (0, -1), (1, 1), (1, -1)):
        inner &= np.roll(changed, k, axis=ax)
    colour = np.median(frame[inner], axis=0)   # the pattern shade covers < a third
    dist = {c.name: np.linalg.norm(colour - np.array(c.rgb, float)) for c in demo.CONCEPTS}
    return min(dist, key=dist.get)


def test_visual_signature(tiny):
    """The object appears at the segment's start in the concept's colour, stays on screen until
    VISIBLE_AFTER_S after its end, and nothing else changes in the gaps."""
    shown = 0
    for path, p in _segments(tiny):
        for s in p.segments:
            # 0.2-0.3 s apart: the background hardly drifts, so what changed is the object
            before = _frame(path, s.start_s - 0.1, p.width, p.height)
            during = _frame(path, s.start_s + 0.1, p.width, p.height)
            assert _object_colour(during, before, p) == s.concept, (p.video_id, s)
            gap = _frame(path, s.start_s - 0.5, p.width, p.height)
            assert (np.abs(before - gap).sum(-1) > 50).mean() < 0.01
            gone_at = s.end_s + demo.VISIBLE_AFTER_S
            if gone_at + 0.1 < p.duration_s:
                lingering = _frame(path, gone_at - 0.2, p.width, p.height)
                after = _frame(path, gone_at + 0.1, p.width, p.height)
                assert _object_colour(lingering, after, p) == s.concept, (p.video_id, s)
                shown += 1
    assert shown >= 4


def test_audio_signature(tiny):
    """A segment with its sound peaks at its concept's tone (absent outside segments); every
    kind of segment (sound and name, sound only, name only) occurs."""
    kinds = set()
    for path, p in _segments(tiny):
        x = _audio(path)
        inside = np.zeros(len(x), bool)
        for s in p.segments:
            inside[round((s.start_s - 0.1) * SR):round((s.end_s + 0.1) * SR)] = True
        f, p_out = _spectrum(x[~inside])
        for s in p.segments:
            kinds.add((s.sound, s.spoken))
            f, p_in = _spectrum(x[round((s.start_s + 0.1) * SR):round((s.end_s - 0.1) * SR)])
            f0 = demo.CONCEPT_BY_NAME[s.concept].f0_hz * demo.pitch_factor(s.scale)
            # outside the segments: silence (demo.noise_level 0) or the noise band
            ratio = _band(f, p_in, f0, 0.03) / max(_band(f, p_out, f0, 0.03), 1e-20)
            if not s.sound:   # narration only (its voice can have energy near a low f0)
                continue
            assert ratio > 10, (p.video_id, s.concept, ratio)   # there, and not outside
            if not s.spoken:    # (a spoken name can be louder than the tone it is over)
                audible = (f > 60) & (f < 7600)
                peak = f[audible][np.argmax(p_in[audible])]
                # concept fundamentals are >= 30 % apart, so this also tells the concepts apart
                assert abs(peak / f0 - 1) < 0.03, (p.video_id, s.concept, peak, f0)
    assert kinds == {(True, True), (True, False), (False, True)}


def test_concepts_balanced_across_splits():
    p = dataclasses.replace(DemoParams(), n_videos=36, n_val=12)
    counts = {}
    for v in demo.plan(p):
        for s in v.segments:
            counts.setdefault(s.concept, {"training": 0, "validation": 0})[v.subset] += 1
        assert len({s.concept for s in v.segments}) == len(v.segments)  # no repeat in a video
    assert len(counts) == p.n_concepts
    for split in ("training", "validation"):
        n = [c[split] for c in counts.values()]
        assert min(n) >= 1 and max(n) - min(n) <= 1, (split, counts)


def test_without_speech_and_espeak_missing(tmp_path, monkeypatch):
    real_which = demo.shutil.which
    monkeypatch.setattr(demo.shutil, "which",
                        lambda name: None if name == "espeak-ng" else real_which(name))
    small = dataclasses.replace(DemoParams(speech=False), n_videos=4, n_val=1,
                                min_duration_s=6.0, max_duration_s=8.0, frame_sizes=["128x96"])
    summary = demo.generate(small, tmp_path / "quiet", "data/demo")
    assert summary["videos"] == 4 and len(list((tmp_path / "quiet/videos").glob("*.mp4"))) == 4
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng.*demo.speech: false"):
        demo.generate(dataclasses.replace(small, speech=True), tmp_path / "loud", "data/demo")


def test_ffmpeg_failure_names_the_video(tmp_path, monkeypatch):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'Unknown encoder libx264' >&2\nexit 3\n")
    fake.chmod(0o755)
    real_which = demo.shutil.which
    monkeypatch.setattr(demo.shutil, "which",
                        lambda name: str(fake) if name == "ffmpeg" else real_which(name))
    small = dataclasses.replace(TINY, speech=False, workers=1)
    with pytest.raises(RuntimeError, match=r"ffmpeg failed for video '[A-Za-z0-9_-]{11}' "
                                           r"\(exit 3\): Unknown encoder libx264"):
        demo.generate(small, tmp_path / "out", "data/demo")
    assert not (tmp_path / "out/annotations.json").exists()
    assert not list((tmp_path / "out/videos").iterdir())


@pytest.mark.parametrize("root", ["/abs/demo", "../demo", "data/../../x"])
def test_url_root_must_stay_relative(tmp_path, root):
    with pytest.raises(ValueError, match="url_root"):
        demo.generate(TINY, tmp_path, root)
