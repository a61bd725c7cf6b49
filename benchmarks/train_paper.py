"""`python -m benchmarks.train --paper`: training throughput at the paper's scale (issue 17).

The real loop (pipeline.learn.train.train) on PretrainVideos from a synthetic HDF5 store, read
through the DataLoader train() builds (its workers, pin_memory on CUDA), with the paper's model
and batch (128 videos x 32 windows of 10 s) by default, for each precision (float32, bf16 and
fp16 autocast). train()'s timer hook times each phase of each step: data (waiting for the
loader, plus the loop's bookkeeping), host-to-device copy, forward, loss, backward, optimiser;
on CUDA it synchronises at every phase end, so a phase's time is its kernels'. The store is
dropped from the page cache before each part (--drop-caches) so the reads come from the disk.
Results: benchmarks/results/train-<tag>.json and .md (tag: the device unless --tag), written
after each part, never train.json (the CPU data-path comparison's)."""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.synthetic_store import evict, make_store, videos_for_bytes
from pipeline.config import ModelParams, TrainParams, to_dict
from pipeline.features.store import FeatureStore
from pipeline.learn.avdata import PretrainVideos, collate_videos
from pipeline.learn.train import build_model, epoch_batches, train

PHASES = ("data", "h2d", "forward", "loss", "backward", "optimizer")
TARGETS = {"data_wait_max": 0.05, "clips_per_s_min": 13_300}     # issue 17
PRECISIONS = ("float32", "bf16", "fp16")


class StepTimer:
    """train()'s timer: seconds of each phase of each step (a phase runs from the end of the
    one before it). On CUDA it synchronises first, so the time is the phase's kernels'."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.steps: list[dict[str, float]] = []
        self._cur: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self._cur[phase] = now - self._t
        self._t = now
        if phase == PHASES[-1]:
            self.steps.append(self._cur)
            self._cur = {}


class _Enough(Exception):
    """Raised from on_step to end a measured run (no checkpoint is written for it)."""


def unsupported(precision: str, device: torch.device) -> str | None:
    """Why `precision` is not measured on `device`, or None."""
    if precision == "fp16" and device.type != "cuda":
        return ("train() scales fp16 gradients with torch.amp.GradScaler, which needs CUDA; "
                "on the CPU it disables itself and fp16 would run unscaled")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None


def summarise(timed: list[dict], rows: list[dict]) -> dict:
    """Per-step phase times and train()'s own per-step log rows -> the precision's figures."""
    n = len(timed)
    tot = {ph: sum(s[ph] for s in timed) for ph in PHASES}
    wall = sum(tot.values())
    clips = sum(r["clips"] for r in rows)
    return {"steps": n, "clips_per_step": rows[0]["clips"], "clips_per_s": clips / wall,
            "step_s": wall / n, "phases_s": {ph: tot[ph] / n for ph in PHASES},
            "phases_frac": {ph: tot[ph] / wall for ph in PHASES},
            "data_wait": tot["data"] / wall,
            # train()'s own clock (log.jsonl): the same steps measured without the hook
            "loop_step_s": statistics.mean(r["clips"] / r["clips_per_s"] for r in rows),
            "loop_data_wait": statistics.mean(r["data_wait"] for r in rows),
            "per_step": [{ph: round(s[ph], 6) for ph in PHASES} for s in timed]}


def measure(ds: PretrainVideos, p: TrainParams, steps: int, warmup: int, budget_s: float,
            run_dir: Path, device: torch.device) -> dict:
    """`warmup` + up to `steps` steps of train() (fewer once `budget_s` seconds of timed steps
    have run, or the epoch ends) -> summarise()'s figures, the losses, peak memory."""
    timer, rows = StepTimer(device), []
    clock = {"start": time.perf_counter()}

    def on_step(row: dict) -> None:
        rows.append(row)
        if len(rows) == warmup:
            clock["start"] = time.perf_counter()
        timed = len(rows) - warmup
        if timed >= steps:
            raise _Enough("steps")
        if timed > 0 and time.perf_counter() - clock["start"] >= budget_s:
            raise _Enough("budget")

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stopped = "epoch end"
    t0 = time.perf_counter()
    try:
        train(run_dir, ds, collate_videos, p, items_per_batch=p.videos_per_batch, epochs=1,
              lr=p.lr, lr_decay=p.lr_decay, on_step=on_step, timer=timer)
    except _Enough as e:
        stopped = str(e)
    wall = time.perf_counter() - t0
    gc.collect()                   # the run's model and loader go with its frames
    out: dict = {"precision": p.precision, "stopped_by": stopped, "warmup": warmup,
                 "wall_s": wall, "losses": [r["loss"] for r in rows],
                 "finite": all(math.isfinite(r["loss"]) for r in rows),
                 "warmup_steps_s": [sum(s.values()) for s in timer.steps[:warmup]]}
    if len(rows) <= warmup:
        out["error"] = (f"only {len(rows)} step(s) ran, none after the {warmup} warm-up "
                        "step(s): a larger store (--videos) or budget (--budget-s)")
    else:
        out.update(summarise(timer.steps[warmup:len(rows)], rows[warmup:]))
    if device.type == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2 ** 30
        torch.cuda.empty_cache()
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def loader_capacity(ds: PretrainVideos, p: TrainParams, batches: int, pin: bool) -> dict:
    """The DataLoader alone, built as train() builds it, for `batches` batches of epoch 0:
    clips per second overall and after the first batch (what it delivers once started)."""
    sampler = epoch_batches(len(ds), p.videos_per_batch, p.seed, 0)[:batches]
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=p.workers,
                        collate_fn=collate_videos, pin_memory=pin)
    t0 = time.perf_counter()
    arrivals, clips = [], 0
    for b in loader:
        arrivals.append(time.perf_counter() - t0)
        clips += b["spec"].shape[0]
    per = clips / max(1, len(arrivals))
    after = arrivals[-1] - arrivals[0]
    return {"batches": len(arrivals), "clips": clips, "wall_s": arrivals[-1],
            "clips_per_s": clips / arrivals[-1], "first_batch_s": arrivals[0],
            "steady_clips_per_s": (len(arrivals) - 1) * per / after if after > 0 else None,
            "arrivals_s": [round(a, 3) for a in arrivals]}


def filesystem(path: Path) -> str:
    """The file system type holding `path` (tmpfs means the store sits in RAM)."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mnt, fstype = line.split()[1:3]
            if path.resolve().is_relative_to(mnt) and len(mnt) > len(best):
                best, kind = mnt, fstype
    except OSError:
        pass
    return kind


def environment(device: torch.device) -> dict:
    env = {"cpus": os.cpu_count(), "python": platform.python_version(),
           "torch": torch.__version__,
           "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
           "cudnn_benchmark": torch.backends.cudnn.benchmark}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   gpu_mem_gib=torch.cuda.get_device_properties(device).total_memory / 2 ** 30)
    return env


def run(args, model: ModelParams, argv: list[str]) -> int:
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    n, m = args.n or 128, args.m or 32
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    seconds = args.seconds or 300
    need = n * (args.warmup + args.steps)            # one epoch covers every step: no re-reads
    videos = args.videos or max(need, videos_for_bytes(args.store_gb, seconds))
    precisions = [x for x in args.precisions.split(",") if x]
    bad = [x for x in precisions if x not in PRECISIONS]
    if bad:
        raise SystemExit(f"--precisions: {bad[0]!r} is not one of {', '.join(PRECISIONS)}")
    results = Path(args.results)
    name = f"train-{args.tag or device.type}"
    p = TrainParams(model=model, videos_per_batch=n, clips_per_video=m, workers=workers,
                    seed=0, device=device.type, checkpoint_every=10 ** 9, epochs=1,
                    threads=args.threads)
    r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "argv": argv, "device": device.type, "environment": environment(device),
         "targets": TARGETS,
         "config": {"model": to_dict(model),
                    "parameters": sum(t.numel() for t in build_model(model).parameters()),
                    "videos_per_batch": n, "clips_per_video": m, "clips_per_batch": n * m,
                    "window_s": p.window_s, "workers": workers, "threads": args.threads,
                    "pin_memory": device.type == "cuda", "steps": args.steps,
                    "warmup": args.warmup, "budget_s": args.budget_s,
                    "drop_caches": args.drop_caches, "verify": "size"},
         "store": {}, "loader": None, "precisions": {}}

    def save() -> None:
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{name}.json").write_text(json.dumps(r, indent=1) + "\n")
        (results / f"{name}.md").write_text(markdown(r))

    # the run folders beside the store (--store: a real disk, where /tmp may be RAM)
    scratch = Path(args.store).resolve().parent if args.store else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="avl-train-paper-", dir=scratch) as tmp:
        tmp = Path(tmp)
        root = Path(args.store) if args.store else tmp / "store"
        index = root / "index.parquet"
        if index.is_file() and len(FeatureStore(root, verify="none").ids()) >= videos:
            r["store"] = {"reused": True}
        else:
            r["store"] = make_store(root, videos, seconds, workers=args.gen_workers
                                    or os.cpu_count() or 1)
            print("store", r["store"], flush=True)
        shards = sorted(root.glob("shard-*.h5"))
        r["store"].update(path=str(root), filesystem=filesystem(root),
                          bytes=sum(f.stat().st_size for f in shards), shard_files=len(shards))
        # as pretrain() does: shards checked once before the loader forks (size here: a
        # sha256 pass would read the whole store into the page cache)
        store = FeatureStore(root, verify="size")
        ids = store.ids()[:videos]
        store.verify_shards(ids)
        r["store"]["videos_used"] = len(ids)
        ds = PretrainVideos(store, ids, m, p.seed, window_frames=100 * p.window_s)
        cache = (lambda: evict(shards)) if args.drop_caches else (lambda: None)
        if args.loader_batches:
            c = cache()
            r["loader"] = {**loader_capacity(ds, p, args.loader_batches,
                                             device.type == "cuda"), "cache": c}
            print("loader", {k: v for k, v in r["loader"].items() if k != "arrivals_s"},
                  flush=True)
            save()
        for prec in precisions:
            why = unsupported(prec, device)
            if why:
                r["precisions"][prec] = {"precision": prec, "skipped": why}
            else:
                c = cache()
                out = measure(ds, dataclasses.replace(p, precision=prec), args.steps,
                              args.warmup, args.budget_s, tmp / f"run-{prec}", device)
                r["precisions"][prec] = {**out, "cache": c}
            print(prec, {k: v for k, v in r["precisions"][prec].items()
                         if k not in ("per_step", "losses")}, flush=True)
            save()
    print(markdown(r))
    return 0


def _ms(s: float) -> str:
    return f"{1000 * s:.0f}" if s >= 0.01 else f"{1000 * s:.1f}"


def markdown(r: dict) -> str:
    c, st, env = r["config"], r["store"], r["environment"]
    where = env.get("gpu") or f"{env['cpus']} CPUs"
    lines = [f"# Training throughput at the paper's scale ({where})", "",
             f"{r['date']}. `python -m benchmarks.train {' '.join(r['argv'])}`. "
             f"{env['cpus']} CPUs, {env['ram_gib']:.0f} GiB RAM, Python {env['python']}, "
             f"torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
             + ".", "",
             f"Model: D = {c['model']['embed_dim']}, audio widths {c['model']['audio_widths']} "
             f"({c['parameters'] / 1e6:.2f} M parameters). Batch: {c['videos_per_batch']} videos "
             f"x {c['clips_per_video']} windows of {c['window_s']} s = {c['clips_per_batch']} "
             f"clips. Loader: {c['workers']} workers, pin_memory {c['pin_memory']}. Steps: "
             f"{c['warmup']} warm-up, then up to {c['steps']} timed (at most {c['budget_s']:g} "
             "s)." + (f" float32 convolutions may use TF32 (cudnn.allow_tf32 = "
                      f"{env['cudnn_allow_tf32']})." if env.get("gpu") else ""), "",
             "Each phase ends with a device synchronisation (the breakdown needs it); `data` "
             "is the wait for the loader plus the loop's bookkeeping. Each worker builds whole "
             "batches, so batches arrive in waves of as many as there are workers: the per-step "
             "times in the JSON show them.", ""]
    if "videos" in st:
        lines += [f"Synthetic store: {st['videos']} videos of {st['seconds']} s, "
                  f"{st['bytes'] / 1e9:.2f} GB in {st['shards']} shards on {st['filesystem']}, "
                  f"written in {st['seconds_taken']:.1f} s. Page cache dropped before each "
                  f"part: {c['drop_caches']}.", ""]
    elif st:
        lines += [f"Store reused from {st.get('path')} ({st.get('bytes', 0) / 1e9:.2f} GB on "
                  f"{st.get('filesystem')}). Page cache dropped before each part: "
                  f"{c['drop_caches']}.", ""]
    lines += ["Milliseconds per step (share of the step):", "",
              "| precision | clips/s | step ms | " + " | ".join(PHASES) +
              " | data-wait | peak GPU GiB | steps | cache |",
              "|---|---|---|" + "---|" * len(PHASES) + "---|---|---|---|"]
    for prec, e in r["precisions"].items():
        if "skipped" in e or "error" in e:
            why = f"skipped: {e['skipped']}" if "skipped" in e else e["error"]
            lines.append(f"| {prec} | {why} |" + " |" * (len(PHASES) + 5))
            continue
        cache = e.get("cache") or {}
        after = cache.get("resident_after")
        cached = f"{cache.get('method', 'not dropped')}" + (f", {100 * after:.0f} % resident"
                                                      if after is not None else "")
        mem = e.get("peak_gpu_mem_gib")
        lines.append(
            f"| {prec} | {e['clips_per_s']:,.0f} | {_ms(e['step_s'])} | "
            + " | ".join(f"{_ms(e['phases_s'][ph])} ({100 * e['phases_frac'][ph]:.0f} %)"
                         for ph in PHASES)
            + f" | {100 * e['data_wait']:.1f} % | {'' if mem is None else f'{mem:.1f}'} | "
              f"{e['steps']} ({e['stopped_by']}) | {cached} |")
    if r.get("loader"):
        ld = r["loader"]
        steady = ld["steady_clips_per_s"]
        lines += ["", f"The loader alone (built as train() builds it, {ld['batches']} batches"
                      + (" after a cache drop" if ld.get("cache") else "") + "): "
                      f"{ld['clips_per_s']:,.0f} clips/s overall, first batch after "
                      f"{ld['first_batch_s']:.2f} s, "
                      + (f"{steady:,.0f} clips/s after it." if steady else "no more batches.")]
    done = {k: e for k, e in r["precisions"].items() if "clips_per_s" in e}
    if done:
        t = r["targets"]
        lines += ["", "Targets (issue 17):", ""]
        for k, e in done.items():
            ok_w, ok_c = e["data_wait"] < t["data_wait_max"], e["clips_per_s"] >= \
                t["clips_per_s_min"]
            lines.append(f"- {k}: data-wait {100 * e['data_wait']:.1f} % (< "
                         f"{100 * t['data_wait_max']:.0f} %: {'met' if ok_w else 'NOT met'}), "
                         f"{e['clips_per_s']:,.0f} clips/s (>= {t['clips_per_s_min']:,}: "
                         f"{'met' if ok_c else 'NOT met'})")
    return "\n".join(lines) + "\n"
