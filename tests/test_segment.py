"""Speech-segmented clip builder (issue 15 item 1): espeak-ng German speech at known times ->
clips of 5-50 s covering the speech, video-disjoint seeded splits, the custom manifest's round
trip of the CSV, the journal, and bad media (no audio, corrupt, silent, tone-only, empty)."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.analysis.speech import Detector, overlap
from pipeline.data import segment as sg
from pipeline.data.segment import Clipping, Draw, SegmentError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None,
                                reason="needs espeak-ng and ffmpeg (setup.sh installs both)")
RATE = 16000
DET = Detector(min_speech_ms=100)
SENTENCES = ["Heute kochen wir eine Suppe mit Karotten und Zwiebeln.",
             "Zuerst schneiden wir das Gemüse in kleine Stücke.",
             "Dann braten wir das Fleisch in der heißen Pfanne.",
             "Jetzt kommt etwas Salz und Pfeffer dazu.",
             "Wir lassen alles zehn Minuten langsam kochen.",
             "Zum Schluss probieren wir die fertige Suppe."]


def _say(text: str, tmp: Path) -> np.ndarray:
    """espeak-ng German speech at 16 kHz, peak 0.6, without its leading/trailing silence."""
    path = tmp / "say.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-w", str(path), text], check=True)
    with wave.open(str(path)) as w:
        sr, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    x = x.astype(np.float64) / 32768.0
    m = round(len(x) * RATE / sr)
    x = np.fft.irfft(np.fft.rfft(x), m) * (m / len(x))
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    x = x[loud[0]:loud[-1] + 1]
    return 0.6 * x / np.abs(x).max()


def _track(seconds: float, parts: list[tuple[float, np.ndarray]], seed: int = 0
           ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Quiet noise with each (at, speech) added -> (signal, the speech spans in seconds)."""
    x = 0.005 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))
    spans = []
    for at, s in parts:
        a = int(at * RATE)
        x[a:a + len(s)] += s
        spans.append((at, at + len(s) / RATE))
    return x, spans


def _wav(path: Path, x: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def _mp4(path: Path, audio: Path | None, seconds: float) -> Path:
    """A small video with `audio` (a wav) as AAC, or without an audio stream."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size=96x64:rate=10:duration={seconds}"]
    if audio is not None:
        args += ["-i", str(audio), "-c:a", "aac"]
    _ffmpeg(*args, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-shortest", str(path))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """data/sources/mine/media with known speech (name -> spans) and bad files:
    long.wav 75 s of sentences ~1 s apart (one group > 50 s: cut), clip.mp4 30 s with a short
    phrase at 10 s (widened) and a sentence at 20 s, four 12 s one-sentence wavs, tiny.wav a
    short phrase in 3 s (too short, no room: dropped), silent.wav, tone.wav (no speech),
    noaudio.mp4 (no audio stream) and corrupt.mp4 (random bytes)."""
    base = tmp_path_factory.mktemp("segment")
    m = base / "data/sources/mine/media"
    m.mkdir(parents=True)
    says = [_say(t, base) for t in SENTENCES]
    short = _say("Hallo zusammen", base)
    truth = {}
    parts, at = [], 1.0
    while at < 66:
        s = says[len(parts) % len(says)]
        parts.append((at, s))
        at += len(s) / RATE + 0.9
    x, truth["long.wav"] = _track(75, parts)
    _wav(m / "long.wav", x)
    x, truth["sub/clip.mp4"] = _track(30, [(10.0, short), (20.0, says[1])], 1)
    (m / "sub").mkdir()
    _mp4(m / "sub/clip.mp4", _wav(base / "clip.wav", x), 30)
    for i in range(4):
        x, truth[f"one{i}.wav"] = _track(12, [(3.0, says[i + 2])], 2 + i)
        _wav(m / f"one{i}.wav", x)
    x, truth["tiny.wav"] = _track(3, [(0.8, short)], 9)
    _wav(m / "tiny.wav", x)
    _wav(m / "silent.wav", np.zeros(5 * RATE))
    _wav(m / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * np.arange(5 * RATE) / RATE))
    _mp4(m / "noaudio.mp4", None, 2)
    (m / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    return base, m, truth


EXTS = ["wav", "mp4"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(media):
    base, m, truth = media
    out = base / "data/sources/mine/segments.csv"
    prov = sg.build(m, out, DET, Clipping(), Draw(seed=3), extensions=EXTS)
    return out, prov


def test_clips_cover_the_known_speech_within_5_to_50_s(media, built):
    _, _, truth = media
    out, prov = built
    rows = _rows(out)
    assert list(rows[0]) == sg.CSV_COLUMNS
    clips: dict[str, list] = {}
    for r in rows:
        a, b = float(r["start"]), float(r["end"])
        assert 5 - 1e-3 <= b - a <= 50 + 1e-3, r
        assert r["text"] == ""
        clips.setdefault(r["video"], []).append((a, b))
    speech = sum(b - a for spans in truth.values() for a, b in spans)
    covered = sum(overlap(a, b, truth[v]) for v, cs in clips.items() for a, b in cs)
    assert covered / speech >= 0.9, (covered, speech)
    assert len(clips["long.wav"]) == 2                  # 75 s of talk: cut into two pieces
    assert {v: s["status"] for v, s in prov["videos"].items()} == {
        "long.wav": "ok", "sub/clip.mp4": "ok", "one0.wav": "ok", "one1.wav": "ok",
        "one2.wav": "ok", "one3.wav": "ok", "tiny.wav": "ok", "silent.wav": "no_speech",
        "tone.wav": "no_speech", "noaudio.mp4": "no_audio", "corrupt.mp4": "failed"}
    assert prov["videos"]["corrupt.mp4"]["error"]
    # the short phrase in tiny.wav has no room to grow to 5 s: dropped and counted
    assert prov["videos"]["tiny.wav"]["too_short"] == 1 and "tiny.wav" not in clips
    assert prov["clips"]["dropped"] == {"too_short": 1, "not_drawn": 0}
    assert prov["clips"]["kept"] == len(rows) == prov["clips"]["candidates"]
    assert prov["videos"]["long.wav"]["media"][0] == (media[1] / "long.wav").stat().st_size


def test_csv_round_trips_through_the_custom_manifest(media, built, monkeypatch):
    from pipeline.config import load_params
    from pipeline.data.datasets import custom
    from pipeline.data.datasets.custom import OwnInputs, stable_id
    from pipeline.data.manifest import validate
    base, _, _ = media
    out, _ = built
    monkeypatch.chdir(base)
    (base / "params.yaml").write_text(json.dumps(
        {"datasets": {"mine": "custom"}, "train": {"dataset": "mine"},
         "finetune": {"datasets": []}, "evaluate": {"datasets": ["mine"]},
         "manifest": {"mine": {"media": "media", "annotations": out.name,
                               "extensions": EXTS}}}))
    p = load_params(base / "params.yaml")
    m = custom.parse(OwnInputs("mine", Path("data/sources/mine")), p.manifest.of("mine"))
    validate(m, "test")
    want = sorted((stable_id(r["video"]), float(r["start"]), float(r["end"]), r["split"])
                  for r in _rows(out))
    got = sorted((c["video_id"], c["start_s"], c["end_s"], c["split"]) for c in m.clips)
    assert got == want and all(c["text"] is None for c in m.clips)
    assert set(m.splits) >= {"train", "val", "test"}


def test_splits_are_video_disjoint_seeded_and_counted(media, built, tmp_path):
    _, m, _ = media
    out, _ = built
    journal = sg.side_paths(out)[1]
    lines = journal.read_text().count("\n")
    dr = Draw(val_fraction=0.2, test_fraction=0.2, n_train=2, n_val=1, n_test=1, seed=5)
    prov = sg.build(m, out, DET, Clipping(), dr, extensions=EXTS)
    assert journal.read_text().count("\n") == lines       # every file came from the journal
    rows = _rows(out)
    by_split = {s: [r for r in rows if r["split"] == s] for s in sg.SPLITS}
    assert {s: len(v) for s, v in by_split.items()} == {"train": 2, "val": 1, "test": 1}
    vids = {s: {r["video"] for r in v} for s, v in by_split.items()}
    assert not (vids["train"] & vids["val"] or vids["train"] & vids["test"]
                or vids["val"] & vids["test"])
    for name, v in prov["videos"].items():                 # each video in one split only
        assert all(r["split"] == v["split"] for r in rows if r["video"] == name)
    assert prov["clips"]["dropped"]["not_drawn"] == prov["clips"]["candidates"] - 4
    assert sg.build(m, out, DET, Clipping(), dr, extensions=EXTS) == prov
    assert _rows(out) == rows                              # same seed: same draw
    # split by videos first: 10 videos, 0.2 / 0.3 -> 2 val, 3 test, 5 train; other seed differs
    names = [f"v{i}" for i in range(10)]
    a = sg.assign_splits(names, Draw(val_fraction=0.2, test_fraction=0.3, seed=1))
    assert sorted(a.values()).count("val") == 2 and list(a.values()).count("test") == 3
    assert a == sg.assign_splits(names, Draw(val_fraction=0.2, test_fraction=0.3, seed=1))
    assert a != sg.assign_splits(names, Draw(val_fraction=0.2, test_fraction=0.3, seed=2))
    # too few clips for a count: all of them, and the shortfall recorded
    clips = [{"video": "v0", "start": float(i), "end": i + 5.0, "split": "val"} for i in range(3)]
    chosen, stats = sg.draw(clips, Draw(n_val=10))
    assert len(chosen) == 3 and stats["val"] == {"available": 3, "wanted": 10, "drawn": 3}


def test_clip_rules_merge_cut_widen_drop():
    r = Clipping(min_s=5, max_s=50, merge_gap_s=2)
    # gaps of 1 s merge, a gap of 10 s does not
    assert [len(g) for g in sg.merge([(0, 3), (4, 6), (16, 20)], 2)] == [2, 1]
    # 130 s of talk with pauses every 10 s -> 3 pieces within bounds, cut at pauses
    group = [(10.0 * i, 10.0 * i + 9.0) for i in range(13)]
    pieces = sg.cut(group, r)
    assert len(pieces) == 3 and all(5 <= b - a <= 50 for a, b in pieces)
    assert all(round(a % 10, 6) == 9.5 for a, _ in pieces[1:])   # the pauses' midpoints
    # one 120 s segment without pauses: even cuts
    assert sg.cut([(0.0, 120.0)], r) == [(0.0, 40.0), (40.0, 80.0), (80.0, 120.0)]
    # a 2 s piece at the start grows to the right, one in the middle evenly; one without
    # room joins the clip before it
    kept, dropped = sg.widen([(0.5, 2.5), (30.0, 32.0), (40.0, 49.0), (52.0, 53.0)], 53.5, r)
    assert kept == [(0.0, 5.0), (28.5, 33.5), (40.0, 53.0)] and dropped == []
    # ... or the piece after it; too far from both (the joined span > max_s): dropped
    assert sg.widen([(0.2, 1.2), (1.5, 9.0)], 9.1, r) == ([(0.2, 9.0)], [])
    assert sg.widen([(0.0, 48.0), (49.5, 50.5)], 51.0, r) == ([(0.0, 48.0)], [(49.5, 50.5)])
    assert sg.widen([(0.5, 2.5)], 3.0, r) == ([], [(0.5, 2.5)])
    kept, dropped = sg.widen([(30.0, 32.0)], 60.0, dataclasses.replace(r, extend_short=False))
    assert kept == [] and dropped == [(30.0, 32.0)]
    with pytest.raises(SegmentError, match="max_s >= 2 \\* min_s"):
        Clipping(min_s=30, max_s=50)


def test_bad_folders_give_one_clear_line(media, tmp_path):
    _, m, _ = media
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SegmentError, match="no media files"):
        sg.build(empty, tmp_path / "a.csv", DET, Clipping(), Draw(), extensions=EXTS)
    with pytest.raises(SegmentError, match="media folder not found"):
        sg.build(tmp_path / "nope", tmp_path / "a.csv", DET, Clipping(), Draw(), extensions=EXTS)
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    for f in ("silent.wav", "tone.wav", "noaudio.mp4"):
        shutil.copy(m / f, quiet / f)
    out = tmp_path / "q.csv"
    with pytest.raises(SegmentError, match=r"no speech found in any file .*lower the threshold"):
        sg.build(quiet, out, DET, Clipping(), Draw(), extensions=EXTS)
    assert not out.exists()
    prov = json.loads(sg.side_paths(out)[0].read_text())     # the statuses are still written
    assert prov["video_status"] == {"no_audio": 1, "no_speech": 2}
    mute = tmp_path / "mute"
    mute.mkdir()
    shutil.copy(m / "noaudio.mp4", mute / "noaudio.mp4")
    with pytest.raises(SegmentError, match="no file has readable audio"):
        sg.build(mute, tmp_path / "m.csv", DET, Clipping(), Draw(), extensions=EXTS)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(m / "corrupt.mp4", broken / "a.mp4")
    shutil.copy(m / "one0.wav", broken / "b.wav")
    shutil.copy(m / "corrupt.mp4", broken / "c.mp4")
    with pytest.raises(SegmentError, match="2 of 3 files could not be decoded"):
        sg.build(broken, tmp_path / "b.csv", DET, Clipping(), Draw(), extensions=EXTS)
    with pytest.raises(SegmentError, match="inside the media folder"):
        sg.build(m, m / "x.csv", DET, Clipping(), Draw(), extensions=EXTS)


def _wired() -> bool:
    from pipeline.config import Params
    return "segment" in {f.name for f in dataclasses.fields(Params)}


@pytest.mark.skipif(not _wired(), reason="params section `segment` not in pipeline/config.py yet")
def test_stage_writes_the_csv_and_fails_cleanly(media, tmp_path, monkeypatch, caplog):
    from stages.segment import main
    base, m, _ = media
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "data/sources/mine"
    src.mkdir(parents=True)
    for f in ("one0.wav", "one1.wav", "one2.wav", "sub/clip.mp4"):
        (src / "media" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(m / f, src / "media" / f)
    params = {"datasets": {"mine": "custom"}, "train": {"dataset": "mine"},
              "finetune": {"datasets": []}, "evaluate": {"datasets": ["mine"]},
              "manifest": {"mine": {"media": "media", "annotations": "segments.csv",
                                    "extensions": EXTS}},
              "segment": {"datasets": ["mine"], "min_speech_ms": 100, "seed": 1}}
    Path("params.yaml").write_text(json.dumps(params))
    assert main(["--dataset", "mine"]) == 0
    rows = _rows(src / "segments.csv")
    assert len(rows) == 5 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert (src / "segments.provenance.json").is_file()
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    for f in ("silent.wav", "tone.wav"):
        shutil.copy(m / f, quiet / f)
    assert main(["--dataset", "mine", "--media", str(quiet), "--out", "q.csv"]) == 2
    assert "no speech found in any file" in caplog.text and not Path("q.csv").exists()
    assert main(["--dataset", "mine", "--media", "nowhere"]) == 2
    assert "nowhere: media folder not found" in caplog.text
