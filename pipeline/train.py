"""The AVLnet training loop: Adam with per-epoch decay, autocast on CUDA, DDP under torchrun,
atomic self-describing checkpoints, and a resume that continues exactly where a run stopped.

Determinism: batch composition depends only on (seed, epoch) and every item only on (seed,
epoch, index) (pipeline/avdata.py), so a run resumed from a mid-epoch checkpoint sees the same
batches as an uninterrupted one; with the optimizer state restored it reaches the same
parameters (bit for bit on the CPU)."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.avlnet import AVLnet
from models.losses import LOSSES
from pipeline.config import ModelParams, TrainParams, to_dict
from pipeline.sources import sha256_file

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class TrainError(RuntimeError):
    """A run that cannot start: incompatible checkpoint, no data, a bad device."""


def build_model(m: ModelParams) -> AVLnet:
    return AVLnet(m.embed_dim, m.head, tuple(m.audio_widths), m.video_norm)


def build_loss(m: ModelParams) -> nn.Module:
    if m.loss == "mms":
        return LOSSES["mms"](m.mms_margin)
    if m.loss == "max_margin":
        return LOSSES["max_margin"](m.ranking_margin)
    if m.loss == "infonce":
        return LOSSES["infonce"](m.temperature)
    return LOSSES[m.loss]()


def epoch_batches(n_items: int, per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of item indices: a permutation seeded by (seed, epoch), the last
    partial batch dropped (avlnet.md)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_items, generator=g).tolist()
    return [order[i:i + per_batch] for i in range(0, n_items - per_batch + 1, per_batch)]


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary name, fsync, rename: a kill never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


@dataclass
class Dist:
    """torchrun's environment: rank, world size, the device of this process."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(want: str) -> Dist:
    """One process per GPU under torchrun (WORLD_SIZE > 1: NCCL on CUDA, gloo on the CPU);
    otherwise a single process on CUDA when present (want 'auto') or the CPU."""
    cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    if want == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device is cuda but no CUDA device is visible")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, device)


def _gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Embeddings of every rank, gradients flowing back to this rank's part (so the loss sees
    the whole global batch as negatives, as one big batch would)."""
    if d.world == 1:
        return x
    import torch.distributed.nn.functional as dnn
    return torch.cat(dnn.all_gather(x), dim=0)


def train(run_dir: Path, dataset: Dataset, collate: Callable, p: TrainParams, *,
          items_per_batch: int, epochs: int, lr: float, lr_decay: float,
          init_from: Path | None = None, bn_frozen: bool = False,
          provenance: dict | None = None, stop_after_steps: int | None = None,
          restart_on_change: bool = False,
          on_step: Callable[[dict], None] | None = None) -> dict:
    """Trains (or resumes) the run in `run_dir`; -> summary. Writes checkpoint.pt (every
    p.checkpoint_every steps and at each epoch end), log.jsonl (one line per step: loss, lr,
    clips/s, data-wait fraction), loss.png, and final.pt at the end.

    items_per_batch: dataset items per global batch (videos for pretraining, clips for
    fine-tuning). bn_frozen: BatchNorm in evaluation mode (frozen statistics, eval pooling),
    the reference's fine-tuning behaviour. stop_after_steps: stop (after checkpointing) once
    that many steps ran in this call (tests: a run cut short). A checkpoint in `run_dir` is
    resumed when it was made with the same settings (`epochs` may grow); with other settings
    the run starts over when restart_on_change (stages: DVC keeps the old run in its cache),
    else TrainError."""
    d = setup_distributed(p.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    torch.manual_seed(p.seed)
    np.random.seed(p.seed)
    random.seed(p.seed)
    model = build_model(p.model).to(d.device)
    loss_fn = build_loss(p.model)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.0)
    epoch, step_in_epoch, global_step = 0, 0, 0
    run_key = {"model": to_dict(p.model), "seed": p.seed, "precision": p.precision,
               "items_per_batch": items_per_batch, "lr": lr, "lr_decay": lr_decay,
               "bn_frozen": bn_frozen,
               "init_sha256": sha256_file(init_from) if init_from is not None else None,
               "dataset_items": len(dataset),
               # what the data is, not only how much: a run on changed features starts over
               "data": {k: (provenance or {}).get(k) for k in ("dataset", "split",
                                                               "split_checksum",
                                                               "features_sha256")}}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=d.device, weights_only=False)
        if state.get("run_key") != run_key:
            changed = sorted(k for k in run_key
                             if (state.get("run_key") or {}).get(k) != run_key[k])
            if not restart_on_change:
                raise TrainError(f"{ckpt_path} was written with other settings ({', '.join(changed)}"
                                 f" differ): use another run folder or delete it")
            log.warning("%s: settings changed (%s): starting this run over", run_dir,
                        ", ".join(changed))
            for name in (CHECKPOINT, "log.jsonl", "loss.png", "final.pt", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)
    if ckpt_path.exists():
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, step_in_epoch, global_step = (state["epoch"], state["step_in_epoch"],
                                             state["global_step"])
        _set_rng_state(state["rng"])
        if d.main:
            _trim_log(run_dir / "log.jsonl", global_step)
        log.info("resuming %s at epoch %d step %d", run_dir, epoch, step_in_epoch)
    elif init_from is not None:
        state = torch.load(init_from, map_location=d.device, weights_only=False)
        model.load_state_dict(state["model"] if "model" in state else state)
        log.info("initialised from %s", init_from)
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    autocast = _autocast(p.precision, d.device)
    scaler = torch.amp.GradScaler(enabled=autocast == torch.float16)
    per_rank = items_per_batch // d.world
    if per_rank * d.world != items_per_batch:
        raise TrainError(f"{items_per_batch} items per batch do not split over {d.world} ranks")
    n_batches = len(epoch_batches(len(dataset), items_per_batch, p.seed, 0))
    if not n_batches:
        raise TrainError(f"{len(dataset)} items cannot fill one batch of {items_per_batch}")
    log_file = open(run_dir / "log.jsonl", "a") if d.main else None
    ran = 0
    bar = tqdm(total=epochs * n_batches, initial=epoch * n_batches + step_in_epoch,
               desc=run_dir.name, unit="step", disable=not d.main)
    # a resumed run with nothing left to do still reports its last loss
    last: dict[str, Any] = (read_log(run_dir / "log.jsonl") or [{}])[-1] if global_step else {}

    def checkpoint(e: int, s: int) -> None:
        if d.main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": e,
                "step_in_epoch": s, "global_step": global_step, "rng": _rng_state(),
                "run_key": run_key, "config": to_dict(p.model), "params": to_dict(p),
                "bn_frozen": bn_frozen,
                "provenance": provenance or {}})

    try:
        while epoch < epochs:
            for g in opt.param_groups:                   # lr * decay^epoch
                g["lr"] = lr * lr_decay ** epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            batches = epoch_batches(len(dataset), items_per_batch, p.seed, epoch)
            mine = [b[d.rank * per_rank:(d.rank + 1) * per_rank] for b in batches]
            loader = DataLoader(dataset, batch_sampler=mine[step_in_epoch:],
                                num_workers=p.workers, collate_fn=collate,
                                pin_memory=d.device.type == "cuda")
            net.train()
            if bn_frozen:   # the reference fine-tunes in eval mode: frozen BN, masked pooling
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            model.masked_pooling = bn_frozen
            t_wait = time.perf_counter()
            for batch in loader:
                t0 = time.perf_counter()
                wait = t0 - t_wait
                spec, nframes, video = (batch["spec"].to(d.device, non_blocking=True),
                                        batch["nframes"].to(d.device),
                                        batch["video"].to(d.device, non_blocking=True))
                with torch.autocast(d.device.type, autocast, enabled=autocast is not None):
                    a, v = net(spec, nframes, video)
                    a, v = _gather(a.float(), d), _gather(v.float(), d)
                    loss = loss_fn(a, v)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step_in_epoch += 1
                global_step += 1
                ran += 1
                t_wait = time.perf_counter()
                step_s = t_wait - t0 + wait
                last = {"epoch": epoch, "step": global_step, "loss": float(loss.detach()),
                        "lr": opt.param_groups[0]["lr"], "clips": int(spec.shape[0]) * d.world,
                        "clips_per_s": spec.shape[0] * d.world / step_s,
                        "data_wait": wait / step_s}
                if log_file is not None:
                    log_file.write(json.dumps(last) + "\n")
                    log_file.flush()
                if on_step:
                    on_step(last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", refresh=False)
                if global_step % p.checkpoint_every == 0:
                    checkpoint(epoch, step_in_epoch)
                if stop_after_steps is not None and ran >= stop_after_steps:
                    checkpoint(epoch, step_in_epoch)
                    return {"stopped_at": global_step, **last}
            epoch, step_in_epoch = epoch + 1, 0
            checkpoint(epoch, 0)
            if d.main:
                plot_loss(run_dir / "log.jsonl", run_dir / "loss.png")
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if d.main:
        save_checkpoint(run_dir / "final.pt", {"model": model.state_dict(),
                                                "config": to_dict(p.model),
                                                "params": to_dict(p), "bn_frozen": bn_frozen,
                                                "provenance": provenance or {},
                                                "global_step": global_step})
    return {"steps": global_step, "epochs": epochs, **last}


def read_log(log_path: Path) -> list[dict[str, Any]]:
    """The complete lines of log.jsonl, parsed ([] without the file); a line torn by a kill is
    skipped."""
    if not log_path.is_file():
        return []
    rows = []
    for line in log_path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _trim_log(log_path: Path, global_step: int) -> None:
    """Keeps the log.jsonl lines of the steps the checkpoint holds (atomically): the steps
    logged after it are run and logged again, and a line torn by a kill is dropped."""
    keep = [json.dumps(r) + "\n" for r in read_log(log_path) if r.get("step", 0) <= global_step]
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, log_path)


def _autocast(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def plot_loss(log_path: Path, out: Path) -> None:
    """Loss per step (and its running mean) from log.jsonl -> PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_log(log_path)
    if not rows:
        return
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(out.name + ".part.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


def embed(model: AVLnet, loader: DataLoader, device: torch.device
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation-mode embeddings of every item -> (audio (n, D), video (n, D)) on the CPU."""
    model.eval()
    model.masked_pooling = None
    outs_a, outs_v = [], []
    with torch.inference_mode():
        for b in loader:
            a, v = model(b["spec"].to(device), b["nframes"].to(device), b["video"].to(device))
            outs_a.append(a.float().cpu())
            outs_v.append(v.float().cpu())
    return torch.cat(outs_a), torch.cat(outs_v)

