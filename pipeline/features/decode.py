"""Single-pass streaming decode: one ffmpeg process yields 1 fps 2D frames, 24 fps 3D crops and audio.

features.md "Decoding (ffmpeg)": the reference ran two separate ffmpeg chains per video (plus sox
for audio); here one process demuxes and decodes once, `split`s the decoded video into the 2D and
3D branches and resamples the audio, writing three raw outputs to three pipes that reader threads
drain concurrently into one bounded queue. The frames are byte-identical to the separate chains
(`reference_commands`, checked in tests/test_decode.py) and memory does not grow with video length.

Deviation from the reference (documented, features.md): rotation metadata is respected. ffmpeg
auto-rotates decoded frames by default (`-autorotate`), but the reference computed the output
size from the coded (unrotated) width/height, so a 90/270-degree phone video came out squeezed
into the wrong aspect ratio. `plan` computes sizes from the displayed (rotated) dimensions.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from pipeline.media import ProbeError, probe

log = logging.getLogger(__name__)

SIZE_2D = 224        # px, short side of the 1 fps frames (features.md)
SIZE_3D = 112        # px, short side before the centre crop, and the crop's side
FPS_2D = 1           # frames per second of the 2D branch
FPS_3D = 24          # frames per second of the 3D branch
AUDIO_RATE = 16000   # Hz, mono float32
PIPE_BYTES = 1 << 20  # pipe buffer asked for per output (the default max for non-root users)
FFMPEG = "ffmpeg"
_GLOBAL_ARGS = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")


class DecodeError(RuntimeError):
    """ffmpeg could not decode the file (message names it and ends with ffmpeg's stderr tail)."""


@dataclass(frozen=True)
class DecodePlan:
    """What one decode of `path` will produce; sizes follow the DISPLAYED (rotated) dimensions."""
    path: Path
    width: int                 # px, displayed width (coded width/height swapped for 90/270)
    height: int                # px, displayed height
    rotation: int              # degrees of the display matrix (0 when none); ffmpeg autorotates
    has_audio: bool
    duration_s: float | None   # container duration, s (None when the container has none)
    video_index: int           # absolute stream index of the video stream decoded
    audio_index: int | None    # absolute stream index of the audio stream, None without audio

    @property
    def size_2d(self) -> tuple[int, int]:
        """(H, W) of the 1 fps frames."""
        return output_size(self.width, self.height, SIZE_2D)

    @property
    def size_3d(self) -> tuple[int, int]:
        """(H, W) of the 24 fps frames before the 112x112 centre crop."""
        return output_size(self.width, self.height, SIZE_3D)

    @property
    def crop_xy(self) -> tuple[int, int]:
        """(X, Y) of the top-left corner of the 3D centre crop (features.md: int((W-112)/2))."""
        h, w = self.size_3d
        return int((w - SIZE_3D) / 2), int((h - SIZE_3D) / 2)


class Chunk(NamedTuple):
    """A run of consecutive output of one stream, in the order ffmpeg produced it."""
    stream: str        # '2d' | '3d' | 'audio'
    start: int         # index of the first frame (or audio sample) of `data` within its stream
    data: np.ndarray   # '2d': uint8 (n, H, W, 3) RGB; '3d': uint8 (n, 112, 112, 3); 'audio': float32 (n,)


def output_size(w: int, h: int, size: int) -> tuple[int, int]:
    """Coded/displayed (w, h) -> output (H, W) with the SHORT side = size, integer truncation.

    features.md: 320x240 -> (224, 298) at 224 and (112, 149) at 112."""
    if h >= w:
        return int(h * size / w), size
    return size, int(w * size / h)


def plan(path: Path) -> DecodePlan:
    """Probes `path` -> DecodePlan (displayed size, rotation, audio, duration); ProbeError if unreadable.

    PyAV 18 exposes the display matrix only on decoded frames (copied from the stream's side
    data), so the rotation costs decoding one frame: a few ms, far less than an ffprobe process."""
    import av

    path = Path(path)
    info = probe(path)
    if not info["has_video"] or not info["width"] or not info["height"]:
        raise ProbeError(f"{path}: no decodable video stream")
    try:  # the same stream choice probe() makes: first video that is not a cover image
        with av.open(str(path), mode="r") as c:
            v = next(s for s in c.streams.video
                     if not s.disposition & av.stream.Disposition.attached_pic)
            a = next(iter(c.streams.audio), None)
            video_index, audio_index = v.index, (a.index if a is not None else None)
            rotation = 0
            try:
                frame = next(c.decode(v), None)
                rotation = int(round(frame.rotation or 0)) if frame is not None else 0
            except av.error.FFmpegError:
                pass   # undecodable first frame: ffmpeg will fail or skip it; size as coded
    except (av.error.FFmpegError, OSError, StopIteration) as e:
        raise ProbeError(f"{path}: not readable as media ({e})") from None
    w, h = info["width"], info["height"]
    if rotation % 180 == 90:   # ffmpeg's autorotate transposes for 90 and 270 (= -90)
        w, h = h, w
    return DecodePlan(path=path, width=w, height=h, rotation=rotation,
                      has_audio=audio_index is not None, duration_s=info["duration_s"],
                      video_index=video_index, audio_index=audio_index)


def _video_2d(stream, p: DecodePlan):
    h, w = p.size_2d
    return stream.filter("fps", fps=FPS_2D).filter("scale", w, h)


def _video_3d(stream, p: DecodePlan):
    h, w = p.size_3d
    x, y = p.crop_xy
    return (stream.filter("fps", fps=FPS_3D).filter("scale", w, h)
            .filter("crop", SIZE_3D, SIZE_3D, x, y))


def _audio(stream):
    # sox `channels 1 rate 16000` in the reference; soxr is the close equivalent (features.md).
    # aformat lets the one aresample instance downmix and convert too (no second, default resampler).
    return (stream.filter("aresample", AUDIO_RATE, resampler="soxr")
            .filter("aformat", sample_fmts="flt", channel_layouts="mono"))


def _raw_video(stream, target: str):
    return stream.output(target, format="rawvideo", pix_fmt="rgb24")


def _raw_audio(stream, target: str):
    return stream.output(target, format="f32le", acodec="pcm_f32le")


def reference_commands(path: Path, p: DecodePlan) -> dict[str, list[str]]:
    """The reference's separate chains -> {'2d'|'3d'|'audio': ffmpeg argv writing to stdout}.

    Built with ffmpeg-python as the reference extractor did (`fps` then `scale`, then `crop`),
    at the plan's (rotation-aware) sizes; 'audio' is absent without an audio stream."""
    import ffmpeg

    inp = ffmpeg.input(str(path))
    video = inp[str(p.video_index)]
    cmds = {"2d": _raw_video(_video_2d(video, p), "pipe:"),
            "3d": _raw_video(_video_3d(video, p), "pipe:")}
    if p.audio_index is not None:
        cmds["audio"] = _raw_audio(_audio(inp[str(p.audio_index)]), "pipe:")
    return {k: c.global_args(*_GLOBAL_ARGS).compile(cmd=FFMPEG) for k, c in cmds.items()}


def single_pass_command(path: Path, p: DecodePlan, fds: dict[str, int | str]) -> list[str]:
    """The one-process command: `[v]split=2` -> 2D and 3D branches, plus audio, to `pipe:<fd>`.

    fds maps '2d' / '3d' / 'audio' to the write-end file descriptors ffmpeg inherits (pass_fds
    keeps their numbers, so `pipe:N` names them directly), or to a path such as /dev/null
    (benchmarks: the same graph without delivering the frames)."""
    import ffmpeg

    def target(tag: str) -> str:
        return f"pipe:{fds[tag]}" if isinstance(fds[tag], int) else str(fds[tag])

    inp = ffmpeg.input(str(path))
    split = inp[str(p.video_index)].split()
    outs = [_raw_video(_video_2d(split[0], p), target("2d")),
            _raw_video(_video_3d(split[1], p), target("3d"))]
    if "audio" in fds:
        outs.append(_raw_audio(_audio(inp[str(p.audio_index)]), target("audio")))
    return ffmpeg.merge_outputs(*outs).global_args(*_GLOBAL_ARGS).compile(cmd=FFMPEG)


def put_unless_stopped(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Blocking put that gives up once `stop` is set (the consumer went away)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _reader(fd: int, tag: str, shape: tuple[int, ...], dtype, chunk_items: int,
            q: queue.Queue, stop: threading.Event) -> None:
    """Reads fixed-size chunks from `fd` until EOF -> (tag, Chunk) items, then (tag, None).

    A trailing partial frame (ffmpeg killed mid-write) is reported as (tag, ValueError)."""
    item_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    chunk_bytes = item_bytes * chunk_items
    start = 0
    try:
        with open(fd, "rb", buffering=0, closefd=True) as f:
            eof = False
            while not eof and not stop.is_set():
                buf = bytearray(chunk_bytes)
                view, got = memoryview(buf), 0
                while got < chunk_bytes:
                    n = f.readinto(view[got:])
                    if not n:
                        eof = True
                        break
                    got += n
                view.release()
                n_items = got // item_bytes
                if n_items:
                    data = np.frombuffer(buf, dtype, count=n_items * item_bytes
                                         // np.dtype(dtype).itemsize).reshape(n_items, *shape)
                    if not put_unless_stopped(q, (tag, Chunk(tag, start, data)), stop):
                        return
                    start += n_items
                if got % item_bytes:
                    put_unless_stopped(q, (tag, ValueError(f"{tag}: {got % item_bytes} bytes of a partial "
                                             f"frame at the end")), stop)
                    return
        put_unless_stopped(q, (tag, None), stop)
    except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises DecodeError
        put_unless_stopped(q, (tag, e), stop)


def _widen(fd: int) -> None:
    """Grows a pipe to 1 MiB (Linux; the default 64 KiB is a quarter of one 2D frame), so ffmpeg
    writes whole frames without waking the reader for every 64 KiB. Best effort."""
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass


def _stderr_tail(pipe, tail: collections.deque) -> None:
    for line in iter(pipe.readline, b""):
        tail.append(line.decode("utf-8", "replace").rstrip())
    pipe.close()


def decode(path: Path, p: DecodePlan | None = None, *, chunk_frames_2d: int = 8,
           chunk_frames_3d: int = 64, audio_chunk_s: float = 10.0, queue_chunks: int = 6,
           timeout_s: float = 300.0) -> Iterator[Chunk]:
    """Decodes `path` once -> Chunks of '2d' (n, H, W, 3) uint8, '3d' (n, 112, 112, 3) uint8 and
    'audio' (n,) float32 at 16 kHz, in the order ffmpeg produces them.

    `p` defaults to plan(path). Peak memory is about (queue_chunks + 4) chunks whatever the video
    length: three reader threads drain ffmpeg's three pipes concurrently (so ffmpeg never blocks
    on one while another fills) into one bounded queue; when the consumer is slow, the readers
    and then ffmpeg simply wait. No audio stream -> no 'audio' chunks. A video shorter than
    ~0.5 s yields no '2d' frames (not an error). Raises DecodeError naming the file (with
    ffmpeg's stderr tail) when probing fails, when ffmpeg exits non-zero, or when it produces
    nothing for `timeout_s` seconds while the consumer waits; chunks already yielded then belong
    to a failed decode. Closing the generator early kills ffmpeg and joins the threads."""
    path = Path(path)
    p = p or _plan_or_raise(path)
    h2, w2 = p.size_2d
    streams = {"2d": ((h2, w2, 3), np.uint8, chunk_frames_2d),
               "3d": ((SIZE_3D, SIZE_3D, 3), np.uint8, chunk_frames_3d)}
    if p.audio_index is not None:
        streams["audio"] = ((), np.float32, max(1, int(audio_chunk_s * AUDIO_RATE)))

    owned: list[int] = []     # fds this function must still close (os.pipe fds are not inheritable)
    q: queue.Queue = queue.Queue(maxsize=queue_chunks)
    stop = threading.Event()
    tail: collections.deque = collections.deque(maxlen=20)
    threads: list[threading.Thread] = []
    proc = None
    try:
        pipes = {}
        for tag in streams:
            r, w = os.pipe()
            owned += [r, w]
            pipes[tag] = (r, w)
            _widen(w)
        cmd = single_pass_command(path, p, {tag: w for tag, (_, w) in pipes.items()})
        log.debug("decode %s: %s", path, cmd)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE,
                                    pass_fds=[w for _, w in pipes.values()])
        except OSError as e:
            raise DecodeError(f"{path}: cannot start {FFMPEG}: {e}") from e
        finally:  # only ffmpeg may hold the write ends, or the readers never see EOF
            for _, w in pipes.values():
                os.close(w)
                owned.remove(w)
        err = threading.Thread(target=_stderr_tail, args=(proc.stderr, tail), daemon=True,
                               name=f"decode-stderr-{path.name}")
        err.start()
        threads.append(err)
        for tag, (shape, dtype, n) in streams.items():
            r = pipes[tag][0]
            t = threading.Thread(target=_reader, args=(r, tag, shape, dtype, n, q, stop),
                                 daemon=True, name=f"decode-{tag}-{path.name}")
            t.start()
            owned.remove(r)                              # the reader closes it at EOF
            threads.append(t)

        pending = set(streams)
        while pending:
            try:
                tag, item = q.get(timeout=timeout_s)
            except queue.Empty:
                raise DecodeError(f"{path}: no output from ffmpeg for {timeout_s:g} s; killed"
                                  + _fmt_tail(tail)) from None
            if item is None:
                pending.discard(tag)
            elif isinstance(item, BaseException):
                raise DecodeError(f"{path}: reading the {tag} output failed: {item}"
                                  + _fmt_tail(tail)) from item
            else:
                yield item
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DecodeError(f"{path}: ffmpeg did not exit after closing its outputs; killed"
                              + _fmt_tail(tail)) from None
        err.join(timeout=5)                              # the stderr tail is complete
        if rc != 0:
            raise DecodeError(f"{path}: ffmpeg exited with status {rc}" + _fmt_tail(tail))
        if any(tail):   # e.g. a truncated file: ffmpeg decodes what it can and exits 0
            log.warning("%s: ffmpeg exited 0 but reported errors%s", path, _fmt_tail(tail))
    finally:
        stop.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
        for t in threads:
            t.join(timeout=10)
        for fd in owned:
            os.close(fd)


def _plan_or_raise(path: Path) -> DecodePlan:
    try:
        return plan(path)
    except ProbeError as e:
        raise DecodeError(f"{path}: cannot decode: {e}") from e


def _fmt_tail(tail: collections.deque) -> str:
    lines = [s for s in tail if s]
    return ("; ffmpeg stderr:\n" + "\n".join(lines)) if lines else "; ffmpeg printed nothing"


def decode_all(path: Path, p: DecodePlan | None = None, **kwargs
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Whole-video decode -> (frames2d (T2, H, W, 3) uint8, frames3d (T3, 112, 112, 3) uint8,
    audio (Ta,) float32 or None without an audio stream). For tests and short videos only."""
    path = Path(path)
    p = p or _plan_or_raise(path)
    parts: dict[str, list[np.ndarray]] = {"2d": [], "3d": [], "audio": []}
    for chunk in decode(path, p, **kwargs):
        parts[chunk.stream].append(chunk.data)
    h2, w2 = p.size_2d
    f2 = np.concatenate(parts["2d"]) if parts["2d"] else np.zeros((0, h2, w2, 3), np.uint8)
    f3 = (np.concatenate(parts["3d"]) if parts["3d"]
          else np.zeros((0, SIZE_3D, SIZE_3D, 3), np.uint8))
    audio = None
    if p.audio_index is not None:
        audio = (np.concatenate(parts["audio"]) if parts["audio"]
                 else np.zeros(0, np.float32))
    return f2, f3, audio
