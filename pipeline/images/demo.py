"""Demo image set: one still frame per image of the demo's concepts (pipeline/data/demo.py's
sprites on its muted textured backgrounds, at varied positions, sizes and angles) with a spoken
caption by espeak-ng (its sentences and voices), as Places-format JSON + jpg + 16 kHz wav.
Fully determined by the params (seed); needs espeak-ng."""
from __future__ import annotations

import math
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.demo import (CONCEPTS, SENTENCES, VOICES, _background_texture, _palette,
                                _speak, _sprite)
from pipeline.data.demo import SAMPLE_RATE as SPEAK_RATE
from pipeline.data.manifest import write_json_atomic
from pipeline.features.logmel import SAMPLE_RATE
from pipeline.config import ImagesDemoParams

SPLITS = ("train", "val")
JPEG_QUALITY = 90


def render_image(concept_index: int, rng: np.random.Generator, width: int, height: int
                 ) -> np.ndarray:
    """(height, width, 3) uint8: a random muted background with the concept drawn once at a
    random position (fully inside), radius 0.18..0.32 of the height, and angle."""
    c = CONCEPTS[concept_index]
    tex = _background_texture(rng, height, width, 0)
    frame = np.take(_palette(rng.uniform(0.0, 0.85)), tex, axis=0)        # (H, W, 3)
    radius = float(rng.uniform(0.18, 0.32)) * height
    mask, col = _sprite(c, radius, float(rng.uniform(0, 2 * math.pi)))
    n = mask.shape[0]
    x = int(rng.integers(0, max(1, width - n + 1)))
    y = int(rng.integers(0, max(1, height - n + 1)))
    win = frame[y:y + n, x:x + n]
    np.copyto(win, col[:win.shape[0], :win.shape[1]],
              where=mask[:win.shape[0], :win.shape[1], None])
    return frame


def _write_wav16k(path: Path, x: np.ndarray, rate: int) -> None:
    """float waveform at `rate` -> 16-bit PCM mono wav at 16 kHz (band-limited FFT resampling,
    as demo._speak does)."""
    m = round(len(x) * SAMPLE_RATE / rate)
    y = np.fft.irfft(np.fft.rfft(x), m) * (m / len(x))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.round(np.clip(y, -1, 1) * 32767).astype("<i2").tobytes())


def generate(p: ImagesDemoParams, out_dir: Path) -> dict[str, Path]:
    """Writes out_dir/{images/*.jpg, wavs/*.wav, train.json, val.json} -> {split: json path}.
    Item i of concept k in split s draws from rng([seed, k, i, s]); its caption is one of
    demo.SENTENCES about the concept, in one of demo.VOICES."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    per = {"train": p.train_per_concept, "val": p.val_per_concept}
    out = {}
    with tempfile.TemporaryDirectory(prefix="avl-images-") as tmp:
        for si, split in enumerate(SPLITS):
            data = []
            for k in range(p.n_concepts):
                name = CONCEPTS[k].name
                for i in range(per[split]):
                    rng = np.random.default_rng([p.seed, k, i, si])
                    pid = f"{split}-{name}-{i:04d}"
                    frame = render_image(k, rng, p.width, p.height)
                    Image.fromarray(frame).save(out_dir / "images" / f"{pid}.jpg",
                                                quality=JPEG_QUALITY)
                    sentence = SENTENCES[int(rng.integers(len(SENTENCES)))].format(name)
                    v = int(rng.integers(len(VOICES)))
                    said = _speak([pid], Path(tmp), (VOICES[v],), {pid: sentence})[(pid, 0)]
                    _write_wav16k(out_dir / "wavs" / f"{pid}.wav", said, SPEAK_RATE)
                    data.append({"uttid": pid, "image": f"{pid}.jpg", "wav": f"{pid}.wav",
                                 "speaker": VOICES[v][0], "asr_text": sentence,
                                 "label": name})
            out[split] = out_dir / f"{split}.json"
            write_json_atomic({"image_base_path": "images", "audio_base_path": "wavs",
                               "data": data}, out[split])
    return out
