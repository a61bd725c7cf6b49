"""Feature extraction on dask.distributed: one decode per video -> ResNet-152 2D (1 fps),
ResNeXt-101 3D (1.5 fps) and log-Mel, batched across videos, into sharded stores.

The driver (this process) resolves the weights once, plans shards from the availability ledger
and the store's finished shards, and follows per-video events for progress. Each shard task runs
on a worker: the worker process loads both models once (one worker per GPU, or one using every
CPU core), decoder threads run ffmpeg for the next videos while the models run (decode.py), frames
and clips of several videos share each forward, and the shard is written by that task alone
(store.ShardWriter). A killed run loses only its unfinished shards; the next run removes their
.part files and does those videos again.

Finished work is never destroyed (issue 18): the driver validates the ledger (path-safe ids,
paths inside the videos folder), resolves and loads both backbones' weights and takes the
store's writer lock BEFORE it touches the store; a shard is replaced only when it is proven
stale (another recipe) or bad (checksum, size or contents), and then moved to `stale/`, never
deleted; a shard that cannot be read now (permissions, I/O, a lock) stops the run. Free space
is checked before the run and before each video is written (HDF5 crashes the process, not
raises, when a write hits a full disk)."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.resnet2d import MEAN as RGB_MEAN
from models.resnet2d import STD as RGB_STD
from pipeline.features import decode as dec
from pipeline.cluster import connect, follow, tune_allocator
from pipeline.config import ClusterParams, ExtractParams, to_dict
from pipeline.download.ledger import AVAILABLE, media_dirs
from pipeline.features.logmel import RECIPE as LOGMEL_RECIPE
from pipeline.features.logmel import logmel
from pipeline.data.manifest import write_json_atomic
from pipeline.media import MediaAccessError, ProbeError
from pipeline.safety import (DiskSpaceError, UserError, check_free_space, check_safe_id,
                             free_bytes, inside_checker, move_aside, writer_lock)
from pipeline.features.store import (AV_MISMATCH, FAILED, OK, STATUSES, ShardWriter, VideoRecord,
                            file_sha256, recipe_sha256, scan, shard_name, shard_number, sum_path,
                            write_index, write_sum)
from pipeline.features.weights import (BACKBONES, CLIP_MEAN, for_workers, load_backbone,
                                       resolve_weights)

log = logging.getLogger(__name__)

CLIP_LEN = 16                  # frames per 3D clip (features.md)
SILENCE_PEAK = 1e-4            # |sample| below this everywhere (-80 dBFS): silent_audio
TRUNCATED_SLACK = (1.0, 0.05)  # decoded duration below probed - max(1 s, 5 %): truncated
MISSING = "media file missing"
UNREADABLE = "media file unreadable"   # permissions, I/O, a special file: retried once readable
STORE_BYTES_PER_S = 19.5e3     # store bytes per second of video (float16: 2D + 3D + log-Mel)
HEADROOM = 1 << 20             # bytes kept free beyond each write's own size (HDF5 metadata)
# the availability ledger's columns extraction reads
LEDGER_COLUMNS = ("video_id", "status", "reason", "path", "sha256", "duration_s")
CODE_FILES = ("pipeline/features/decode.py", "pipeline/features/logmel.py", "pipeline/features/extract.py",
              "models/resnet2d.py", "models/resnext3d.py")


class ExtractError(UserError):
    """An extraction run that cannot start or must stop (no weights, bad ledger, nothing to
    extract, too many failures, a worker that keeps dying): one line, exit 2."""


# --------------------------------------------------------------------------- recipe


def _versions() -> dict[str, str]:
    import importlib.metadata

    import h5py

    def version(dist: str) -> str:   # without importing it: torchaudio alone takes ~1 s
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
    try:
        ff = subprocess.run([dec.FFMPEG, "-version"], capture_output=True, text=True,
                            timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        ff = "unknown"
    root = Path(__file__).resolve().parents[2]
    code = hashlib.sha256()
    for rel in CODE_FILES:
        code.update((root / rel).read_bytes())
    return {"ffmpeg": ff, "torch": torch.__version__, "torchvision": version("torchvision"),
            "torchaudio": version("torchaudio"), "h5py": h5py.__version__,
            "pyarrow": pa.__version__, "numpy": np.__version__,
            "code_sha256": code.hexdigest()}


def build_recipe(p: ExtractParams, w2d: dict, w3d: dict) -> dict:
    """Every choice that defines the numbers (hashed by store.recipe_sha256), plus the
    `environment` (library and code versions: recorded, not hashed)."""
    return {
        "resnet152": {**w2d, "fps": dec.FPS_2D, "frame": f"short side {dec.SIZE_2D}, aspect kept "
                      "(int truncation), whole frame, ffmpeg fps=1 then scale (bicubic)",
                      "input": f"x/255, (x - {list(RGB_MEAN)}) / ({list(RGB_STD)} + 1e-8), RGB",
                      "output": "layer4 averaged over H, W", "row_time": "row i ~ [i, i+1) s"},
        "resnext101": {**w3d, "fps": dec.FPS_3D, "clip_frames": CLIP_LEN,
                       "frame": f"short side {dec.SIZE_3D}, centre crop 112x112, ffmpeg fps=24 "
                                "then scale then crop",
                       "input": f"0..255 minus {list(CLIP_MEAN)}, std 1; frames zero-padded "
                                "(black) to a multiple of 16 before the mean",
                       "row_time": "row j ~ [2j/3, 2(j+1)/3) s"},
        "logmel": {**LOGMEL_RECIPE, "audio": "first audio stream, ffmpeg aresample=16000 "
                                             "(soxr), mono float32"},
        "l2_normalize": {"enabled": p.l2_normalize, "eps": 1e-12,
                         "applies_to": ["resnet152", "resnext101"]},
        "dtype": p.dtype,
        "precision": p.precision,
        "tf32": "off on CUDA in float32 precision (exact float32 convolutions)",
        "rotation": "respected: frames are autorotated and sized from the displayed dimensions "
                    "(the reference squeezed rotated videos)",
        "decode": "one ffmpeg process per video; [v]split into the 2D and 3D chains; frames "
                  "byte-identical to the reference's separate chains",
        "environment": _versions(),
    }


# --------------------------------------------------------------------------- worker side


def classify(p: dec.DecodePlan | None, n2d: int, n3d_frames: int, n_audio: int,
             peak: float, error: str | None, max_av_mismatch_s: float = math.inf
             ) -> tuple[str, list[str], str | None]:
    """One video's outcome -> (status, every status that applies, message); store.STATUSES
    gives the precedence. `p` is None when probing failed (then `error` says why). Decoded video
    and audio lengths differing by more than `max_av_mismatch_s` flag av_length_mismatch."""
    if p is None:
        return "probe_error", ["probe_error"], error
    flags = []
    decoded = max(n3d_frames / dec.FPS_3D, n_audio / dec.AUDIO_RATE)
    short = (p.duration_s is not None and
             decoded < p.duration_s - max(TRUNCATED_SLACK[0], TRUNCATED_SLACK[1] * p.duration_s))
    msg = error
    if error is not None and not n3d_frames:
        flags.append("decode_error")
    elif short or error is not None:
        flags.append("truncated")
        msg = (f"decoded {decoded:.2f} s of a {p.duration_s:.2f} s video"
               if p.duration_s is not None else "decoding stopped early")
        msg += f" ({error})" if error else " (file cut short?)"
    if not n2d:
        flags.append("too_short_2d")
    if not n3d_frames:
        flags.append("too_short_3d")
    if not p.has_audio:
        flags.append("no_audio_stream")
    elif peak < SILENCE_PEAK:
        flags.append("silent_audio")
    video_s, audio_s = n3d_frames / dec.FPS_3D, n_audio / dec.AUDIO_RATE
    if n3d_frames and n_audio and abs(video_s - audio_s) > max_av_mismatch_s:
        flags.append(AV_MISMATCH)
        why = (f"video {video_s:.2f} s, audio {audio_s:.2f} s: they differ by more than "
               f"extract.max_av_mismatch_s = {max_av_mismatch_s:g} s")
        msg = f"{msg}; {why}" if msg else why
    flags = sorted(set(flags), key=STATUSES.index)
    return (flags[0] if flags else OK), flags, msg


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard task needs; plain data, so it pickles to any worker."""

    shard: int
    videos: tuple                  # ((video_id, media path, source sha256 or None), ...)
    params: ExtractParams
    weights: tuple[str, str]       # (2D, 3D) weights as resolved by the driver
    recipe: dict
    out_dir: str
    topic: str                     # dask event topic for per-video progress
    threads: int                   # torch CPU threads (0: all cores)


_MODELS: dict[tuple, "Models"] = {}
_MODELS_LOCK = threading.Lock()


class Models:
    """Both frozen backbones on one device, with the input transforms of features.md."""

    def __init__(self, p: ExtractParams, weights: tuple[str, str], device: torch.device):
        self.p, self.device = p, device
        # check_weights hashed and loaded these files in the driver just before: no hashing
        self.resnet, _ = load_backbone("resnet152", weights[0], weights_dir=p.weights_dir,
                                       download=False, checked=True, device=device)
        self.resnext, _ = load_backbone("resnext101", weights[1], weights_dir=p.weights_dir,
                                        download=False, checked=True, device=device)
        if p.channels_last:
            self.resnet = self.resnet.to(memory_format=torch.channels_last)
            self.resnext = self.resnext.to(memory_format=torch.channels_last_3d)
        self.mean2d = torch.tensor(RGB_MEAN, device=device).view(1, 3, 1, 1)
        self.std2d = torch.tensor(RGB_STD, device=device).view(1, 3, 1, 1) + 1e-8
        self.mean3d = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1, 1)
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p.precision)
        self.warned_overflow = False
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True       # few input shapes, each used often
            # float32 means float32 (the reference's numbers), not TF32 tensor-core maths
            torch.backends.cudnn.allow_tf32 = p.precision != "float32"
            torch.backends.cuda.matmul.allow_tf32 = p.precision != "float32"

    def _post(self, out: torch.Tensor) -> np.ndarray:
        out = out.float()
        if self.p.l2_normalize:
            out = F.normalize(out, dim=1, eps=1e-12)
        return out.to(getattr(torch, self.p.dtype)).cpu().numpy()

    def _run(self, model, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.autocast is None:
                return model(x)
            with torch.autocast(self.device.type, self.autocast):
                out = model(x)
            if torch.isfinite(out).all():
                return out
            # fp16 overflowed (inf/NaN): this batch again in float32, never NaN in a store
            if not self.warned_overflow:
                log.warning("%s autocast overflowed on a batch; recomputing such batches in "
                            "float32", self.p.precision)
                self.warned_overflow = True
            return model(x)

    def forward_2d(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 frames -> (n, 2048) features."""
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)            # (n, 3, H, W), NHWC in memory
        x = (x - self.mean2d) / self.std2d
        if not self.p.channels_last:
            x = x.contiguous()
        return self._post(self._run(self.resnet, x))

    def forward_3d(self, clips: np.ndarray) -> np.ndarray:
        """(n, 16, 112, 112, 3) uint8 clips -> (n, 2048) features."""
        x = torch.from_numpy(clips).to(self.device, non_blocking=True)
        x = x.permute(0, 4, 1, 2, 3).float() - self.mean3d       # (n, 3, 16, 112, 112)
        if not self.p.channels_last:
            x = x.contiguous()
        return self._post(self._run(self.resnext, x))


def _device(p: ExtractParams) -> torch.device:
    want = p.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ExtractError("extract.device is cuda but no CUDA device is visible to this worker")
    try:   # LocalCluster names its workers 0..n-1: one GPU each
        from distributed import get_worker
        name = get_worker().name
        idx = int(name) % torch.cuda.device_count() if str(name).isdigit() else 0
    except (ImportError, ValueError):   # not on a dask worker (benchmarks, notebooks)
        idx = 0
    return torch.device("cuda", idx)


def get_models(job: ShardJob) -> Models:
    """The worker process's models for this job's settings (loaded once, then reused)."""
    device = _device(job.params)
    p = job.params   # only what the models depend on: other params never reload them
    key = (job.weights, str(device), p.weights_dir, p.channels_last, p.precision, p.dtype,
           p.l2_normalize)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()                   # one set of models per process at a time
            if device.type == "cpu":
                torch.set_num_threads(job.threads or os.cpu_count() or 1)
            tune_allocator()    # a dask worker's malloc settings cost 1.6x on the CPU
            _MODELS[key] = Models(job.params, job.weights, device)
        return _MODELS[key]


def batch_sizes(p: ExtractParams, device_type: str) -> tuple[int, int]:
    """(2D frames, 3D clips) per forward: extract.batch_2d / batch_3d, where 0 = auto. On the
    CPU, batches of 8 frames and 4 clips ran ~10 % faster than 32 and 8 (measured at 640x360 on
    2 threads, benchmarks/results/extract.md); a GPU wants larger ones."""
    cuda = device_type == "cuda"
    return p.batch_2d or (32 if cuda else 8), p.batch_3d or (8 if cuda else 4)


@dataclass
class _Video:
    """Per-video state while its chunks arrive and its rows are computed."""

    video_id: str
    path: str
    sha256: str | None
    t0: float = field(default_factory=time.monotonic)
    plan: dec.DecodePlan | None = None
    rows2d: list = field(default_factory=list)     # (start row, (n, 2048) array)
    rows3d: list = field(default_factory=list)
    n2d: int = 0
    n3d_frames: int = 0
    n_clips: int = 0
    leftover: np.ndarray | None = None             # < 16 frames not yet in a clip
    pending: int = 0                                # rows queued in a batch, not computed yet
    spool: Any = None                               # temp file of float32 audio samples
    n_audio: int = 0
    peak: float = 0.0
    error: str | None = None
    ended: bool = False


class _Batches:
    """Inputs of several videos gathered into one forward; results go back to each video."""

    def __init__(self, size: int, forward: Callable[[np.ndarray], np.ndarray], attr: str):
        self.size, self.forward, self.attr = size, forward, attr
        self.parts: dict[tuple, list] = collections.defaultdict(list)   # shape -> [(v, row, x)]
        self.count: collections.Counter = collections.Counter()

    def add(self, v: _Video, row: int, x: np.ndarray) -> None:
        key = x.shape[1:]
        self.parts[key].append((v, row, x))
        self.count[key] += len(x)
        v.pending += len(x)
        if self.count[key] >= self.size:
            self.run(key)
        elif sum(self.count.values()) > 4 * self.size:   # many frame sizes: bound the memory
            self.run(max(self.count, key=self.count.get))

    def run(self, key: tuple) -> None:
        parts = self.parts.pop(key, [])
        self.count.pop(key, None)
        if not parts:
            return
        x = np.concatenate([p[2] for p in parts])
        out = np.concatenate([self.forward(x[i:i + self.size])
                              for i in range(0, len(x), self.size)])
        i = 0
        for v, row, xs in parts:
            getattr(v, self.attr).append((row, out[i:i + len(xs)]))
            v.pending -= len(xs)
            i += len(xs)

    def flush(self) -> None:
        for key in list(self.parts):
            self.run(key)


def _decoder(todo: collections.deque, lock: threading.Lock, q: queue.Queue,
             stop: threading.Event) -> None:
    """Decoder thread: takes the next video, puts ('plan'|'chunk'|'end', video, payload)."""
    def put(item) -> bool:
        return dec.put_unless_stopped(q, item, stop)

    while not stop.is_set():
        with lock:
            if not todo:
                break
            v = todo.popleft()
        if not os.path.exists(v.path):
            put(("end", v, f"{MISSING}: {v.path} (re-run the download stage: it fetches "
                           "missing files again; this video is retried once the file is back)"))
            continue
        try:
            p = dec.plan(Path(v.path))
        except MediaAccessError as e:   # the machine's problem, not the media's: not final
            put(("end", v, f"{UNREADABLE}: {e} (retried once it is a readable file)"))
            continue
        except ProbeError as e:
            put(("end", v, str(e)))
            continue
        if not put(("plan", v, p)):
            return
        gen = dec.decode(Path(v.path), p)
        try:
            for chunk in gen:
                if not put(("chunk", v, chunk)):
                    return
            put(("end", v, None))
        except dec.DecodeError as e:
            put(("end", v, str(e)))
        finally:
            gen.close()                        # kills ffmpeg when the consumer went away
    put(("done", None, None))


def _spool_room(v: _Video, p: dec.DecodePlan) -> None:
    """DiskSpaceError when the temporary folder cannot hold the video's decoded audio (float32
    at 16 kHz): a full /tmp is a one-line error, not a failed write in the middle of a shard."""
    tmp = Path(tempfile.gettempdir())
    need = int((p.duration_s or 0.0) * dec.AUDIO_RATE * 4) + HEADROOM
    free = free_bytes(tmp)
    if free < need:
        raise DiskSpaceError(f"{tmp}: {free / 1e6:.1f} MB free in the temporary folder, "
                             f"~{need / 1e6:.1f} MB needed for the decoded audio of "
                             f"{v.video_id}; free space there (or point TMPDIR at a larger "
                             "folder), then re-run: finished work is kept")


def _assemble(parts: list, n: int, width: int, dtype: str) -> np.ndarray:
    out = np.zeros((n, width), dtype)
    for row, a in parts:
        out[row:row + len(a)] = a
    return out


REFUSED = "__refused__"       # key of a shard task's result that carries a UserError


def shard_task(job: ShardJob) -> dict:
    """run_shard as a dask task. A UserError (a full disk, say) is handed back as the result
    {REFUSED: error}, which the driver raises: raised in the task, dask would log it as a crash
    with a traceback on the worker's stderr. Anything else is a bug and is raised."""
    try:
        return run_shard(job)
    except UserError as e:
        return {REFUSED: e}


def run_shard(job: ShardJob, emit: Callable[[dict], None] | None = None) -> dict:
    """Runs on a worker: extracts the shard's videos and writes shard-NNNNN. -> status counts.

    Each finished video is reported through `emit` (default: the dask worker's log_event on
    job.topic, which the driver follows)."""
    if emit is None:
        from distributed import get_worker
        worker = get_worker()

        def emit(event: dict) -> None:
            worker.log_event(job.topic, event)
    models = get_models(job)
    p = job.params
    n_dec = p.decoders or (6 if models.device.type == "cuda" else 1)
    todo = collections.deque(_Video(vid, path, sha) for vid, path, sha in job.videos)
    q: queue.Queue = queue.Queue(maxsize=8 + 8 * n_dec)
    stop, lock = threading.Event(), threading.Lock()
    threads = [threading.Thread(target=_decoder, args=(todo, lock, q, stop), daemon=True,
                                name=f"extract-decoder-{i}") for i in range(min(n_dec, len(todo)))]
    size_2d, size_3d = batch_sizes(p, models.device.type)
    b2d = _Batches(size_2d, models.forward_2d, "rows2d")
    b3d = _Batches(size_3d, models.forward_3d, "rows3d")
    waiting: list[_Video] = []                 # decoded, rows still in a batch
    counts: collections.Counter = collections.Counter()
    out = Path(job.out_dir)
    path = out / shard_name(job.shard, p.format)

    def room(need: int) -> None:
        # before every write: HDF5 does not raise when a write hits a full disk, it crashes the
        # worker at close (and dask then re-runs the shard on a new worker, again and again)
        check_free_space(out, p.min_free_gb, "extract.min_free_gb", need_bytes=need + HEADROOM)

    def finish(v: _Video, writer: ShardWriter) -> None:
        arrays = {}
        if v.plan is not None and v.n3d_frames:
            arrays["resnet152"] = _assemble(v.rows2d, v.n2d, 2048, p.dtype)
            arrays["resnext101"] = _assemble(v.rows3d, v.n_clips, 2048, p.dtype)
        if v.spool is not None:
            v.spool.flush()
            wave = (np.memmap(v.spool.name, np.float32, mode="r") if v.n_audio
                    else np.zeros(0, np.float32))
            arrays["logmel"] = logmel(wave).numpy().astype(p.dtype)
            del wave
            v.spool.close()
        status, flags, msg = classify(v.plan, v.n2d, v.n3d_frames, v.n_audio, v.peak, v.error,
                                      p.max_av_mismatch_s)
        pl = v.plan
        video_s, audio_s = v.n3d_frames / dec.FPS_3D, v.n_audio / dec.AUDIO_RATE
        info = {"flags": ",".join(flags), "message": msg, "source_sha256": v.sha256,
                "recipe_sha256": recipe_sha256(job.recipe),
                "extract_s": time.monotonic() - v.t0,
                "decoded_s": max(video_s, audio_s),
                "video_s": video_s if pl is not None else None,
                "audio_s": audio_s if pl is not None and pl.has_audio else None}
        if pl is not None:
            info.update(duration_s=pl.duration_s, has_audio=pl.has_audio, width=pl.width,
                        height=pl.height, rotation=pl.rotation)
        room(sum(a.nbytes for a in arrays.values()))
        writer.add(VideoRecord(v.video_id, status, info, arrays))
        counts[status] += 1
        emit({"video_id": v.video_id, "status": status, "seconds": info["decoded_s"]})
        if status != OK:
            log.log(logging.WARNING if status in FAILED else logging.INFO, "%s: %s%s",
                    v.video_id, status, f" ({msg})" if msg else "")

    for t in threads:
        t.start()
    try:
        with ShardWriter(path, job.recipe) as writer:
            live = len(threads)
            while live:
                kind, v, payload = q.get()
                if kind == "done":
                    live -= 1
                elif kind == "plan":
                    v.plan, v.t0 = payload, time.monotonic()
                    if payload.has_audio:
                        _spool_room(v, payload)
                        v.spool = tempfile.NamedTemporaryFile(prefix="avl-audio-", suffix=".f32")
                elif kind == "chunk":
                    c = payload
                    if c.stream == "2d":
                        b2d.add(v, c.start, c.data)
                        v.n2d = c.start + len(c.data)
                    elif c.stream == "3d":
                        v.n3d_frames = c.start + len(c.data)
                        frames = (c.data if v.leftover is None
                                  else np.concatenate([v.leftover, c.data]))
                        n = len(frames) // CLIP_LEN
                        v.leftover = frames[n * CLIP_LEN:] if len(frames) % CLIP_LEN else None
                        if n:
                            b3d.add(v, v.n_clips, frames[:n * CLIP_LEN].reshape(
                                n, CLIP_LEN, *frames.shape[1:]))      # (n, 16, 112, 112, 3)
                            v.n_clips += n
                    else:
                        v.spool.write(c.data.tobytes())
                        v.n_audio += len(c.data)
                        v.peak = max(v.peak, float(np.abs(c.data).max(initial=0.0)))
                else:   # "end": the last partial clip is zero-padded to 16 frames (features.md)
                    v.error, v.ended = payload, True
                    if v.leftover is not None:
                        pad = np.zeros((CLIP_LEN - len(v.leftover), *v.leftover.shape[1:]),
                                       np.uint8)
                        b3d.add(v, v.n_clips, np.concatenate([v.leftover, pad])[None])
                        v.n_clips += 1
                        v.leftover = None
                    waiting.append(v)
                for w in [w for w in waiting if not w.pending]:
                    waiting.remove(w)
                    finish(w, writer)
            b2d.flush()
            b3d.flush()
            for w in waiting:
                finish(w, writer)
            room(len(json.dumps(writer.rows)))
            writer.close()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    return dict(counts)


# --------------------------------------------------------------------------- driver


def plan_shards(videos: list[tuple[str, str, str | None, float | None]], p: ExtractParams,
                first: int, min_shards: int = 1) -> list[tuple[int, tuple]]:
    """Videos (id, path, sha256, duration) -> [(shard number, ((id, path, sha256), ...))]:
    at most p.shard_videos videos and about p.shard_seconds of video each, and small enough to
    make at least `min_shards` shards (so every worker has work and a crash loses little);
    numbered from `first`."""
    size = max(1, min(p.shard_videos, math.ceil(len(videos) / max(1, min_shards))))
    shards, cur, secs = [], [], 0.0
    for vid, path, sha, dur in videos:
        d = dur or 0.0
        if cur and (len(cur) >= size or secs + d > p.shard_seconds):
            shards.append(tuple(cur))
            cur, secs = [], 0.0
        cur.append((vid, path, sha))
        secs += d
    if cur:
        shards.append(tuple(cur))
    return [(first + i, s) for i, s in enumerate(shards)]


def _weights(demo: bool, p: ExtractParams) -> tuple[tuple[str, str], tuple[str, str]]:
    """((2D weights, 3D weights), (the params that set them)) for a dataset (`demo`: one of the
    offline demos, which share their backbones so that their features share one space)."""
    if demo and p.demo_weights != "official":
        return (p.demo_weights, p.demo_weights), ("extract.demo_weights",) * 2
    return (p.weights_2d, p.weights_3d), ("extract.weights_2d", "extract.weights_3d")


def check_weights(demo: bool, p: ExtractParams) -> tuple[tuple[str, str], dict, dict]:
    """Resolves both backbones' weights and loads each weights file into its model on the CPU,
    so that weights the workers could not load stop the run here, before the store is touched
    -> ((2D, 3D) weights, 2D recipe entry, 3D recipe entry). ExtractError naming the file and
    the param otherwise. Random weights are valid by construction and are not built here."""
    from pipeline.features.weights import WeightsError
    weights, params = _weights(demo, p)
    recipes = []
    for backbone, w, param in zip(("resnet152", "resnext101"), weights, params):
        try:
            path, recipe = resolve_weights(backbone, w, weights_dir=p.weights_dir,
                                           download=p.download_weights)
        except WeightsError as e:
            raise ExtractError(f"{e} (or set {param} in params.yaml)") from None
        if path is not None:
            build, load = BACKBONES[backbone]
            try:
                load(build(), torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:  # noqa: BLE001 - any failure to load is the file's
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise ExtractError(f"{path}: not loadable as {backbone} weights "
                                   f"({type(e).__name__}: {first}); fix {param} in "
                                   "params.yaml") from None
        recipes.append(recipe)
    return weights, recipes[0], recipes[1]


def check_ledger(availability: pa.Table, root: Path, videos_dir: Path | None,
                 where: str) -> dict[str, dict]:
    """The ledger's rows by video id, each id path-safe and listed once and each downloaded
    video's path inside `videos_dir` (relative to root; default: anywhere in root);
    UnsafeInputError / ExtractError naming `where` and the row otherwise. The stage reads the
    ledger with ledger.read_availability, which checks the same: this is the second line of
    defence for callers that pass a table. Special files are refused where they are opened
    (media.check_regular: the video's status says so)."""
    rows: dict[str, dict] = {}
    inside = inside_checker(root, media_dirs(videos_dir if videos_dir is not None
                                             else Path(".")))
    for i, r in enumerate(availability.to_pylist()):
        vid = check_safe_id(r.get("video_id"), f"{where}, row {i}, field 'video_id'")
        if vid in rows:
            raise ExtractError(f"{where}, row {i}: video_id {vid!r} listed twice")
        if r.get("status") == AVAILABLE and r.get("path") is not None:
            inside(r["path"], f"{where}, row {i} ({vid}), field 'path'")
        rows[vid] = r
    return rows


def extract(dataset: str, availability: pa.Table, out_dir: Path, p: ExtractParams,
            cluster: ClusterParams, root: Path,
            on_event: Callable[[dict], None] | None = None, videos_dir: Path | None = None,
            where: str = "the availability ledger", demo: bool | None = None) -> dict:
    """Extracts every available video of the ledger not yet in a finished shard of `out_dir`
    with this recipe; rebuilds index.parquet (every listed video, with its status).
    `demo` (default: the dataset is named demo): an offline demo, extracted with
    p.demo_weights and p.demo_threads (the second-language demos too, so that a model trained on
    one demo's features reads the other's).

    availability: availability.parquet of the dataset (video_id, status, path, sha256,
    duration_s), its paths relative to `root` and inside `videos_dir` (relative to root) when
    given; `where` names it in errors. Returns a summary with counts per status. Raises a
    UserError (one line) when the run cannot start or must stop: ExtractError (weights, nothing
    downloaded, more than p.max_failure_fraction failed), LockError (another run writes the
    store), StoreError (a finished shard cannot be read now), DiskSpaceError, UnsafeInputError.
    Nothing in the store is changed before all of these checks have passed."""
    out_dir, root = Path(out_dir), Path(root)
    # only the columns extraction reads (issue 16: whole rows took GBs at 1.24 M videos)
    availability = availability.select([c for c in LEDGER_COLUMNS
                                        if c in availability.column_names])
    ledger = check_ledger(availability, root, videos_dir, where)
    available = [v for v, r in ledger.items() if r["status"] == AVAILABLE and r.get("path")]
    if not available and not p.allow_empty:
        raise ExtractError(f"{where}: no downloaded video to extract ({len(ledger)} listed, "
                           "none available): run the download stage first (or set "
                           "extract.allow_empty: true to accept an empty store)")
    demo = dataset == "demo" if demo is None else demo
    weights, r2d, r3d = check_weights(demo, p)
    recipe = build_recipe(p, r2d, r3d)
    with writer_lock(out_dir, f"extract@{dataset}", p.lock_wait_s):
        return _extract_locked(dataset, ledger, out_dir, p, cluster, root, recipe, weights,
                               on_event, demo)


def _extract_locked(dataset, ledger, out_dir, p, cluster, root, recipe, weights, on_event,
                    demo):
    """extract() once the inputs are checked and the writer lock is held."""
    rhash = recipe_sha256(recipe)
    found = scan(out_dir, p.verify)      # a shard that cannot be read now stops the run here
    stale = [s for s in found.done if recipe_sha256(s[1]) != rhash]
    shards = [s for s in found.done if recipe_sha256(s[1]) == rhash]
    done: dict[str, dict] = {}
    for path, _, rows in shards:               # a later shard supersedes an earlier one
        for r in rows:
            done[r["video_id"]] = r
    todo = []
    for vid in sorted(ledger):
        r = ledger[vid]
        if r["status"] != AVAILABLE or not r.get("path"):
            continue
        prev = done.get(vid)
        media = root / r["path"]
        if prev is not None and (not r.get("sha256") or prev["source_sha256"] == r["sha256"]) \
                and not _back(prev["message"] or "", media):
            continue
        if prev is not None:
            log.info("%s: media changed since its features were extracted; again", vid)
        todo.append((vid, str(media), r.get("sha256"), r.get("duration_s")))
    todo.sort(key=lambda t: -(t[3] or 0.0))
    total_s = sum(t[3] or 0.0 for t in todo)
    if todo:   # the room the new shards need, on top of the floor
        check_free_space(out_dir, p.min_free_gb, "extract.min_free_gb",
                         need_bytes=int(total_s * STORE_BYTES_PER_S))

    # every check passed: only now is the store changed
    for path in found.partial:
        log.warning("removing %s left by an interrupted run (its videos are extracted again)",
                    path.name)
        path.unlink(missing_ok=True)
    moved = False
    if found.bad:
        for path, why in found.bad:
            log.warning("%s; moving it aside, its videos are extracted again", why)
        _move_shards([path for path, _ in found.bad], out_dir,
                     "shards proven bad (checksum, size or contents do not match what was "
                     "written): " + "; ".join(why for _, why in found.bad))
        moved = True
    if stale:
        log.warning("moving %d shard(s) made with another recipe (weights, dtype, precision or "
                    "normalisation changed) to %s/", len(stale), out_dir / "stale")
        _move_shards([path for path, _, _ in stale], out_dir,
                     f"made with another recipe than {rhash[:12]}; the current recipe is in "
                     "recipe.json, each shard's own in its `recipe` attribute")
        moved = True
    unsummed = {p_.name for p_ in found.unsummed}
    for path, _, rows in shards:
        if path.name in unsummed:     # a store made before checksums: record them now
            size, digest = path.stat().st_size, file_sha256(path)
            write_sum(path, digest, size)
            for r in rows:
                r.update(shard_sha256=digest, shard_bytes=size)
            log.warning("%s: no recorded checksum (made before checksums); recorded it now "
                        "(sha256 %s...)", path, digest[:12])
    write_json_atomic(recipe, out_dir / "recipe.json")
    if moved:   # the index must never name a shard that is no longer in the store
        _write_store_index(out_dir, shards, ledger, rhash)

    # numbers never reused, not even a bad shard's: a video extracted again lands in a new
    # shard, so FeatureStore.digest sees the change
    seen = [s[0] for s in found.done] + [b[0] for b in found.bad]
    first = max((shard_number(x.name) for x in seen), default=-1) + 1
    # 4 shards per local worker: work for all, and a crash loses at most a quarter of a run
    jobs_plan = plan_shards(todo, p, first, min_shards=4 * _n_workers(p, cluster))
    log.info("%s: %d videos listed, %d available; %d already extracted, %d to do (%.0f s of "
             "video) in %d shard(s); weights %s / %s; recipe %s", dataset, len(ledger),
             sum(r["status"] == AVAILABLE for r in ledger.values()),
             len([v for v in done if v in ledger]), len(todo), total_s, len(jobs_plan),
             weights[0], weights[1], rhash[:12])
    counts: collections.Counter = collections.Counter()
    if jobs_plan:
        counts = _run(dataset, jobs_plan, p, cluster, out_dir, recipe, weights, total_s,
                      on_event, demo)

    # the first scan's rows go before the second's come (issue 16: both at once took GBs)
    del found, shards, stale, done
    final = scan(out_dir, "size")        # this run's shards, and the ones checked above
    for path, why in final.bad:
        log.warning("%s (left for the next run to move aside)", why)
    mine = [s for s in final.done if recipe_sha256(s[1]) == rhash]
    index = _write_store_index(out_dir, mine, ledger, rhash)
    statuses = collections.Counter(index.column("status").to_pylist())
    extracted = sum(n for s, n in statuses.items() if s != "not_downloaded")
    failed = sum(statuses.get(s, 0) for s in FAILED)
    # only what the shards determine: a run with nothing to do leaves the store byte-identical,
    # so DVC does not re-run training after a param change that did not change the features
    summary = {"dataset": dataset, "listed": len(ledger),
               "status": dict(sorted(statuses.items())), "recipe_sha256": rhash,
               "shards": len(mine)}
    write_json_atomic(summary, out_dir / "summary.json")
    summary = {**summary, "this_run": dict(sorted(counts.items())), "params": to_dict(p),
               "finished_at": datetime.now(timezone.utc).isoformat()}
    log.info("%s: index of %d videos: %s", dataset, index.num_rows,
             " ".join(f"{k}={n}" for k, n in sorted(statuses.items())))
    if extracted and failed / extracted > p.max_failure_fraction:
        raise ExtractError(f"{failed} of {extracted} downloaded videos failed to decode or were "
                           f"truncated (more than extract.max_failure_fraction = "
                           f"{p.max_failure_fraction}); see the message column of "
                           f"{out_dir / 'index.parquet'}")
    return summary


def _back(message: str, media: Path) -> bool:
    """True when a video recorded as missing or unreadable has a readable media file now."""
    if message.startswith(MISSING):
        return media.exists()
    if message.startswith(UNREADABLE):
        return media.is_file() and os.access(media, os.R_OK)
    return False


def _move_shards(paths: Iterable[Path], out_dir: Path, why: str) -> Path | None:
    """Moves shards and their checksum sidecars to out_dir/stale/<time>/ (never deletes)."""
    files = []
    for path in paths:
        files.append(path)
        if sum_path(path).exists():
            files.append(sum_path(path))
    return move_aside(files, out_dir, why)


def _write_store_index(out_dir: Path, shards: list, ledger: dict[str, dict],
                       rhash: str) -> pa.Table:
    """index.parquet from the finished shards of this recipe plus a not_downloaded row for
    every other listed video."""
    rows: dict[str, dict] = {}
    for path, _, srows in shards:
        for r in srows:
            if r["video_id"] in ledger:
                rows[r["video_id"]] = r
    for vid, r in ledger.items():
        if vid not in rows:
            why = (r["status"] if r["status"] != AVAILABLE else "available but not extracted")
            rows[vid] = {"video_id": vid, "status": "not_downloaded",
                         "flags": "not_downloaded", "message": f"ledger: {why}"
                         + (f" ({r['reason']})" if r.get("reason") else ""),
                         "n_resnet152": 0, "n_resnext101": 0, "n_logmel": 0,
                         "recipe_sha256": rhash}
    return write_index(rows.values(), out_dir / "index.parquet")


def _n_workers(p: ExtractParams, cluster: ClusterParams) -> int:
    """LocalCluster workers: extract.workers, else one per visible GPU, else one."""
    cuda = p.device != "cpu" and torch.cuda.is_available()
    return p.workers or (torch.cuda.device_count() if cuda else 1)


def _run(dataset, jobs_plan, p, cluster, out_dir, recipe, weights, total_s, on_event, demo):
    """Submits the shard tasks and follows their per-video events -> counts per status."""
    from distributed.scheduler import KilledWorker

    cuda = p.device != "cpu" and torch.cuda.is_available()
    n_workers = _n_workers(p, cluster)
    cp = dataclasses.replace(cluster, workers=n_workers, threads_per_worker=1)
    pinned = p.demo_threads if demo else p.threads
    threads = pinned or (0 if cluster.scheduler_address
                         else max(1, (os.cpu_count() or 1) // n_workers))
    topic = f"avl-extract-{uuid.uuid4().hex[:8]}"
    # absolute paths (store, weights): a worker started in another folder, or on another
    # machine of the shared file system, reads and writes this project's files
    jp = dataclasses.replace(p, weights_dir=str(Path(p.weights_dir).expanduser().absolute()))
    jw = tuple(for_workers(w) for w in weights)
    jobs = [ShardJob(n, videos, jp, jw, recipe, str(Path(out_dir).absolute()), topic, threads)
            for n, videos in jobs_plan]
    n_videos = sum(len(v) for _, v in jobs_plan)
    shown: collections.Counter = collections.Counter()
    events: collections.deque = collections.deque()
    # a task whose worker died is re-run once (a worker can die by chance), not dask's 3 times:
    # a shard that kills two workers will kill the next ones too
    with connect(cp, allowed_failures=1) as client:
        log.info("%s: %d shard(s) on %d worker(s) (%s)", dataset, len(jobs),
                 len(client.scheduler_info()["workers"]), "CUDA" if cuda else "CPU")
        client.subscribe_topic(topic, lambda ev: events.append(ev[1]))
        futures = client.map(shard_task, jobs, pure=False)
        bar = tqdm(total=round(total_s) or None, desc=f"extract@{dataset}", unit="video-s",
                   smoothing=0.05, mininterval=0.5 if os.isatty(2) else 10.0)
        done_videos = 0

        def handle(ev: dict) -> None:
            nonlocal done_videos
            if on_event:
                on_event(ev)
            shown[ev["status"]] += 1
            done_videos += 1
            # decoded seconds can pass the listed durations by a frame or two
            left = (bar.total - bar.n) if bar.total else math.inf
            bar.update(max(0, min(round(ev["seconds"]), left)))
            bar.set_postfix_str(f"{done_videos}/{n_videos} videos "
                                + " ".join(f"{k}={n}" for k, n in sorted(shown.items())),
                                refresh=False)

        checked: set = set()

        def refused() -> None:
            # a task that refused (a full disk) stops the run at once, like one that failed
            for f in futures:
                if f.key not in checked and f.status == "finished":
                    checked.add(f.key)
                    r = f.result()
                    if REFUSED in r:
                        raise r[REFUSED]

        try:   # a failed task stops the run at once; a bug in a worker surfaces here
            results = follow(futures, events, handle, tick=refused, fail_fast=True)
        except KilledWorker:
            dead = [j for f, j in zip(futures, jobs) if f.status == "error"]
            client.cancel(futures)
            which = (f"shard {shard_name(dead[0].shard, p.format)} (videos "
                     f"{', '.join(v[0] for v in dead[0].videos[:5])}"
                     f"{', ...' if len(dead[0].videos) > 5 else ''})" if dead else "a shard")
            raise ExtractError(f"dask workers died twice while extracting {which} in "
                               f"{out_dir}: usually memory (lower extract.batch_2d, batch_3d or "
                               "decoders) or a crash in a native library (see the worker log "
                               "above); finished shards are kept") from None
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            bar.close()
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(topic)
    total: collections.Counter = collections.Counter()
    for r in results:
        total.update(r)
    return total
