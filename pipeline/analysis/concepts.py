"""Audio-visual concept discovery (AVLnet paper Sec. 4, Fig. 2; extensions.md §3).

Every clip is embedded twice: its video once (clip level) and its audio without the temporal
pooling, one embedding per ResDAVEnet step (16 log-Mel frames = 0.16 s, "word level"). A step is
labelled with the spoken words within +-window_s of its centre, a clip with the vocabulary words
of its caption. For each embedding dimension the top-K steps and the top-K clips name it: its
audio label is the most frequent word among the K steps, its visual label the most frequent
clip label among the K clips, each purity the fraction of the K carrying that label (unlabelled
items count against it). Dimensions rank by the geometric mean of the two purities.

reports/concepts/<ds>.json              summary (counts, concepts found, top 20 dims, settings)
reports/concepts/<ds>/dimensions.parquet  every dimension: labels, purities, geo_mean, rank
reports/concepts/<ds>.md                table of the top dimensions
reports/concepts/<ds>.html              the top dimensions: centre frames, waveforms, words
"""
from __future__ import annotations

import html
import json
import logging
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from models.avlnet import AVLnet, TIME_STRIDE, visual_of
from pipeline.data.manifest import read_clips, write_json_atomic, write_parquet_atomic
from pipeline.download.ledger import read_availability
from pipeline.evaluate import pages
from pipeline.evaluate.recall import _check_writable, _write_text_atomic, load_model, \
    setting_checkpoints
from pipeline.features.store import FeatureStore
from pipeline.learn.avdata import AnnotatedClips, ClipRef, checked_batches
from pipeline.learn.runs import collate_clips, verify_features
from pipeline.learn.sampling import clip_frames_of, eval_split
from pipeline.safety import UserError

log = logging.getLogger(__name__)

FRAME_S = 0.01                      # log-Mel hop (logmel.py: 100 frames/s)
STEP_S = TIME_STRIDE * FRAME_S      # one ResDAVEnet output step: 16 frames = 0.16 s
STOP_WORDS = ("the", "a", "an", "and", "to", "of", "in", "it", "is", "this", "that", "now",
              "okay", "ok", "so", "um", "uh", "you", "we", "i")
TOKEN = re.compile(r"[\w']+")
WORD_COLUMNS = ("video_id", "start_s", "end_s", "word")
SUMMARY_DIMS = 20                   # dimensions listed in the json and the markdown table


class ConceptsError(UserError):
    """A text checkpoint, a missing words or labels file, no clip with labels."""


# ------------------------------------------------------------------ word-level audio embeddings


def check_audio_video(model: torch.nn.Module, config: dict, path: Path) -> None:
    """ConceptsError unless `model` is the audio-video AVLnet (its audio steps are analysed;
    the text models' audio branches differ: Fused projects the pooled features only)."""
    arch = config.get("arch", "avlnet")
    if arch != "avlnet" or type(model) is not AVLnet:
        raise ConceptsError(f"{path}: a {arch} model; concept discovery needs an audio-video "
                            "AVLnet checkpoint (stage train or finetune@<dataset>): set "
                            "analysis.concepts.setting to zero_shot, fine_tuned or such a file")


def step_features(model: AVLnet, spec: torch.Tensor, nframes: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 40, T) log-Mel, (B,) true frames -> ((B, T', C) ResDAVEnet features per step,
    T' = T // 16, C = 1024 in the paper's model; (B,) true steps max(1, nframes // 16) capped
    at T', as AVLnet.pool counts them)."""
    feats = model.DAVEnet(spec).transpose(1, 2)                        # (B, T', C)
    steps = torch.clamp(torch.div(nframes, TIME_STRIDE, rounding_mode="floor"), min=1)
    return feats, torch.clamp(steps, max=feats.shape[1]).to(feats.device)


def project_steps(model: AVLnet, feats: torch.Tensor) -> torch.Tensor:
    """(..., C) pre-pooling features -> (..., D): the same GU_audio and DAVEnet_projection
    encode_audio applies to the pooled vector, applied to each step (Linear/GEU act on the
    last dim)."""
    return model.DAVEnet_projection(model.GU_audio(feats))


def step_embeddings(model: AVLnet, spec: torch.Tensor, nframes: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 40, T), (B,) -> ((B, T', D) one embedding per audio step, (B,) true steps)."""
    feats, steps = step_features(model, spec, nframes)
    return project_steps(model, feats), steps


def step_times(start_s: float, n_steps: int) -> np.ndarray:
    """(n_steps,) centre of each step in the video, s: start + (j + 0.5) * 0.16."""
    return start_s + (np.arange(n_steps) + 0.5) * STEP_S


# ------------------------------------------------------------------ labels


def words_of(text: str | None) -> list[str]:
    """Lower-cased word tokens ([\\w']+) of `text`."""
    return TOKEN.findall((text or "").lower())


def load_words(path: Path, stop_words: Collection[str], hint: str) -> dict[str, tuple]:
    """A word-timings parquet (video_id, start_s, end_s, word) -> video_id -> (starts (M,),
    ends (M,), words [M]) with words lower-cased and stop words dropped. ConceptsError naming
    the file and `hint` (the stage that writes it) when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConceptsError(f"{path}: no word timings; {hint}")
    try:
        t = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConceptsError(f"{path}: not a readable parquet file ({type(e).__name__}); "
                            f"{hint}") from None
    lacking = [c for c in WORD_COLUMNS if c not in t.column_names]
    if lacking:
        raise ConceptsError(f"{path}: lacks column(s) {', '.join(lacking)} (needs "
                            f"{', '.join(WORD_COLUMNS)}); {hint}")
    stop = {w.lower() for w in stop_words}
    rows: dict[str, list] = {}
    for r in t.select(list(WORD_COLUMNS)).to_pylist():
        for w in words_of(r["word"]):
            if w not in stop:
                rows.setdefault(r["video_id"], []).append((r["start_s"], r["end_s"], w))
    return {v: (np.array([a for a, _, _ in x], float), np.array([b for _, b, _ in x], float),
                [w for _, _, w in x]) for v, x in rows.items()}


def step_labels(times: np.ndarray, words: tuple | None, window_s: float) -> list[tuple]:
    """(S,) step centres of one video, its (starts, ends, words) -> per step the sorted words
    whose [start, end] overlaps [t - window_s, t + window_s] (closed: touching counts)."""
    if words is None or not len(words[2]):
        return [()] * len(times)
    starts, ends, ws = words
    hit = (starts[None, :] <= times[:, None] + window_s) & \
        (ends[None, :] >= times[:, None] - window_s)                  # (S, M)
    return [tuple(sorted({ws[m] for m in np.flatnonzero(row)})) for row in hit]


def clip_labels(texts: Sequence[str | None], vocabulary: Sequence[str]) -> list[tuple]:
    """Per clip the vocabulary entries found in its caption, as whole lower-cased words (a
    multi-word entry such as "olive oil" as consecutive words); sorted."""
    vocab = [" ".join(words_of(v)) for v in vocabulary if words_of(v)]
    out = []
    for t in texts:
        padded = f" {' '.join(words_of(t))} "
        out.append(tuple(sorted({v for v in vocab if f" {v} " in padded})))
    return out


def load_clip_labels(path: Path, clip_ids: Sequence[str]) -> list[tuple]:
    """A labels parquet (clip_id, label; one row per label) -> per clip its sorted labels."""
    path = Path(path)
    if not path.is_file():
        raise ConceptsError(f"{path}: no clip labels file; write one (clip_id, label) or set "
                            "analysis.concepts.vocabulary instead")
    t = pq.read_table(path)
    if not {"clip_id", "label"} <= set(t.column_names):
        raise ConceptsError(f"{path}: needs columns clip_id and label")
    by: dict[str, set] = {}
    for r in t.select(["clip_id", "label"]).to_pylist():
        if r["label"]:
            by.setdefault(r["clip_id"], set()).add(" ".join(words_of(r["label"])))
    return [tuple(sorted(by.get(c, ()))) for c in clip_ids]


# ------------------------------------------------------------------ the numpy core


def top_k(acts: np.ndarray, k: int) -> np.ndarray:
    """(N, D) activations -> (min(k, N), D) item indices per dimension, highest first (ties:
    the lower index first)."""
    order = np.argsort(-acts, axis=0, kind="stable")
    return order[:k]


class TopK:
    """top_k over items arriving in batches (the audio steps of a large split do not fit in
    memory at once): update() with (n, D) activations of items first..first + n - 1 in order;
    indices() gives what top_k on the concatenation gives (ties between a kept item and a new
    one of equal value keep the lower index; within a batch argpartition decides)."""

    def __init__(self, k: int, dim: int):
        self.k = k
        self.values = np.empty((0, dim), np.float32)
        self.index = np.empty((0, dim), np.int64)

    def update(self, acts: np.ndarray, first: int) -> None:
        acts = np.asarray(acts, np.float32)
        idx = np.broadcast_to(np.arange(first, first + len(acts))[:, None], acts.shape)
        if len(acts) > self.k:                    # the batch's own top k, unordered
            part = np.argpartition(-acts, self.k - 1, axis=0)[:self.k]
            acts, idx = np.take_along_axis(acts, part, 0), np.take_along_axis(idx, part, 0)
        vals = np.concatenate([self.values, acts])
        ids = np.concatenate([self.index, idx])
        # by value descending, then index ascending, per column
        order = np.lexsort((ids, -vals), axis=0)[:self.k]
        self.values = np.take_along_axis(vals, order, 0)
        self.index = np.take_along_axis(ids, order, 0)

    def indices(self) -> np.ndarray:
        """(min(k, items seen), D) item indices, highest first."""
        return self.index


def majority(top: np.ndarray, labels: Sequence[Collection[str]]
             ) -> tuple[list[str | None], np.ndarray]:
    """(K, D) item indices, labels per item -> (D labels, (D,) purity): per dimension the label
    carried by most of its K items (ties: alphabetically first; None when none has a label)
    and the fraction of the K items carrying it (unlabelled items count against it)."""
    k, d = top.shape
    names: list[str | None] = []
    purity = np.zeros(d)
    for j in range(d):
        c = Counter(w for i in top[:, j] for w in labels[i])
        if not c:
            names.append(None)
            continue
        name, n = min(c.items(), key=lambda kv: (-kv[1], kv[0]))
        names.append(name)
        purity[j] = n / k
    return names, purity


def rank_dimensions(audio_purity: np.ndarray, visual_purity: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(D,), (D,) purities -> ((D,) geometric mean sqrt(a * v), (D,) rank: 1 = highest geometric
    mean, ties by dimension index)."""
    geo = np.sqrt(audio_purity * visual_purity)
    order = np.argsort(-geo, kind="stable")
    rank = np.empty(len(geo), np.int64)
    rank[order] = np.arange(1, len(geo) + 1)
    return geo, rank


def dimension_table(audio_top: np.ndarray, audio_labels: Sequence[Collection[str]],
                    video_top: np.ndarray, video_labels: Sequence[Collection[str]]) -> dict:
    """(Ka, D) top steps and (Kv, D) top clips with their items' labels -> columns over the D
    dimensions: dim, audio_label, audio_purity, visual_label, visual_purity, geo_mean, rank."""
    al, ap = majority(audio_top, audio_labels)
    vl, vp = majority(video_top, video_labels)
    geo, rank = rank_dimensions(ap, vp)
    return {"dim": np.arange(len(geo)), "audio_label": al, "audio_purity": ap,
            "visual_label": vl, "visual_purity": vp, "geo_mean": geo, "rank": rank}


def found(table: dict, threshold: float = 0.5) -> dict:
    """Counts over the dimensions whose purities both exceed `threshold`: how many, their
    distinct visual labels, and the concepts found (audio label == visual label)."""
    both = (table["audio_purity"] > threshold) & (table["visual_purity"] > threshold)
    idx = np.flatnonzero(both)
    agree = sorted({table["visual_label"][i] for i in idx
                    if table["audio_label"][i] == table["visual_label"][i]})
    return {"dims_both_above": int(both.sum()),
            "visual_labels_both_above": sorted({table["visual_label"][i] for i in idx}),
            "audio_labels_both_above": sorted({table["audio_label"][i] for i in idx}),
            "concepts_found": agree, "n_concepts_found": len(agree)}


# ------------------------------------------------------------------ embedding a split


@dataclass
class Embedded:
    """A split embedded: clips (N), their video embeddings' top clips (Kv, D), the audio steps'
    top steps (Ka, D) and the steps' clip index, step index and centre time (S,) each."""

    clips: list[ClipRef]
    video_top: np.ndarray
    audio_top: np.ndarray
    step_clip: np.ndarray
    step_j: np.ndarray
    step_time: np.ndarray
    dim: int


def embed_split(model: AVLnet, ds: AnnotatedClips, top: int, batch: int, dev: torch.device
                ) -> Embedded:
    """Embeds every clip of `ds` (video: encode_video; audio: step_embeddings over the true
    steps) keeping only each dimension's top `top` clips and steps."""
    model.eval()
    model.masked_pooling = None
    loader = DataLoader(ds, batch_size=batch, collate_fn=collate_clips)
    videos, acc, seen = [], None, 0
    s_clip, s_j, s_time = [], [], []
    with torch.inference_mode():
        for b in checked_batches(loader):
            videos.append(model.encode_video(b["video"].to(dev)).float().cpu().numpy())
            emb, steps = step_embeddings(model, b["spec"].to(dev), b["nframes"].to(dev))
            emb, steps = emb.float().cpu().numpy(), steps.cpu().tolist()
            flat = np.concatenate([emb[r, :n] for r, n in enumerate(steps)])   # (sum n, D)
            acc = acc or TopK(top, emb.shape[2])
            acc.update(flat, seen)
            seen += len(flat)
            for i, n in zip(b["index"].tolist(), steps):
                s_clip.append(np.full(n, i))
                s_j.append(np.arange(n))
                s_time.append(step_times(ds.clips[i].start_s, n))
    v = np.concatenate(videos)                                         # (N, D)
    return Embedded(ds.clips, top_k(v, top), acc.indices(), np.concatenate(s_clip),
                    np.concatenate(s_j), np.concatenate(s_time), v.shape[1])


# ------------------------------------------------------------------ the analysis


def words_hint(dataset: str) -> str:
    """Which stage writes a dataset's word timings, for the missing-file message."""
    if dataset == "demo":
        return ("stage demo writes it (data/demo/words.parquet, the spoken names' timings): "
                "re-run stage demo")
    return (f"stage speech@{dataset} writes it (ASR word timings): run it first, or point "
            f"analysis.concepts.words_files.{dataset} at a parquet of video_id, start_s, end_s, "
            "word")


def words_file(dataset: str, files: dict[str, str]) -> Path:
    """A dataset's word timings: analysis.concepts.words_files[dataset], else the demo
    generator's data/demo/words.parquet (demo) or stage speech@'s
    data/speech/<dataset>/words.parquet."""
    if dataset in files:
        return Path(files[dataset])
    return Path("data/demo/words.parquet") if dataset == "demo" else \
        Path("data/speech", dataset, "words.parquet")


def demo_vocabulary(n_concepts: int) -> list[str]:
    """The demo's visual labels: the names of the concepts it draws (its first n_concepts)."""
    from pipeline.data.demo import CONCEPTS
    return [c.name for c in CONCEPTS[:n_concepts]]


def setting_checkpoint(dataset: str, models: Path, setting: str) -> Path:
    """zero_shot -> models/pretrain/final.pt, fine_tuned -> models/finetune-<dataset>/final.pt
    (as evaluation's settings), anything else: a checkpoint path."""
    if setting in ("zero_shot", "fine_tuned"):
        return setting_checkpoints(dataset, models, [setting], {})[setting]
    return Path(setting)


def select_clips(dataset: str, manifest_dir: Path, split: str) -> tuple[str, list[ClipRef],
                                                                         list[str | None]]:
    """split 'eval' (the dataset's evaluation split), 'all' or a split name -> (the split's
    name, its clips, their captions). ConceptsError when it has none."""
    name = eval_split(dataset, manifest_dir) if split == "eval" else split
    rows = [r for r in read_clips(manifest_dir / "clips.parquet").to_pylist()
            if name == "all" or r["split"] == name]
    if not rows:
        raise ConceptsError(f"{manifest_dir}/clips.parquet has no {name} clips; set "
                            "analysis.concepts.split to eval, all or a split it has")
    return name, [ClipRef(r["clip_id"], r["video_id"], r["start_s"], r["end_s"]) for r in rows], \
        [r.get("text") for r in rows]


def discover(dataset: str, features: Path, manifest_dir: Path, checkpoint: Path, out_dir: Path,
             *, words: Path, vocabulary: Sequence[str] | None = None, labels: Path | None = None,
             split: str = "eval", top: int = 50, show: int = 10,
             stop_words: Collection[str] = STOP_WORDS, window_s: float = 2.0,
             threshold: float = 0.5, batch: int = 32, device: str = "cpu", clip_frames: int = 0,
             availability: Path | None = None, videos_root: Path | None = None,
             videos_dir: Path | None = None, verify: str = "sha256",
             setting: str | None = None) -> dict:
    """Concept discovery on `dataset`'s clips with the audio-video AVLnet at `checkpoint`;
    writes the four reports to out_dir -> the summary (what <dataset>.json holds).

    words: word timings parquet (video_id, start_s, end_s, word); clip labels from
    `labels` (parquet clip_id, label) or else the `vocabulary` words in each clip's caption.
    Everything is checked before any work: out_dir writable, the words file, the model (a text
    arch is refused), the clips and that some have labels and features."""
    _check_writable(out_dir)
    timings = load_words(words, stop_words, words_hint(dataset))
    split_name, refs, texts = select_clips(dataset, manifest_dir, split)
    if labels is not None:
        lab = load_clip_labels(labels, [c.clip_id for c in refs])
    elif vocabulary:
        lab = clip_labels(texts, vocabulary)
    else:
        raise ConceptsError(f"{dataset}: no label vocabulary; set analysis.concepts.vocabulary."
                            f"{dataset} (words to find in the captions) or labels_files."
                            f"{dataset} (a parquet of clip_id, label)")
    dev = torch.device(device if device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    mf = load_model(checkpoint, dev)
    check_audio_video(mf.model, mf.config, checkpoint)
    store = FeatureStore(features, verify=verify)
    ds = AnnotatedClips(store, refs, clip_frames or clip_frames_of(dataset, manifest_dir),
                        visual_of(mf.model))
    label_of = dict(zip((c.clip_id for c in refs), lab))
    clip_lab = [label_of[c.clip_id] for c in ds.clips]
    if not any(clip_lab):
        what = f"{labels}" if labels is not None else f"vocabulary {list(vocabulary or [])[:8]}"
        raise ConceptsError(f"{dataset}: none of the {len(ds)} {split_name} clips with features "
                            f"has a label (from {what}); check the vocabulary against "
                            f"{manifest_dir}/clips.parquet's text")
    verify_features(store, {c.video_id for c in ds.clips})
    ledger = (read_availability(availability, videos_root, videos_dir)
              if availability is not None else None)
    if len(ds) < top:
        log.warning("%s: %d clips, fewer than top %d: each dimension's top is all of them",
                    dataset, len(ds), top)

    e = embed_split(mf.model, ds, top, batch, dev)
    step_lab = _all_step_labels(e, timings, window_s)
    table = dimension_table(e.audio_top, step_lab, e.video_top, clip_lab)
    stats = found(table, threshold)
    settings = {"setting": setting, "checkpoint": str(checkpoint), "checkpoint_sha256":
                mf.sha256, "split": split_name, "top": top, "window_s": window_s,
                "threshold": threshold, "stop_words": sorted(stop_words), "words": str(words),
                "labels": str(labels) if labels is not None else None,
                "vocabulary": list(vocabulary or [])}
    order = np.argsort(table["rank"], kind="stable")
    summary = {"dataset": dataset, "n_dims": e.dim, "n_clips": len(ds),
               "n_clips_labelled": sum(1 for x in clip_lab if x),
               "n_clips_missing": len(ds.missing), "n_steps": len(e.step_time),
               "n_steps_with_words": sum(1 for x in step_lab if x), **stats,
               "top_dims": [_row(table, int(i)) for i in order[:SUMMARY_DIMS]],
               "settings": settings}
    log.info("%s: %d of %d dims with both purities > %.2f; concepts found (%d): %s", dataset,
             stats["dims_both_above"], e.dim, threshold, stats["n_concepts_found"],
             ", ".join(stats["concepts_found"]) or "none")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / dataset).mkdir(exist_ok=True)
    _write_parquet(table, out_dir / dataset / "dimensions.parquet")
    write_json_atomic(summary, out_dir / f"{dataset}.json")
    _write_text_atomic(markdown(summary), out_dir / f"{dataset}.md")
    paths = pages.media_paths(ledger, videos_root)
    text_of = {c.clip_id: t for c, t in zip(refs, texts)}
    _write_text_atomic(page(summary, table, e, clip_lab, timings, paths, show, text_of),
                       out_dir / f"{dataset}.html")
    return summary


def _all_step_labels(e: Embedded, timings: dict, window_s: float) -> list[tuple]:
    """Labels of every step (S): each clip's steps are contiguous in e's order."""
    out: list[tuple] = []
    starts = np.flatnonzero(np.r_[True, e.step_clip[1:] != e.step_clip[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(e.step_clip)]):
        vid = e.clips[int(e.step_clip[a])].video_id
        out += step_labels(e.step_time[a:b], timings.get(vid), window_s)
    return out


def _row(table: dict, d: int) -> dict:
    return {k: (v[d].item() if isinstance(v, np.ndarray) else v[d]) for k, v in table.items()}


def _write_parquet(table: dict, path: Path) -> None:
    t = pa.table({"dim": pa.array(table["dim"], pa.int64()),
                  "audio_label": pa.array(table["audio_label"], pa.string()),
                  "audio_purity": pa.array(table["audio_purity"], pa.float64()),
                  "visual_label": pa.array(table["visual_label"], pa.string()),
                  "visual_purity": pa.array(table["visual_purity"], pa.float64()),
                  "geo_mean": pa.array(table["geo_mean"], pa.float64()),
                  "rank": pa.array(table["rank"], pa.int64())})
    write_parquet_atomic(t, path)


def markdown(summary: dict) -> str:
    """The top dimensions as a table, with the counts above it (rendered from the summary)."""
    s, st = summary, summary["settings"]
    lines = [f"# Concept discovery on {s['dataset']} ({st['split']})", "",
             f"{s['n_clips']} clips ({s['n_clips_labelled']} with a visual label), "
             f"{s['n_steps']} audio steps of 0.16 s ({s['n_steps_with_words']} with a word "
             f"within +-{st['window_s']:g} s); top {st['top']} per dimension; checkpoint "
             f"`{st['checkpoint']}` ({st['setting'] or 'file'}).", "",
             f"{s['dims_both_above']} of {s['n_dims']} dimensions have both purities > "
             f"{st['threshold']:g}; concepts found (audio label = visual label): "
             f"{s['n_concepts_found']} ({', '.join(s['concepts_found']) or 'none'}).", "",
             "| rank | dim | audio label | audio purity | visual label | visual purity | "
             "geo. mean |", "|---|---|---|---|---|---|---|"]
    for r in s["top_dims"]:
        lines.append(f"| {r['rank']} | {r['dim']} | {r['audio_label'] or '-'} | "
                     f"{r['audio_purity']:.2f} | {r['visual_label'] or '-'} | "
                     f"{r['visual_purity']:.2f} | {r['geo_mean']:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the page


def _waveform(path: Path | None, t: float, half: float = 1.0) -> str | None:
    """+-half s of the media's audio around t as a base64 PNG waveform (the step's 0.16 s
    shaded), or None when the media or ffmpeg is missing."""
    if path is None or not Path(path).is_file():
        return None
    a = max(0.0, t - half)
    try:
        raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-ss", f"{a:.3f}", "-t",
                              f"{2 * half:.3f}", "-i", str(path), "-vn", "-ac", "1", "-ar",
                              "16000", "-f", "s16le", "pipe:"], capture_output=True, timeout=60,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    x = np.frombuffer(raw, np.int16).astype(np.float32) / 32768
    if not len(x):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(3, 0.9), dpi=80)
    ax.plot(a + np.arange(len(x)) / 16000, x, lw=0.4, color="k")
    ax.axvspan(t - STEP_S / 2, t + STEP_S / 2, color="orange", alpha=0.5)
    ax.set_ylim(-1, 1)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    return pages.fig_png(fig)


def _words_near(timings: dict, vid: str, t: float, window_s: float) -> str:
    """The (stop-word-free) words within +-window_s of t, in time order, with their times."""
    w = timings.get(vid)
    if w is None:
        return ""
    starts, ends, ws = w
    near = [m for m in np.argsort(starts, kind="stable")
            if starts[m] <= t + window_s and ends[m] >= t - window_s]
    return ", ".join(f"{ws[m]} ({starts[m]:.1f} s)" for m in near)


def _dimension(d: int, table: dict, e: Embedded, clip_lab: list, text_of: dict,
               timings: dict, paths: dict[str, Path], window_s: float) -> str:
    """One dimension's section: labels, purities, its top 5 clips' centre frames and its top 3
    audio steps (+-1 s waveform and player, the words within +-window_s)."""
    r = _row(table, d)
    frames = []
    for i in e.video_top[:5, d].tolist():
        c = e.clips[i]
        img = pages.frame_png(paths.get(c.video_id), (c.start_s + c.end_s) / 2)
        frames.append(f"<td>{pages.img_tag(img, c.clip_id)}<br>{html.escape(c.clip_id)}<br>"
                      f"<span class=cap>{html.escape(text_of.get(c.clip_id) or '')}</span><br>"
                      f"labels: {html.escape(', '.join(clip_lab[i]) or '-')}</td>")
    steps = []
    for s in e.audio_top[:3, d].tolist():
        c, t = e.clips[int(e.step_clip[s])], float(e.step_time[s])
        media = paths.get(c.video_id)
        near = _words_near(timings, c.video_id, t, window_s) or "-"
        steps.append(f"<td>{pages.img_tag(_waveform(media, t), c.video_id, 'no audio')}"
                     f"{pages.audio_tag(pages.audio_data_uri(media, t - 1.0, t + 1.0))}"
                     f"{html.escape(c.video_id)} at {t:.2f} s<br>words: {html.escape(near)}</td>")
    return (f"<h2>#{r['rank']}: dimension {d}</h2><p>audio label <b>"
            f"{html.escape(r['audio_label'] or '-')}</b> (purity {r['audio_purity']:.2f}), "
            f"visual label <b>{html.escape(r['visual_label'] or '-')}</b> (purity "
            f"{r['visual_purity']:.2f}), geometric mean {r['geo_mean']:.3f}</p>"
            f"<p>top clips (centre frames)</p><table><tr>{''.join(frames)}</tr></table>"
            "<p>top audio steps (+-1 s; the 0.16 s step shaded)</p>"
            f"<table><tr>{''.join(steps)}</tr></table>")


def page(summary: dict, table: dict, e: Embedded, clip_lab: list, timings: dict,
         paths: dict[str, Path], show: int, text_of: dict) -> str:
    """The self-contained page: the top `show` dimensions (_dimension), media cut with ffmpeg
    (a missing file shows a placeholder), the settings at the end."""
    s, st = summary, summary["settings"]
    intro = (f"<p>{s['dims_both_above']} of {s['n_dims']} dimensions have both purities > "
             f"{st['threshold']:g}; concepts found (audio label = visual label): "
             f"{s['n_concepts_found']} ({html.escape(', '.join(s['concepts_found']) or 'none')})"
             f". Each dimension's labels come from its top {st['top']} audio steps and clips."
             "</p>")
    sections = [_dimension(int(d), table, e, clip_lab, text_of, timings, paths, st["window_s"])
                for d in np.argsort(table["rank"], kind="stable")[:show]]
    sections.append(f"<pre>{html.escape(json.dumps(st, indent=1))}</pre>")
    return pages.page(f"Concept discovery: {s['dataset']} {st['split']}", intro, sections)
