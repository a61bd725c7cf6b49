"""Stage speech@ and speech_recall@: silero-vad on real audio (espeak-ng words at known times),
the clip table and the Sounds/Speech sets, the journal, bad media, and the Table 4 report."""
from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.analysis import speech as sp
from pipeline.analysis.speech import Detector, SpeechError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None,
                                reason="needs espeak-ng and ffmpeg (setup.sh installs both)")
RATE = 16000


def _say(word: str, tmp: Path) -> np.ndarray:
    path = tmp / f"say-{word}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), word], check=True)
    with wave.open(str(path)) as w:
        sr, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    x = x.astype(np.float64) / 32768.0
    m = round(len(x) * RATE / sr)
    return np.fft.irfft(np.fft.rfft(x), m) * (m / len(x))


def _wav(path: Path, x: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    data = np.round(np.clip(x, -1, 1) * 32767).astype("<i2")
    if channels == 2:
        data = np.stack([data, data], 1).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two 12 s recordings: 'talk' speaks words at 2 s and 7 s over quiet noise, 'tone' holds a
    steady 440 Hz tone and no speech; plus the talk as 44.1 kHz stereo mp3 and a silent video."""
    d = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    talk = 0.01 * rng.standard_normal(12 * RATE)
    spans = []
    for word, at in (("tomato", 2.0), ("carrot", 7.0)):
        w = _say(word, d)
        w = 0.6 * w / np.abs(w).max()
        a = int(at * RATE)
        talk[a:a + len(w)] += w
        loud = np.flatnonzero(np.abs(w) > 0.02)          # the voiced part, without espeak's
        spans.append((at + loud[0] / RATE, at + (loud[-1] + 1) / RATE))   # silence around it
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(12 * RATE) / RATE)
    out = {"talk": _wav(d / "talk.wav", talk), "tone": _wav(d / "tone.wav", tone), "spans": spans}
    mp3 = d / "talk.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(out["talk"]), "-ar", "44100", "-ac",
                    "2", str(mp3)], check=True)
    out["mp3"] = mp3
    silent = d / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=red:s=64x64:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(silent)], check=True)
    out["silent"] = silent
    bad = d / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    out["bad"] = bad
    return out


@pytest.fixture(scope="module")
def vad():
    return sp.load_vad()


def test_vad_finds_the_spoken_words_and_not_the_tone(media, vad):
    d = Detector()
    e = sp.detect_video(vad, "talk", media["talk"], d)
    assert e["status"] == "ok" and e["duration_s"] == pytest.approx(12.0, abs=0.05)
    for a, b in media["spans"]:       # each word is inside a detected segment
        assert sp.overlap(a, b, e["segments"]) > 0.5 * (b - a)
    assert sum(b - a for a, b in e["segments"]) < 4.0
    t = sp.detect_video(vad, "tone", media["tone"], d)
    assert t["status"] == "ok" and t["segments"] == []


def test_other_rates_and_channels_are_resampled(media, vad):
    a = sp.detect_video(vad, "talk", media["talk"], Detector())
    b = sp.detect_video(vad, "talk", media["mp3"], Detector())
    assert b["duration_s"] == pytest.approx(a["duration_s"], abs=0.1)
    assert len(b["segments"]) == len(a["segments"])
    for (a0, a1), (b0, b1) in zip(a["segments"], b["segments"]):
        assert abs(a0 - b0) < 0.15 and abs(a1 - b1) < 0.15


def test_bad_media_get_a_status_not_a_crash(media, vad, tmp_path):
    d = Detector()
    assert sp.detect_video(vad, "v", media["silent"], d)["status"] == "no_audio"
    bad = sp.detect_video(vad, "v", media["bad"], d)
    assert bad["status"] == "failed" and "bad.mp4" in bad["error"]
    assert sp.detect_video(vad, "v", tmp_path / "gone.mp4", d)["status"] == "missing"
    assert sp.detect_video(vad, "v", None, d)["status"] == "missing"
    empty = tmp_path / "empty.wav"
    _wav(empty, np.zeros(0))
    assert sp.detect_video(vad, "v", empty, d)["status"] == "no_audio"


def test_blocks_carry_the_model_state(media, vad):
    """Decoding in 1 s blocks gives the same window scores as one block."""
    one, n1 = sp.speech_probs(vad, sp.audio_blocks(media["talk"], block_s=60))
    many, n2 = sp.speech_probs(vad, sp.audio_blocks(media["talk"], block_s=1))
    assert n1 == n2 and np.allclose(one, many, atol=1e-5)


def _clips(rows):
    return pa.Table.from_pylist([{"clip_id": c, "video_id": v, "split": s, "start_s": a,
                                  "end_s": b, "text": "x", "source": "t"}
                                 for c, v, s, a, b in rows])


def test_clip_table_and_sets():
    entries = {"v1": {"status": "ok", "segments": [[1.0, 2.0]], "words": []},
               "v2": {"status": "ok", "segments": [], "words": []},
               "v3": {"status": "failed", "segments": [], "words": []}}
    clips = _clips([("v1:0", "v1", "val", 0.0, 3.0), ("v1:1", "v1", "val", 5.0, 8.0),
                    ("v2:0", "v2", "val", 0.0, 3.0), ("v1:2", "v1", "val", 1.9, 4.0),
                    ("v3:0", "v3", "val", 0.0, 3.0), ("v1:9", "v1", "train", 0.0, 3.0)])
    truth = {"v1": [(1.2, 1.8, "tomato"), (2.0, 2.05, "x")]}
    t = sp.clip_table(clips, entries, Detector(min_clip_speech_s=0.25), truth).to_pylist()
    by = {r["clip_id"]: r for r in t}
    assert by["v1:0"]["speech_s"] == pytest.approx(1.0) and by["v1:0"]["has_speech"]
    assert by["v1:0"]["speech_fraction"] == pytest.approx(1 / 3, abs=1e-3)
    assert by["v1:2"]["speech_s"] == pytest.approx(0.1) and not by["v1:2"]["has_speech"]
    assert by["v1:2"]["truth_speech"] and by["v1:2"]["agree"] is False
    assert by["v3:0"]["has_speech"] is None and by["v3:0"]["status"] == "failed"
    assert by["v3:0"]["agree"] is None and by["v1:1"]["agree"] is True
    sets = sp.subsets(pa.Table.from_pylist(t), "val", 0, seed=0)
    assert sets["sounds"] == ["v1:1", "v2:0", "v1:2"] and sets["n"] == 3
    assert sets["speech"] == ["v1:0"]            # fewer than n: all of them, with a warning
    assert sets["clips_with_speech"] == 1 and sets["clips_without_speech"] == 3
    two = sp.subsets(pa.Table.from_pylist(t), "val", 2, seed=0)
    assert two["sounds"] == ["v1:1", "v2:0"] and two["n"] == 2


def test_speech_draw_is_seeded():
    rows = [{"clip_id": f"c{i}", "split": "val", "has_speech": i % 3 != 0} for i in range(60)]
    t = pa.Table.from_pylist(rows)
    a, b = sp.subsets(t, "val", 0, 1), sp.subsets(t, "val", 0, 1)
    assert a == b and len(a["speech"]) == len(a["sounds"]) == 20
    assert sp.subsets(t, "val", 0, 2)["speech"] != a["speech"]


def test_asr_words_count_and_decide(monkeypatch):
    entries = {"v1": {"status": "ok", "segments": [[0.0, 3.0]], "words": [[3.5, 3.9, "egg"]]}}
    clips = _clips([("v1:0", "v1", "val", 0.0, 3.0), ("v1:1", "v1", "val", 3.0, 6.0)])
    t = sp.clip_table(clips, entries, Detector(asr="whisper")).to_pylist()
    assert [r["word_count"] for r in t] == [0, 1]
    assert [r["has_speech"] for r in t] == [False, True]     # words decide, as the paper


def test_missing_asr_backend_is_one_clear_line(media, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_whisper(name, *a, **k):
        if name == "whisper":
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_whisper)
    with pytest.raises(SpeechError, match="pip install openai-whisper.*asr: none"):
        sp.asr_words(media["talk"], Detector(asr="whisper"))


def _project(tmp: Path, media: dict) -> tuple[Path, dict]:
    clips = _clips([("talk:0", "talk", "val", 1.5, 4.5), ("talk:1", "talk", "val", 9.0, 12.0),
                    ("tone:0", "tone", "val", 0.0, 3.0), ("tone:1", "tone", "train", 4.0, 7.0),
                    ("gone:0", "gone", "val", 0.0, 3.0)])
    pq.write_table(clips, tmp / "clips.parquet")
    truth = tmp / "words.parquet"
    pq.write_table(pa.table({"video_id": ["talk", "talk"],
                             "start_s": [a for a, _ in media["spans"]],
                             "end_s": [b for _, b in media["spans"]],
                             "word": ["tomato", "carrot"]}), truth)
    return truth, {"talk": media["talk"], "tone": media["tone"]}


def test_run_writes_tables_sets_and_agreement_and_resumes(media, tmp_path, caplog):
    truth, paths = _project(tmp_path, media)
    out = tmp_path / "speech"
    s = sp.run("t", tmp_path / "clips.parquet", paths, out, Detector(), splits=[],
               eval_split="val", truth=truth)
    assert s["video_status"] == {"missing": 1, "ok": 2} and s["clips_not_analysed"] == 1
    assert s["sounds"] == ["talk:1", "tone:0"] and s["speech"] == ["talk:0"]
    assert s["agreement"] == 1.0 and s["agreement_clips"] == 4
    for f in ("clips.parquet", "segments.parquet", "videos.parquet", "subsets.json",
              "progress.jsonl"):
        assert (out / f).is_file()
    assert not (out / "words.parquet").exists()          # no ASR, no words
    assert json.loads((out / "subsets.json").read_text()) == s
    # a re-run reuses the journal (a torn last line is ignored)
    with open(out / "progress.jsonl", "a") as f:
        f.write('{"video_id": "to')
    caplog.set_level("INFO")
    s2 = sp.run("t", tmp_path / "clips.parquet", paths, out, Detector(), splits=[],
                eval_split="val", truth=truth)
    assert "3 of 3 files already analysed" in caplog.text and s2 == s
    # other detector settings: the journal's entries do not match, everything is redone
    caplog.clear()
    sp.run("t", tmp_path / "clips.parquet", paths, out, Detector(threshold=0.6), splits=[],
           eval_split="val")
    assert "already analysed" not in caplog.text


def test_run_errors_are_clear(media, tmp_path):
    truth, paths = _project(tmp_path, media)
    with pytest.raises(SpeechError, match="no val clips among splits.*analysis.speech.splits"):
        sp.run("t", tmp_path / "clips.parquet", paths, tmp_path / "o", Detector(),
               splits=["train"], eval_split="val")
    with pytest.raises(SpeechError, match="nothere.parquet: not found"):
        sp.run("t", tmp_path / "clips.parquet", paths, tmp_path / "o", Detector(), splits=[],
               eval_split="val", truth=tmp_path / "nothere.parquet")
    with pytest.raises(SpeechError, match="cannot read the clips manifest"):
        sp.run("t", tmp_path / "none.parquet", paths, tmp_path / "o", Detector(), splits=[],
               eval_split="val")


def test_subset_recall_report(tmp_path):
    """speech_recall on the synthetic project of test_evaluate: Table 4 layout, both sets."""
    from tests.test_evaluate import TP
    from pipeline.analysis.subsets import evaluate_subsets
    from pipeline.learn.runs import pretrain
    d = _build_project(tmp_path)
    pretrain("demo", d / "features", d / "manifest", d / "models/pretrain", TP)
    clips = pq.read_table(d / "manifest" / "clips.parquet").to_pylist()
    val = [c["clip_id"] for c in clips if c["split"] == "val"]
    subsets = {"split": "val", "n": 8, "seed": 0, "sounds": val[:8], "speech": val[8:16],
               "clips_with_speech": 8, "clips_without_speech": 8, "detector": "silero-vad",
               "agreement": 0.95, "agreement_clips": 20, "truth": "words.parquet"}
    (d / "subsets.json").write_text(json.dumps(subsets))
    flat = evaluate_subsets("demo", d / "features", d / "manifest",
                            {"zero_shot": d / "models/pretrain/final.pt"}, d / "subsets.json",
                            d / "reports")
    assert flat["sounds/zero_shot/paper/n_queries"] == 8
    head = json.loads((d / "reports" / "demo.json").read_text())
    assert set(head) == {f"{s}/zero_shot/{dr}_R@{k}" for s in ("sounds", "speech")
                         for dr in ("audio_to_video", "video_to_audio") for k in (1, 5, 10)}
    md = (d / "reports" / "demo.md").read_text()
    assert "| Sounds-8 | random (chance) | expected | 12.5 | 62.5 | 100.0 |" in md
    assert "| Speech-241 (YouCook2) | zero_shot | paper | | | 88.0 | | | 88.0 |" in md
    assert "agrees with the ground truth (words.parquet) on 95.0 % of 20 clips" in md
    details = json.loads((d / "reports" / "demo" / "details.json").read_text())
    assert details["sets"]["sounds"] == val[:8]
    subsets["split"] = "train"
    (d / "subsets.json").write_text(json.dumps(subsets))
    from pipeline.evaluate.recall import EvaluateError
    with pytest.raises(EvaluateError, match="split train.*re-run stage speech@demo"):
        evaluate_subsets("demo", d / "features", d / "manifest",
                         {"zero_shot": d / "models/pretrain/final.pt"}, d / "subsets.json",
                         d / "reports")
    with pytest.raises(EvaluateError, match="run stage speech@<dataset> first"):
        evaluate_subsets("demo", d / "features", d / "manifest",
                         {"zero_shot": d / "models/pretrain/final.pt"}, d / "none.json",
                         d / "reports")


def _build_project(tmp: Path) -> Path:
    """The synthetic store and manifest of tests/test_evaluate.py's fixture, built here."""
    from tests.test_evaluate import build_project
    d = tmp / "proj"
    d.mkdir()
    build_project(d)
    return d
