"""The second-language demo: German speech only where its truth says, no tones, no annotations,
deterministic bytes, clear errors; the English demo's speech path unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import demo
from pipeline.data import demo_language as dl
from pipeline.data.datasets.common import stable_id
from stages.demo_language import main

TINY = dl.DemoLanguageParams(n_videos=3, min_duration_s=10.0, max_duration_s=12.0,
                             n_concepts=12, frame_size="192x144", fps=25)
SR = 16000  # Hz: decode as the extraction stage does


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("de")
    summary = dl.generate(TINY, root / "sources" / "media", root / "truth")
    return root / "sources" / "media", root / "truth", summary


def _audio(path: Path) -> np.ndarray:
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-ac", "1",
                        "-ar", str(SR), "-f", "f32le", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(r.stdout, np.float32).astype(np.float64)


def _hashes(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_files_truth_and_summary(tiny):
    media, truth, summary = tiny
    assert sorted(f.name for f in media.iterdir()) == ["de-000.mp4", "de-001.mp4", "de-002.mp4"]
    # nothing but media in the media folder: stage segment@ reads all of it
    assert not (media / "summary.json").exists() and (truth / "summary.json").exists()
    assert json.loads((truth / "summary.json").read_text()) == summary
    assert summary["language"] == "de" and summary["videos"] == 3
    for f in media.iterdir():
        r = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(f)],
                           capture_output=True, text=True, check=True)
        codecs = sorted(s["codec_name"] for s in json.loads(r.stdout)["streams"])
        assert codecs == ["aac", "h264"]
    segs = pq.read_table(truth / "segments.parquet").to_pylist()
    assert segs and {s["video_id"] for s in segs} == {stable_id(f"de-00{i}.mp4") for i in range(3)}
    # the same concepts as the English demo, with its visuals
    assert {s["concept"] for s in segs} <= set(demo.CONCEPT_BY_NAME)


def test_names_spoken_in_the_language(tiny, tmp_path):
    _, truth, summary = tiny
    words = pq.read_table(truth / "words.parquet").to_pylist()
    de = dl.LANGUAGES["de"]
    assert words and all(w["word"] == de.names[w["concept"]] for w in words)
    assert summary["concepts"] == {c: de.names[c] for c in summary["concepts"]}
    # espeak-ng got the German text and voice: the synthesized word has the length of a direct
    # `espeak-ng -v de` call on "Rote Bete", not that of the English "beet"
    voice, speed, pitch = de.voices[0]
    got = demo._speak(["beet"], tmp_path, de.voices[:1], de.names)[("beet", 0)]
    direct = tmp_path / "direct.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w",
                    str(direct), "Rote Bete"], check=True)
    with wave.open(str(direct)) as w:
        n = round(w.getnframes() * demo.SAMPLE_RATE / w.getframerate())
    english = demo._speak(["beet"], tmp_path, demo.VOICES[:1])[("beet", 0)]
    assert len(got) == n and len(english) < 0.8 * n


def test_speech_where_the_truth_says_and_no_tone(tiny):
    media, truth, _ = tiny
    words = pq.read_table(truth / "words.parquet").to_pylist()
    for f in sorted(media.iterdir()):
        x = _audio(f)
        near = np.zeros(len(x), bool)
        mine = [w for w in words if w["file"] == f.name]
        assert mine, f
        for w in mine:
            a, b = round(w["start_s"] * SR), round(w["end_s"] * SR)
            assert np.sqrt(np.mean(x[a:b] ** 2)) > 0.03, (f.name, w)   # a voice is heard
            near[max(0, a - SR // 5):b + SR // 5] = True
        # elsewhere, inside the concept segments too, silence: no concept tone, no noise
        assert np.sqrt(np.mean(x[~near] ** 2)) < 2e-3, f.name
        assert np.abs(x[~near]).max() < 0.02, f.name


def test_silero_finds_the_speech(tiny, tmp_path):
    from pipeline.analysis.speech import Detector, detect_all, overlap
    media, truth, _ = tiny
    words = pq.read_table(truth / "words.parquet").to_pylist()
    got = detect_all({f.name: f for f in media.iterdir()}, tmp_path / "journal.jsonl",
                     Detector(), "test")
    spoken = sum(w["end_s"] - w["start_s"] for w in words)
    found = sum(overlap(w["start_s"], w["end_s"], got[w["file"]]["segments"]) for w in words)
    assert found >= 0.8 * spoken, (found, spoken)


def test_same_seed_same_bytes_and_folder_replaced(tiny, tmp_path):
    media, truth, _ = tiny
    again = tmp_path / "media"
    again.mkdir()
    (again / "stale.mp4").write_bytes(b"old")       # an earlier run's leftover
    dl.generate(TINY, again, tmp_path / "truth")
    assert _hashes(again) == _hashes(media)          # stale.mp4 gone, the rest identical
    for name in ("words.parquet", "segments.parquet"):
        assert pq.read_table(tmp_path / "truth" / name).equals(pq.read_table(truth / name))


def test_languages_table_is_complete():
    assert {"de", "fr"} <= set(dl.LANGUAGES)
    for code, lang in dl.LANGUAGES.items():
        assert lang.code == code and set(lang.names) == set(demo.CONCEPT_BY_NAME)
        assert 1 <= len(lang.voices) <= len(demo.VOICES)
        for voice, _, _ in lang.voices:     # every voice exists in this espeak-ng
            r = subprocess.run(["espeak-ng", "-v", voice, "-q", "x"], capture_output=True)
            assert r.returncode == 0, (code, voice, r.stderr)


def test_unknown_language_names_the_table(tmp_path):
    with pytest.raises(dl.DemoLanguageError, match="unknown demo language 'xx'.*de, fr, es"):
        dl.generate(dl.DemoLanguageParams(language="xx"), tmp_path / "m", tmp_path / "t")
    assert not (tmp_path / "m").exists()


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    os.symlink(shutil.which("ffmpeg"), bin_ / "ffmpeg")
    monkeypatch.setenv("PATH", str(bin_))            # a machine with ffmpeg but no espeak-ng
    with pytest.raises(dl.DemoLanguageError, match="espeak-ng not found: install it"):
        dl.generate(TINY, tmp_path / "m", tmp_path / "t")


def test_truth_must_be_outside_the_media(tmp_path):
    with pytest.raises(dl.DemoLanguageError, match="outside the media folder"):
        dl.generate(TINY, tmp_path / "m", tmp_path / "m" / "truth")


def test_english_speech_path_unchanged(tmp_path):
    # the defaults of the parametrised _speak are the English demo's voices and names
    names = ["egg", "mint"]
    a = demo._speak(names, tmp_path)
    b = demo._speak(names, tmp_path, demo.VOICES, {n: n for n in names})
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_stage(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    datasets = "datasets:\n  demo: demo\n  demo_fr: custom\n"   # a demo_language is a dataset
    params.write_text(datasets + "demo_language:\n  demo_fr:\n    language: fr\n    n_videos: 2\n"
                      "    min_duration_s: 6\n    max_duration_s: 6\n    frame_size: 128x96\n"
                      "    fps: 10\n")
    assert main(["--params", str(params), "--name", "demo_fr"]) == 0
    assert sorted(f.name for f in Path("data/sources/demo_fr/media").iterdir()) == \
        ["fr-000.mp4", "fr-001.mp4"]
    words = pq.read_table("data/demo_language/demo_fr/words.parquet").to_pylist()
    assert words and all(w["word"] == dl.LANGUAGES["fr"].names[w["concept"]] for w in words)
    assert "language: fr" in Path("data/demo_language/demo_fr/params.resolved.yaml").read_text()
    # a missing section, a bad value and an unknown language: exit 2, one line
    assert main(["--params", str(params), "--name", "demo_xx"]) == 2
    assert main(["--params", str(params), "--name", "demo_fr", "--language", "xx"]) == 2
    params.write_text(datasets + "demo_language:\n  demo_fr:\n    frame_size: 1x1\n")
    assert main(["--params", str(params), "--name", "demo_fr"]) == 2
    assert "frame_size" in caplog.text
