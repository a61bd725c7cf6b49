"""Synthetic feature stores for the training benchmarks (issue 17), and page-cache control.

make_store writes HowTo100M-shaped videos (float16 2D, 3D and log-Mel rows of a given length,
18,240 bytes per video-second) into HDF5 shards of the extract stage's layout, shards written
in parallel processes; make_project adds a manifest and a params file that the train, finetune
and evaluate stages accept (the device script's smoke run). evict drops the store from the
page cache (/proc/sys/vm/drop_caches where permitted, else posix_fadvise DONTNEED per file)
and resident_fraction measures with mincore(2) how much of it is still cached."""
from __future__ import annotations

import ctypes
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.features.store import (ShardWriter, VideoRecord, recipe_sha256, shard_name,
                                     write_index)

RECIPE = {"dtype": "float16", "note": "synthetic (benchmarks/synthetic_store.py)"}
BYTES_PER_SECOND = 2 * (2048 + 3072 + 40 * 100)    # float16 rows: 1 fps 2D, 1.5 fps 3D, log-Mel
SHARD_VIDEOS = 64                                  # extract.shard_videos' default


def video_id(i: int) -> str:
    return f"synthvid{i:06d}"


def _write_shard(job: tuple[str, int, int, int, int]) -> list[dict]:
    """Shard `path` holding videos first..first+count-1 of `seconds` each -> its index rows.

    The rows are slices of one random pool at random offsets (uncompressed float16, so the
    bytes cost what real features cost; generating them stays cheap)."""
    path, first, count, seconds, seed = job
    rng = np.random.default_rng([seed, first])
    n2, n3, nm = seconds, int(seconds * 1.5), seconds * 100
    pool = (rng.standard_normal(2 * max(n2, n3) * 2048 + 2 * 40 * nm, np.float32)
            ).astype(np.float16)
    w = ShardWriter(Path(path), RECIPE)
    try:
        for i in range(first, first + count):
            o = rng.integers(0, pool.size // 2, 3)
            arrays = {"resnet152": pool[o[0]:o[0] + n2 * 2048].reshape(n2, 2048),
                      "resnext101": pool[o[1]:o[1] + n3 * 2048].reshape(n3, 2048),
                      # log-Mel in its real range (dB, -80..0): fp16 autocast sees real sizes
                      "logmel": np.clip(20 * pool[o[2]:o[2] + 40 * nm] - 40, -80, 0
                                        ).reshape(40, nm)}
            w.add(VideoRecord(video_id(i), "ok", {"recipe_sha256": recipe_sha256(RECIPE)},
                              arrays))
    except BaseException:
        w.abort()
        raise
    return w.close()


def make_store(root: Path, videos: int, seconds: int, workers: int = 1, seed: int = 0
               ) -> dict:
    """Writes a store of `videos` videos of `seconds` s under `root` (shards, index.parquet,
    recipe.json) -> {videos, seconds, shards, bytes, seconds_taken}. Shards are written by
    `workers` processes (1: in this process)."""
    root = Path(root)
    t0 = time.perf_counter()
    jobs = [(str(root / shard_name(s, "hdf5")), first, min(SHARD_VIDEOS, videos - first), seconds,
             seed) for s, first in enumerate(range(0, videos, SHARD_VIDEOS))]
    if workers <= 1 or len(jobs) == 1:
        parts = [_write_shard(j) for j in jobs]
    else:
        # spawn, not fork: the parent may hold CUDA or loader threads
        import multiprocessing as mp
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")
                                 ) as ex:
            parts = list(ex.map(_write_shard, jobs))
    write_index([r for rows in parts for r in rows], root / "index.parquet")
    (root / "recipe.json").write_text(json.dumps(RECIPE, sort_keys=True))
    return {"videos": videos, "seconds": seconds, "shards": len(jobs),
            "bytes": sum(f.stat().st_size for f in root.glob("shard-*.h5")),
            "seconds_taken": time.perf_counter() - t0}


def videos_for_bytes(gb: float, seconds: int) -> int:
    """Videos of `seconds` s that make a store of about `gb` GB."""
    return math.ceil(gb * 1e9 / (BYTES_PER_SECOND * seconds))


def make_project(root: Path, model: dict, device: str, videos: int = 24, seconds: int = 30,
                 workers: int = 2) -> Path:
    """A small demo-kind project for the stages under `root`: features/ (a synthetic store),
    manifest/ (videos, clips, manifest.json: two thirds train, one third val, 2 clips a video;
    availability.parquet: every video available, no media file) and params.yaml (with the
    default 24 videos, train: 2 steps of 8 videos x 4 windows of 10 s; finetune: 2 steps of 16
    clips; evaluate: the 16 val clips) -> the params file."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from pipeline.download.ledger import AVAILABILITY_SCHEMA, AVAILABLE
    root = Path(root)
    make_store(root / "features", videos, seconds)
    n_train = videos * 2 // 3
    rows, clips = [], []
    for i in range(videos):
        vid, split = video_id(i), "train" if i < n_train else "val"
        rows.append({"video_id": vid, "url": f"file:{vid}", "split": split,
                     "duration_s": float(seconds)})
        clips += [{"clip_id": f"{vid}:{j}", "video_id": vid, "split": split,
                   "start_s": 1.0 + 10 * j, "end_s": 6.0 + 10 * j, "text": "synthetic",
                   "source": "benchmark"} for j in range(2)]
    m = root / "manifest"
    m.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), m / "videos.parquet")
    pq.write_table(pa.Table.from_pylist(clips), m / "clips.parquet")
    now = datetime.now(timezone.utc)
    pq.write_table(pa.Table.from_pylist(
        [{**{f.name: None for f in AVAILABILITY_SCHEMA}, "video_id": r["video_id"],
          "url": r["url"], "split": r["split"], "status": AVAILABLE, "attempts": 1,
          "first_seen": now, "last_checked": now} for r in rows], schema=AVAILABILITY_SCHEMA),
        m / "availability.parquet")
    (m / "manifest.json").write_text(json.dumps({"splits": {
        "train": {"clip_checksum": "t" * 64}, "val": {"clip_checksum": "v" * 64}}}))
    params = {"datasets": {"demo": "demo"},
              "train": {"dataset": "demo", "model": model, "epochs": 1, "videos_per_batch": 8,
                        "clips_per_video": 4, "window_s": 10, "workers": workers,
                        "precision": "auto", "device": device, "threads": 0},
              "finetune": {"datasets": ["demo"], "batch": 16, "epochs": 1},
              "evaluate": {"datasets": ["demo"], "batch": 64, "examples": 0,
                           "device": device}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --------------------------------------------------------------------------- page cache

_libc = None


def _c():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc = lib
    return _libc


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the pages of `paths` in the page cache (mincore(2)); None where it cannot
    be measured (no mincore, a sandbox refusing it)."""
    try:
        lib = _c()
        page = os.sysconf("SC_PAGE_SIZE")
        resident = total = 0
        for p in paths:
            size = os.path.getsize(p)
            if not size:
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                addr = lib.mmap(None, size, 1, 1, fd, 0)      # PROT_READ, MAP_SHARED
                if addr in (None, ctypes.c_void_p(-1).value):
                    return None
                try:
                    n = (size + page - 1) // page
                    vec = (ctypes.c_ubyte * n)()
                    if lib.mincore(addr, size, vec) != 0:
                        return None
                    resident += int((np.frombuffer(vec, np.uint8) & 1).sum())
                    total += n
                finally:
                    lib.munmap(addr, size)
            finally:
                os.close(fd)
        return resident / total if total else None
    except (OSError, AttributeError):
        return None


def evict(paths: list[Path], system: bool = True) -> dict:
    """Drops `paths` from the page cache, so the next reads come from the disk: all caches
    through /proc/sys/vm/drop_caches where permitted (root on a machine of one's own; `system`
    False skips it), else each file's clean pages through posix_fadvise(DONTNEED) -> {method,
    drop_caches_error, resident_before, resident_after} (resident: the fraction of their pages
    still cached, None where mincore cannot tell; tmpfs pages never leave)."""
    before = resident_fraction(paths)
    os.sync()                                  # dirty pages cannot be dropped
    method, error = "drop_caches", None
    try:
        if not system:
            raise PermissionError(0, "not asked for")
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        method, error = "fadvise", f"{type(e).__name__}: {e.strerror or e}"
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return {"method": method, "drop_caches_error": error, "resident_before": before,
            "resident_after": resident_fraction(paths)}
