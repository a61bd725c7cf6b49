"""Decoding pairs: images (PIL -> resize short side, centre crop, uint8) and spoken captions
(PCM wav -> 16 kHz mono -> the AVLnet 40-bin log-Mel), and the decoded cache that both
fine-tuning variants read (decode dominates the cost of an image epoch, so it happens once).

Per-pair failures become statuses (bad_image, bad_audio, empty_audio) naming the file; they are
never raised."""
from __future__ import annotations

import logging
import os
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.resnet2d import MEAN as RGB_MEAN
from models.resnet2d import STD as RGB_STD
from pipeline.features.logmel import SAMPLE_RATE, logmel
from pipeline.images.manifest import BAD_AUDIO, BAD_IMAGE, EMPTY_AUDIO, OK
from pipeline.learn.sampling import pad_or_crop

log = logging.getLogger(__name__)


class LoadError(ValueError):
    """A pair's file that cannot be used; `status` is the pair's status."""

    def __init__(self, status: str, msg: str):
        self.status = status
        super().__init__(msg)


def load_image(path: str | Path, resize: int, size: int) -> np.ndarray:
    """An image file -> (3, size, size) uint8 RGB: short side resized to `resize` (bicubic),
    then the centre `size` x `size` crop. LoadError(bad_image) naming the file otherwise."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")        # decodes (load) here: truncated files fail here
            w, h = im.size
            s = resize / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BICUBIC)
            x0, y0 = (nw - size) // 2, (nh - size) // 2
            im = im.crop((x0, y0, x0 + size, y0 + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise LoadError(BAD_IMAGE, f"{path}: not a readable image ({type(e).__name__}: "
                                   f"{str(e)[:200]}); replace the file or remove its item")
    return np.ascontiguousarray(arr.transpose(2, 0, 1))          # (3, size, size)


def normalize_images(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 as features.md 2D: x/255, (x - mean) / (std + 1e-8)."""
    mean = torch.tensor(RGB_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(RGB_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / (std + 1e-8)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM wav (8/16/24/32-bit integer, any channels) -> ((N, C) float32 in [-1, 1], rate).
    LoadError(bad_audio) for anything else, naming the file."""
    try:
        with wave.open(str(path)) as w:
            sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise LoadError(BAD_AUDIO, f"{path}: not a readable PCM wav ({e}); convert it with "
                                   "`ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le OUT.wav`")
    if width == 3:
        b = np.frombuffer(raw[:len(raw) // 3 * 3], np.uint8).reshape(-1, 3)
        x = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8)
             | (b[:, 2].astype(np.int32) << 16))
        x = np.where(x >= 1 << 23, x - (1 << 24), x).astype(np.float32) / float(1 << 23)
    elif width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        dt = {2: "<i2", 4: "<i4"}[width]
        x = np.frombuffer(raw[:len(raw) // width * width], dt).astype(np.float32)
        x /= float(1 << (8 * width - 1))
    return x[:len(x) // ch * ch].reshape(-1, ch), sr


def load_caption(path: str | Path) -> np.ndarray:
    """A spoken caption wav -> (40, T) float32 log-Mel (features.md recipe): channels averaged,
    other rates resampled to 16 kHz. LoadError(empty_audio) for a wav without samples,
    LoadError(bad_audio) for an unreadable one."""
    x, sr = read_wav(path)
    if x.shape[0] == 0:
        raise LoadError(EMPTY_AUDIO, f"{path}: the wav holds no samples; record the caption "
                                     "again or remove its item")
    y = torch.from_numpy(x.mean(axis=1))                         # (N,) mono
    if sr != SAMPLE_RATE:
        import torchaudio.functional as AF        # only here: importing torchaudio costs ~1 s
        y = AF.resample(y.double(), sr, SAMPLE_RATE).float()
    return logmel(y)


def decode_pairs(rows: list[dict], cache_dir: Path, resize: int, size: int, frames: int
                 ) -> dict:
    """Decodes every usable pair of `rows` ONCE into `cache_dir`: images.npy (N, 3, size, size)
    uint8, spec.npy (N, 40, frames) float16 log-Mel padded (0 dB) or cropped, nframes.npy (N,)
    true lengths, and ids.txt; each file written under a temporary name and renamed. Updates
    the rows' status / error in place (bad_image, bad_audio, empty_audio) -> {"ids": [...],
    "counts": {status: n}}. Read the arrays back with np.load(mmap_mode="r")."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if r["status"] == OK]
    shapes = {"images.npy": ((3, size, size), np.uint8), "spec.npy": ((40, frames), np.float16),
              "nframes.npy": ((), np.int64)}
    tmp = {n: cache_dir / f".{n}.tmp-{os.getpid()}.npy" for n in shapes}
    # written to disk as decoded (np.lib.format.open_memmap): memory stays flat for any size
    arrs = {n: np.lib.format.open_memmap(tmp[n], "w+", dt, (len(todo), *sh))
            for n, (sh, dt) in shapes.items()}
    keep = []
    for j, r in enumerate(todo, 1):
        try:
            img = load_image(r["image"], resize, size)
            s, n = pad_or_crop(load_caption(r["audio"]).numpy(), frames)
        except LoadError as e:            # the item boundary: record, go on
            r["status"], r["error"] = e.status, str(e)
            log.warning("%s: %s", r["pair_id"], e)
            continue
        k = len(keep)
        arrs["images.npy"][k], arrs["spec.npy"][k], arrs["nframes.npy"][k] = img, s, n
        keep.append(r["pair_id"])
        if j % 5000 == 0:
            log.info("decoded %d of %d pairs", j, len(todo))
    for name, arr in arrs.items():
        if len(keep) < len(todo):         # drop the unused tail, a chunk at a time
            short = np.lib.format.open_memmap(tmp[name].with_suffix(".short.npy"), "w+",
                                              arr.dtype, (len(keep), *arr.shape[1:]))
            for i in range(0, len(keep), 4096):
                end = min(i + 4096, len(keep))
                short[i:end] = arr[i:end]
            short.flush()
            del short
            os.replace(tmp[name].with_suffix(".short.npy"), tmp[name])
        else:
            arr.flush()
        del arr
        os.replace(tmp[name], cache_dir / name)
    arrs.clear()
    tmp_ids = cache_dir / f".ids.txt.tmp-{os.getpid()}"
    tmp_ids.write_text("".join(i + "\n" for i in keep))
    os.replace(tmp_ids, cache_dir / "ids.txt")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    log.info("decoded %d of %d pairs into %s (%s)", len(keep), len(rows), cache_dir, counts)
    return {"ids": keep, "counts": counts}


def open_cache(cache_dir: Path) -> dict:
    """The decoded cache -> {"ids", "images" (N, 3, S, S) uint8 memmap, "spec" (N, 40, F)
    float16 memmap, "nframes" (N,)}; ids one a line (an id may hold a space)."""
    cache_dir = Path(cache_dir)
    ids = (cache_dir / "ids.txt").read_text().splitlines()
    return {"ids": ids, "images": np.load(cache_dir / "images.npy", mmap_mode="r"),
            "spec": np.load(cache_dir / "spec.npy", mmap_mode="r"),
            "nframes": np.load(cache_dir / "nframes.npy")}
