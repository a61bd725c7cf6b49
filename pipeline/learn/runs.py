"""Pretraining and fine-tuning runs: a feature store and a manifest -> a trained AVLnet
(pipeline/learn/train.py does the loop). Each run records what it was trained on in its checkpoints:
dataset, split checksum, feature recipe hash, clips used and missing."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch

from pipeline.learn.avdata import AnnotatedClips, ClipRef, PretrainVideos, collate_videos
from models.avlnet import STREAM_DIM, VIDEO_DIM
from models.resdavenet import N_MELS
from pipeline.config import FinetuneParams, ModelParams, ParamsError, TrainParams, from_dict
from pipeline.data.manifest import read_clips, read_videos, write_json_atomic
from pipeline.safety import writer_lock
from pipeline.learn.sampling import clip_frames_of, train_split
from pipeline.features.store import FeatureStore, recipe_sha256
from pipeline.data.sources import sha256_file
from pipeline.learn.train import ARCHITECTURE, CHECKSUMS, CheckpointError, TrainError, \
    build_model, load_checkpoint, load_model_state, state_dict_mismatch, train

if TYPE_CHECKING:
    from pipeline.text.words import WordVectors

log = logging.getLogger(__name__)


def provenance(dataset: str, split: str, store: FeatureStore, manifest_dir: Path,
               **extra) -> dict:
    """What a model was trained or evaluated on: dataset, split, its clip checksum, the
    feature recipe hash."""
    path = manifest_dir / "manifest.json"
    try:
        m = json.loads(path.read_text())
        if not isinstance(m, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise TrainError(f"{path}: not found; run the manifest stage for {dataset} "
                         "first") from None
    except (OSError, ValueError) as e:
        raise TrainError(f"{path}: unreadable ({e}); run the manifest stage for {dataset} "
                         "again") from None
    checksum = m.get("splits", {}).get(split, {}).get("clip_checksum")
    return {"dataset": dataset, "split": split, "split_checksum": checksum,
            "recipe_sha256": recipe_sha256(store.recipe) if store.recipe else None, **extra}


def verify_features(store: FeatureStore, video_ids: Iterable[str]) -> None:
    """Checks the shards of `video_ids` once, here, before the run folder is touched and
    before loader workers fork (StoreError naming the first bad shard)."""
    n = store.verify_shards(video_ids)
    log.info("%s: %d shard(s) checked (verify: %s)", store.root, n, store.verify)


def load_clips(manifest_dir: Path, split: str) -> list[ClipRef]:
    rows = read_clips(manifest_dir / "clips.parquet").to_pylist()
    return [ClipRef(r["clip_id"], r["video_id"], r["start_s"], r["end_s"]) for r in rows
            if r["split"] == split]


def train_videos(dataset: str, store: FeatureStore, manifest_dir: Path
                 ) -> tuple[str | None, list[str], list[str]]:
    """-> (train split, its videos listed in the manifest, those with usable features)."""
    split = train_split(dataset, manifest_dir)
    listed = [r["video_id"] for r in read_videos(manifest_dir / "videos.parquet").to_pylist()
              if split is None or split in r["split"].split(",")]
    usable = set(store.ids())
    ids = [v for v in listed if v in usable]
    log.info("%s: pretraining on %d of %d %s videos (the others have no usable features)",
             dataset, len(ids), len(listed), split)
    return split, listed, ids


def fraction_subset(ids: list[str], fraction: float, seed: int) -> list[str]:
    """The videos pretrained on at train.fraction (the data-scale study, thesis Fig. 5-3): the
    k = round(fraction * n), at least 1, of `ids` ranked first by sha256("<seed>:<video id>"),
    in their order in `ids`. The rank does not depend on the fraction, so a larger fraction
    keeps every video of a smaller one (nested subsets); fraction 1 returns `ids` unchanged."""
    if fraction >= 1.0 or not ids:
        return list(ids)
    k = max(1, round(fraction * len(ids)))
    rank = sorted(ids, key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest())
    keep = set(rank[:k])
    return [v for v in ids if v in keep]


def ids_sha256(ids: Iterable[str]) -> str:
    """sha256 of the sorted ids, one per line: which videos a run was trained on."""
    return hashlib.sha256("".join(f"{v}\n" for v in sorted(ids)).encode()).hexdigest()


def pretrain_subset(dataset: str, usable: list[str], p: TrainParams) -> tuple[list[str], dict]:
    """-> (the videos pretrained on at p.fraction, its provenance record: fraction, videos
    usable, sha256 of the chosen ids)."""
    ids = fraction_subset(usable, p.fraction, p.seed)
    if p.fraction < 1.0:
        log.info("%s: pretraining on %d of %d videos (fraction %g, seed %d)", dataset, len(ids),
                 len(usable), p.fraction, p.seed)
    return ids, {"fraction": p.fraction, "videos_usable": len(usable),
                 "video_ids_sha256": ids_sha256(ids)}


def pretrain(dataset: str, features: Path, manifest_dir: Path, out: Path, p: TrainParams
             ) -> dict:
    """Pretrains on random windows of the train-split videos with features (status ok)."""
    store = FeatureStore(features, verify=p.verify)
    split, listed, usable = train_videos(dataset, store, manifest_dir)
    ids, subset = pretrain_subset(dataset, usable, p)
    if len(ids) < p.videos_per_batch:
        share = f" (train.fraction {p.fraction:g} of {len(usable)})" if p.fraction < 1 else ""
        raise TrainError(f"{len(ids)} usable {dataset} videos{share} cannot fill one batch of "
                         f"train.videos_per_batch = {p.videos_per_batch}")
    verify_features(store, ids)
    prov = provenance(dataset, split, store, manifest_dir, videos=len(ids),
                      videos_missing=len(listed) - len(usable), **subset,
                      features_sha256=store.digest(ids))
    ds = PretrainVideos(store, ids, p.clips_per_video, p.seed, window_frames=100 * p.window_s,
                        visual=p.model.visual)
    with writer_lock(out, f"train ({dataset})"):    # one run per run folder at a time
        summary = train(out, ds, collate_videos, p, items_per_batch=p.videos_per_batch,
                        epochs=p.epochs, lr=p.lr, lr_decay=p.lr_decay, provenance=prov,
                        restart_on_change=True)
        write_json_atomic({**summary, "provenance": prov}, out / "summary.json")
    return summary


def pretrain_text(dataset: str, features: Path, manifest_dir: Path, captions: Path,
                  words: "WordVectors", out: Path, p: TrainParams, max_words: int) -> dict:
    """Pretrains a text arch (p.model.arch) on caption clips of the train-split videos: ASR
    captions (the caption store in `captions`) merged to >= p.caption_min_s, audio
    p.caption_frames frames (pipeline/learn/textdata.py)."""
    from pipeline.learn.textdata import CaptionClips
    from pipeline.text.captions import CaptionStore
    store = FeatureStore(features, verify=p.verify)
    split, listed, usable = train_videos(dataset, store, manifest_dir)
    ids, subset = pretrain_subset(dataset, usable, p)
    caps = CaptionStore(captions)
    ds = CaptionClips(store, caps, words, ids, p.clips_per_video, p.caption_min_s,
                      p.caption_frames, p.seed, max_words, visual=p.model.visual)
    if len(ds) < p.videos_per_batch:
        raise TrainError(f"{len(ds)} {dataset} videos with features and captions cannot fill "
                         f"one batch of text.train.videos_per_batch = {p.videos_per_batch}")
    verify_features(store, ds.ids)
    prov = provenance(dataset, split, store, manifest_dir, videos=len(ds.ids),
                      # (the videos left out by train.fraction are not missing)
                      videos_missing=len(listed) - len(ds.ids) - (len(usable) - len(ids)),
                      videos_skipped=ds.skipped, **subset,
                      max_words=max_words, features_sha256=store.digest(ds.ids),
                      captions=_caption_source(caps), word_vectors=words.identity())
    with writer_lock(out, f"train_text ({dataset})"):
        summary = train(out, ds, collate_videos, p, items_per_batch=p.videos_per_batch,
                        epochs=p.epochs, lr=p.lr, lr_decay=p.lr_decay, provenance=prov,
                        restart_on_change=True)
        write_json_atomic({**summary, "provenance": prov}, out / "summary.json")
    return summary


def _caption_source(caps) -> dict:
    """What a caption store holds (its report's source size, video list digest and counts;
    not the path or time, so a regenerated identical store does not restart a run)."""
    r = caps.report
    return {"source_bytes": r["source"]["size"], "videos_digest": r.get("videos_digest"),
            **{k: r["counts"].get(k) for k in ("videos", "captions")},
            "skipped": {k: v for k, v in r.get("skipped", {}).items() if v}}


def caption_texts(manifest_dir: Path, split: str) -> dict[str, list[str]]:
    """clip_id -> its captions: the manifest's `captions` list where the dataset has several
    (MSR-VTT: 20, the official one first), else [text] ([] without text)."""
    rows = read_clips(manifest_dir / "clips.parquet").to_pylist()
    out = {}
    for r in rows:
        if r["split"] != split:
            continue
        many = [c for c in (r.get("captions") or []) if c]
        official = r.get("text")
        out[r["clip_id"]] = ([official] if official else []) + [c for c in many if c != official]
    return out


def collate_clips(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def finetune(dataset: str, features: Path, manifest_dir: Path, init: Path | None, out: Path,
             tp: TrainParams, p: FinetuneParams, words: "WordVectors | None" = None,
             max_words: int = 20) -> dict:
    """Fine-tunes (or trains from scratch with init None) on the annotated train clips.

    With `words` (a text arch in tp.model; stage finetune_text) each clip brings its caption
    (one drawn per epoch where it has several: MSR-VTT's 20) and the arch's fine-tuning
    objective runs (Tri: MMS(T (A+V))); p.init "audio_video" (TextFinetuneParams) starts from
    the audio-video AVLnet with the text branch fresh (the thesis's low-resource setting)."""
    text = words is not None
    stage = f"finetune_text@{dataset}" if text else f"finetune@{dataset}"
    store = FeatureStore(features, verify=tp.verify)
    split = train_split(dataset, manifest_dir)
    if split is None:
        raise TrainError(f"{manifest_dir}: {dataset} has no train split to fine-tune on "
                         "(annotate clips with split `train`)")
    # the video streams are train.model.visual's; an init checkpoint of another visual is
    # refused by train() (load_model_state), as for every other architecture setting
    clips = AnnotatedClips(store, load_clips(manifest_dir, split),
                           p.clip_frames or clip_frames_of(dataset, manifest_dir),
                           visual=tp.model.visual)
    ds = clips
    if text:
        from pipeline.learn.textdata import TextClips
        ds = TextClips(clips, caption_texts(manifest_dir, split), words, train=True,
                       seed=tp.seed + 1, max_words=max_words)
    if init is not None and not init.is_file():
        needed = "train" if not text or p.init == "audio_video" else "train_text"
        raise TrainError(f"{init} not found: run its stage first (`dvc repro {needed}`), or set "
                         f"{'text.' if text else ''}finetune.init: none to train from scratch")
    batch = min(p.batch, len(ds))
    if batch < 2:
        raise TrainError(f"{len(ds)} usable {dataset} {split} clips: too few to fine-tune")
    if batch < p.batch:
        log.warning("%s: %d usable clips, fewer than finetune.batch = %d: batches of %d",
                    dataset, len(ds), p.batch, batch)
    verify_features(store, {c.video_id for c in clips.clips})
    extra = ({"clips_without_text": ds.no_text, "init_kind": p.init,
              "word_vectors": words.identity(), "max_words": max_words} if text else {})
    prov = provenance(dataset, split, store, manifest_dir, clips=len(ds),
                      clips_missing=len(clips.missing), init=str(init) if init else None,
                      bn_mode=p.bn_mode, **extra,
                      features_sha256=store.digest({c.video_id for c in clips.clips}))
    # no per-epoch decay when fine-tuning (avlnet.md); the model config is pretraining's
    tp = dataclasses.replace(tp, seed=tp.seed + 1)
    with writer_lock(out, stage):
        summary = train(out, ds, collate_clips, tp, items_per_batch=batch, epochs=p.epochs,
                        lr=p.lr, lr_decay=1.0, init_from=init,
                        bn_frozen=p.bn_mode == "frozen", provenance=prov,
                        restart_on_change=True, finetuning=text,
                        init_partial=p.init == "audio_video")
        write_json_atomic({**summary, "provenance": prov}, out / "summary.json")
    return summary


# --------------------------------------------------------------------------- model files

CONFIG_RECORDED = "recorded"                          # a checkpoint of ours: its train.model
CONFIG_INFERRED = "inferred from state_dict shapes"   # a bare state_dict (AVLnet_release.pth)
# where a state_dict may sit inside a saved dict (ours: "model"; the reference's AMP
# checkpoint: "net"; common elsewhere: "state_dict", "model_state_dict")
WRAPPERS = ("model", "state_dict", "model_state_dict", "net")
DP_PREFIX = "module."                                 # torch.nn.DataParallel / DDP key prefix
# besides ARCHITECTURE, the settings a state_dict's shapes fix (text archs; visual: recorded
# only when not the default 2d3d, as infer_config gives it only for a 2048-d video input)
SHAPED = ("word_dim", "mmv_va_dim", "mmv_vat_dim", "visual")


@dataclasses.dataclass
class ModelFile:
    """A loaded model file: the AVLnet (on the CPU, weights loaded strictly), the file's
    sha256, the architecture it was built with and where that came from, the checkpoint dict
    (ours: provenance, params; {} for a bare state_dict) and how the state_dict was stored."""

    model: torch.nn.Module
    sha256: str
    config: dict
    config_source: str
    checkpoint: dict
    stored_as: str


def load_model_file(path: Path, error: type[Exception] = TrainError) -> ModelFile:
    """Our checkpoints (final.pt: {"model", "config", ...}, checked against the sha256 recorded
    beside them) and bare state_dicts alike: AVLnet_release.pth, possibly wrapped in
    {"state_dict": ...} (or "model", "model_state_dict", "net") and with DataParallel's
    "module." key prefix. Without a recorded config the architecture is inferred from the
    state_dict's shapes (infer_config). `error` in one line naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found; check the checkpoint's path")
    try:
        if (path.parent / CHECKSUMS).is_file():     # a run folder of ours: its record vouches
            obj, sha = load_checkpoint(path)
        else:                                        # a file on its own: tensors only, no code
            obj, sha = _load_weights_only(path), sha256_file(path)
    except CheckpointError as e:
        raise error(str(e)) from None
    sd, stored_as, config = _unwrap(obj, path, error)
    if config is not None:
        try:
            mp = from_dict(ModelParams, config)
        except (TypeError, ParamsError) as e:
            raise error(f"{path}: its recorded model config is not one of this pipeline "
                        f"({e})") from None
        model = build_model(mp)
        load_model_state(model, {"model": sd}, path, config, error)
        # it loaded strictly, so the shapes agree with the record; the record's values rule
        inferred = infer_config(sd, path, error)
        arch = {**inferred, **{k: getattr(mp, k) for k in (*ARCHITECTURE, *SHAPED)
                               if k in ARCHITECTURE or k in inferred}}
        return ModelFile(model, sha, arch, CONFIG_RECORDED, obj, stored_as)
    arch = infer_config(sd, path, error)
    if "visual" in arch:
        log.info("%s: a %d-d video input: taken as visual %s (ResNet-152 features only)", path,
                 arch["video_dim"], arch["visual"])
    model = build_model(ModelParams(**{k: arch[k] for k in (*ARCHITECTURE, *SHAPED)
                                       if k in arch}))
    _load_strict(model, sd, path, arch, error)
    return ModelFile(model, sha, arch, CONFIG_INFERRED, {}, stored_as)


def _load_weights_only(path: Path) -> dict:
    """torch.load restricted to tensors and plain containers (a file from elsewhere must not
    run code); CheckpointError in one line when it does not load."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any file that does not load is a bad checkpoint
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: "
                              f"{first})") from None


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _unwrap(obj, path: Path, error: type[Exception]) -> tuple[dict, str, dict | None]:
    """-> (state_dict with DataParallel's prefix removed, how it was stored, recorded config or
    None)."""
    if not isinstance(obj, dict):
        raise error(f"{path}: holds a {type(obj).__name__}, not a state_dict or a checkpoint")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else None
    sd, stored_as = obj, "bare state_dict"
    for key in WRAPPERS:
        if _is_state_dict(obj.get(key)):
            sd, stored_as = obj[key], f"state_dict under {key!r}"
            break
    if not _is_state_dict(sd):
        bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
        raise error(f"{path}: not a state_dict (entry {bad!r} is not a tensor) and no "
                    f"state_dict under {', '.join(repr(k) for k in WRAPPERS)}")
    if all(k.startswith(DP_PREFIX) for k in sd):
        sd = {k[len(DP_PREFIX):]: v for k, v in sd.items()}
        stored_as += f", {DP_PREFIX!r} key prefix removed"
    return sd, stored_as, config


def infer_config(sd: dict, path: Path, error: type[Exception] = TrainError) -> dict:
    """The AVLnet architecture that made `sd`, from its shapes (the released checkpoint's names,
    avlnet.md): embed_dim (DAVEnet_projection rows), audio_widths (each stage's first conv),
    head (gating: GU_video.cg.*; mlp: GU_video.fc2.*; linear: GU_video.weight), video_norm
    (batchnorm when video_norm.running_mean is present), the video input size and the mel
    bands (both must be this pipeline's; a 2048-d video input adds visual '2d', none means
    2d3d). `error` in one line naming a key that is missing."""
    def shape(key: str, needed_for: str, dims: int) -> tuple[int, ...]:
        if key not in sd:
            raise error(f"{path}: state_dict has no {key!r} (needed to infer {needed_for}); "
                        "not an AVLnet checkpoint, or one of another architecture")
        s = tuple(sd[key].shape)
        if len(s) != dims:
            raise error(f"{path}: {key!r} has shape {s}, expected {dims} dimensions (needed "
                        f"to infer {needed_for}); not an AVLnet checkpoint")
        return s

    arch, extra = "avlnet", {}
    if "GU_audio_text.fc_audio.weight" in sd:
        arch = "avlnet_text_fused"
        embed_dim = shape("GU_audio_text.fc_audio.weight", "embed_dim", 2)[0]
        extra["word_dim"] = shape("text_pooling_caption.fc.weight", "the word size", 2)[1]
    elif "text_head.weight" in sd:
        arch = "mmv_fac"
        embed_dim = shape("text_pooling.fc.weight", "embed_dim", 2)[0]
        extra = {"word_dim": shape("text_pooling.fc.weight", "the word size", 2)[1],
                 "mmv_va_dim": shape("audio_head.weight", "the fine space", 2)[0],
                 "mmv_vat_dim": shape("text_head.weight", "the coarse space", 2)[0]}
    else:
        embed_dim = shape("DAVEnet_projection.weight", "embed_dim", 2)[0]
        if "text_pooling_caption.fc.weight" in sd:
            arch = "avlnet_text_tri"
            extra["word_dim"] = shape("text_pooling_caption.fc.weight", "the word size", 2)[1]
    widths = [shape(f"DAVEnet.layer{i}.0.conv1.weight", "audio_widths", 4)[0]
              for i in range(1, 5)]
    n_mels = shape("DAVEnet.conv1.weight", "the audio input", 4)[2]
    if arch == "mmv_fac":
        head, video_key = "gating", "video_head.0.weight"
    elif "GU_video.cg.fc.weight" in sd:
        head, video_key = "gating", "GU_video.fc.weight"
    elif "GU_video.fc2.weight" in sd:
        head, video_key = "mlp", "GU_video.fc.weight"
    elif "GU_video.weight" in sd:
        head, video_key = "linear", "GU_video.weight"
    else:
        raise error(f"{path}: state_dict has none of 'GU_video.cg.fc.weight', "
                    "'GU_video.fc2.weight', 'GU_video.weight' (needed to infer the head: "
                    "gating, mlp or linear); not an AVLnet checkpoint")
    video_dim = shape(video_key, "the video input size", 2)[1]
    if video_dim == STREAM_DIM:
        # one stream; a bare state_dict cannot say which: the 2D-only model of Table 3 (a
        # 3D-only model's checkpoints of ours record visual 3d, which then rules)
        extra["visual"] = "2d"
    elif video_dim != VIDEO_DIM:
        raise error(f"{path}: {video_key!r} takes {video_dim}-d video input; this pipeline's "
                    f"video features are {VIDEO_DIM}-d (2D 2048 || 3D 2048) or {STREAM_DIM}-d "
                    "(one stream: train.model.visual 2d or 3d)")
    if n_mels != N_MELS:
        raise error(f"{path}: 'DAVEnet.conv1.weight' takes {n_mels} mel bands; this "
                    f"pipeline's log-Mel features have {N_MELS}")
    return {"arch": arch, "embed_dim": embed_dim, "head": head, "audio_widths": widths,
            "video_norm": "batchnorm" if "video_norm.running_mean" in sd else "none",
            "video_dim": video_dim, "n_mels": n_mels, **extra}


def _load_strict(model: torch.nn.Module, sd: dict, path: Path, arch: dict,
                 error: type[Exception]) -> None:
    """load_state_dict(strict); otherwise `error` in one line: the keys missing, unexpected or
    of another shape than the inferred architecture gives them (the first few)."""
    try:
        model.load_state_dict(sd)
        return
    except RuntimeError:
        pass
    desc = ", ".join(f"{k} {arch[k]}" for k in ARCHITECTURE)
    raise error(f"{path}: state_dict does not fit the AVLnet its shapes imply ({desc}): "
                f"{state_dict_mismatch(model, sd)}; is it an AVLnet checkpoint of this "
                "architecture?")
