"""Text retrieval (extensions.md §1, thesis Table 4.1): embed a dataset's evaluation clips with
their official captions under each text model, score every direction the thesis reports under
both protocols, and render the same four reports as the audio-video evaluation.

Directions (rows are queries; a "+" sums two embeddings of one clip):
T->V, T->A+V, T+A->V, V->T, V+A->T, V->T+A, A->V, V->A. Tri scores them in its one space; Fused
has one audio+text embedding (T+A->V, V->T+A), and T->V / A->V leave the absent modality's term
out of its fused unit (models/avlnet_text.py); MMV scores text in its coarse space and audio
with video in its fine space, cosine similarities as it was trained.

reports/text/<ds>.json           headline numbers (dvc metrics): "<setting>/paper/<direction>_R@K"
reports/text/<ds>/details.json   every metric, both protocols, provenance, checkpoints
reports/text/curves/<ds>/<setting>.csv   recall-at-K per direction (dvc plots)
reports/text/<ds>.md|png|html    table beside the thesis's rows, curves, examples (T->V, V->T)"""
from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pipeline.data.manifest import write_json_atomic
from pipeline.evaluate.metrics import KS, chance, metrics_of, ranks_from_embeddings
from pipeline.evaluate.pages import AUDIO_MAX_S, audio_data_uri, audio_tag, frame_png, \
    img_tag, media_paths
from pipeline.evaluate.recall import MEDIAN_NOTE, TOP, EvaluateError, _curve, _page, \
    _plot_curves, _write_text_atomic, clip_label, example_row, median_cell, prepare, \
    result_cell, setting_result, write_curves
from models.avlnet import visual_of
from pipeline.learn.runs import caption_texts, collate_clips
from pipeline.learn.textdata import TextClips
from pipeline.learn.train import embed

log = logging.getLogger(__name__)

TEXT_DIRECTIONS = {"text_to_video": "T->V", "text_to_audio_video": "T->A+V",
                   "text_audio_to_video": "T+A->V", "video_to_text": "V->T",
                   "video_audio_to_text": "V+A->T", "video_to_text_audio": "V->T+A",
                   "audio_to_video": "A->V", "video_to_audio": "V->A"}
# thesis Table 4.1 (R@1, R@5, R@10, median rank; percent): dataset -> arch -> setting ->
# direction; Tri is reported as T->A+V / V+A->T, Fused as T+A->V / V->T+A
PAPER_TEXT = {
    "youcook2": {
        "avlnet_text_tri": {
            "zero_shot": {"text_to_audio_video": (19.9, 36.1, 44.3, 16),
                          "video_audio_to_text": (28.5, 53.7, 65.3, 6)},
            "fine_tuned": {"text_to_audio_video": (30.2, 55.5, 66.5, 4),
                           "video_audio_to_text": (35.4, 63.3, 74.2, 4)}},
        "avlnet_text_fused": {
            "zero_shot": {"text_audio_to_video": (25.6, 52.7, 64.4, 5),
                          "video_to_text_audio": (29.3, 55.3, 65.5, 4)},
            "fine_tuned": {"text_audio_to_video": (33.2, 61.0, 71.5, 3),
                           "video_to_text_audio": (34.0, 62.4, 72.5, 3)}}},
    "msrvtt": {
        "avlnet_text_tri": {
            "zero_shot": {"text_to_audio_video": (8.3, 19.2, 27.4, 47.5),
                          "video_audio_to_text": (8.7, 19.6, 25.1, 45)},
            "fine_tuned": {"text_to_audio_video": (22.5, 50.5, 64.1, 5),
                           "video_audio_to_text": (22.5, 50.8, 63.9, 5)}},
        "avlnet_text_fused": {
            "zero_shot": {"text_audio_to_video": (19.6, 40.8, 50.7, 9),
                          "video_to_text_audio": (19.7, 43.0, 54.9, 8)},
            "fine_tuned": {"text_audio_to_video": (27.1, 55.6, 66.6, 4),
                           "video_to_text_audio": (28.5, 54.6, 65.2, 4)}}},
}
# R@10 only: text-only T->V baselines (Miech et al.), and Table 4.2's low-resource setting
# (audio-video pretraining, Fused text branch added at fine-tuning; T+A->V)
PAPER_R10 = {
    "youcook2": {("Miech et al. (text only)", "text_to_video"): (24.8, 35.3),
                 ("AV pretraining + text at fine-tuning (Table 4.2)",
                  "text_audio_to_video"): (49.3, 66.3)},
    "msrvtt": {("Miech et al. (text only)", "text_to_video"): (29.6, 52.8),
               ("AV pretraining + text at fine-tuning (Table 4.2)",
                "text_audio_to_video"): (37.0, 59.7)},
}
SETTINGS = {"zero_shot": "zero-shot", "fine_tuned": "+ fine-tune"}


def direction_pairs(arch: str, e: dict[str, torch.Tensor]
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A text model's embeddings (its `embeddings` names) -> direction -> (queries (n, D),
    candidates (n, D)); query i's match is candidate i."""
    if arch == "avlnet_text_fused":
        at, a, t, v = e["audio_text"], e["audio"], e["text"], e["video"]
        return {"text_to_video": (t, v), "text_audio_to_video": (at, v),
                "video_to_text": (v, t), "video_to_text_audio": (v, at),
                "audio_to_video": (a, v), "video_to_audio": (v, a)}
    if arch == "mmv_fac":
        n = {k: F.normalize(x, dim=-1) for k, x in e.items()}
        a, v, t = n["audio_vat"], n["video_vat"], n["text_vat"]
        pairs = _additive(a, v, t)
        pairs.update(audio_to_video=(n["audio_va"], n["video_va"]),
                     video_to_audio=(n["video_va"], n["audio_va"]))
        return pairs
    return _additive(e["audio"], e["video"], e["text"])


def _additive(a: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> dict:
    """One shared space: every direction, "+" as a sum (T->A+V scores t.v + t.a)."""
    return {"text_to_video": (t, v), "text_to_audio_video": (t, a + v),
            "text_audio_to_video": (t + a, v), "video_to_text": (v, t),
            "video_audio_to_text": (v + a, t), "video_to_text_audio": (v, t + a),
            "audio_to_video": (a, v), "video_to_audio": (v, a)}


def evaluate_text(dataset: str, features: Path, manifest_dir: Path,
                  checkpoints: dict[str, Path], out_dir: Path, words, *, max_words: int = 20,
                  availability: Path | None = None, videos_root: Path | None = None,
                  videos_dir: Path | None = None, batch: int = 64, examples: int = 5,
                  device: str = "cpu", clip_frames: int = 0, allow_missing: bool = False,
                  verify: str = "sha256") -> dict:
    """Scores every text setting's checkpoint in every direction its arch defines; writes
    <ds>.json, <ds>/details.json, curves/<ds>/, <ds>.md, .png and .html -> flat metrics.
    Each clip's query text is its official caption (the first of MSR-VTT's 20)."""
    pp = prepare(dataset, features, manifest_dir, checkpoints, out_dir, text=True,
                 availability=availability, videos_root=videos_root, videos_dir=videos_dir,
                 device=device, clip_frames=clip_frames, allow_missing=allow_missing,
                 verify=verify)
    for s, mf in pp.models.items():
        if mf.config.get("word_dim", words.dim) != words.dim:
            raise EvaluateError(f"{pp.present[s]}: its text branch takes "
                                f"{mf.config['word_dim']}-d word vectors, {words.source} has "
                                f"{words.dim}-d ones; use the word vectors it was trained with "
                                "(text.word_vectors)")
    n = len(pp.clips)
    ds = TextClips(pp.ds, caption_texts(manifest_dir, pp.split), words, train=False,
                   max_words=max_words)
    prov = {**pp.prov, "clips_without_text": ds.no_text, "word_vectors": words.identity()}
    paths = media_paths(pp.ledger, videos_root)
    results, curves, sections = {}, {}, []
    for setting, path in pp.present.items():
        mf = pp.models[setting]
        loader = DataLoader(ds.with_visual(visual_of(mf.model)), batch_size=batch,
                            collate_fn=collate_clips)     # the model's visual streams
        pairs = direction_pairs(mf.config["arch"], embed(mf.model, loader, pp.dev))
        ranks = {d: ranks_from_embeddings(q, c).numpy() for d, (q, c) in pairs.items()}
        m = metrics_of(ranks, n_official=n)
        results[setting] = setting_result(mf, path, m)
        curves[setting] = {d: _curve(r, n) for d, r in ranks.items()}
        sections.append(_text_examples(setting, ds, pairs, ranks, examples, paths))
        log.info("%s %s (%s): R@10 %s (paper protocol, %d of %d clips present)", dataset,
                 setting, mf.config["arch"],
                 ", ".join(f"{TEXT_DIRECTIONS[d]} {m['paper'][f'{d}_R@10']:.3f}" for d in ranks),
                 len(ds), n)
    flat = {f"{s}/{proto}/{k}": v for s, r in results.items()
            for proto, mm in r["metrics"].items() for k, v in mm.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = {f"paper/{d}_{k}" for d in TEXT_DIRECTIONS
            for k in (*(f"R@{k}" for k in KS), "median_rank")}
    write_json_atomic({k: v for k, v in flat.items() if k.split("/", 1)[-1] in keep},
                      out_dir / f"{dataset}.json")
    write_json_atomic({"dataset": dataset, "provenance": prov, "settings": results,
                       "chance": chance(n), "metrics": flat}, out_dir / dataset / "details.json")
    write_curves(curves, n, out_dir / "curves" / dataset)
    _write_text_atomic(markdown(dataset, results, prov), out_dir / f"{dataset}.md")
    _plot_curves(dataset, {s: {d: c[d] for d in ("text_to_video", "text_audio_to_video")
                               if d in c} for s, c in curves.items()}, n,
                 out_dir / f"{dataset}.png", TEXT_DIRECTIONS)
    _write_text_atomic(_page(dataset, prov, sections, INTRO.format(top=TOP, max_s=AUDIO_MAX_S),
                             "text retrieval examples"), out_dir / f"{dataset}.html")
    return flat


def markdown(dataset: str, results: dict, prov: dict) -> str:
    """One row per (setting, direction, protocol): R@1, R@5, R@10 (percent) and median rank,
    with chance and the thesis's rows (Table 4.1; R@10-only baselines) beside."""
    n = prov["clips_official"]
    ch = chance(n)
    rows = ["| setting | direction | source | R@1 | R@5 | R@10 | MdR |",
            "|---|---|---|---|---|---|---|",
            f"| random (chance, {n} clips) | any | expected | "
            + " | ".join(f"{100 * ch[f'R@{k}']:.1f}" for k in KS) + f" | {ch['median_rank']:.1f} |"]
    for setting, r in results.items():
        arch = r["model_config"].get("arch")
        label = f"{arch} {SETTINGS.get(setting, setting)}"
        paper = PAPER_TEXT.get(dataset, {}).get(arch, {}).get(setting, {})
        for d, name in TEXT_DIRECTIONS.items():
            m = r["metrics"]["paper"]
            if f"{d}_R@1" not in m:
                continue
            if d in paper:
                rows.append(f"| {label} | {name} | thesis (HowTo100M) | "
                            + " | ".join(f"{x:g}" for x in paper[d]) + " |")
            for proto in ("paper", "available"):
                m = r["metrics"][proto]
                rows.append(f"| {label} | {name} | ours, {proto} | "
                            + " | ".join(f"{100 * m[f'{d}_R@{k}']:.1f}" for k in KS)
                            + f" | {median_cell(m, d)} |")
    for (who, d), (zs, ft) in PAPER_R10.get(dataset, {}).items():
        rows.append(f"| {who} | {TEXT_DIRECTIONS[d]} | published, R@10 zero-shot / fine-tuned "
                    f"| | | {zs:g} / {ft:g} | |")
    lines = [f"# Text retrieval on {dataset} ({prov['split']})", "",
             f"{prov['clips_present']} of {prov['clips_official']} official clips have features "
             f"({prov['clips_missing']} missing; {prov.get('clips_without_text', 0)} without a "
             "caption, whose text input is all zero). Queries are rows; T = the clip's official "
             "caption, A = its audio, V = its video; '+' sums two embeddings. `paper` divides by "
             "the official count with missing clips as failures, `available` scores the present "
             "clips. R@K in percent; ties ranked pessimistically.", "", *rows, "",
             MEDIAN_NOTE, "",
             "Word vectors: `{source}` ({words} words x {dim}, sample sha256 "
             "`{sample_sha256:.16}`). Checkpoints:".format(**prov["word_vectors"])]
    for setting, r in results.items():
        lines.append(f"- {setting}: `{r['checkpoint']}` (sha256 `{r['checkpoint_sha256'][:16]}`,"
                     f" {r['model_config'].get('arch')}, {r['config_source']})")
    return "\n".join(lines) + "\n"


INTRO = ("<p>T->V: the query is a clip's official caption (its audio player beside, for "
         "listening only) and the {top} video clips it scores highest follow as centre frames "
         "with their captions. V->T: the query is a clip's centre frame and the {top} captions "
         "it scores highest follow. The correct clip is green; when it is not shown, its rank "
         "is given. Audio players: the clip's first {max_s:g} s, mono 16 kHz.</p>")


def _text_examples(setting: str, ds: TextClips, pairs: dict, ranks: dict, n: int,
                   paths: dict[str, Path]) -> str:
    """T->V (query caption and its clip's audio player -> top-TOP clips' centre frames and
    captions) and V->T (query centre frame -> top-TOP captions) for `n` queries spread over the
    clips; pairs / ranks: direction_pairs() and their 0-based ranks, for the true match's rank
    when it is not shown."""
    clips = ds.clips.clips
    captions = {c.clip_id: ds.caption(i) for i, c in enumerate(clips) if ds.caption(i)}
    picks = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)

    def frame(c) -> str:
        return img_tag(frame_png(paths.get(c.video_id), (c.start_s + c.end_s) / 2),
                       alt=c.clip_id)

    def top(direction: str, i: int) -> list[int]:
        q, c = pairs[direction]
        return torch.argsort((q[i:i + 1] @ c.T)[0], descending=True)[:TOP].tolist()

    tv = [f"<h2>{html.escape(setting)}: T->V, text query -> top-{TOP} video clips</h2>"]
    vt = [f"<h2>{html.escape(setting)}: V->T, video query -> top-{TOP} captions</h2>"]
    for i in (int(x) for x in picks):
        c = clips[i]
        query = (f"&ldquo;{html.escape(captions.get(c.clip_id, '(no caption)'))}&rdquo;<br>"
                 f"{html.escape(c.clip_id)} ({c.start_s:.1f}-{c.end_s:.1f} s)<br>"
                 + audio_tag(audio_data_uri(paths.get(c.video_id), c.start_s, c.end_s)))
        best = top("text_to_video", i)
        cells = [result_cell(k, j == i, f"{frame(clips[j])}<br>{clip_label(clips[j], captions)}")
                 for k, j in enumerate(best, 1)]
        tv.append(example_row(query, cells,
                              None if i in best else int(ranks["text_to_video"][i]) + 1))
        best = top("video_to_text", i)
        cells = [result_cell(k, j == i, clip_label(clips[j], captions))
                 for k, j in enumerate(best, 1)]
        vt.append(example_row(f"{clip_label(c, captions)}<br>{frame(c)}", cells,
                              None if i in best else int(ranks["video_to_text"][i]) + 1))
    return "\n".join(tv + vt)
