"""Self-contained HTML pages (reports, search results): frames, audio players and spectrograms as
data URIs, cut from the media files with ffmpeg, and the page shell they go in.

Every piece is inline (base64), so a page opens anywhere without the media beside it. Audio is
mono 16 kHz low-bitrate MP3 (Opus in Ogg, then WAV, where this ffmpeg has no MP3 encoder) to keep
a page of a few dozen players in the megabytes. Media that cannot be read gives None and the
page shows a placeholder: a report never fails for a missing video file."""
from __future__ import annotations

import base64
import functools
import html
import io
import logging
import shutil
import subprocess
import wave as wavefile
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

AUDIO_RATE = 16000          # Hz, players' sample rate (speech; the features' rate too)
AUDIO_KBPS = 24             # kbit/s for MP3 / Opus players
AUDIO_MAX_S = 30.0          # seconds: longer clips are cut to their first AUDIO_MAX_S
FRAME_WIDTH = 160           # px, frames' width (height keeps the aspect)
FFMPEG_TIMEOUT_S = 60

CSS = ("body{font-family:sans-serif;margin:16px;max-width:1400px}"
       "h2{margin-top:28px;border-bottom:1px solid #ccc}"
       "td{vertical-align:top;padding:4px;font-size:12px;max-width:180px}"
       "td.hit{background:#cfc}td.query{background:#eef}"
       ".nf{width:160px;height:90px;background:#eee;color:#888;font-size:11px;"
       "display:flex;align-items:center;justify-content:center}"
       ".cap{font-style:italic;color:#333}.miss{color:#a00;font-weight:bold}"
       "audio{width:170px;height:32px;display:block}td img{display:block;max-width:170px}"
       "pre{font-size:11px;background:#f6f6f6;padding:8px;overflow:auto}")


@functools.lru_cache(maxsize=1)
def _audio_codec() -> tuple[list[str], str] | None:
    """(ffmpeg output args, MIME type) of the best encoder this ffmpeg has; None without ffmpeg."""
    if shutil.which("ffmpeg") is None:
        return None
    try:
        enc = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True,
                             text=True, timeout=FFMPEG_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if "libmp3lame" in enc:
        return ["-c:a", "libmp3lame", "-b:a", f"{AUDIO_KBPS}k", "-f", "mp3"], "audio/mpeg"
    if "libopus" in enc:
        return ["-c:a", "libopus", "-b:a", f"{AUDIO_KBPS}k", "-f", "ogg"], "audio/ogg"
    return ["-c:a", "pcm_s16le", "-f", "wav"], "audio/wav"


def _ffmpeg(args: list[str], stdin: bytes | None = None) -> bytes | None:
    """ffmpeg's stdout for `args` (quiet, no prompts), or None when it fails or is missing."""
    try:
        out = subprocess.run(["ffmpeg", "-v", "error", *(["-nostdin"] if stdin is None else []),
                              *args], input=stdin, capture_output=True,
                             timeout=FFMPEG_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("ffmpeg %s failed: %s", args, e)
        return None
    return out or None


@functools.lru_cache(maxsize=512)
def _frame_cached(path: str, t: float, width: int) -> str | None:
    out = _ffmpeg(["-ss", f"{max(t, 0.0):.3f}", "-i", path, "-frames:v", "1", "-vf",
                   f"scale={width}:-2", "-f", "image2", "-c:v", "png", "pipe:"])
    return base64.b64encode(out).decode() if out else None


def frame_png(video_path: Path | str | None, t: float, width: int = FRAME_WIDTH) -> str | None:
    """The frame of a media file at t seconds, `width` px wide -> base64 PNG; None when the
    file is missing, has no video, or ffmpeg fails."""
    if video_path is None or not Path(video_path).is_file():
        return None
    return _frame_cached(str(video_path), round(float(t), 3), width)


@functools.lru_cache(maxsize=512)
def _audio_cached(path: str, start_s: float, dur_s: float) -> str | None:
    # decoded to PCM first: a cut past the media's end then shows as no samples (an encoder
    # would still write its headers, an empty player)
    pcm = _ffmpeg(["-ss", f"{start_s:.3f}", "-t", f"{dur_s:.3f}", "-i", path, "-vn", "-ac", "1",
                   "-ar", str(AUDIO_RATE), "-f", "s16le", "-c:a", "pcm_s16le", "pipe:"])
    if not pcm or len(pcm) < 2 * AUDIO_RATE // 100:       # under 10 ms of sound
        return None
    wave = np.frombuffer(pcm[:len(pcm) // 2 * 2], "<i2").astype(np.float32) / 32768
    return audio_data_uri_from_wave(wave, AUDIO_RATE)


def audio_data_uri(media_path: Path | str | None, start_s: float, end_s: float,
                   max_s: float = AUDIO_MAX_S) -> str | None:
    """The audio of a media file from start_s to end_s (seconds; at most max_s of it) as a
    data: URI (mono, 16 kHz, MP3/Opus/WAV) for <audio src>; None when the file is missing,
    has no audio there (no track, or the cut lies past its end) or ffmpeg fails."""
    if media_path is None or not Path(media_path).is_file() or end_s <= start_s:
        return None
    dur = min(float(end_s) - float(start_s), max_s)
    return _audio_cached(str(media_path), round(max(float(start_s), 0.0), 3), round(dur, 3))


def _wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """(n,) float wave in [-1, 1] -> 16-bit mono WAV file bytes."""
    pcm = (np.clip(np.asarray(wave, np.float64), -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wavefile.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def audio_data_uri_from_wave(wave: np.ndarray, sample_rate: int,
                             max_s: float = AUDIO_MAX_S) -> str:
    """A decoded mono wave ((n,) float in [-1, 1], e.g. a query file) -> data: URI for <audio
    src>, its first max_s seconds: MP3/Opus through ffmpeg, else (no ffmpeg) 16-bit WAV."""
    w = np.asarray(wave, np.float32).reshape(-1)[:int(max_s * sample_rate)]
    wav = _wav_bytes(w, sample_rate)
    codec = _audio_codec()
    if codec is not None and codec[1] != "audio/wav":
        args, mime = codec
        out = _ffmpeg(["-f", "wav", "-i", "pipe:0", "-ac", "1", "-ar", str(AUDIO_RATE), *args,
                       "pipe:1"], stdin=wav)
        if out:
            return f"data:{mime};base64,{base64.b64encode(out).decode()}"
    return f"data:audio/wav;base64,{base64.b64encode(wav).decode()}"


def fig_png(fig) -> str:
    """A matplotlib figure -> base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def spectrogram_png(spec) -> str:
    """A log-Mel spectrogram (40, T) (array or tensor; T frames at 100/s, low frequencies in
    row 0) -> base64 PNG, 168 x 72 px (a table cell's width), its width the whole T."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = np.asarray(spec.numpy() if hasattr(spec, "numpy") else spec, np.float32)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"spectrogram_png: want a (40, T) array with T > 0, got {s.shape}")
    fig, ax = plt.subplots(figsize=(2.1, 0.9), dpi=80)
    ax.imshow(s, origin="lower", aspect="auto", cmap="magma")
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    return fig_png(fig)


def img_tag(png_b64: str | None, alt: str = "", missing: str = "no frame") -> str:
    """<img> of a base64 PNG, or a grey placeholder box saying `missing` when None."""
    if not png_b64:
        return f'<div class="nf">{html.escape(missing)}</div>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_b64}">'


def audio_tag(uri: str | None, missing: str = "no audio") -> str:
    """<audio controls> of a data: URI (audio_data_uri), or a short note when None."""
    if not uri:
        return f'<div class="nf" style="height:32px">{html.escape(missing)}</div>'
    return f'<audio controls preload="metadata" src="{uri}"></audio>'


def page(title: str, intro_html: str, sections: Sequence[str]) -> str:
    """A complete self-contained HTML document: <h1>title, the intro (HTML, caller-escaped),
    then each section (HTML) in order."""
    t = html.escape(title)
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{t}</title><style>{CSS}</style></head>\n<body>\n<h1>{t}</h1>\n"
            f"{intro_html}\n" + "\n".join(sections) + "\n</body></html>\n")


def media_paths(ledger, videos_root: Path | None) -> dict[str, Path]:
    """The download ledger (a pyarrow Table with video_id, path; or None) -> video_id -> its
    media file (path relative to videos_root); videos without a file are left out."""
    if ledger is None:
        return {}
    return {r["video_id"]: (Path(videos_root) if videos_root else Path(".")) / r["path"]
            for r in ledger.select(["video_id", "path"]).to_pylist() if r["path"]}
