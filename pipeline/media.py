"""Probing media files: duration, resolution, codecs, audio; or a clear error.

Probed in-process with PyAV, i.e. libavformat, the library ffprobe itself is built on: about
3 ms a file, where starting an ffprobe process costs ~85 ms of CPU (it links 200+ libraries),
which on a small machine made probing the bottleneck of a many-threaded download."""
from __future__ import annotations

from pathlib import Path


class ProbeError(RuntimeError):
    """The file cannot be read as media (corrupt, truncated, not media, no streams)."""


def probe(path: Path) -> dict:
    """Probes `path` -> {duration_s, width, height, vcodec, acodec, has_audio, has_video}.

    duration_s is the container's duration (what ffprobe's format.duration reports); a cover
    image attached to an audio file does not count as video."""
    import av

    path = Path(path)
    try:
        with av.open(str(path), mode="r") as c:
            video = next((s for s in c.streams.video
                          if not s.disposition & av.stream.Disposition.attached_pic), None)
            audio = next(iter(c.streams.audio), None)
            if video is None and audio is None:
                raise ProbeError(f"{path}: no audio or video stream")
            duration = c.duration / 1e6 if c.duration else None   # AV_TIME_BASE units
            vctx = video.codec_context if video is not None else None
            return {"duration_s": duration,
                    "width": (vctx.width or None) if vctx is not None else None,
                    "height": (vctx.height or None) if vctx is not None else None,
                    "vcodec": vctx.name if vctx is not None else None,
                    "acodec": audio.codec_context.name if audio is not None else None,
                    "has_audio": audio is not None, "has_video": video is not None}
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ProbeError(f"{path}: not readable as media ({e})") from None
