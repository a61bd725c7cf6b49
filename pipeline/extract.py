"""Feature extraction on dask.distributed: one decode per video -> ResNet-152 2D (1 fps),
ResNeXt-101 3D (1.5 fps) and log-Mel, batched across videos, into sharded stores.

The driver (this process) resolves the weights once, plans shards from the availability ledger
and the store's finished shards, and follows per-video events for progress. Each shard task runs
on a worker: the worker process loads both models once (one worker per GPU, or one using every
CPU core), decoder threads run ffmpeg for the next videos while the models run (decode.py), frames
and clips of several videos share each forward, and the shard is written by that task alone
(store.ShardWriter). A killed run loses only its unfinished shards; the next run removes their
.part files and does those videos again."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import queue
import subprocess
import tempfile
import threading
import time
import uuid
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
from pipeline import decode as dec
from pipeline.cluster import connect, follow
from pipeline.config import ClusterParams, ExtractParams, to_dict
from pipeline.ledger import AVAILABLE
from pipeline.logmel import RECIPE as LOGMEL_RECIPE
from pipeline.logmel import logmel
from pipeline.manifest import write_json_atomic
from pipeline.media import ProbeError
from pipeline.store import (FAILED, OK, STATUSES, ShardWriter, VideoRecord, recipe_sha256, scan,
                            shard_name, shard_number, write_index)
from pipeline.weights import CLIP_MEAN, load_backbone, resolve_weights

log = logging.getLogger(__name__)

CLIP_LEN = 16                  # frames per 3D clip (features.md)
SILENCE_PEAK = 1e-4            # |sample| below this everywhere (-80 dBFS): silent_audio
TRUNCATED_SLACK = (1.0, 0.05)  # decoded duration below probed - max(1 s, 5 %): truncated
MISSING = "media file missing"
CODE_FILES = ("pipeline/decode.py", "pipeline/logmel.py", "pipeline/extract.py",
              "models/resnet2d.py", "models/resnext3d.py")


class ExtractError(RuntimeError):
    """An extraction run that cannot start or must stop (no weights, bad ledger, failures)."""


# --------------------------------------------------------------------------- recipe


def _versions() -> dict[str, str]:
    import h5py
    import torchaudio
    import torchvision
    try:
        ff = subprocess.run([dec.FFMPEG, "-version"], capture_output=True, text=True,
                            timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        ff = "unknown"
    root = Path(__file__).resolve().parents[1]
    code = hashlib.sha256()
    for rel in CODE_FILES:
        code.update((root / rel).read_bytes())
    return {"ffmpeg": ff, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torchaudio": torchaudio.__version__, "h5py": h5py.__version__,
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
             peak: float, error: str | None) -> tuple[str, list[str], str | None]:
    """One video's outcome -> (status, every status that applies, message); store.STATUSES
    gives the precedence. `p` is None when probing failed (then `error` says why)."""
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
        self.resnet, _ = load_backbone("resnet152", weights[0], weights_dir=p.weights_dir,
                                       download=False, device=device)
        self.resnext, _ = load_backbone("resnext101", weights[1], weights_dir=p.weights_dir,
                                        download=False, device=device)
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
            _MODELS[key] = Models(job.params, job.weights, device)
        return _MODELS[key]


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


def _assemble(parts: list, n: int, width: int, dtype: str) -> np.ndarray:
    out = np.zeros((n, width), dtype)
    for row, a in parts:
        out[row:row + len(a)] = a
    return out


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
    b2d = _Batches(p.batch_2d, models.forward_2d, "rows2d")
    b3d = _Batches(p.batch_3d, models.forward_3d, "rows3d")
    waiting: list[_Video] = []                 # decoded, rows still in a batch
    counts: collections.Counter = collections.Counter()
    path = Path(job.out_dir) / shard_name(job.shard, p.format)

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
        status, flags, msg = classify(v.plan, v.n2d, v.n3d_frames, v.n_audio, v.peak, v.error)
        pl = v.plan
        info = {"flags": ",".join(flags), "message": msg, "source_sha256": v.sha256,
                "recipe_sha256": recipe_sha256(job.recipe),
                "extract_s": time.monotonic() - v.t0,
                "decoded_s": max(v.n3d_frames / dec.FPS_3D, v.n_audio / dec.AUDIO_RATE)}
        if pl is not None:
            info.update(duration_s=pl.duration_s, has_audio=pl.has_audio, width=pl.width,
                        height=pl.height, rotation=pl.rotation)
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


def _weights(dataset: str, p: ExtractParams) -> tuple[str, str]:
    if dataset == "demo" and p.demo_weights != "official":
        return p.demo_weights, p.demo_weights
    return p.weights_2d, p.weights_3d


def extract(dataset: str, availability: pa.Table, out_dir: Path, p: ExtractParams,
            cluster: ClusterParams, root: Path,
            on_event: Callable[[dict], None] | None = None) -> dict:
    """Extracts every available video of the ledger not yet in a finished shard of `out_dir`
    with this recipe; rebuilds index.parquet (every listed video, with its status).

    availability: availability.parquet of the dataset (video_id, status, path, sha256,
    duration_s). Returns a summary with counts per status; raises ExtractError when the
    weights cannot be had or more than p.max_failure_fraction of the videos failed."""
    from pipeline.weights import WeightsError
    w2d, w3d = _weights(dataset, p)
    try:
        r2d = resolve_weights("resnet152", w2d, weights_dir=p.weights_dir,
                              download=p.download_weights)[1]
        r3d = resolve_weights("resnext101", w3d, weights_dir=p.weights_dir,
                              download=p.download_weights)[1]
    except WeightsError as e:
        raise ExtractError(f"{e} (or set extract.weights_2d / weights_3d in params.yaml)") from None
    recipe = build_recipe(p, r2d, r3d)
    rhash = recipe_sha256(recipe)
    out_dir.mkdir(parents=True, exist_ok=True)

    shards, leftovers = scan(out_dir)
    for path in leftovers:
        log.warning("removing %s left by an interrupted run (its videos are extracted again)",
                    path.name)
        path.unlink(missing_ok=True)
    stale = [s for s in shards if recipe_sha256(s[1]) != rhash]
    if stale:
        log.warning("removing %d shard(s) made with another recipe (weights, dtype, precision "
                    "or normalisation changed; the previous version stays in the DVC cache)",
                    len(stale))
        for path, _, _ in stale:
            path.unlink()
        shards = [s for s in shards if s not in stale]
    write_json_atomic(recipe, out_dir / "recipe.json")

    ledger = {r["video_id"]: r for r in availability.to_pylist()}
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
                and not ((prev["message"] or "").startswith(MISSING) and media.exists()):
            continue
        if prev is not None:
            log.info("%s: media changed since its features were extracted; again", vid)
        todo.append((vid, str(media), r.get("sha256"), r.get("duration_s")))
    todo.sort(key=lambda t: -(t[3] or 0.0))
    first = max((shard_number(s[0].name) for s in shards), default=-1) + 1
    # 4 shards per local worker: work for all, and a crash loses at most a quarter of a run
    jobs_plan = plan_shards(todo, p, first, min_shards=4 * _n_workers(p, cluster))
    total_s = sum(t[3] or 0.0 for t in todo)
    log.info("%s: %d videos listed, %d available; %d already extracted, %d to do (%.0f s of "
             "video) in %d shard(s); weights %s / %s; recipe %s", dataset, len(ledger),
             sum(r["status"] == AVAILABLE for r in ledger.values()),
             len([v for v in done if v in ledger]), len(todo), total_s, len(jobs_plan), w2d,
             w3d, rhash[:12])
    counts: collections.Counter = collections.Counter()
    if jobs_plan:
        counts = _run(dataset, jobs_plan, p, cluster, out_dir, recipe, (w2d, w3d), total_s,
                      on_event)

    shards, _ = scan(out_dir)
    rows: dict[str, dict] = {}
    for path, rec, srows in shards:
        if recipe_sha256(rec) == rhash:
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
    index = write_index(rows.values(), out_dir / "index.parquet")
    statuses = collections.Counter(index.column("status").to_pylist())
    extracted = sum(n for s, n in statuses.items() if s != "not_downloaded")
    failed = sum(statuses.get(s, 0) for s in FAILED)
    # only what the shards determine: a run with nothing to do leaves the store byte-identical,
    # so DVC does not re-run training after a param change that did not change the features
    summary = {"dataset": dataset, "listed": len(ledger),
               "status": dict(sorted(statuses.items())), "recipe_sha256": rhash,
               "shards": len(shards)}
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


def _n_workers(p: ExtractParams, cluster: ClusterParams) -> int:
    """LocalCluster workers: extract.workers, else one per visible GPU, else one."""
    cuda = p.device != "cpu" and torch.cuda.is_available()
    return p.workers or (torch.cuda.device_count() if cuda else 1)


def _run(dataset, jobs_plan, p, cluster, out_dir, recipe, weights, total_s, on_event):
    """Submits the shard tasks and follows their per-video events -> counts per status."""
    cuda = p.device != "cpu" and torch.cuda.is_available()
    n_workers = _n_workers(p, cluster)
    cp = dataclasses.replace(cluster, workers=n_workers, threads_per_worker=1)
    threads = 0 if cluster.scheduler_address else max(1, (os.cpu_count() or 1) // n_workers)
    topic = f"avl-extract-{uuid.uuid4().hex[:8]}"
    jobs = [ShardJob(n, videos, p, weights, recipe, str(out_dir), topic, threads)
            for n, videos in jobs_plan]
    n_videos = sum(len(v) for _, v in jobs_plan)
    shown: collections.Counter = collections.Counter()
    events: collections.deque = collections.deque()
    with connect(cp) as client:
        log.info("%s: %d shard(s) on %d worker(s) (%s)", dataset, len(jobs),
                 len(client.scheduler_info()["workers"]), "CUDA" if cuda else "CPU")
        client.subscribe_topic(topic, lambda ev: events.append(ev[1]))
        futures = client.map(run_shard, jobs, pure=False)
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

        try:
            results = follow(futures, events, handle)   # a bug in a worker surfaces here
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
