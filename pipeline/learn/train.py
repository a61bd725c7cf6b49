"""The AVLnet training loop: Adam with per-epoch decay, autocast on CUDA, DDP under torchrun,
atomic self-describing checkpoints, and a resume that continues exactly where a run stopped.

Determinism: batch composition depends only on (seed, epoch) and every item only on (seed,
epoch, index) (pipeline/learn/avdata.py), so a run resumed from a mid-epoch checkpoint sees the same
batches as an uninterrupted one; with the optimizer state restored it reaches the same
parameters (bit for bit on the CPU).

Checkpoints are never trusted unchecked and never deleted: every file is written under a
temporary name, its sha256 recorded in the run folder's checksums.json before the rename, and
the previous checkpoint kept as checkpoint.prev.pt. On resume a checkpoint whose bytes do not
match the record (or that does not load) is moved to stale/ and the run resumes from the
previous good one, or starts over with a warning when none is good."""
from __future__ import annotations

import hashlib
import io
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
from models.avlnet_text import AVLnetTextFused, AVLnetTextTri, MMVFac
from models.losses import LOSSES
from models.objectives import FusedObjective, MMVObjective, PairObjective, TriFinetune, \
    TriPretrain
from pipeline.learn.avdata import checked_batches
from pipeline.config import ModelParams, TrainParams, to_dict
from pipeline.safety import UserError, check_free_space, move_aside
from pipeline.data.sources import sha256_file

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"          # the latest (model, optimizer, RNG, position in the run)
PREVIOUS = "checkpoint.prev.pt"       # the one before it: the fall-back when the latest is bad
FINAL = "final.pt"                    # the trained model (what finetune and evaluate read)
CHECKSUMS = "checksums.json"          # {"files": {name: {sha256, bytes, global_step}}, "retired"}
# the settings that shape the state_dict: a checkpoint differing in one cannot be loaded
ARCHITECTURE = ("arch", "embed_dim", "head", "audio_widths", "video_norm")
DEFAULT_VISUAL = "2d3d"   # the video streams of a config or checkpoint without `visual` (older)


class TrainError(UserError):
    """A run that cannot start: incompatible checkpoint, no data, a bad device."""


class CheckpointError(TrainError):
    """A checkpoint whose bytes differ from its recorded sha256, or that does not load."""


def build_model(m: ModelParams) -> nn.Module:
    """The model of `m.arch`: each declares `inputs` (batch keys), `outputs` (embedding names)."""
    widths = tuple(m.audio_widths)
    if m.arch == "avlnet_text_tri":
        return AVLnetTextTri(m.embed_dim, widths, m.video_norm, m.word_dim, m.visual)
    if m.arch == "avlnet_text_fused":
        return AVLnetTextFused(m.embed_dim, widths, m.video_norm, m.word_dim, m.visual)
    if m.arch == "mmv_fac":
        return MMVFac(m.embed_dim, widths, m.video_norm, m.word_dim, m.mmv_va_dim,
                      m.mmv_vat_dim, m.visual)
    return AVLnet(m.embed_dim, m.head, widths, m.video_norm, m.visual)


# ModelParams fields only the text archs use: left out of an AVLnet run's resume key, so runs
# started before these fields existed still resume
TEXT_ONLY = ("arch", "word_dim", "mmv_va_dim", "mmv_vat_dim", "mmv_temperature", "mmv_lambda_va",
             "mmv_lambda_vt")


def model_key(m: ModelParams) -> dict:
    """The model settings a run's resume key holds (visual only when not the default 2d3d, so
    runs started before it existed still resume)."""
    d = to_dict(m)
    if d.get("visual") == DEFAULT_VISUAL:
        del d["visual"]
    return {k: v for k, v in d.items() if m.arch != "avlnet" or k not in TEXT_ONLY}


def visual_in(config: dict | None) -> str:
    """The `visual` of a recorded model config (2d3d when it has none: made before the
    setting existed)."""
    return (config or {}).get("visual") or DEFAULT_VISUAL


def _check_audio_video(state: dict, path: Path) -> None:
    """TrainError unless `state` is an audio-video AVLnet (the low-resource setting's start)."""
    arch = (state.get("config") or {}).get("arch", "avlnet")
    sd = state["model"] if "model" in state else state
    if arch != "avlnet" or any(k.startswith(("text_", "GU_text", "GU_audio_text"))
                               for k in sd):
        raise TrainError(f"{path}: not an audio-video AVLnet (it has a text branch); "
                         "text.finetune.init audio_video starts from stage train's model "
                         "(data/models/pretrain/final.pt)")


def _check_visual(state: dict, path: Path, visual: str) -> None:
    """TrainError unless the checkpoint `state` takes the video streams `visual` (a partial
    init would otherwise leave the video branch silently fresh)."""
    theirs = visual_in(state.get("config"))
    if state.get("config") and theirs != visual:
        raise TrainError(f"{path}: a model with visual {theirs!r} (here {visual!r}); use the "
                         f"train.model settings it was trained with (visual: {theirs}), or "
                         "retrain it")


def build_objective(m: ModelParams, finetuning: bool = False, window_s: float = 10.0
                    ) -> nn.Module:
    """Embeddings -> named loss terms (models/objectives.py) for `m.arch` in pretraining or
    fine-tuning; window_s: how close two clips' starts are to count as MIL-NCE positives."""
    if m.arch == "avlnet_text_tri":
        return TriFinetune(m.mms_margin) if finetuning else TriPretrain(m.mms_margin)
    if m.arch == "avlnet_text_fused":
        return FusedObjective(m.mms_margin)
    if m.arch == "mmv_fac":
        return MMVObjective(m.mmv_temperature, m.mmv_lambda_va, m.mmv_lambda_vt, window_s)
    return PairObjective(build_loss(m), window_s)


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


def read_checksums(run_dir: Path) -> dict | None:
    """The run folder's checksums.json, or None when there is none (or it is unreadable: then
    the checkpoints are checked by loading them, with a warning)."""
    path = Path(run_dir) / CHECKSUMS
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        if not isinstance(rec, dict) or not isinstance(rec.get("files"), dict):
            raise ValueError("not a checksum record")
        return rec
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); checking the checkpoints by loading them", path, e)
        return None


def _known(rec: dict | None) -> set[str] | None:
    """Every sha256 the record vouches for (names move when checkpoints rotate, so a kill
    between writing the record and the renames leaves each good file under a known hash)."""
    if rec is None:
        return None
    entries = list(rec["files"].values()) + list(rec.get("retired", []))
    return {e.get("sha256") for e in entries if isinstance(e, dict)}


def _write_checksums(run_dir: Path, rec: dict) -> None:
    """checksums.json atomically and durably (it must reach the disk before the renames)."""
    path = run_dir / CHECKSUMS
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(rec, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(tmp)) from None
    os.replace(tmp, path)


def load_checkpoint(path: Path, known: set[str] | None | bool = True
                    ) -> tuple[dict, str]:
    """A checkpoint checked against its recorded sha256, loaded on the CPU -> (state, sha256).

    known: the hashes to accept; True reads them from checksums.json beside the file; None
    (no record: a checkpoint from before checksums, or copied alone) accepts any file that
    loads. CheckpointError (one line naming the file) when the bytes differ or it does not
    load."""
    path = Path(path)
    if known is True:
        known = _known(read_checksums(path.parent))
    sha = sha256_file(path)
    if known is not None and sha not in known:
        raise CheckpointError(f"{path}: sha256 {sha[:16]}... differs from the one recorded in "
                              f"{path.parent / CHECKSUMS} (truncated or overwritten)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError("no model state in it")
    except Exception as e:  # noqa: BLE001 - any file that does not load is a bad checkpoint
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: "
                              f"{first})") from None
    return state, sha


def load_model_state(model: nn.Module, state: dict, path: Path, config: dict | None = None,
                     error: type[Exception] = TrainError) -> None:
    """Loads state['model'] (or a bare state_dict) into `model`, built from `config` (the
    train.model settings); a checkpoint of another architecture is `error` in one line naming
    the file and the settings (or state_dict keys) that differ."""
    theirs = state.get("config") or {}
    ours = config or {}
    differ = [f"{k} {theirs[k]!r} (here {ours[k]!r})" for k in ARCHITECTURE
              if k in theirs and k in ours and theirs[k] != ours[k]]
    if theirs and ours and visual_in(theirs) != visual_in(ours):
        differ.append(f"visual {visual_in(theirs)!r} (here {visual_in(ours)!r})")
    sd = state["model"] if "model" in state else state
    if not differ:
        try:
            model.load_state_dict(sd)
            return
        except RuntimeError:
            differ = [state_dict_mismatch(model, sd)]
    raise error(f"{path}: a checkpoint of another model ({'; '.join(differ)}); use the "
                "train.model settings it was trained with, or retrain it")


def state_dict_mismatch(model: nn.Module, sd: dict, limit: int = 4) -> str:
    """Why `sd` does not load strictly into `model`, in one line: the first `limit` keys
    missing, unexpected or of another shape."""
    mine = model.state_dict()
    problems = [f"missing {k!r}" for k in mine if k not in sd]
    problems += [f"unexpected {k!r}" for k in sd if k not in mine]
    problems += [f"{k!r} has shape {tuple(getattr(sd[k], 'shape', ()))}, expected "
                 f"{tuple(mine[k].shape)}" for k in mine
                 if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(mine[k].shape)]
    more = f"; ... {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit] or ["a value of another type"]) + more


class RunFiles:
    """The checkpoints of a run folder: written atomically with their sha256 recorded first,
    the previous one kept as a fall-back, bad ones moved aside (pipeline.safety.move_aside)."""

    def __init__(self, run_dir: Path, min_free_gb: float):
        self.dir, self.min_free_gb = Path(run_dir), min_free_gb
        rec = read_checksums(self.dir)
        self.files: dict[str, dict] = dict(rec["files"]) if rec else {}

    def check_space(self, need_bytes: int) -> None:
        check_free_space(self.dir, self.min_free_gb, "train.min_free_gb", need_bytes=need_bytes)

    def resume(self) -> dict | None:
        """The newest good checkpoint's state (checkpoint.pt, else checkpoint.prev.pt), None
        when there is none. Bad ones are moved to stale/; the record is made to match the files
        that stay."""
        rec = read_checksums(self.dir)
        known = _known(rec)
        chosen, bad, good = None, [], {}
        for name in (CHECKPOINT, PREVIOUS):
            path = self.dir / name
            if not path.is_file():
                continue
            try:
                if chosen is None:
                    chosen, sha = load_checkpoint(path, known)
                    step = chosen.get("global_step")
                else:          # the fall-back is only hashed: loading it would cost memory
                    sha = sha256_file(path)
                    if known is not None and sha not in known:
                        raise CheckpointError(f"{path}: sha256 differs from the one recorded "
                                              f"in {self.dir / CHECKSUMS}")
                    step = next((e.get("global_step") for e in rec["files"].values()
                                 if isinstance(e, dict) and e.get("sha256") == sha),
                                None) if rec else None
            except CheckpointError as e:
                log.warning("%s", e)
                bad.append(path)
                continue
            good[name] = {"sha256": sha, "bytes": path.stat().st_size, "global_step": step}
        if bad:
            fresh = chosen is None
            if fresh and (self.dir / "log.jsonl").is_file():
                bad.append(self.dir / "log.jsonl")      # its steps will be logged anew
            move_aside(bad, self.dir, "checkpoint(s) whose bytes differ from checksums.json "
                       "or that do not load (truncated, overwritten)")
            if fresh:
                log.warning("%s: no good checkpoint left: starting this run over", self.dir)
            elif PREVIOUS in good and CHECKPOINT not in good:
                log.warning("%s: resuming from the previous checkpoint %s", self.dir, PREVIOUS)
        files = {**good, **({FINAL: self.files[FINAL]} if FINAL in self.files
                            and (self.dir / FINAL).is_file() else {})}
        if (rec is None and files) or (rec is not None and files != rec["files"]):
            self._record(files, [])
        self.files = files
        return chosen

    def move_run_aside(self, why: str) -> None:
        """Moves every file of the run (checkpoints, log, plot, final model, summary, record)
        to stale/: the run starts over."""
        names = (CHECKPOINT, PREVIOUS, FINAL, CHECKSUMS, "log.jsonl", "loss.png", "loss.csv",
                 "summary.json")
        move_aside([self.dir / n for n in names if (self.dir / n).is_file()], self.dir, why)
        self.files = {}

    def save(self, name: str, state: dict) -> None:
        """Writes `state` as `name` (CHECKPOINT rotates the current one to PREVIOUS): bytes to
        name.part, fsync, record its sha256, then rename. A free-space shortfall stops before
        anything is touched (DiskSpaceError)."""
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getbuffer()
        self.check_space(len(data))
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                 "global_step": state.get("global_step")}
        path = self.dir / name
        tmp = path.with_name(name + ".part")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)                  # ours and incomplete
            raise OSError(e.errno, e.strerror, str(tmp)) from None
        files, retired = dict(self.files), []
        rotate = name == CHECKPOINT and path.is_file() and CHECKPOINT in files
        if rotate:
            retired = [files[PREVIOUS]] if PREVIOUS in files else []
            files[PREVIOUS] = files[CHECKPOINT]
        files[name] = entry
        self._record(files, retired)
        if rotate:
            os.replace(path, self.dir / PREVIOUS)
        os.replace(tmp, path)
        _fsync_dir(self.dir)
        self.files = files

    def _record(self, files: dict, retired: list) -> None:
        _write_checksums(self.dir, {"files": files, "retired": retired})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
          restart_on_change: bool = False, finetuning: bool = False,
          init_partial: bool = False,
          on_step: Callable[[dict], None] | None = None,
          timer: Callable[[str], None] | None = None) -> dict:
    """Trains (or resumes) the run in `run_dir`; -> summary. Writes checkpoint.pt (every
    p.checkpoint_every steps and at each epoch end), log.jsonl (one line per step: loss, lr,
    clips/s, data-wait fraction), loss.png and loss.csv (step, epoch, loss, lr: dvc plots) at
    each epoch end, and final.pt at the end.

    items_per_batch: dataset items per global batch (videos for pretraining, clips for
    fine-tuning). bn_frozen: BatchNorm in evaluation mode (frozen statistics, eval pooling),
    the reference's fine-tuning behaviour. finetuning: the arch's fine-tuning objective (Tri:
    MMS(T (A+V))) instead of its pretraining one. init_partial: init_from may be another arch
    (the audio-video AVLnet under a text model: the low-resource setting); the tensors whose
    names and shapes match are copied, the rest stay freshly initialised (both listed in the
    checkpoints' provenance). stop_after_steps: stop (after checkpointing) once
    that many steps ran in this call (tests: a run cut short). A checkpoint in `run_dir` is
    resumed when it was made with the same settings (`epochs` may grow); with other settings
    the run starts over when restart_on_change (the old run's files moved to stale/), else
    TrainError. init_from is checked (sha256, architecture) before anything is moved; the free
    space under run_dir must stay above p.min_free_gb with a checkpoint more (DiskSpaceError,
    the last good checkpoint kept). timer: called with each phase of a step as it ends
    ('data', 'h2d', 'forward', 'loss', 'backward', 'optimizer'; benchmarks/train.py times
    them, synchronising the device)."""
    d = setup_distributed(p.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if d.main and not os.access(run_dir, os.W_OK):
        raise TrainError(f"{run_dir}: the run folder is not writable (read-only file system or "
                         "permissions); point --out at a writable folder")
    if p.threads:   # float rounding depends on the thread count (README: reproducibility)
        torch.set_num_threads(p.threads)
    torch.manual_seed(p.seed)
    np.random.seed(p.seed)
    random.seed(p.seed)
    model = build_model(p.model).to(d.device)
    objective = build_objective(p.model, finetuning, float(
        p.window_s if p.model.arch == "avlnet" else p.caption_min_s))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.0)
    epoch, step_in_epoch, global_step = 0, 0, 0
    init_state, init_sha = None, None
    if init_from is not None:
        # checked (and shown to fit this model) before anything in run_dir is moved aside
        try:
            init_state, init_sha = load_checkpoint(init_from)
        except FileNotFoundError:
            raise TrainError(f"{init_from}: not found") from None
        if init_partial:      # recorded in the caller's provenance dict (summary, checkpoints)
            _check_audio_video(init_state, init_from)
            _check_visual(init_state, init_from, p.model.visual)
            provenance = provenance if provenance is not None else {}
            provenance["init_partial"] = load_matching(model, init_state, init_from)
        else:
            load_model_state(model, init_state, init_from, to_dict(p.model))
    run_key = {"model": model_key(p.model), "seed": p.seed, "precision": p.precision,
               "items_per_batch": items_per_batch, "lr": lr, "lr_decay": lr_decay,
               "bn_frozen": bn_frozen, "init_sha256": init_sha,
               "dataset_items": len(dataset),
               # what the data is, not only how much: a run on changed features starts over
               "data": {k: (provenance or {}).get(k) for k in ("dataset", "split",
                                                               "split_checksum",
                                                               "features_sha256")}}
    # a text run also rests on its captions, word vectors and clip settings (an AV run's key
    # stays as it was before the text archs existed: its checkpoints resume)
    text = {k: (provenance or {})[k] for k in ("captions", "word_vectors", "max_words")
            if k in (provenance or {})}
    if p.model.arch != "avlnet" and not finetuning:
        text.update(caption_min_s=p.caption_min_s, caption_frames=p.caption_frames,
                    clips_per_video=p.clips_per_video)
    if text:
        run_key["text"] = text
    if init_partial:
        run_key["init_partial"] = True
    # a pretraining run on a share of the videos (train.fraction < 1) rests on which videos
    # (keyed only then: full runs keep their key and resume)
    if (provenance or {}).get("fraction", 1.0) < 1.0:
        run_key["fraction"] = {k: provenance[k] for k in ("fraction", "video_ids_sha256")}
    files = RunFiles(run_dir, p.min_free_gb)
    state = files.resume() if d.main else None
    if d.world > 1:
        dist.barrier()                      # rank 0 has moved bad checkpoints aside
        if not d.main:
            state = next((load_checkpoint(run_dir / n)[0] for n in (CHECKPOINT, PREVIOUS)
                          if (run_dir / n).is_file()), None)
        dist.barrier()                      # every rank has read it before rank 0 moves any
    if state is not None and state.get("run_key") != run_key:
        old = state.get("run_key") or {}
        changed = sorted(k for k in {**old, **run_key} if old.get(k) != run_key.get(k))
        if not restart_on_change:
            raise TrainError(f"{run_dir / CHECKPOINT} was written with other settings "
                             f"({', '.join(changed)} differ): use another run folder or move "
                             "this one away")
        log.warning("%s: settings changed (%s): starting this run over", run_dir,
                    ", ".join(changed))
        if d.main:
            files.move_run_aside(f"settings changed ({', '.join(changed)}): the run started "
                                 "over")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, step_in_epoch, global_step = (state["epoch"], state["step_in_epoch"],
                                             state["global_step"])
        _set_rng_state(state["rng"])
        if d.main:
            _trim_log(run_dir / "log.jsonl", global_step)
        log.info("resuming %s at epoch %d step %d", run_dir, epoch, step_in_epoch)
    elif init_state is not None:
        log.info("initialised from %s", init_from)
    del init_state
    if d.main:
        # a checkpoint must fit before the first step is spent (model, optimizer: ~3x weights)
        files.check_space((files.files.get(CHECKPOINT) or {}).get("bytes")
                          or 3 * sum(t.numel() * t.element_size()
                                     for t in model.state_dict().values()))
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
    mark = timer or _no_mark
    ran = 0
    bar = tqdm(total=epochs * n_batches, initial=epoch * n_batches + step_in_epoch,
               desc=run_dir.name, unit="step", disable=not d.main)
    # a resumed run with nothing left to do still reports its last loss
    last: dict[str, Any] = (read_log(run_dir / "log.jsonl") or [{}])[-1] if global_step else {}

    def checkpoint(e: int, s: int) -> None:
        if d.main:
            files.save(CHECKPOINT, {
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
            for batch in checked_batches(loader):
                mark("data")
                t0 = time.perf_counter()
                wait = t0 - t_wait
                inputs = {k: batch[k].to(d.device, non_blocking=True) for k in model.inputs}
                meta = {k: _gather(batch[k].to(d.device), d) for k in ("video_index", "start_s")
                        if k in batch and objective.uses_meta}
                mark("h2d")
                with torch.autocast(d.device.type, autocast, enabled=autocast is not None):
                    out = net(**inputs)
                    mark("forward")
                    embs = {k: _gather(e.float(), d) for k, e in zip(model.outputs, out)}
                    terms = objective(embs, meta)
                    loss = sum(terms.values())
                    mark("loss")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                mark("backward")
                scaler.step(opt)
                scaler.update()
                mark("optimizer")
                step_in_epoch += 1
                global_step += 1
                ran += 1
                t_wait = time.perf_counter()
                step_s = t_wait - t0 + wait
                n_clips = int(inputs["spec"].shape[0])
                last = {"epoch": epoch, "step": global_step, "loss": float(loss.detach()),
                        "lr": opt.param_groups[0]["lr"], "clips": n_clips * d.world,
                        "clips_per_s": n_clips * d.world / step_s,
                        "data_wait": wait / step_s}
                if len(terms) > 1:          # each named term too (style: log every term)
                    last.update({f"loss_{k}": float(t.detach()) for k, t in terms.items()})
                if log_file is not None:
                    log_file.write(json.dumps(last) + "\n")
                    log_file.flush()
                if on_step:
                    on_step(last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", refresh=False)
                # (not at the epoch's last step: the epoch-end checkpoint follows at once)
                if global_step % p.checkpoint_every == 0 and step_in_epoch < len(batches):
                    checkpoint(epoch, step_in_epoch)
                if stop_after_steps is not None and ran >= stop_after_steps:
                    checkpoint(epoch, step_in_epoch)
                    return {"stopped_at": global_step, **last}
            epoch, step_in_epoch = epoch + 1, 0
            checkpoint(epoch, 0)
            if d.main:
                plot_loss(run_dir / "log.jsonl", run_dir / "loss.png")
                write_loss_csv(run_dir / "log.jsonl", run_dir / "loss.csv")
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        # a failed write() names no file (a full disk under log.jsonl, say): name the folder
        raise OSError(e.errno, e.strerror, str(run_dir)) from None
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if d.main:
        # again at the end: a run resumed after its last epoch (or older, without loss.csv)
        # still leaves both, derived from log.jsonl
        plot_loss(run_dir / "log.jsonl", run_dir / "loss.png")
        write_loss_csv(run_dir / "log.jsonl", run_dir / "loss.csv")
        files.save(FINAL, {"model": model.state_dict(), "config": to_dict(p.model),
                           "params": to_dict(p), "bn_frozen": bn_frozen,
                           "provenance": provenance or {}, "global_step": global_step})
    return {"steps": global_step, "epochs": epochs, **last}


def _no_mark(phase: str) -> None:
    """train()'s timer when none is given."""


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


def write_loss_csv(log_path: Path, out: Path) -> None:
    """Loss per step from log.jsonl -> CSV (step, epoch, loss, lr), atomically: the data of
    dvc.yaml's loss plot (`dvc plots show`)."""
    rows = read_log(log_path)
    lines = ["step,epoch,loss,lr"] + [f"{r['step']},{r['epoch']},{r['loss']!r},{r['lr']!r}"
                                      for r in rows]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)


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


def embed(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, torch.Tensor]:
    """Evaluation-mode embeddings of every item -> name -> (n, D) on the CPU (AVLnet: audio,
    video; the text models' `embeddings` add theirs)."""
    model.eval()
    model.masked_pooling = None
    outs: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for b in checked_batches(loader):
            e = model.embeddings(**{k: b[k].to(device) for k in model.inputs})
            for k, x in e.items():
                outs.setdefault(k, []).append(x.float().cpu())
    return {k: torch.cat(x) for k, x in outs.items()}


def load_matching(model: nn.Module, state: dict, path: Path) -> dict:
    """Copies the tensors of state['model'] (or a bare state_dict) whose name and shape match
    `model`'s; -> {"copied": n, "fresh": [names left as initialised], "ignored": [names of the
    file unused]}. TrainError when nothing matches (not a model of this family)."""
    sd = state["model"] if "model" in state else state
    mine = model.state_dict()
    take = {k: v for k, v in sd.items() if k in mine and tuple(v.shape) == tuple(mine[k].shape)}
    if not take:
        raise TrainError(f"{path}: no tensor fits this model ({state_dict_mismatch(model, sd)})")
    model.load_state_dict(take, strict=False)
    fresh = sorted(k for k in mine if k not in take)
    log.info("initialised %d tensors from %s; %d fresh (%s)", len(take), path, len(fresh),
             ", ".join(sorted({k.split(".")[0] for k in fresh})) or "none")
    return {"copied": len(take), "fresh": fresh,
            "ignored": sorted(k for k in sd if k not in take)}

