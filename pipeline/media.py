"""Probing media files: duration, resolution, codecs, audio; or a clear error.

Probed in-process with PyAV, i.e. libavformat, the library ffprobe itself is built on: about
3 ms a file, where starting an ffprobe process costs ~85 ms of CPU (it links 200+ libraries),
which on a small machine made probing the bottleneck of a many-threaded download."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class ProbeError(RuntimeError):
    """The file cannot be read as media (corrupt, truncated, empty, not media, no streams)."""


class MediaAccessError(ProbeError):
    """The file cannot be read at all (permission, I/O error, gone, not a regular file): a
    problem of this machine, not of the media. A ProbeError, so callers that only need
    "unusable" catch both."""


class SpecialFileError(OSError):
    """A FIFO, device, socket or directory where a regular file was expected."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
# errno values of libav's OSErrors that mean the machine, not the bytes
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.ELOOP}


def check_regular(path: Path) -> os.stat_result:
    """os.stat of `path` (symlinks followed) if it is a regular file; SpecialFileError naming
    what it is otherwise. Nothing is opened: opening a FIFO would block the reader forever."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise SpecialFileError(f"{path} is {kind}, not a regular file; refusing to open it")
    return st


def probe(path: Path) -> dict:
    """Probes `path` -> {duration_s, width, height, vcodec, acodec, has_audio, has_video}.

    duration_s is the container's duration (what ffprobe's format.duration reports); a cover
    image attached to an audio file does not count as video. Raises MediaAccessError when the
    file cannot be read (special files are refused unopened), ProbeError when it is not media."""
    import av

    path = Path(path)
    try:
        st = check_regular(path)
        with open(path, "rb") as f:   # access problems surface here, not as libav's codes
            f.read(1)
    except OSError as e:
        raise MediaAccessError(str(e) if isinstance(e, SpecialFileError)
                               else f"{path}: cannot read it ({e.strerror or e})") from None
    if st.st_size == 0:
        raise ProbeError(f"{path}: empty file (0 bytes), not media")
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
        if isinstance(e, OSError) and e.errno in _ACCESS_ERRNOS:
            raise MediaAccessError(f"{path}: cannot read it ({e})") from None
        raise ProbeError(f"{path}: not readable as media ({e})") from None
