"""Speech in clips (AVLnet Table 4): which evaluation clips carry speech, and the Sounds-N /
Speech-N evaluation sets built from them.

Detection, per video (streamed: memory does not grow with the video's length):
- voice activity with silero-vad (a maintained model that ships inside its PyPI wheel, so it
  runs offline): ffmpeg decodes the media to 16 kHz mono float32 in blocks, the model scores
  each 512-sample window (32 ms) in order, and silero's own hysteresis turns the scores into
  speech segments (threshold, min speech, min silence, padding: params);
- optionally an ASR backend's words (openai-whisper, for users with internet: its weights are
  downloaded on first use). Without it, or offline, the stage says so and uses the VAD alone.
Per clip: speech_s (seconds of detected speech inside the clip), speech_fraction, word_count
(ASR only), has_speech (ASR: at least one word, as the paper; VAD: speech_s >= min_clip_speech_s).
Sets: Sounds-N = the evaluation split's clips without speech (N = all of them, or `n`);
Speech-N = N clips with speech drawn at random (seeded).

data/speech/<ds>/clips.parquet    one row per analysed clip (the columns above, plus truth)
data/speech/<ds>/segments.parquet the speech segments (video_id, start_s, end_s)
data/speech/<ds>/words.parquet    the ASR words (video_id, start_s, end_s, word), ASR only
data/speech/<ds>/videos.parquet   one row per video: status (ok / no_audio / failed / missing),
                                  duration, speech seconds, error
data/speech/<ds>/subsets.json     the two sets' clip ids, N, seed, detector; the agreement with
                                  a ground truth (the demo's own word timings) when one is given
A per-video journal (progress.jsonl) keeps finished videos across a crash or a re-run with the
same settings."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.manifest import write_json_atomic, write_parquet_atomic
from pipeline.safety import UserError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512                     # samples per silero-vad score (32 ms at 16 kHz)
BLOCK_S = 60                     # seconds of audio decoded per read
WORDS_SCHEMA = pa.schema([("video_id", pa.string()), ("start_s", pa.float64()),
                          ("end_s", pa.float64()), ("word", pa.string())])


class SpeechError(UserError):
    """A missing detector, an unreadable manifest or truth file, a failed ASR backend."""


@dataclasses.dataclass(frozen=True)
class Detector:
    """How speech is found: silero-vad's settings, and the optional ASR backend."""

    threshold: float = 0.5            # silero's speech probability threshold
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30
    min_clip_speech_s: float = 0.25   # VAD: a clip has speech from this much on
    asr: str = "none"                 # "none" | "whisper"
    asr_model: str = "base.en"

    def key(self) -> dict:
        """What the journal's entries must match to be reused."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "min_clip_speech_s"}


# --------------------------------------------------------------------------- detection


def load_vad():
    """silero-vad's TorchScript model from its wheel (no download). SpeechError if missing."""
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise SpeechError("silero-vad is not installed: pip install -r requirements.txt "
                          "(it pins silero-vad)") from None
    import torch
    torch.set_num_threads(1)      # one window at a time: more threads only add overhead
    return load_silero_vad()


def audio_blocks(path: Path, block_s: int = BLOCK_S) -> Iterator[np.ndarray]:
    """The media's first audio stream as 16 kHz mono float32, block_s seconds at a time (any
    rate and channel count: ffmpeg resamples and downmixes). MediaNoAudio when it has no audio
    stream; SpeechDecodeError (with ffmpeg's message) when it cannot be decoded."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(Path(path).absolute()), "-map",
           "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = 0
    try:
        size = block_s * SAMPLE_RATE * 4
        while True:
            buf = proc.stdout.read(size)
            if not buf:
                break
            got += len(buf)
            yield np.frombuffer(buf[:len(buf) // 4 * 4], np.float32)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        rc = proc.wait()
    if rc != 0:
        if "matches no streams" in err or "Stream map" in err:
            raise MediaNoAudio(f"{path}: no audio stream")
        raise SpeechDecodeError(f"{path}: ffmpeg could not decode the audio (exit {rc}): "
                                f"{err[-300:]}")
    if got == 0:
        raise MediaNoAudio(f"{path}: the audio stream is empty")


class MediaNoAudio(Exception):
    """The media file has no (or an empty) audio stream: status no_audio."""


class SpeechDecodeError(Exception):
    """ffmpeg failed on the media file: status failed, with its message."""


def speech_probs(model, blocks: Iterator[np.ndarray]) -> tuple[np.ndarray, int]:
    """silero-vad's speech probability of every 512-sample window, in order -> ((W,), samples
    seen). The model's recurrent state runs across blocks, as on one long signal."""
    import torch
    model.reset_states()
    out: list[float] = []
    rest = np.zeros(0, np.float32)
    n = 0
    with torch.no_grad():
        for block in blocks:
            n += len(block)
            x = np.concatenate([rest, block])
            full = len(x) // WINDOW * WINDOW
            t = torch.from_numpy(np.ascontiguousarray(x[:full]))
            for i in range(0, full, WINDOW):
                out.append(float(model(t[i:i + WINDOW], SAMPLE_RATE)))
            rest = x[full:]
    return np.asarray(out, np.float32), n


def segments_from_probs(probs: np.ndarray, n_samples: int, d: Detector
                        ) -> list[tuple[float, float]]:
    """Window probabilities -> speech segments in seconds, by silero's own rules
    (get_speech_timestamps_from_probs: threshold with hysteresis, min speech/silence, pad)."""
    from silero_vad import get_speech_timestamps_from_probs
    if not len(probs):
        return []
    ts = get_speech_timestamps_from_probs(
        probs.tolist(), sampling_rate=SAMPLE_RATE, threshold=d.threshold,
        min_speech_duration_ms=d.min_speech_ms, min_silence_duration_ms=d.min_silence_ms,
        speech_pad_ms=d.speech_pad_ms, audio_length_samples=n_samples)
    return [(t["start"] / SAMPLE_RATE, t["end"] / SAMPLE_RATE) for t in ts]


def asr_words(path: Path, d: Detector) -> list[tuple[float, float, str]]:
    """The ASR backend's words of the media with their times. Backend "whisper":
    openai-whisper (pip install openai-whisper; its weights download on first use).
    SpeechError when the backend is missing or cannot load its model (offline)."""
    if d.asr != "whisper":
        raise SpeechError(f"unknown ASR backend {d.asr!r}; choose none or whisper")
    try:
        import whisper
    except ImportError:
        raise SpeechError("analysis.speech.asr is whisper but openai-whisper is not installed: "
                          "pip install openai-whisper (it needs internet once for its "
                          "weights), or set analysis.speech.asr: none to use the voice "
                          "activity detector alone") from None
    model = _whisper_model(whisper, d.asr_model)
    try:
        result = model.transcribe(str(path), word_timestamps=True, fp16=False)
    except Exception as e:     # noqa: BLE001 - the backend's own failure, named in one line
        raise SpeechError(f"{path}: whisper could not transcribe it: {e}") from None
    return [(float(w["start"]), float(w["end"]), str(w["word"]).strip())
            for seg in result.get("segments", []) for w in seg.get("words", [])
            if str(w.get("word", "")).strip()]


_WHISPER: dict = {}


def _whisper_model(whisper, name: str):
    if name not in _WHISPER:
        try:
            _WHISPER[name] = whisper.load_model(name)
        except Exception as e:   # noqa: BLE001 - a download or file error, named in one line
            raise SpeechError(f"whisper could not load its model {name!r} ({e}); it downloads "
                              "on first use: run once with internet, or set "
                              "analysis.speech.asr: none") from None
    return _WHISPER[name]


def media_key(path: Path | None) -> list | None:
    """What identifies a media file's content for the journal: its size and mtime (a file
    fetched again, or replaced, is analysed again)."""
    try:
        st = Path(path).stat()
    except (TypeError, OSError):
        return None
    return [st.st_size, st.st_mtime_ns]


def detect_video(model, video_id: str, path: Path | None, d: Detector) -> dict:
    """One video -> its journal entry: status, duration, speech segments, ASR words, error."""
    entry = {"video_id": video_id, "key": d.key(), "media": media_key(path), "status": "ok",
             "duration_s": 0.0, "segments": [], "words": [], "error": None}
    if path is None or not Path(path).is_file():
        return entry | {"status": "missing", "error": f"no media file ({path})"}
    try:
        probs, n = speech_probs(model, audio_blocks(path))
    except MediaNoAudio as e:
        return entry | {"status": "no_audio", "error": str(e)}
    except SpeechDecodeError as e:
        return entry | {"status": "failed", "error": str(e)}
    entry["duration_s"] = n / SAMPLE_RATE
    entry["segments"] = [[round(a, 3), round(b, 3)] for a, b in segments_from_probs(probs, n, d)]
    if d.asr != "none":
        entry["words"] = [[round(a, 3), round(b, 3), w] for a, b, w in asr_words(path, d)]
    return entry


# --------------------------------------------------------------------------- journal


def read_journal(path: Path, d: Detector, media: dict[str, Path] | None = None
                 ) -> dict[str, dict]:
    """Finished videos of an earlier run with the same detector and, with `media` (video_id ->
    file), the same media file (size, mtime); a torn last line is skipped."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not (isinstance(e, dict) and e.get("key") == d.key() and "video_id" in e):
            continue
        if media is not None and e.get("media") != media_key(media.get(e["video_id"])):
            continue
        out[e["video_id"]] = e
    return out


def _append(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- clips


def detect_all(files: dict[str, Path | None], journal: Path, d: Detector, label: str
               ) -> dict[str, dict]:
    """Speech segments of every file (name -> file; None: missing), journalled: the entries
    of `journal` made with the same detector and media are kept, the others detected and
    appended one by one -> name -> journal entry (detect_video's: status ok / no_audio /
    missing / failed, duration_s, segments, words, error). An unforeseen error on one file
    becomes its `failed` status."""
    done = read_journal(journal, d, files)
    todo = [v for v in files if v not in done]
    if done:
        log.info("%s: %d of %d files already analysed (journal %s)", label,
                 len(files) - len(todo), len(files), journal)
    model = load_vad() if todo else None
    t0 = time.monotonic()
    failed = 0
    for i, name in enumerate(todo, 1):
        try:
            e = detect_video(model, name, files[name], d)
        except Exception as exc:   # noqa: BLE001 - one file's unforeseen failure: its status
            e = {"video_id": name, "key": d.key(), "media": media_key(files[name]),
                 "status": "failed", "duration_s": 0.0, "segments": [], "words": [],
                 "error": f"{files[name]}: {type(exc).__name__}: {exc}"}
        _append(journal, e)
        done[name] = e
        if e["status"] != "ok":
            failed += 1
            log.warning("%s: %s: %s (%s)", label, name, e["status"], e["error"])
        if i % 20 == 0 or i == len(todo):
            el = max(time.monotonic() - t0, 1e-9)
            log.info("%s: %d/%d files, %.2f files/s, ETA %.0f s, %d not ok", label, i,
                     len(todo), i / el, el / i * (len(todo) - i), failed)
    return {v: done[v] for v in files}


def overlap(a0: float, a1: float, spans: list) -> float:
    """Seconds of [a0, a1] covered by the (start, end, ...) spans (assumed disjoint)."""
    return float(sum(max(0.0, min(a1, s[1]) - max(a0, s[0])) for s in spans))


def clip_table(clips: pa.Table, entries: dict[str, dict], d: Detector,
               truth: dict[str, list] | None = None) -> pa.Table:
    """The manifest's clips -> one row each: status of its video, speech_s, speech_fraction,
    word_count (ASR; else null), has_speech (null when its video was not analysed), and with a
    truth (video_id -> [(start, end, word)]) truth_speech and agree."""
    rows = []
    for c in clips.to_pylist():
        e = entries.get(c["video_id"])
        a, b = float(c["start_s"]), float(c["end_s"])
        r = {"clip_id": c["clip_id"], "video_id": c["video_id"], "split": c["split"],
             "start_s": a, "end_s": b, "text": c.get("text"),
             "status": e["status"] if e else "missing"}
        if e is None or e["status"] != "ok":
            r |= {"speech_s": None, "speech_fraction": None, "word_count": None,
                  "has_speech": None}
        else:
            sp = overlap(a, b, e["segments"])
            words = None if d.asr == "none" else sum(1 for w in e["words"]
                                                     if w[1] > a and w[0] < b)
            r |= {"speech_s": round(sp, 3), "speech_fraction": round(sp / max(b - a, 1e-9), 4),
                  "word_count": words,
                  "has_speech": bool(words) if words is not None
                  else sp >= d.min_clip_speech_s}
        if truth is not None:
            r["truth_speech"] = overlap(a, b, truth.get(c["video_id"], [])) > 0
            r["agree"] = (None if r["has_speech"] is None
                          else r["has_speech"] == r["truth_speech"])
        rows.append(r)
    return pa.Table.from_pylist(rows)


def read_words(path: Path) -> dict[str, list]:
    """A word-timings parquet (video_id, start_s, end_s, word) -> video_id -> [(s, e, word)]."""
    try:
        t = pq.read_table(path, columns=["video_id", "start_s", "end_s", "word"])
    except FileNotFoundError:
        raise SpeechError(f"{path}: not found (the demo's words.parquet is written by stage "
                          "demo)") from None
    except (pa.ArrowException, OSError, KeyError) as e:
        raise SpeechError(f"{path}: not a word-timings parquet (video_id, start_s, end_s, "
                          f"word): {e}") from None
    out: dict[str, list] = {}
    for r in t.to_pylist():
        out.setdefault(r["video_id"], []).append((r["start_s"], r["end_s"], r["word"]))
    return out


def subsets(table: pa.Table, split: str, n: int, seed: int) -> dict:
    """Sounds-N and Speech-N of `split` from the clip table: sounds = clips without speech
    (the first n by clip order when n > 0 and fewer wanted; all of them when n == 0), speech =
    as many clips with speech drawn at random (seeded; all of them when there are fewer)."""
    rows = [r for r in table.to_pylist() if r["split"] == split and r["has_speech"] is not None]
    sounds = [r["clip_id"] for r in rows if not r["has_speech"]]
    speech = [r["clip_id"] for r in rows if r["has_speech"]]
    want = n or len(sounds)
    if len(sounds) > want:
        sounds = sounds[:want]
    k = min(want, len(speech))
    if k < want:
        log.warning("speech: only %d %s clips with speech for Speech-%d: taking all of them",
                    len(speech), split, want)
    pick = sorted(np.random.default_rng(seed).choice(len(speech), size=k, replace=False)
                  .tolist()) if k else []
    return {"split": split, "n": want, "seed": seed, "sounds": sounds,
            "speech": [speech[i] for i in pick],
            "clips_with_speech": len(rows) - len([r for r in rows if not r["has_speech"]]),
            "clips_without_speech": len([r for r in rows if not r["has_speech"]])}


# --------------------------------------------------------------------------- stage


def run(dataset: str, clips_path: Path, media: dict[str, Path], out: Path, d: Detector, *,
        splits: list[str], eval_split: str, n: int = 0, seed: int = 0,
        truth: Path | None = None) -> dict:
    """Detect speech in the videos of `splits`' clips, write the tables and the Sounds/Speech
    sets into `out` (see the module doc) -> the summary (subsets.json's content)."""
    try:
        clips = pq.read_table(clips_path)
    except (FileNotFoundError, pa.ArrowException, OSError) as e:
        raise SpeechError(f"{clips_path}: cannot read the clips manifest ({e}); run stage "
                          "manifest first") from None
    if splits:
        clips = clips.filter(pc.is_in(clips.column("split"), pa.array(splits)))
    if not clips.num_rows:
        raise SpeechError(f"{clips_path}: no clips in split(s) {splits}")
    if eval_split not in set(clips.column("split").to_pylist()):
        raise SpeechError(f"{clips_path}: no {eval_split} clips among splits {splits}; add "
                          f"{eval_split} to analysis.speech.splits")
    truth_words = read_words(truth) if truth is not None else None
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "progress.jsonl"
    videos = sorted(set(clips.column("video_id").to_pylist()))
    entries = detect_all({v: media.get(v) for v in videos}, journal, d, dataset)
    table = clip_table(clips, entries, d, truth_words)
    sets = subsets(table, eval_split, n, seed)
    statuses = [e["status"] for e in entries.values()]
    summary = {"dataset": dataset, "detector": ("silero-vad" if d.asr == "none"
                                                else f"silero-vad + {d.asr} {d.asr_model}"),
               "settings": dataclasses.asdict(d), "splits": splits,
               "videos": len(videos), "video_status": {s: statuses.count(s)
                                                       for s in sorted(set(statuses))},
               "clips": table.num_rows,
               "clips_not_analysed": sum(r is None for r in table.column("has_speech")
                                         .to_pylist()),
               **sets}
    if truth is not None:
        agree = [a for a in table.column("agree").to_pylist() if a is not None]
        summary["truth"] = str(truth)
        summary["agreement"] = round(sum(agree) / len(agree), 4) if agree else None
        summary["agreement_clips"] = len(agree)
    _write_tables(out, table, entries, d)
    write_json_atomic(summary, out / "subsets.json")
    log.info("%s: %d clips, %d with speech; Sounds-%d and Speech-%d of %s%s", dataset,
             table.num_rows, sum(bool(x) for x in table.column("has_speech").to_pylist()),
             len(sets["sounds"]), len(sets["speech"]), eval_split,
             f"; agreement with {truth}: {summary['agreement']}" if truth is not None else "")
    return summary


def _write_tables(out: Path, table: pa.Table, entries: dict[str, dict], d: Detector) -> None:
    seg = {"video_id": [], "start_s": [], "end_s": []}
    words = {"video_id": [], "start_s": [], "end_s": [], "word": []}
    vids = []
    for v, e in entries.items():
        for a, b in e["segments"]:
            seg["video_id"].append(v)
            seg["start_s"].append(a)
            seg["end_s"].append(b)
        for a, b, w in e["words"]:
            for k, x in zip(words, (v, a, b, w)):
                words[k].append(x)
        vids.append({"video_id": v, "status": e["status"], "duration_s": e["duration_s"],
                     "speech_s": round(sum(b - a for a, b in e["segments"]), 3),
                     "segments": len(e["segments"]), "error": e["error"]})
    write_parquet_atomic(table, out / "clips.parquet")
    write_parquet_atomic(pa.table(seg, schema=pa.schema([("video_id", pa.string()),
                                                     ("start_s", pa.float64()),
                                                     ("end_s", pa.float64())])),
                    out / "segments.parquet")
    write_parquet_atomic(pa.Table.from_pylist(vids), out / "videos.parquet")
    if d.asr != "none":
        write_parquet_atomic(pa.table(words, schema=WORDS_SCHEMA), out / "words.parquet")

