"""ffprobe: what a media file holds (duration, resolution, codecs, audio), or a clear error."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path


class ProbeError(RuntimeError):
    """ffprobe could not read the file (corrupt, truncated, not media) or is not installed."""


def probe(path: Path, timeout_s: float = 60.0) -> dict:
    """Probes `path` -> {duration_s, width, height, vcodec, acodec, has_audio, has_video}.

    The path is made absolute so a file name starting with '-' is never read as an option."""
    exe = shutil.which("ffprobe")
    if exe is None:
        raise ProbeError("ffprobe not found: install ffmpeg (bash setup.sh does it)")
    path = Path(path).resolve()
    try:
        p = subprocess.run([exe, "-v", "error", "-print_format", "json", "-show_format",
                            "-show_streams", str(path)], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"{path}: ffprobe timed out after {timeout_s:.0f} s") from None
    if p.returncode != 0:
        raise ProbeError(f"{path}: ffprobe failed: {p.stderr.strip()[:300] or 'no output'}")
    data = json.loads(p.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise ProbeError(f"{path}: no audio or video stream")
    try:
        duration = float(data.get("format", {}).get("duration"))
    except (TypeError, ValueError):
        duration = None
    return {"duration_s": duration,
            "width": int(video["width"]) if video and video.get("width") else None,
            "height": int(video["height"]) if video and video.get("height") else None,
            "vcodec": video.get("codec_name") if video else None,
            "acodec": audio.get("codec_name") if audio else None,
            "has_audio": audio is not None, "has_video": video is not None}
