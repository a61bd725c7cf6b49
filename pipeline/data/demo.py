"""Offline demo dataset: synthetic food "concepts" as real H.264/AAC mp4s + YouCook2 JSON."""
from __future__ import annotations

import colorsys
import concurrent.futures
import contextlib
import fcntl
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from pipeline.config import DemoParams
from pipeline.data.manifest import YOUTUBE_ID, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100          # Hz, the rate of the synthesized wav and of the AAC track
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
BG_UPDATE_HZ = 6             # background keyframes per second: it drifts slowly, so 6 Hz looks
                             # smooth and keeps numpy work per frame to a copy plus a small sprite
SEG_MIN_S, SEG_MAX_S = 3, 8  # concept segment length, whole seconds
GAP_MIN_S, GAP_MAX_S = 2, 3  # gap before each segment, whole seconds (> VISIBLE_AFTER_S)
VISIBLE_AFTER_S = 1.0        # the object stays on screen this long after its annotated end:
                             # the reference pools a clip's 2D rows int(start)..int(end) and 3D
                             # rows ..int(1.5 end) INCLUSIVE (avlnet.md), so the frame at `end`
                             # and a 3D clip reaching end + 0.625 s belong to the clip. Real
                             # footage does not cut with the narration either; an object that
                             # vanished exactly at `end` made max-pooled clip features mostly
                             # background (a linear concept probe fell from 0.93 to 0.42)
SPEECH_EVERY_S = 1.5         # the name is repeated this often within a segment
TONE_PEAK, SPEECH_PEAK = 0.3, 0.7
# the voices the demo's narration is spoken in (espeak-ng voice, words per minute, pitch 0-99):
# each segment starts with a drawn one and every repetition of its name takes the next, so the
# model hears every name in every voice, as a real narrator's words vary. With one voice per
# segment the training split held about three narrated examples of a name, too few to learn
# the word rather than the voice (a supervised probe reached 36 % on val). A query in a voice
# not among them (stage spoken@: en-gb) can then still match
VOICES = (("en-us", 140, 50), ("en-us+m3", 125, 40), ("en-us+f2", 155, 60),
          ("en-us+Annie", 150, 55), ("en-029+m1", 135, 45), ("en-gb-scotland+f3", 145, 65))
DUCK_GAIN = 0.1              # the tone's gain while a name is spoken over it (see _ducking)
SENTENCES = ("add the {}", "slice the {}", "chop the {} into small pieces",
             "put the {} on the plate", "wash the {}", "mix the {} in a bowl", "cut the {} in half",
             "place the {} in the pan")


@dataclass(frozen=True)
class Concept:
    """One audio-visual concept: what is on screen and what is heard during its segments."""

    name: str
    rgb: tuple[int, int, int]   # fill colour, 0..255
    shape: str                  # see _shape_mask
    motion: str                 # see _pose
    pattern: str                # darker surface pattern, see _pattern_mask
    f0_hz: float                # fundamental of its tone (the strongest partial)
    timbre: str                 # see _tone
    pulse_hz: float             # amplitude-modulation rate; 0 = steady tone


# Colours are saturated or extreme (white/black) while backgrounds are muted and low-contrast
# (saturation <= 0.35, value 0.45..0.62), so colour alone separates the concepts from each other
# and from the background; a surface pattern adds edges that even randomly initialised CNN
# features respond to (it doubled a linear probe's concept accuracy on random ResNet-18
# features). Fundamentals are ~4.8 semitones (3-4 Mel bands) apart; timbre and pulse rate
# separate them further. Order matters: n_concepts takes the first ones.
CONCEPTS: tuple[Concept, ...] = (
    Concept("tomato", (220, 35, 30), "circle", "bounce", "none", 240.0, "rich", 0.0),
    Concept("carrot", (245, 125, 20), "carrot", "spin", "stripes", 1300.0, "sine", 6.0),
    Concept("cheese", (250, 215, 40), "wedge", "slide", "holes", 560.0, "odd", 2.0),
    Concept("lime", (130, 230, 40), "ring", "orbit", "spokes", 2250.0, "octave", 8.0),
    Concept("blueberry", (40, 70, 225), "cluster", "zigzag", "rings", 740.0, "bell", 3.0),
    Concept("eggplant", (115, 35, 160), "long_ellipse", "wobble", "stripes", 180.0, "odd", 0.0),
    Concept("egg", (248, 248, 240), "egg", "pulse", "speckles", 980.0, "sine", 0.0),
    Concept("bread", (215, 165, 95), "rounded_square", "figure8", "checker", 320.0, "rich", 4.0),
    Concept("beet", (205, 25, 135), "teardrop", "sway", "rings", 420.0, "fifth", 0.0),
    Concept("cucumber", (20, 110, 45), "capsule", "rise", "holes", 1700.0, "odd", 5.0),
    Concept("mint", (40, 215, 200), "star", "spin", "spokes", 2950.0, "sine", 3.0),
    Concept("olive", (28, 28, 24), "small_ellipse", "orbit", "none", 3800.0, "sine", 0.0),
)
CONCEPT_BY_NAME = {c.name: c for c in CONCEPTS}


class DemoError(RuntimeError):
    """A missing tool or a failed encode: reported by the stage as one line, not a traceback."""


@dataclass(frozen=True)
class Segment:
    """One annotated concept segment of a video."""

    start_s: int
    end_s: int
    concept: str
    sentence: str
    scale: float   # object size factor (0.8..1.25); the tone is shifted by pitch_factor(scale)
    phase: float   # motion phase, radians
    spoken: bool = True   # its name is spoken (demo.speech and the spoken_fraction draw)
    sound: bool = True    # its concept's sound is heard (False: narration only)
    voice: int = 0        # which of VOICES speaks its name


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video; fully determined by the params and the seed."""

    index: int
    video_id: str
    subset: str                 # "training" | "validation"
    width: int
    height: int
    fps: int
    n_frames: int
    duration_s: float           # n_frames / fps
    bg_tone: float              # 0..1: background hue AND background-noise centre frequency
    segments: tuple[Segment, ...]


def pitch_factor(scale: float) -> float:
    """Tone frequency multiplier tied to the object's size (bigger object -> lower pitch).

    Gives every segment an instance-level audio-visual cue on top of the concept identity;
    the range (about +-1.3 semitones) stays well inside the ~4.8 semitones between concepts."""
    return float(scale ** (-1.0 / 3.0))


def noise_centre_hz(bg_tone: float) -> float:
    """Centre of the per-video background-noise band (250 Hz..4 kHz), tied to the background hue."""
    return 250.0 * 16.0 ** bg_tone


# --------------------------------------------------------------------------- planning


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct 11-character YouTube-style ids, one of them (at a random index) starting '-'."""
    dashed = int(rng.integers(0, n))
    ids: list[str] = []
    while len(ids) < n:
        vid = "".join(ID_ALPHABET[i] for i in rng.integers(0, len(ID_ALPHABET), 11))
        if len(ids) == dashed:
            # a leading '-' looks like an option to ffmpeg and friends: make sure downstream
            # stages meet one
            vid = "-" + vid[1:]
        if vid not in ids:
            ids.append(vid)
    return ids


def _layout(rng: np.random.Generator, duration_s: float, k: int) -> list[tuple[int, int]]:
    """Non-overlapping integer-second segments: gap, seg, gap, seg, ... within the duration."""
    total = int(math.floor(duration_s))
    k = max(1, min(k, total // (GAP_MIN_S + SEG_MIN_S)))
    # items: k leading gaps and k segments alternating, then a trailing gap
    lo = [GAP_MIN_S, SEG_MIN_S] * k + [0]
    hi = [GAP_MAX_S, SEG_MAX_S] * k + [GAP_MAX_S]
    sizes = list(lo)
    slack = total - sum(lo)
    while slack > 0:
        room = [i for i in range(len(sizes)) if sizes[i] < hi[i]]
        if not room:
            break
        sizes[room[int(rng.integers(0, len(room)))]] += 1
        slack -= 1
    out, t = [], 0
    for j in range(k):
        t += sizes[2 * j]
        out.append((t, t + sizes[2 * j + 1]))
        t += sizes[2 * j + 1]
    return out


def _assign_concepts(rng: np.random.Generator, slots: list[list[int]], names: list[str]
                     ) -> dict[tuple[int, int], str]:
    """Concept per (video, segment) slot: repeated shuffled permutations, so counts differ by at
    most one; a concept repeated inside one video is swapped with a later one where possible."""
    n_slots = sum(len(s) for s in slots)
    pool: list[str] = []
    while len(pool) < n_slots:
        pool += [names[i] for i in rng.permutation(len(names))]
    pool = pool[:n_slots]
    out, p = {}, 0
    for v, segs in enumerate(slots):
        used: set[str] = set()
        for s in segs:
            if pool[p] in used:
                for q in range(p + 1, len(pool)):
                    if pool[q] not in used:
                        pool[p], pool[q] = pool[q], pool[p]
                        break
            out[(v, s)] = pool[p]
            used.add(pool[p])
            p += 1
    return out


def plan(params: DemoParams) -> list[VideoPlan]:
    """The deterministic plan of the demo: one VideoPlan per video, in output order.

    Input: validated DemoParams. Output: params.n_videos plans; the first n_val by index are not
    necessarily the validation ones (the split is shuffled)."""
    rng = np.random.default_rng(params.seed)
    n = params.n_videos
    ids = _video_ids(rng, n)
    val = set(int(i) for i in rng.permutation(n)[: params.n_val])
    sizes = [tuple(int(x) for x in s.split("x")) for s in params.frame_sizes]
    names = [c.name for c in CONCEPTS[: params.n_concepts]]
    raw = []
    for i in range(n):
        d = float(rng.uniform(params.min_duration_s, params.max_duration_s))
        n_frames = max(1, round(d * params.fps))
        duration = n_frames / params.fps
        w, h = sizes[int(rng.integers(0, len(sizes)))]
        layout = _layout(rng, duration, params.segments_per_video)
        extras = [(float(rng.uniform(0.8, 1.25)), float(rng.uniform(0, 2 * math.pi)),
                   SENTENCES[int(rng.integers(0, len(SENTENCES)))]) for _ in layout]
        raw.append((n_frames, duration, w, h, float(rng.uniform(0.0, 1.0)), layout, extras))
    concept_of: dict[tuple[int, int], str] = {}
    for subset in ("training", "validation"):
        members = [i for i in range(n) if (i in val) == (subset == "validation")]
        got = _assign_concepts(rng, [list(range(len(raw[i][5]))) for i in members], names)
        concept_of.update({(members[v], s): c for (v, s), c in got.items()})
        if sum(len(raw[i][5]) for i in members) < len(names):
            log.warning("demo: the %s split has fewer segments than concepts (%d); some concepts "
                        "will be missing from it", subset, len(names))
    plans = []
    for i, (n_frames, duration, w, h, tone, layout, extras) in enumerate(raw):
        # what each segment sounds like (narrated, its sound, or both) and whose voice speaks:
        # a stream of its own, so the draws above (every concept, time and size) do not
        # depend on these params
        mix = np.random.default_rng([params.seed, i, 3])
        u, voice = mix.random(len(layout)), mix.integers(0, len(VOICES), len(layout))
        segs = tuple(Segment(a, b, concept_of[(i, j)], sent.format(concept_of[(i, j)]), sc, ph,
                             spoken=params.speech and bool(u[j] < params.spoken_fraction),
                             sound=not (params.speech and u[j] < params.speech_only_fraction),
                             voice=int(voice[j]))
                     for j, ((a, b), (sc, ph, sent)) in enumerate(zip(layout, extras)))
        plans.append(VideoPlan(i, ids[i], "validation" if i in val else "training", w, h,
                               params.fps, n_frames, duration, tone, segs))
    return plans


def annotations(plans: list[VideoPlan], url_root: str) -> dict:
    """YouCook2-format annotations ({"database": {...}}) for the plans; url_root is relative."""
    db = {}
    for p in plans:
        db[p.video_id] = {
            "duration": round(p.duration_s, 3),
            "subset": p.subset,
            "recipe_type": "demo",
            "video_url": "file:" + str(PurePosixPath(url_root) / "videos" / f"{p.video_id}.mp4"),
            "annotations": [{"segment": [s.start_s, s.end_s], "id": j, "sentence": s.sentence,
                             "concept": s.concept} for j, s in enumerate(p.segments)],
        }
    return {"database": db}


# --------------------------------------------------------------------------- text

# ASR-style narration around each spoken name (what a recogniser might transcribe around it)
ASR_AROUND = (("now", ""), ("okay the", ""), ("", "goes in"), ("this is the", "here"),
              ("and the", "now"), ("so", "right"), ("", ""), ("take the", ""))
ASR_FILLER = ("okay", "so let's see", "alright", "next we do this", "um right", "let me show you",
              "there we go", "and now")
SPEECH_AT_S = 0.25          # the first spoken name starts this long after the segment's start
SPEECH_SPAN_S = 1.5         # an ASR caption around a spoken name lasts this long
# words the demo's word vectors leave out, as GoogleNews word2vec lacks some stop words: their
# tokens are dropped by the same rule (extensions.md §1) and counted as out of vocabulary
DEMO_OOV = ("a", "and", "of", "to", "um")
WORD_VECTORS = "word2vec-demo.bin"
WORDS_FILE = "words.parquet"   # the generator's word timings (video_id, start_s, end_s, word)


def _write_words(rows: dict, path: Path) -> None:
    """The word timings as Parquet, atomically (the format stage speech writes from ASR)."""
    import pyarrow as pa
    table = pa.table({"video_id": pa.array(rows["video_id"], pa.string()),
                      "start_s": pa.array(rows["start_s"], pa.float64()),
                      "end_s": pa.array(rows["end_s"], pa.float64()),
                      "word": pa.array(rows["word"], pa.string())})
    write_parquet_atomic(table, path)


def asr_captions(plans: list[VideoPlan], seed: int) -> dict:
    """HowTo100M-format ASR captions ({video_id: {"start": [...], "end": [...], "text": [...]}},
    times in s) for the plans: one caption around every spoken name (times as render_audio
    speaks them), fillers in the gaps, and for every fifth video a last caption running 1.5 s
    past the video's end (real ASR files have them; stage captions clips and counts it)."""
    out = {}
    for p in plans:
        rng = np.random.default_rng([seed, p.index, 2])
        caps: list[tuple[float, float, str]] = []
        prev_end = 0.0
        for s in p.segments:
            if s.start_s - prev_end >= 1.5:            # a filler in the gap before the segment
                a = prev_end + float(rng.uniform(0.1, 0.4))
                caps.append((a, min(a + 1.2, s.start_s), ASR_FILLER[rng.integers(len(ASR_FILLER))]))
            t = s.start_s + SPEECH_AT_S
            while s.spoken and t + 1.0 <= s.end_s:     # render_audio's spoken names
                pre, post = ASR_AROUND[rng.integers(len(ASR_AROUND))]
                text = " ".join(w for w in (pre, s.concept, post) if w)
                caps.append((t - 0.1, min(t + SPEECH_SPAN_S, s.end_s + 0.5), text))
                t += SPEECH_EVERY_S
            prev_end = s.end_s
        if p.index % 5 == 0:
            caps.append((p.duration_s - 0.5, p.duration_s + 1.0, "thanks for watching"))
        out[p.video_id] = {"start": [round(a, 2) for a, _, _ in caps],
                           "end": [round(b, 2) for _, b, _ in caps],
                           "text": [t for _, _, t in caps]}
    return out


def demo_vocabulary(plans: list[VideoPlan], captions: dict) -> list[str]:
    """Every token of the annotations' sentences and the ASR captions, sorted, minus DEMO_OOV."""
    from pipeline.text.words import tokenize
    texts = [s.sentence for p in plans for s in p.segments]
    texts += [t for c in captions.values() for t in c["text"]]
    return sorted({w for t in texts for w in tokenize(t)} - set(DEMO_OOV))


def write_text_files(plans: list[VideoPlan], seed: int, out_dir: Path) -> dict:
    """The demo's caption.json (ASR captions) and its seeded random word vectors
    (WORD_VECTORS, word2vec binary, 300-d: the GoogleNews loader reads it as it reads the real
    file) plus word2vec-demo.json recording how they were made -> that record."""
    from pipeline.text.words import WORD_DIM, demo_vectors, write_word2vec
    captions = asr_captions(plans, seed)
    write_json_atomic(captions, out_dir / "caption.json")
    vocab = demo_vocabulary(plans, captions)
    write_word2vec(out_dir / WORD_VECTORS, vocab, demo_vectors(vocab, WORD_DIM, seed))
    record = {"file": WORD_VECTORS, "kind": "seeded random (demo)", "seed": seed,
              "dim": WORD_DIM, "words": len(vocab), "left_out": list(DEMO_OOV),
              "captions": sum(len(c["text"]) for c in captions.values())}
    write_json_atomic(record, out_dir / "word2vec-demo.json")
    return record


# --------------------------------------------------------------------------- audio


def _speak(names: list[str], tmp: Path, voices: tuple = VOICES, texts: dict | None = None
           ) -> dict[tuple[str, int], np.ndarray]:
    """Each name spoken by espeak-ng in each of `voices` ((voice, words per minute, pitch), the
    English VOICES by default) -> {(name, voice index): float64 at SAMPLE_RATE with peak
    SPEECH_PEAK}. texts maps a name to what is said for it (another language's word; default:
    the name itself)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DemoError("espeak-ng not found: install espeak-ng (apt-get install espeak-ng) "
                           "or set demo.speech: false in params.yaml")
    out = {}
    for name in names:
        for k, (voice, speed, pitch) in enumerate(voices):
            path = tmp / f"speech-{name}-{k}.wav"
            said = (texts or {}).get(name, name)
            r = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w",
                                str(path), said], capture_output=True, text=True)
            if r.returncode != 0:
                raise DemoError(f"espeak-ng failed for {name!r} in voice {voice} (exit "
                                f"{r.returncode}): {r.stderr[-2000:]}")
            with wave.open(str(path)) as w:
                sr, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
            x = x.astype(np.float64) / 32768.0
            # band-limited resampling (espeak-ng writes 22.05 kHz) via the spectrum
            m = round(len(x) * SAMPLE_RATE / sr)
            y = np.fft.irfft(np.fft.rfft(x), m) * (m / len(x))
            out[(name, k)] = y * (SPEECH_PEAK / max(np.abs(y).max(), 1e-9))
    return out


def _tone(c: Concept, f0: float, t: np.ndarray) -> np.ndarray:
    """The concept's tone over local times t (s), peak ~1 before the envelope."""
    def partials(ratios, amps):
        return sum(a * np.sin(2 * np.pi * r * f0 * t) for r, a in zip(ratios, amps))
    if c.timbre == "sine":
        x = partials([1], [1.0])
    elif c.timbre == "octave":
        x = partials([1, 2], [1.0, 0.35])
    elif c.timbre == "odd":          # square-like: odd harmonics 1/k
        x = partials([1, 3, 5, 7], [1.0, 1 / 3, 1 / 5, 1 / 7])
    elif c.timbre == "rich":         # sawtooth-like: all harmonics 1/k
        x = partials(range(1, 9), [1 / k for k in range(1, 9)])
    elif c.timbre == "fifth":
        x = partials([1, 1.5, 2], [1.0, 0.45, 0.3])
    elif c.timbre == "bell":         # inharmonic partials
        x = partials([1, 2.76, 5.4], [1.0, 0.45, 0.2])
    else:
        raise ValueError(f"unknown timbre {c.timbre!r}")
    return x / np.abs(x).max()


def _envelope(c: Concept, t: np.ndarray, dur: float) -> np.ndarray:
    """Amplitude envelope over local times t (s) of a segment lasting dur seconds, in [0, 1]."""
    ramp = 0.02  # s: avoids clicks, which would smear energy across all Mel bands
    env = np.clip(np.minimum(t, dur - t) / ramp, 0.0, 1.0)
    if c.timbre == "bell":           # struck, decaying pulses: 5 ms attack, then decay
        phase = (t * c.pulse_hz) % 1.0
        env = env * np.minimum(phase * c.pulse_hz / 0.005, 1.0) * np.exp(-2.0 * phase)
    elif c.pulse_hz > 0:
        env = env * (0.5 - 0.5 * np.cos(2 * np.pi * c.pulse_hz * t)) ** 2
    return env


def _utterances(s: Segment, a: int, b: int, speech: dict) -> list[tuple[int, np.ndarray]]:
    """(offset, waveform) of each time a segment [a, b) (samples) speaks its name: SPEECH_AT_S
    after its start, then every SPEECH_EVERY_S while the whole word fits, repetition k in voice
    (s.voice + k) mod len(VOICES)."""
    out, at = [], a + round(SPEECH_AT_S * SAMPLE_RATE)
    while True:
        word = speech[(s.concept, (s.voice + len(out)) % len(VOICES))]
        if at + len(word) > b:
            return out
        out.append((at, word))
        at += round(SPEECH_EVERY_S * SAMPLE_RATE)


def _ducking(n: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """(n,) gain of a segment's tone: DUCK_GAIN while a name is spoken (each (start, length) of
    `spans`, offsets in samples), 50 ms raised-cosine ramps before and after, 1 elsewhere.
    Narration over a background sound is mixed like this; at full level the tone masks the name
    and a voice activity detector (stage speech@demo) no longer hears it."""
    gain = np.ones(n)
    ramp = round(0.05 * SAMPLE_RATE)
    up = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))            # 0 -> 1
    for at, length in spans:
        for lo, shape in ((at - ramp, 1 - (1 - DUCK_GAIN) * up),        # down to DUCK_GAIN
                          (at, np.full(length, DUCK_GAIN)),
                          (at + length, DUCK_GAIN + (1 - DUCK_GAIN) * up)):
            a, b = max(0, lo), min(n, lo + len(shape))
            if b > a:
                gain[a:b] = np.minimum(gain[a:b], shape[a - lo:b - lo])
    return gain


def spoken_words(plans: list[VideoPlan], speech: dict | None) -> dict:
    """The generator's own word timings, as an ASR backend would give them: {"video_id",
    "start_s", "end_s", "word"} columns, one row per spoken name (its voiced part: the
    synthesized word without its leading and trailing silence). Empty without speech."""
    rows: dict[str, list] = {"video_id": [], "start_s": [], "end_s": [], "word": []}
    for p in plans:
        n = round(p.n_frames * SAMPLE_RATE / p.fps)
        for s in p.segments:
            if speech is None or not s.spoken:
                continue
            a, b = round(s.start_s * SAMPLE_RATE), min(n, round(s.end_s * SAMPLE_RATE))
            for at, word in _utterances(s, a, b, speech):
                loud = np.flatnonzero(np.abs(word) > 0.02 * SPEECH_PEAK)
                lo, hi = (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, len(word))
                rows["video_id"].append(p.video_id)
                rows["start_s"].append(round((at + lo) / SAMPLE_RATE, 3))
                rows["end_s"].append(round((at + hi) / SAMPLE_RATE, 3))
                rows["word"].append(s.concept)
    return rows


def render_audio(p: VideoPlan, params: DemoParams, speech: dict | None
                 ) -> np.ndarray:
    """The soundtrack: (N,) float32 in [-1, 1] at SAMPLE_RATE, N = duration * SAMPLE_RATE.

    Background: Gaussian noise of std params.noise_level, a one-octave band around
    noise_centre_hz(p.bg_tone) over a flat floor. Segments add the concept's tone, peak
    TONE_PEAK, and its spoken name (peak SPEECH_PEAK) every SPEECH_EVERY_S seconds."""
    n = round(p.n_frames * SAMPLE_RATE / p.fps)
    rng = np.random.default_rng([params.seed, p.index, 1])
    x = np.zeros(n)
    if params.noise_level > 0 and n > 1:
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        octaves = np.log2(np.maximum(f, 1.0) / noise_centre_hz(p.bg_tone))
        spec *= np.exp(-0.5 * octaves ** 2) + 0.25   # a one-octave-sigma band over a flat floor
        noise = np.fft.irfft(spec, n)
        x += noise * (params.noise_level / max(noise.std(), 1e-12))
    for s in p.segments:
        c = CONCEPT_BY_NAME[s.concept]
        a, b = round(s.start_s * SAMPLE_RATE), min(n, round(s.end_s * SAMPLE_RATE))
        t = np.arange(b - a) / SAMPLE_RATE
        tone = _tone(c, c.f0_hz * pitch_factor(s.scale), t)
        level = TONE_PEAK * _envelope(c, t, (b - a) / SAMPLE_RATE) * s.sound
        if speech is not None and s.spoken:
            said = _utterances(s, a, b, speech)
            level = level * _ducking(len(t), [(at - a, len(word)) for at, word in said])
            for at, word in said:
                x[at:at + len(word)] += word
        x[a:b] += level * tone
    return np.clip(x, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- video


def _background_texture(rng: np.random.Generator, h: int, w: int, pad: int) -> np.ndarray:
    """(h + 2 pad, w + 2 pad) uint8 palette indices: random gratings at four scales."""
    y = np.arange(h + 2 * pad, dtype=np.float32)[:, None]
    x = np.arange(w + 2 * pad, dtype=np.float32)[None, :]
    tex = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    for period_frac, amp in ((0.06, 0.5), (0.12, 0.7), (0.25, 0.8), (0.6, 1.0)):
        a = rng.uniform(0, np.pi)
        k = 2 * np.pi / (period_frac * h * rng.uniform(0.8, 1.25))
        tex += amp * np.sin(k * (np.cos(a) * x + np.sin(a) * y) + rng.uniform(0, 2 * np.pi))
    tex -= tex.min()
    return (tex * (255.0 / max(float(tex.max()), 1e-6))).astype(np.uint8)


def _palette(hue: float) -> np.ndarray:
    """(256, 3) uint8 ramp from a dark to a light muted colour of the given hue."""
    dark = np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.35, 0.45))
    light = np.array(colorsys.hsv_to_rgb((hue + 0.03) % 1.0, 0.28, 0.62))
    ramp = np.linspace(0.0, 1.0, 256)[:, None]
    return np.round(255 * (dark + ramp * (light - dark))).astype(np.uint8)


def _tri(x: float) -> float:
    """Triangle wave in [-1, 1] with period 1."""
    return 4 * abs(x - math.floor(x + 0.5)) - 1


def _pose(motion: str, tau: float, ph: float, w: int, h: int) -> tuple[float, float, float, float]:
    """(centre x, centre y, angle rad, size multiplier) at local time tau (s) in a segment.

    Paths stay near the centre so the 112x112 centre crop of the 3D features sees the object."""
    cx, cy, ang, size = w / 2, h / 2, 0.0, 1.0
    if motion == "bounce":
        cy += h * (0.12 - 0.24 * abs(math.sin(math.pi * 0.8 * tau + ph)))
    elif motion == "spin":
        ang = 1.5 * tau + ph
    elif motion == "slide":
        cx += 0.12 * w * math.sin(2 * math.pi * 0.25 * tau + ph)
    elif motion == "orbit":
        cx += 0.10 * w * math.cos(2 * math.pi * 0.2 * tau + ph)
        cy += 0.10 * h * math.sin(2 * math.pi * 0.2 * tau + ph)
    elif motion == "zigzag":
        cx += 0.12 * w * _tri(0.3 * tau + ph)
        cy += 0.08 * h * _tri(0.9 * tau + ph)
    elif motion == "wobble":
        ang = 0.6 + 0.5 * math.sin(2 * math.pi * 0.7 * tau + ph)
    elif motion == "pulse":
        size = 1.0 + 0.15 * math.sin(2 * math.pi * 0.8 * tau + ph)
    elif motion == "figure8":
        a = 2 * math.pi * 0.2 * tau + ph
        cx += 0.10 * w * math.sin(a)
        cy += 0.08 * h * math.sin(2 * a)
    elif motion == "sway":
        a = math.sin(2 * math.pi * 0.5 * tau + ph)
        ang, cx = 0.4 * a, cx + 0.06 * w * a
    elif motion == "rise":
        cy += 0.12 * h * math.cos(2 * math.pi * 0.25 * tau + ph)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return cx, cy, ang, size


def _polygon(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Inside test for a convex polygon with counter-clockwise vertices."""
    inside = np.ones(u.shape, bool)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape in object coordinates (v up); every shape fits the unit disc."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "carrot":
        return _polygon(u, v, [(0.0, -1.0), (0.5, 0.8), (-0.5, 0.8)])
    if shape == "wedge":
        return _polygon(u, v, [(-0.85, -0.6), (0.9, -0.6), (-0.85, 0.75)])
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if shape == "cluster":
        m = np.zeros(u.shape, bool)
        for a in (90, 210, 330):
            x0, y0 = 0.5 * math.cos(math.radians(a)), 0.5 * math.sin(math.radians(a))
            m |= (u - x0) ** 2 + (v - y0) ** 2 <= 0.48 ** 2
        return m
    if shape == "long_ellipse":
        return u * u + (v / 0.5) ** 2 <= 1.0
    if shape == "egg":
        return (u / (0.72 * (1.0 - 0.15 * v))) ** 2 + v * v <= 1.0
    if shape == "rounded_square":
        return u ** 4 + v ** 4 <= 0.55
    if shape == "teardrop":
        return (u * u + (v + 0.3) ** 2 <= 0.49) | _polygon(u, v, [(-0.6, 0.0), (0.6, 0.0),
                                                                 (0.0, 1.0)])
    if shape == "capsule":
        return ((np.abs(u) <= 0.58) & (np.abs(v) <= 0.42)) | ((np.abs(u) - 0.58) ** 2 + v * v
                                                                <= 0.42 ** 2)
    if shape == "star":
        return np.sqrt(r2) <= 0.6 + 0.4 * np.cos(5 * np.arctan2(v, u))
    if shape == "small_ellipse":
        return (u / 0.7) ** 2 + (v / 0.52) ** 2 <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the darker pattern shade goes: a third of the area or less, so most pixels keep
    the concept's colour (a darkened colour can come close to another concept's)."""
    if pattern == "none":
        return np.zeros(u.shape, bool)
    if pattern == "stripes":
        return np.sin(14 * u) > 0.5
    if pattern == "holes":
        return (np.sin(12 * u) > 0.4) & (np.sin(12 * v) > 0.4)
    if pattern == "spokes":
        return np.sin(8 * np.arctan2(v, u)) > 0.5
    if pattern == "rings":
        return np.sin(18 * np.sqrt(u * u + v * v)) > 0.5
    if pattern == "checker":
        return np.sin(9 * u) * np.sin(9 * v) > 0.3
    if pattern == "speckles":
        return (np.sin(23 * u + 7 * v) * np.sin(19 * v - 5 * u)) > 0.6
    raise ValueError(f"unknown pattern {pattern!r}")


def _sprite(c: Concept, radius: float, ang: float) -> tuple[np.ndarray, np.ndarray]:
    """Concept c drawn around a pixel centre: (mask (n, n) bool, colour (n, n, 3) uint8),
    n = 2 * (int(radius) + 2) + 1, the object's centre at [n // 2, n // 2]."""
    half = int(radius) + 2
    d = np.arange(-half, half + 1, dtype=np.float32)
    dx, dy = d[None, :], -d[:, None]     # up is positive
    ca, sa = math.cos(ang), math.sin(ang)
    u, v = (dx * ca + dy * sa) / radius, (dy * ca - dx * sa) / radius
    mask = _shape_mask(c.shape, u, v)
    # a fixed light direction (upper left) gives some shading without changing the hue
    shade = 0.88 + 0.12 * np.clip(0.7 * (v - u), -1.0, 1.0)
    shade[_pattern_mask(c.pattern, u, v)] *= 0.65
    col = np.clip(np.asarray(c.rgb, np.float32) * shade[..., None], 0, 255).astype(np.uint8)
    return mask, col


def _draw(frame: np.ndarray, c: Concept, s: Segment, tau: float, cache: dict) -> None:
    """Draws concept c in place onto frame (H, W, 3) uint8 at local time tau of segment s.

    cache maps a quantised (radius, angle) to its sprite: most motions only translate, and
    integer centres let those reuse one sprite for the whole segment."""
    h, w, _ = frame.shape
    cx, cy, ang, size = _pose(c.motion, tau, s.phase, w, h)
    radius = round(h / 6.0 * s.scale * size * 4) / 4    # diameter ~ a third of the frame height
    ang = round(math.degrees(ang)) % 360
    key = (radius, ang)
    if key not in cache:
        cache[key] = _sprite(c, radius, math.radians(ang))
    mask, col = cache[key]
    half = mask.shape[0] // 2
    x, y = round(cx) - half, round(cy) - half
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(w, x + mask.shape[1]), min(h, y + mask.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    win = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    np.copyto(frame[y0:y1, x0:x1], col[win], where=mask[win][..., None])


def iter_frames(p: VideoPlan, seed: int) -> Iterator[np.ndarray]:
    """Yields the p.n_frames frames of a video, each (H, W, 3) uint8 RGB, one at a time.

    A yielded array may be reused by the next step: consume (write) it before advancing."""
    rng = np.random.default_rng([seed, p.index, 2])
    h, w = p.height, p.width
    pad = max(2, round(0.08 * h))
    tex = _background_texture(rng, h, w, pad)
    hue0 = 0.85 * p.bg_tone          # not the full circle: hue stays a 1-1 cue for the noise band
    drift_phase = rng.uniform(0, 2 * np.pi, 3)
    every = max(1, round(p.fps / BG_UPDATE_HZ))
    bounds = [(round(s.start_s * p.fps), round((s.end_s + VISIBLE_AFTER_S) * p.fps), s)
              for s in p.segments]
    starts = {a for a, _, _ in bounds}
    bg = None
    cache: dict = {}
    for f in range(p.n_frames):
        t = f / p.fps
        if f % every == 0:
            hue = hue0 + 0.03 * math.sin(2 * math.pi * t / 15.0 + drift_phase[0])
            ox = pad + round(pad * math.sin(2 * math.pi * t / 20.0 + drift_phase[1]))
            oy = pad + round(pad * math.sin(2 * math.pi * t / 25.0 + drift_phase[2]))
            bg = np.take(_palette(hue), tex[oy:oy + h, ox:ox + w], axis=0)   # (H, W, 3)
        seg = next((s for a, b, s in bounds if a <= f < b), None)
        if seg is None:
            yield bg
        else:
            frame = bg.copy()
            if f in starts:
                cache.clear()
            _draw(frame, CONCEPT_BY_NAME[seg.concept], seg, t - seg.start_s, cache)
            yield frame


# --------------------------------------------------------------------------- encoding


def _write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.round(x * 32767).astype("<i2").tobytes())


def _encode(p: VideoPlan, params: DemoParams, videos: Path, speech: dict | None, tmp: Path,
            ffmpeg: str) -> int:
    """Renders and encodes one video to videos/<id>.mp4 (atomically); returns its size in bytes."""
    wav = tmp / f"audio-{p.index:05d}.wav"      # named by index: ids may start with '-'
    _write_wav(wav, render_audio(p, params, speech))
    part = videos / f".{p.video_id}.mp4.part"   # absolute paths: never parsed as an option
    errlog = tmp / f"ffmpeg-{p.index:05d}.log"
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{p.width}x{p.height}",
           "-framerate", str(p.fps), "-i", "pipe:0", "-i", str(wav),
           "-map", "0:v:0", "-map", "1:a:0",
           # one x264 thread: output bytes then do not depend on the machine's core count, and
           # the parallelism comes from params.workers videos at once
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
           "-threads", "1",
           "-c:a", "aac", "-b:a", "96k", "-ar", str(SAMPLE_RATE), "-ac", "1",
           "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
           "-flags:a", "+bitexact", "-movflags", "+faststart", "-f", "mp4", str(part)]
    broken = False
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            # a pipe holding a whole frame lets Python render the next one while x264 encodes
            with contextlib.suppress(OSError, AttributeError):  # Linux only; else just slower
                fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            try:
                for frame in iter_frames(p, params.seed):
                    proc.stdin.write(frame.data)
                proc.stdin.close()
            except BrokenPipeError:
                broken = True          # ffmpeg died; its exit code and stderr say why
            rc = proc.wait()
        except BaseException:
            # a bug or Ctrl-C mid-video: no orphan encoder, no half-written file
            proc.kill()
            proc.wait()
            part.unlink(missing_ok=True)
            raise
    if rc != 0 or broken:
        part.unlink(missing_ok=True)
        tail = errlog.read_text(errors="replace")[-2000:].strip()
        raise DemoError(f"demo: ffmpeg failed for video {p.video_id!r} (exit {rc}): "
                           f"{tail or '(no stderr)'}")
    wav.unlink()
    final = videos / f"{p.video_id}.mp4"
    os.replace(part, final)
    return final.stat().st_size


def generate(params: DemoParams, out_dir: Path, url_root: str) -> dict:
    """Writes the demo dataset and returns a summary.

    Inputs: params; out_dir, the folder that receives videos/<video_id>.mp4 and annotations.json
    (written last, so its presence means every video is there); url_root, the project-relative
    folder that out_dir will be known as in the annotations' "file:<url_root>/videos/<id>.mp4".
    Output: {"videos", "training_videos", "validation_videos", "segments", "total_seconds",
    "total_bytes", "concepts", "concept_counts": {name: {"training": n, "validation": n}},
    "elapsed_s"}. Raises DemoError naming the video when ffmpeg fails, and when ffmpeg or
    (with params.speech) espeak-ng is missing."""
    root = PurePosixPath(url_root or ".")
    if root.is_absolute() or ".." in root.parts:
        raise ValueError(f"url_root must be a relative path without '..', got {url_root!r}")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DemoError("ffmpeg not found: install ffmpeg (apt-get install ffmpeg)")
    t0 = time.monotonic()
    out_dir = Path(out_dir).resolve()
    videos = out_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    plans = plan(params)
    ids = {p.video_id for p in plans}
    # annotations.json is the completion marker: an old one must not vouch for a partial run
    (out_dir / "annotations.json").unlink(missing_ok=True)
    for f in sorted(videos.iterdir()):
        # leftovers of an earlier seed or an interrupted run would otherwise ship with the demo
        stale = f.suffix == ".mp4" and YOUTUBE_ID.match(f.stem) and f.stem not in ids
        if f.is_file() and (f.name.endswith(".mp4.part") or stale):
            log.info("demo: removing stale %s", f)
            f.unlink()
    used = sorted({s.concept for p in plans for s in p.segments})
    total_bytes, done = 0, 0
    with tempfile.TemporaryDirectory(prefix="avlnet-demo-") as tmp_name:
        tmp = Path(tmp_name)
        speech = _speak(used, tmp) if params.speech else None
        log.info("demo: encoding %d videos with %d workers into %s", len(plans), params.workers,
                 videos)
        with concurrent.futures.ThreadPoolExecutor(params.workers) as pool:
            # longest first: the last video to finish then is a short one
            order = sorted(plans, key=lambda p: -p.n_frames * p.width * p.height)
            futures = [pool.submit(_encode, p, params, videos, speech, tmp, ffmpeg) for p in order]
            try:
                for fut in concurrent.futures.as_completed(futures):
                    total_bytes += fut.result()
                    done += 1
                    el = time.monotonic() - t0
                    log.info("demo: %d/%d videos, %.2f videos/s, ETA %.0f s", done, len(plans),
                             done / el, el / done * (len(plans) - done))
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    text = write_text_files(plans, params.seed, out_dir)
    words = spoken_words(plans, speech)
    _write_words(words, out_dir / WORDS_FILE)
    write_json_atomic(annotations(plans, str(root)), out_dir / "annotations.json")
    counts = {c: {"training": 0, "validation": 0} for c in used}
    for p in plans:
        for s in p.segments:
            counts[s.concept][p.subset] += 1
    elapsed = time.monotonic() - t0
    summary = {
        "videos": len(plans),
        "training_videos": sum(p.subset == "training" for p in plans),
        "validation_videos": sum(p.subset == "validation" for p in plans),
        "segments": sum(len(p.segments) for p in plans),
        "total_seconds": round(sum(p.duration_s for p in plans), 3),
        "total_bytes": total_bytes,
        "concepts": used,
        "concept_counts": counts,
        "asr_captions": text["captions"],
        "spoken_segments": sum(s.spoken for p in plans for s in p.segments),
        "spoken_words": len(words["word"]),
        "word_vectors": text["words"],
        "elapsed_s": round(elapsed, 2),
    }
    log.info("demo: %d videos, %.0f s of media, %.1f MB in %.1f s", summary["videos"],
             summary["total_seconds"], total_bytes / 1e6, elapsed)
    return summary
