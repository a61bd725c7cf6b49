"""Benchmark: feature extraction (issue 4), every number measured side by side in one run.

(a) decode: our single-pass streaming decode (frames and audio delivered to Python as arrays)
    vs the same filter graph writing to /dev/null (the floor for these outputs) vs the
    reference's three separate passes (2D chain, 3D chain, audio), each read whole into memory.
(b) end to end: run_shard on warm models (decode, batching, post-processing, log-Mel, shard
    writing) vs the sum of the bare float32 forwards on the same frames and clips.
(c) peak RSS of extracting one 10-minute vs one 1-minute video (fresh subprocess each).
(d) store bytes per video-second against the 18,240-byte float16 floor, HDF5 and Parquet.
(e) reduced precision (bf16 / fp16 autocast): forward speed-up and the largest deviation from
    the float32 features.
(f) whole processes on one 640x360 video: `python -m stages.extract` against the reference
    recipe's three processes (benchmarks/reference_extractor.py) and the bare float32 forward
    floor of the same video, with the largest difference between the two sets of features.

Weights are seeded random (same architecture and cost as the official ones; offline here).
Writes benchmarks/results/extract[-TAG].json and .md. Usage:
    python -m benchmarks.extract [--device cuda] [--tag cuda] [--decode-s 120] [--e2e-s 60]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FLOOR_BYTES_PER_S = 2048 * 2 + 1.5 * 2048 * 2 + 100 * 40 * 2   # 18,240 (features.md)


def make_video(path: Path, seconds: float, size: str = "640x360") -> Path:
    """A 30 fps H.264 (veryfast, like a web video) + AAC stereo test video."""
    if not path.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={size}:rate=30:duration={seconds}", "-f", "lavfi", "-i",
                        f"sine=frequency=440:sample_rate=44100:duration={seconds}", "-ac", "2",
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-movflags", "+faststart", str(path)], check=True)
    return path


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


# --------------------------------------------------------------------------- (a) decode


def bench_decode(path: Path, repeats: int) -> dict:
    from pipeline.features.decode import decode, plan, reference_commands, single_pass_command
    p = plan(path)

    def ours():
        n = 0
        for c in decode(path, p):
            n += c.data.nbytes
        assert n > 0

    def floor():
        cmd = single_pass_command(path, p, {"2d": "/dev/null", "3d": "/dev/null",
                                            "audio": "/dev/null"})
        subprocess.run(["ffmpeg", "-y", *cmd[1:]], check=True, stdin=subprocess.DEVNULL)

    def reference():
        for cmd in reference_commands(path, p).values():   # sequential, whole output in memory
            out = subprocess.run(cmd, capture_output=True, check=True).stdout
            np.frombuffer(out, np.uint8)

    res = {}
    for name, fn in (("ours", ours), ("floor_devnull", floor), ("reference_3_passes", reference)):
        fn()   # warm the page cache
        res[name] = _median_time(fn, repeats)
    return {"video_s": p.duration_s, "size": f"{p.width}x{p.height}",
            **{k: {"median_s": v[0], "runs_s": v[1]} for k, v in res.items()},
            "ours_over_floor": res["ours"][0] / res["floor_devnull"][0],
            "reference_over_ours": res["reference_3_passes"][0] / res["ours"][0]}


# --------------------------------------------------------------------------- (b) end to end


def _params(device: str, **kw):
    from pipeline.config import ExtractParams
    return ExtractParams(**{"weights_2d": "random:0", "weights_3d": "random:1", "device": device,
                            **kw})


def _job(p, recipe, videos, out: Path, shard: int):
    from pipeline.features.extract import ShardJob
    return ShardJob(shard, tuple((f"v{i:010d}", str(v), None) for i, v in enumerate(videos)), p,
                    (p.weights_2d, p.weights_3d), recipe, str(out), "bench", 0)


def _recipe(p):
    from pipeline.features.extract import build_recipe
    from pipeline.features.weights import resolve_weights
    return build_recipe(p, resolve_weights("resnet152", p.weights_2d)[1],
                        resolve_weights("resnext101", p.weights_3d)[1])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_forwards(models, frames2d: list[np.ndarray], clips: list[np.ndarray], p,
                  device: str) -> dict:
    """Seconds of the model forwards alone on pre-decoded inputs, batches as the extractor
    forms them (per video here). On CUDA everything runs once untimed first, so cuDNN's
    autotuning of every batch shape (cudnn.benchmark) is not in the timing."""
    if device == "cuda":
        _forwards(models, frames2d, clips, p, device)
    return _forwards(models, frames2d, clips, p, device)


def _forwards(models, frames2d, clips, p, device: str) -> dict:
    from pipeline.features.extract import batch_sizes
    t2 = t3 = 0.0
    b2, b3 = batch_sizes(p, device)
    with torch.inference_mode():     # warm-up: one full batch of every input shape, untimed
        for f2 in frames2d:
            x = torch.from_numpy(f2[:b2]).to(device).permute(0, 3, 1, 2).float()
            models._run(models.resnet, (x / 255.0 - models.mean2d) / models.std2d)
        for c in clips[:1]:
            x = torch.from_numpy(c[:b3]).to(device).permute(0, 4, 1, 2, 3).float()
            models._run(models.resnext, x - models.mean3d)
    _sync(device)
    for f2 in frames2d:
        for i in range(0, len(f2), b2):
            x = torch.from_numpy(f2[i:i + b2]).to(device).permute(0, 3, 1, 2).float()
            x = ((x / 255.0 - models.mean2d) / models.std2d)
            _sync(device)
            t0 = time.perf_counter()
            models._run(models.resnet, x)
            _sync(device)
            t2 += time.perf_counter() - t0
    for c in clips:
        for i in range(0, len(c), b3):
            x = torch.from_numpy(c[i:i + b3]).to(device).permute(0, 4, 1, 2, 3).float()
            x = x - models.mean3d
            _sync(device)
            t0 = time.perf_counter()
            models._run(models.resnext, x)
            _sync(device)
            t3 += time.perf_counter() - t0
    return {"resnet152_s": t2, "resnext101_s": t3, "total_s": t2 + t3}


def _inputs(paths: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from pipeline.features.decode import decode_all
    f2s, clips = [], []
    for path in paths:
        f2, f3, _ = decode_all(path)
        n = -(-len(f3) // 16)
        pad = np.zeros((n * 16 - len(f3), *f3.shape[1:]), np.uint8)
        f2s.append(f2)
        clips.append(np.concatenate([f3, pad]).reshape(n, 16, *f3.shape[1:]))
    return f2s, clips


def bench_end_to_end(paths: list[Path], device: str, tmp: Path, fmt_sizes: bool = True) -> dict:
    from pipeline.features.extract import get_models, run_shard
    p = _params(device)
    recipe = _recipe(p)
    t0 = time.perf_counter()
    models = get_models(_job(p, recipe, paths, tmp, 0))
    load_s = time.perf_counter() - t0
    f2s, clips = _inputs(paths)
    bare = bare_forwards(models, f2s, clips, p, device)
    n_dec = p.decoders or (6 if device == "cuda" else 1)
    decode_s = _decode_parallel(paths, n_dec)
    out = {}
    for fmt in ("hdf5", "parquet"):
        pf = dataclasses.replace(p, format=fmt)
        d = tmp / f"store-{fmt}"
        if device == "cuda":   # cuDNN autotunes each new batch shape once: keep it out
            run_shard(_job(pf, recipe, paths, tmp / f"warm-{fmt}", 0), emit=lambda ev: None)
        t0 = time.perf_counter()
        counts = run_shard(_job(pf, recipe, paths, d, 0), emit=lambda ev: None)
        wall = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in d.glob("shard-*"))
        seconds = sum(_duration(x) for x in paths)
        out[fmt] = {"wall_s": wall, "counts": counts, "bytes": size,
                    "bytes_per_video_s": size / seconds,
                    "over_floor": size / seconds / FLOOR_BYTES_PER_S}
    bound = max(bare["total_s"], decode_s)
    return {"videos": len(paths), "video_s": sum(_duration(x) for x in paths),
            "sizes": ", ".join(f"{_duration(x):.0f} s {_size(x)}" for x in paths),
            "decode_parallel_s": decode_s, "decoders": n_dec,
            "e2e_over_bound": out["hdf5"]["wall_s"] / bound,
            "bound": "forwards" if bare["total_s"] >= decode_s else "decode",
            "frames_2d": int(sum(len(f) for f in f2s)), "clips_3d": int(sum(len(c) for c in clips)),
            "model_load_s": load_s, "bare_forward": bare,
            "end_to_end": out, "e2e_over_bare": out["hdf5"]["wall_s"] / bare["total_s"],
            "threads": torch.get_num_threads(), "channels_last": p.channels_last}


def _decode_parallel(paths: list[Path], n: int) -> float:
    """Seconds to decode all `paths` with `n` concurrent single-pass decoders (the floor of
    end-to-end extraction when the forwards are faster, as on a GPU)."""
    from concurrent.futures import ThreadPoolExecutor
    from pipeline.features.decode import decode

    def one(path: Path) -> int:
        return sum(c.data.nbytes for c in decode(path))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as ex:
        list(ex.map(one, paths))
    return time.perf_counter() - t0


def _size(path: Path) -> str:
    from pipeline.media import probe
    info = probe(path)
    return f"{info['width']}x{info['height']}"


def _duration(path: Path) -> float:
    from pipeline.media import probe
    return probe(path)["duration_s"]


# --------------------------------------------------------------------------- (c) peak RSS


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def rss_child(path: str, device: str, out: str) -> None:
    """In a fresh process: load the models, reset the peak-RSS mark (random weights' BatchNorm
    calibration runs train-mode batches and would set it), extract one video; print the peak
    RSS of the extraction (MiB) and the RSS right after loading."""
    from pipeline.features.extract import get_models, run_shard
    p = _params(device)
    recipe = _recipe(p)
    job = _job(p, recipe, [Path(path)], Path(out), 0)
    get_models(job)
    loaded = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")     # Linux: reset VmHWM to the current RSS
    t0 = time.perf_counter()
    run_shard(job, emit=lambda ev: None)
    print(json.dumps({"peak_rss_mib": _status_mib("VmHWM"), "after_model_load_mib": loaded,
                      "wall_s": time.perf_counter() - t0,
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_rss(short: Path, long: Path, device: str, tmp: Path) -> dict:
    res = {}
    for name, path in (("short", short), ("long", long)):
        r = subprocess.run([sys.executable, "-m", "benchmarks.extract", "--rss-child", str(path),
                            "--device", device, "--rss-out", str(tmp / f"rss-{name}")],
                           cwd=ROOT, capture_output=True, text=True, check=True)
        res[name] = {**json.loads(r.stdout.strip().splitlines()[-1]),
                     "video_s": _duration(path)}
    res["long_over_short"] = res["long"]["peak_rss_mib"] / res["short"]["peak_rss_mib"]
    return res


# --------------------------------------------------------------------------- (e) precision


def bench_precision(paths: list[Path], device: str) -> dict:
    from pipeline.features.extract import Models
    f2s, clips = _inputs(paths[:2])
    p32 = _params(device)
    res = {}
    ref = None
    modes = ("float32", "bf16", "fp16") if device == "cuda" else ("float32", "bf16")
    for mode in modes:
        p = dataclasses.replace(p32, precision=mode, dtype="float32")
        m = Models(p, (p.weights_2d, p.weights_3d), torch.device(device))
        t = bare_forwards(m, f2s, clips, p, device)
        feats = (m.forward_2d(f2s[0]), np.concatenate([m.forward_3d(clips[0][i:i + 8])
                                                        for i in range(0, len(clips[0]), 8)]))
        if ref is None:
            ref = feats
        res[mode] = {**t, "max_abs_dev_resnet152": float(np.abs(feats[0] - ref[0]).max()),
                     "max_abs_dev_resnext101": float(np.abs(feats[1] - ref[1]).max()),
                     "min_cosine": float(min(_cos(feats[0], ref[0]), _cos(feats[1], ref[1])))}
        res[mode]["speedup"] = res["float32"]["total_s"] / t["total_s"]
        del m
    return res


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


# --------------------------------------------------------------------------- (f) vs the reference


def weight_files(folder: Path) -> tuple[Path, Path]:
    """Seeded random weights saved in the official formats, so that every process (ours and the
    reference's) pays for loading them from a file as with the real ones: torchvision's
    resnet152 state_dict, and Hara's checkpoint dict (`module.`-prefixed) -> (2D, 3D) files."""
    from pipeline.features.weights import random_backbone
    folder.mkdir(parents=True, exist_ok=True)
    f2, f3 = folder / "resnet152-random0.pth", folder / "resnext-101-kinetics-random1.pth"
    if not f2.exists():
        torch.save(random_backbone("resnet152", 0).state_dict(), f2)
    if not f3.exists():
        sd = {f"module.{k}": v for k, v in random_backbone("resnext101", 1).state_dict().items()}
        torch.save({"epoch": 0, "arch": "resnext-101", "state_dict": sd, "optimizer": {}}, f3)
    return f2, f3


# Runs argv[2:] and writes its wall time and peak RSS to argv[1]. A small process of its own in
# between, because a child's peak RSS starts at its parent's RSS at fork (Linux keeps the
# high-water mark across exec), and this benchmark's process holds models and frames.
_RUNNER = ("import json, os, subprocess, sys, time\n"
           "t0 = time.perf_counter()\n"
           "p = subprocess.Popen(sys.argv[2:])\n"
           "_, status, usage = os.wait4(p.pid, 0)\n"
           "p.returncode = os.waitstatus_to_exitcode(status)\n"
           "open(sys.argv[1], 'w').write(json.dumps({'rc': p.returncode, 'wall_s': "
           "time.perf_counter() - t0, 'peak_rss_mib': usage.ru_maxrss / 1024}))\n")


def timed_process(cmd: list[str], cwd: Path, log: Path) -> dict:
    """Runs `cmd` -> wall seconds and the peak RSS (MiB) of the largest of it and the processes
    it waited for (dask's worker processes included); stops the benchmark if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    result = log.with_suffix(".json")
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-c", _RUNNER, str(result), *cmd], cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    r = json.loads(result.read_text())
    if r["rc"]:
        raise RuntimeError(f"{' '.join(cmd)} exited {r['rc']}:\n"
                           + log.read_text(errors="replace")[-3000:])
    return {"wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}


def _bench_project(tmp: Path, video: Path, f2: Path, f3: Path) -> Path:
    """A project folder whose params make `video` (in a folder of its own) the only video of a
    custom dataset `bench`, with the weight files; manifest and download run (untimed)."""
    import yaml
    media, proj = tmp / "bench-media", tmp / "bench-project"
    media.mkdir()
    proj.mkdir()
    shutil.copy2(video, media / video.name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {**params["datasets"], "bench": "custom"}
    params["manifest"]["bench"] = {"media": str(media)}
    params["extract"].update(weights_2d=str(f2), weights_3d=str(f3))
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("manifest", "download"):
        timed_process([sys.executable, "-m", f"stages.{stage}", "--dataset", "bench"], proj,
                      tmp / f"{stage}.log")
    return proj


def bench_reference(video: Path, tmp: Path) -> dict:
    """(f) One video, whole processes timed side by side: `python -m stages.extract` (dask,
    decode once, batched forwards, store) against the reference recipe's three processes
    (benchmarks.reference_extractor), with the bare forward floor of the same video, our
    extraction on warm models, and the largest difference between the two sets of features."""
    from pipeline.features.extract import batch_sizes, get_models, run_shard
    from pipeline.features.store import FeatureStore
    f2, f3 = weight_files(tmp / "weights")
    proj = _bench_project(tmp, video, f2, f3)
    ours = timed_process([sys.executable, "-m", "stages.extract", "--dataset", "bench"], proj,
                         tmp / "extract.log")
    ref, ref_feats = {}, {}
    for kind in ("2d", "3d", "audio"):
        out = tmp / f"reference-{kind}.npy"
        ref[kind] = timed_process([sys.executable, "-m", "benchmarks.reference_extractor",
                                   "--type", kind, "--video", str(video), "--weights",
                                   str(f2 if kind == "2d" else f3), "--out", str(out)], ROOT,
                                  tmp / f"reference-{kind}.log")
        ref_feats[kind] = np.load(out).astype(np.float32)
    ref_total = sum(r["wall_s"] for r in ref.values())

    # in this process: the bare forwards and run_shard on the same models, loaded from the same
    # files the way a worker loads them (get_models, with the worker's allocator settings)
    p = _params("cpu", weights_2d=str(f2), weights_3d=str(f3))
    job = _job(p, _recipe(p), [video], tmp / "warm", 0)
    models = get_models(job)
    f2s, clips = _inputs([video])
    floor = bare_forwards(models, f2s, clips, p, "cpu")
    del f2s, clips
    t0 = time.perf_counter()
    run_shard(job, emit=lambda ev: None)
    warm_s = time.perf_counter() - t0

    with FeatureStore(proj / "data" / "features" / "bench") as store:
        vid = store.ids()[0]
        ours_feats = {k: store.read(vid, name).astype(np.float32) for k, name in
                      (("2d", "resnet152"), ("3d", "resnext101"), ("audio", "logmel"))}
    diff = {}
    for k in ("2d", "3d", "audio"):
        a, b = ours_feats[k], ref_feats[k]
        diff[k] = {"shape_ours": list(a.shape), "shape_reference": list(b.shape),
                   "max_abs_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None}
    return {"video": video.name, "size": _size(video), "video_s": _duration(video),
            "threads": torch.get_num_threads(), "batches": batch_sizes(p, "cpu"),
            "ours_process": ours, "reference_processes": ref,
            "reference_total_s": ref_total, "bare_forward": floor, "ours_warm_s": warm_s,
            "reference_over_ours": ref_total / ours["wall_s"],
            "ours_over_floor": ours["wall_s"] / floor["total_s"],
            "warm_over_floor": warm_s / floor["total_s"], "features_max_abs_diff": diff}


# --------------------------------------------------------------------------- report


def bench_logmel(seconds: float, repeats: int, end_to_end: dict | None) -> dict:
    """The log-Mel spectrogram (float64 STFT and Mel basis since issue 16) of `seconds` of
    16 kHz noise: its time per video-second, and its share of the extraction's per-second cost
    in part (b) when that is at hand."""
    from pipeline.features.logmel import logmel
    wave = np.random.default_rng(0).standard_normal(int(16000 * seconds)).astype(np.float32)
    logmel(wave[:16000])                                     # first-call set-up out of it
    median, runs = _median_time(lambda: logmel(wave), repeats)
    out = {"audio_s": seconds, "median_s": median, "runs_s": runs,
           "s_per_video_hour": median / seconds * 3600}
    if end_to_end:
        per_s = end_to_end["end_to_end"]["hdf5"]["wall_s"] / end_to_end["video_s"]
        out["share_of_extraction"] = median / seconds / per_s
    return out


def markdown(r: dict) -> str:
    a, b, c, e = r.get("decode"), r.get("end_to_end"), r.get("rss"), r.get("precision")
    lines = [f"# Feature extraction benchmark ({r['device']})", "",
             f"{r['date']}, {r['machine']}. Generated by `python -m benchmarks.extract "
             f"{' '.join(r['argv'])}`. Seeded random weights (same architectures and cost as the "
             "official ones). Targets from issue 4.", ""]
    if r.get("kept_from"):
        lines += ["Parts kept from earlier runs (same machine kind): " + ", ".join(
            f"{k} ({d})" for k, d in sorted(r["kept_from"].items())) + ".", ""]
    if a:
        lines += [f"## (a) Decode: {a['video_s']:.0f} s of {a['size']} H.264 30 fps + AAC", "",
                  "| pipeline | median s | runs |", "|---|---|---|"]
        for k in ("ours", "floor_devnull", "reference_3_passes"):
            lines.append(f"| {k} | {a[k]['median_s']:.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in a[k]['runs_s'])} |")
        lines += ["", f"- ours / floor = **{a['ours_over_floor']:.3f}** (target <= 1.15): "
                      f"{'met' if a['ours_over_floor'] <= 1.15 else 'NOT met'}",
                  f"- reference / ours = **{a['reference_over_ours']:.2f}x** (target >= 1.6x): "
                  f"{'met' if a['reference_over_ours'] >= 1.6 else 'NOT met'}", ""]
    if b:
        bf = b["bare_forward"]
        lines += [f"## (b) End to end vs bare forwards: {b['videos']} videos, "
                  f"{b['video_s']:.0f} s ({b.get('sizes', '640x360 and 480x360 alternately')}), "
                  f"{b['frames_2d']} frames, {b['clips_3d']} clips", "",
                  "| | s |", "|---|---|",
                  f"| bare ResNet-152 forwards | {bf['resnet152_s']:.2f} |",
                  f"| bare ResNeXt-101 forwards | {bf['resnext101_s']:.2f} |",
                  f"| bare total | {bf['total_s']:.2f} |",
                  f"| end to end, HDF5 (run_shard, warm models) | "
                  f"{b['end_to_end']['hdf5']['wall_s']:.2f} |",
                  f"| end to end, Parquet | {b['end_to_end']['parquet']['wall_s']:.2f} |",
                  f"| model load (once per worker) | {b['model_load_s']:.2f} |",
                  f"| decode alone, {b['decoders']} concurrent decoder(s) | "
                  f"{b['decode_parallel_s']:.2f} |", "",
                  f"- end to end / bare = **{b['e2e_over_bare']:.3f}** (target <= 1.15): "
                  f"{'met' if b['e2e_over_bare'] <= 1.15 else 'NOT met'}; torch threads "
                  f"{b['threads']}, channels-last {b['channels_last']}",
                  f"- the bound here is the {b['bound']} (the slower of bare forwards and "
                  f"decode alone); end to end / bound = **{b['e2e_over_bound']:.3f}**", "",
                  "## (d) Store size", "", "| format | bytes per video-second | vs 18,240 floor |",
                  "|---|---|---|"]
        for fmt in ("hdf5", "parquet"):
            x = b["end_to_end"][fmt]
            lines.append(f"| {fmt} | {x['bytes_per_video_s']:.0f} | {x['over_floor']:.3f}x |")
        lines.append("")
    if c:
        lines += ["## (c) Peak RSS, one video per fresh process", "",
                  "| video | s | peak RSS MiB | after model load MiB | wall s |", "|---|---|---|---|---|"]
        for k in ("short", "long"):
            lines.append(f"| {k} | {c[k]['video_s']:.0f} | {c[k]['peak_rss_mib']:.0f} | "
                         f"{c[k]['after_model_load_mib']:.0f} | {c[k]['wall_s']:.1f} |")
        lines += ["", f"- long / short = **{c['long_over_short']:.3f}** (target: equal within "
                      f"20 %): {'met' if abs(c['long_over_short'] - 1) <= 0.2 else 'NOT met'}", ""]
    if e:
        lines += ["## (e) Reduced precision (autocast), bare forwards", "",
                  "| mode | forwards s | speed-up | max abs dev 2D | max abs dev 3D | min cosine |",
                  "|---|---|---|---|---|---|"]
        for k, x in e.items():
            lines.append(f"| {k} | {x['total_s']:.2f} | {x['speedup']:.2f}x | "
                         f"{x['max_abs_dev_resnet152']:.2e} | {x['max_abs_dev_resnext101']:.2e} | "
                         f"{x['min_cosine']:.5f} |")
        lines += ["", "Deviations are on L2-normalised float32 rows (unit vectors). Off by "
                      "default (`extract.precision: float32`); recorded in the recipe when on.", ""]
    if r.get("reference"):
        lines += reference_markdown(r["reference"])
    if r.get("logmel"):
        g = r["logmel"]
        lines += [f"## (g) Log-Mel spectrogram (float64 STFT and Mel basis): {g['audio_s']:.0f} s "
                  "of 16 kHz audio", "",
                  f"- median {g['median_s']:.3f} s (runs "
                  f"{', '.join(f'{x:.3f}' for x in g['runs_s'])}): "
                  f"{g['s_per_video_hour']:.1f} s per hour of audio"]
        if "share_of_extraction" in g:
            lines.append(f"- share of the extraction's time per video-second in (b): "
                         f"**{100 * g['share_of_extraction']:.2f} %**")
        lines.append("")
    return "\n".join(lines)


def reference_markdown(f: dict) -> list[str]:
    o, ref, bf = f["ours_process"], f["reference_processes"], f["bare_forward"]
    d = f["features_max_abs_diff"]
    lines = [f"## (f) Whole processes against the reference recipe: one {f['video_s']:.0f} s "
             f"{f['size']} video", "",
             "Every figure in this section is for that one video (H.264 30 fps + AAC), measured "
             f"in this run on {f['threads']} torch threads. Our batches: {f['batches'][0]} frames "
             f"(2D) and {f['batches'][1]} clips (3D); the reference's: 64 and 64.", "",
             "| | wall s | peak RSS MiB |", "|---|---|---|",
             f"| ours: `python -m stages.extract` (whole process: start-up, checks, dask, "
             f"model load, extraction, store) | {o['wall_s']:.1f} | {o['peak_rss_mib']:.0f} |",
             f"| ours: the extraction alone (`run_shard`, models loaded) | {f['ours_warm_s']:.1f} | |",
             f"| reference: 2D process (ffmpeg 1 fps pass, ResNet-152) | "
             f"{ref['2d']['wall_s']:.1f} | {ref['2d']['peak_rss_mib']:.0f} |",
             f"| reference: 3D process (ffmpeg 24 fps pass, ResNeXt-101) | "
             f"{ref['3d']['wall_s']:.1f} | {ref['3d']['peak_rss_mib']:.0f} |",
             f"| reference: audio process (ffmpeg 16 kHz pass, log-Mel) | "
             f"{ref['audio']['wall_s']:.1f} | {ref['audio']['peak_rss_mib']:.0f} |",
             f"| reference: the three processes | {f['reference_total_s']:.1f} | |",
             f"| bare float32 forwards (the floor): ResNet-152 {bf['resnet152_s']:.1f} s + "
             f"ResNeXt-101 {bf['resnext101_s']:.1f} s | {bf['total_s']:.1f} | |", "",
             f"- reference / ours, whole processes = **{f['reference_over_ours']:.2f}x**",
             f"- ours, whole process / floor = **{f['ours_over_floor']:.3f}**; the extraction "
             f"alone / floor = **{f['warm_over_floor']:.3f}** (target <= 1.1): "
             f"{'met' if f['warm_over_floor'] <= 1.1 else 'NOT met'}",
             "- equal numbers: largest |ours - reference| over the stored float16 rows: "
             + ", ".join(f"{k} {x['max_abs_diff']:.1e}" if x["max_abs_diff"] is not None
                         else f"{k} shapes differ ({x['shape_ours']} vs {x['shape_reference']})"
                         for k, x in d.items()), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tag", default="", help="results file suffix, e.g. cuda")
    ap.add_argument("--decode-s", type=float, default=120.0)
    ap.add_argument("--e2e-s", type=float, default=60.0, help="seconds per e2e video (2 videos)")
    ap.add_argument("--e2e-n", type=int, default=2, help="videos in the e2e shard")
    ap.add_argument("--rss-short-s", type=float, default=60.0)
    ap.add_argument("--rss-long-s", type=float, default=600.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-s", type=float, default=120.0,
                    help="seconds of the 640x360 video of part (f)")
    ap.add_argument("--logmel-s", type=float, default=600.0,
                    help="seconds of audio of part (g)")
    ap.add_argument("--only", default="a,b,c,e,f,g", help="parts to run, comma-separated")
    ap.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "avl-bench-media")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--rss-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.device, args.rss_out)
        return 0
    parts = set(args.only.split(","))
    args.media.mkdir(parents=True, exist_ok=True)
    r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "device": torch.cuda.get_device_name(0) if args.device == "cuda" else
         f"CPU ({os.cpu_count()} cores)",
         "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
                    f"{torch.__version__}", "argv": argv if argv is not None else sys.argv[1:],
         }
    with tempfile.TemporaryDirectory(prefix="avl-bench-") as tmp:
        tmp = Path(tmp)
        if "a" in parts:
            v = make_video(args.media / f"dec-{args.decode_s:g}.mp4", args.decode_s)
            r["decode"] = bench_decode(v, args.repeats)
            print(json.dumps(r["decode"], indent=1), flush=True)
        e2e = [make_video(args.media / f"e2e-{args.e2e_s:g}-{i}.mp4", args.e2e_s,
                          size=("640x360", "480x360")[i % 2]) for i in range(args.e2e_n)]
        if "b" in parts:
            r["end_to_end"] = bench_end_to_end(e2e, args.device, tmp)
            print(json.dumps(r["end_to_end"], indent=1), flush=True)
        if "e" in parts:
            r["precision"] = bench_precision(e2e, args.device)
            print(json.dumps(r["precision"], indent=1), flush=True)
        if "c" in parts:
            r["rss"] = bench_rss(make_video(args.media / f"rss-{args.rss_short_s:g}.mp4",
                                            args.rss_short_s),
                                 make_video(args.media / f"rss-{args.rss_long_s:g}.mp4",
                                            args.rss_long_s), args.device, tmp)
            print(json.dumps(r["rss"], indent=1), flush=True)
        if "f" in parts:
            r["reference"] = bench_reference(make_video(args.media / f"ref-{args.ref_s:g}.mp4",
                                                        args.ref_s), tmp)
            print(json.dumps(r["reference"], indent=1), flush=True)
    if "g" in parts:
        before = RESULTS / ("extract" + (f"-{args.tag}" if args.tag else "") + ".json")
        e2e_numbers = r.get("end_to_end") or (json.loads(before.read_text()).get("end_to_end")
                                              if before.is_file() else None)
        r["logmel"] = bench_logmel(args.logmel_s, args.repeats, e2e_numbers)
        print(json.dumps(r["logmel"], indent=1), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "extract" + (f"-{args.tag}" if args.tag else "")
    previous = RESULTS / f"{name}.json"
    if previous.is_file():   # --only re-measures some parts: keep the others, with their date
        old = json.loads(previous.read_text())
        for key in ("decode", "end_to_end", "rss", "precision", "reference", "logmel"):
            if key not in r and key in old:
                r[key] = old[key]
                r.setdefault("kept_from", {})[key] = old.get("kept_from", {}).get(key,
                                                                                  old["date"])
    (RESULTS / f"{name}.json").write_text(json.dumps(r, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
