"""Evaluation: embed a dataset's evaluation clips with each checkpoint, score both retrieval
directions under both protocols, and render the reports (avlnet.md "Evaluation").

reports/recall/<ds>.json   the headline numbers (dvc metrics show / diff): "<setting>/paper/
                           <direction>_R@1|5|10" and "..._median_rank"
reports/recall/<ds>/details.json   everything else: every metric of both protocols ("metrics",
                           flat keys "<setting>/<protocol>/<metric>"), provenance, checkpoints
reports/recall/curves/<ds>/<setting>.csv   recall-at-K curves, K = 1..min(50, n) (dvc plots)
reports/recall/<ds>.md     recall table in the paper's layout, the paper's rows and chance beside
reports/recall/<ds>.png    recall-at-K curves
reports/recall/<ds>.html   qualitative examples, both directions: queries (caption, audio
                           player, spectrogram or frame) and their top-5 (self-contained)
Tables and plots are rendered from the metrics dict, never recomputed."""
from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from models.avlnet import visual_of
from pipeline.learn.avdata import AnnotatedClips
from pipeline.download.ledger import read_availability
from pipeline.data.manifest import write_json_atomic
from pipeline.evaluate.metrics import DIRECTIONS, KS, chance, metrics_from_ranks, \
    ranks_from_embeddings
from pipeline.evaluate.pages import AUDIO_MAX_S, audio_data_uri, audio_tag, fig_png, \
    frame_png, img_tag, media_paths, page, spectrogram_png
from pipeline.learn.runs import ModelFile, caption_texts, collate_clips, load_clips, \
    load_model_file, provenance, verify_features
from pipeline.safety import UserError
from pipeline.learn.sampling import clip_frames_of, eval_split
from pipeline.features.store import FeatureStore
from pipeline.learn.train import embed

log = logging.getLogger(__name__)

SETTINGS = {"target_only": "target only", "zero_shot": "HowTo100M zero-shot",
            "fine_tuned": "HowTo100M + fine-tune"}
# avlnet.md Table 1 (R@1 / R@5 / R@10, percent): dataset -> setting -> (A->V, V->A)
PAPER = {
    "youcook2": {"random": ((0.03, 0.15, 0.3), (0.03, 0.15, 0.3)),
                 "target_only": ((0.7, 2.3, 3.9), (0.8, 3.0, 4.9)),
                 "zero_shot": ((27.4, 51.6, 61.5), (27.3, 51.2, 60.8)),
                 "fine_tuned": ((30.7, 57.7, 67.4), (33.0, 58.9, 68.4))},
    "crosstask": {"random": ((0.04, 0.18, 0.35), (0.04, 0.18, 0.35)),
                  "target_only": ((0.7, 2.4, 4.6), (0.5, 5.2, 11.0)),
                  "zero_shot": ((11.9, 29.4, 37.9), (10.8, 27.3, 35.7)),
                  "fine_tuned": ((13.8, 34.5, 44.8), (15.5, 37.0, 52.9))},
    "msrvtt": {"random": ((0.1, 0.5, 1.0), (0.1, 0.5, 1.0)),
               "target_only": ((0.9, 5.0, 9.0), (0.8, 4.6, 8.1)),
               "zero_shot": ((17.8, 35.5, 43.6), (17.2, 26.6, 46.6)),
               "fine_tuned": ((20.1, 40.0, 49.6), (22.0, 41.4, 50.3))},
}
CURVE_K = 50
TOP = 5          # candidates shown per example query
# the metrics `dvc metrics show` lists per setting (paper protocol); details.json has the rest
HEADLINE = tuple(f"{d}_{m}" for d in DIRECTIONS for m in (*(f"R@{k}" for k in KS),
                                                          "median_rank"))


class EvaluateError(UserError):
    """A missing or damaged checkpoint, no clip with features, an unwritable report folder."""


def load_model(path: Path, device: torch.device) -> ModelFile:
    """A checkpoint of ours (train.py's final.pt, checked against the sha256 recorded beside
    it) or a bare state_dict (AVLnet_release.pth: its config inferred from its shapes) ->
    ModelFile with the AVLnet in eval mode on `device`. EvaluateError in one line naming the
    file when it is damaged or not a model."""
    mf = load_model_file(path, EvaluateError)
    mf.model = mf.model.to(device).eval()
    return mf


def setting_checkpoints(dataset: str, models: Path, settings: list[str],
                        files: dict[str, str]) -> dict[str, Path]:
    """Setting -> checkpoint: zero_shot is models/pretrain/final.pt, fine_tuned
    models/finetune-<dataset>/final.pt, then each of evaluate.checkpoints (`files`, paths from
    the project root; the text stages' folder is data/text-models). A file outside `models`
    (the stage's DVC dependency) is tracked by DVC through its path only (the param): a
    warning says so."""
    where = {"zero_shot": models / "pretrain" / "final.pt",
             "fine_tuned": models / f"finetune-{dataset}" / "final.pt"}
    out = {s: where[s] for s in settings}
    for name, file in files.items():
        path = Path(file)
        out[name] = path
        if not path.resolve().is_relative_to(Path(models).resolve()):
            log.warning("%s: checkpoint %s of setting %s is outside %s: DVC tracks its path "
                        "(evaluate.checkpoints) but not its content; put it under %s for "
                        "`dvc repro` to notice a changed file", dataset, path, name, models,
                        models)
    return out


def _check_writable(folder: Path) -> None:
    """EvaluateError naming `folder` (or its nearest existing parent) when reports cannot be
    written there: checked before any work, so a failure never leaves half a report."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not os.access(p, os.W_OK):
        raise EvaluateError(f"{p}: not writable (read-only file system or permissions); point "
                            "--out at a writable folder")


def _write_text_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclasses.dataclass
class Prepared:
    """What every evaluation starts from, checked before any work: the device, the settings'
    loaded models, the ledger, the store, the split and its clips (present and official)."""

    dev: torch.device
    present: dict[str, Path]
    models: dict[str, ModelFile]
    ledger: pa.Table | None
    store: FeatureStore
    split: str
    clips: list
    ds: AnnotatedClips
    prov: dict

    def ds_for(self, setting: str) -> AnnotatedClips:
        """The clips with the video input of `setting`'s model (its visual streams)."""
        return self.ds.with_visual(visual_of(self.models[setting].model))


def prepare(dataset: str, features: Path, manifest_dir: Path, checkpoints: dict[str, Path],
            out_dir: Path, *, text: bool, availability: Path | None = None,
            videos_root: Path | None = None, videos_dir: Path | None = None,
            device: str = "cpu", clip_frames: int = 0, allow_missing: bool = False,
            verify: str = "sha256") -> Prepared:
    """The checks and loads evaluate() and the text evaluation share. A setting whose
    checkpoint is missing is an EvaluateError (nothing written) unless allow_missing (then a
    warning and the reports without it); a model of the other family (text: a text arch; else
    the audio-video AVLnet) is an EvaluateError naming the stage that reports it. availability
    (the ledger) is read through pipeline.download.ledger.read_availability: with videos_root
    and videos_dir its paths must stay inside videos_dir. verify: how the feature shards are
    checked (FeatureStore)."""
    dev = torch.device(device if device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    present = {s: p for s, p in checkpoints.items() if p is not None and p.is_file()}
    missing = {s: p for s, p in checkpoints.items() if s not in present}
    section = "text.evaluate" if text else "evaluate"
    if missing and not allow_missing:
        raise EvaluateError(f"{dataset}: no checkpoint for "
                            + ", ".join(f"{s} ({p})" for s, p in missing.items())
                            + f"; run its stage first (or fix its path in {section}.checkpoints),"
                            f" or set {section}.allow_missing: true to report without it")
    for s, p in missing.items():
        log.warning("%s: no checkpoint for setting %s (%s): not evaluated", dataset, s, p)
    if not present:
        raise EvaluateError(f"no checkpoint found among {checkpoints}")
    _check_writable(out_dir)
    ledger = (read_availability(availability, videos_root, videos_dir)
              if availability is not None else None)
    store = FeatureStore(features, verify=verify)
    split = eval_split(dataset, manifest_dir)
    clips = load_clips(manifest_dir, split)
    if not clips:
        raise EvaluateError(f"{manifest_dir}/clips.parquet has no {split} clips")
    models = {s: load_model(p, dev) for s, p in present.items()}   # all checked before work
    # the video input follows each model's recorded visual (2d3d, 2d, 3d): ds is the first's,
    # and the store must hold every model's features (Prepared.ds_for)
    visuals = [visual_of(mf.model) for mf in models.values()]
    ds = AnnotatedClips(store, clips, clip_frames or clip_frames_of(dataset, manifest_dir),
                        visuals[0])
    if not len(ds):
        raise EvaluateError(f"none of the {len(clips)} {dataset} {split} clips has features")
    for v in visuals[1:]:
        ds.with_visual(v)
    verify_features(store, {c.video_id for c in ds.clips})
    for s, mf in models.items():
        arch = mf.config.get("arch", "avlnet")
        if (arch == "avlnet") == text:
            other = ("stage evaluate (evaluate.checkpoints)" if text else
                     "stage evaluate_text (text.evaluate.checkpoints)")
            raise EvaluateError(f"{present[s]}: a {arch} model (setting {s}); its retrieval "
                                f"tables come from {other}")
    prov = provenance(dataset, split, store, manifest_dir, clips_official=len(clips),
                      clips_present=len(ds), clips_missing=len(ds.missing),
                      audit=_audit_date(ledger))
    return Prepared(dev, present, models, ledger, store, split, clips, ds, prov)


def setting_result(mf: ModelFile, path: Path, metrics: dict) -> dict:
    """A setting's entry of details.json: its metrics and where its model came from."""
    return {"metrics": metrics, "checkpoint": str(path), "checkpoint_sha256": mf.sha256,
            "trained_on": mf.checkpoint.get("provenance", {}), "model_config": mf.config,
            "config_source": mf.config_source, "stored_as": mf.stored_as}


def evaluate(dataset: str, features: Path, manifest_dir: Path, checkpoints: dict[str, Path],
             out_dir: Path, *, availability: Path | None = None, videos_root: Path | None = None,
             videos_dir: Path | None = None, batch: int = 64, examples: int = 5,
             device: str = "cpu", clip_frames: int = 0, allow_missing: bool = False,
             verify: str = "sha256") -> dict:
    """Scores every setting's checkpoint (A->V, V->A); writes the four reports -> metrics.
    Checks and loading: prepare()."""
    pp = prepare(dataset, features, manifest_dir, checkpoints, out_dir, text=False,
                 availability=availability, videos_root=videos_root, videos_dir=videos_dir,
                 device=device, clip_frames=clip_frames, allow_missing=allow_missing,
                 verify=verify)
    dev, present, models, ledger, clips, ds, prov = (pp.dev, pp.present, pp.models, pp.ledger,
                                                     pp.clips, pp.ds, pp.prov)
    paths, captions = media_paths(ledger, videos_root), first_captions(manifest_dir, pp.split)
    results, curves, examples_html = {}, {}, []
    for setting, path in present.items():
        mf = models[setting]
        loader = DataLoader(pp.ds_for(setting), batch_size=batch, collate_fn=collate_clips)
        e = embed(mf.model, loader, dev)
        a, v = e["audio"], e["video"]
        r_av = ranks_from_embeddings(a, v).numpy()       # each direction ranked once
        r_va = ranks_from_embeddings(v, a).numpy()
        m = metrics_from_ranks(r_av, r_va, n_official=len(clips))
        results[setting] = setting_result(mf, path, m)
        curves[setting] = {"audio_to_video": _curve(r_av, len(clips)),
                           "video_to_audio": _curve(r_va, len(clips))}
        examples_html.append(_examples(setting, ds, a, v, r_av, r_va, examples, paths,
                                       captions))
        log.info("%s %s: A->V R@1/5/10 %.3f/%.3f/%.3f, V->A %.3f/%.3f/%.3f (paper protocol, "
                 "%d of %d clips present)", dataset, setting,
                 *(m["paper"][f"audio_to_video_R@{k}"] for k in KS),
                 *(m["paper"][f"video_to_audio_R@{k}"] for k in KS), len(ds), len(clips))
    flat = {f"{s}/{proto}/{k}": v for s, r in results.items()
            for proto, mm in r["metrics"].items() for k, v in mm.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(headline(flat), out_dir / f"{dataset}.json")
    write_json_atomic({"dataset": dataset, "provenance": prov, "settings": results,
                       "chance": chance(len(clips)), "metrics": flat},
                      out_dir / dataset / "details.json")
    write_curves(curves, len(clips), out_dir / "curves" / dataset)
    _write_text_atomic(markdown(dataset, results, prov), out_dir / f"{dataset}.md")
    _plot_curves(dataset, curves, len(clips), out_dir / f"{dataset}.png")
    _write_text_atomic(_page(dataset, prov, examples_html), out_dir / f"{dataset}.html")
    return flat


def headline(flat: dict[str, float]) -> dict[str, float]:
    """The headline numbers of `flat` ("<setting>/<protocol>/<metric>"): R@1/5/10 and median
    rank per direction and setting, paper protocol (what `dvc metrics show` lists)."""
    keep = {f"paper/{m}" for m in HEADLINE}
    return {k: v for k, v in flat.items() if k.split("/", 1)[-1] in keep}


def write_curves(curves: dict, n: int, folder: Path) -> None:
    """Recall-at-K curves as data for `dvc plots` (dvc.yaml `plots`): folder/<setting>.csv with
    columns K (1..min(CURVE_K, n)), one per direction (audio_to_video, video_to_audio; the text
    report's own) in the paper protocol, and chance. CSVs of settings not evaluated this time
    are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {s: re.sub(r"[^A-Za-z0-9_.-]", "_", s) + ".csv" for s in curves}
    for old in folder.glob("*.csv"):
        if old.name not in names.values():
            old.unlink()
    for setting, c in curves.items():
        rows = [",".join(["K", *c, "chance"])]
        rows += [",".join([str(k), *(repr(x[k - 1]) for x in c.values()),
                           repr(min(k, n) / n if n else 0.0)]) for k in _ks(n)]
        _write_text_atomic("\n".join(rows) + "\n", folder / names[setting])


def _audit_date(ledger: pa.Table | None) -> str | None:
    """When the ledger last checked a video (the audit the numbers rest on)."""
    if ledger is None:
        return None
    vals = [t for t in ledger.column("last_checked").to_pylist() if t is not None]
    return max(vals).isoformat() if vals else None


def _ks(n: int) -> range:
    """K = 1..min(CURVE_K, n): past n clips every curve is flat at its final value."""
    return range(1, min(CURVE_K, n) + 1)


def _curve(ranks: np.ndarray, n_official: int) -> list[float]:
    """R@K for K = 1..min(CURVE_K, n_official), missing clips as failures (paper protocol)."""
    return [float((ranks < k).sum() / n_official) for k in _ks(n_official)]


def _labels(results: dict) -> dict[str, str]:
    """Row labels: the paper's names when pretraining was on HowTo100M, else say on what."""
    pre = (results.get("zero_shot", {}).get("trained_on", {}).get("dataset")
           or results.get("fine_tuned", {}).get("trained_on", {}).get("pretrained_on"))
    labels = (dict(SETTINGS) if pre in (None, "howto100m") else
              {"target_only": "target only", "zero_shot": f"zero-shot ({pre} pretraining)",
               "fine_tuned": f"{pre} pretraining + fine-tune"})
    # evaluate.checkpoints: a setting named by the user, labelled by its name
    return {**labels, **{s: s for s in results if s not in labels}}


def markdown(dataset: str, results: dict, prov: dict) -> str:
    """The paper's Table 1 layout: one row per setting, A->V and V->A R@1/R@5/R@10 (percent)."""
    labels = _labels(results)
    n = prov["clips_official"]
    ch = chance(n)
    head = ["| setting | source | A->V R@1 | R@5 | R@10 | V->A R@1 | R@5 | R@10 | MdR A->V |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows = [f"| random (chance, {n} clips) | expected | "
            + " | ".join(f"{100 * ch[f'R@{k}']:.1f}" for k in KS) + " | "
            + " | ".join(f"{100 * ch[f'R@{k}']:.1f}" for k in KS) + f" | {ch['median_rank']:.1f} |"]
    paper = PAPER.get(dataset, {})
    for setting in [*SETTINGS, *(s for s in results if s not in SETTINGS)]:
        if setting in paper:
            av, va = paper[setting]
            rows.append(f"| {SETTINGS[setting]} | paper | " + " | ".join(f"{x:.1f}" for x in av)
                        + " | " + " | ".join(f"{x:.1f}" for x in va) + " | |")
        if setting in results:
            for proto in ("paper", "available"):
                m = results[setting]["metrics"][proto]
                rows.append(f"| {labels[setting]} | ours, {proto} protocol | "
                            + " | ".join(f"{100 * m[f'audio_to_video_R@{k}']:.1f}" for k in KS)
                            + " | "
                            + " | ".join(f"{100 * m[f'video_to_audio_R@{k}']:.1f}" for k in KS)
                            + f" | {median_cell(m, 'audio_to_video')} |")
    lines = [f"# Retrieval on {dataset} ({prov['split']})", "",
             f"{prov['clips_present']} of {prov['clips_official']} official clips have features "
             f"({prov['clips_missing']} missing). Protocols: `paper` divides by the official "
             "count with missing clips as failures; `available` scores the present clips only. "
             "R@K in percent; ties ranked pessimistically.", "", *head, *rows, "",
             MEDIAN_NOTE, "",
             "Provenance: split checksum `" + str(prov.get("split_checksum")) + "`, feature "
             "recipe `" + str(prov.get("recipe_sha256"))[:16] + "`, audit " + str(prov["audit"])
             + "; checkpoints:"]
    for setting, r in results.items():
        lines.append(f"- {labels[setting]}: `{r['checkpoint']}` (sha256 "
                     f"`{r['checkpoint_sha256'][:16]}`)" + _model_line(r))
    return "\n".join(lines) + "\n"


MEDIAN_NOTE = ("MdR: median rank. In the paper-protocol rows ours counts the missing clips as "
               "failures; in parentheses the reference code's convention, the median over the "
               "present clips only (`<direction>_median_rank_present`).")


def median_cell(m: dict, direction: str) -> str:
    """'3.0', or '3.0 (2.5)' where the metrics carry the reference convention (paper protocol)
    and it differs."""
    ours, ref = m[f"{direction}_median_rank"], m.get(f"{direction}_median_rank_present")
    if ref is None or ref == ours or (ref != ref and ours != ours):
        return f"{ours:.1f}"
    return f"{ours:.1f} ({ref:.1f})"


def _model_line(r: dict) -> str:
    """'; model embed_dim 4096, head gating, ... (recorded)' or '(inferred from state_dict
    shapes; bare state_dict)'."""
    c = r.get("model_config")
    if not c:
        return ""
    desc = ", ".join(f"{k} {c[k]}" for k in ("embed_dim", "head", "audio_widths", "video_norm",
                                             "video_dim", "visual") if k in c)
    how = r.get("config_source")
    if how != "recorded":          # say how a file from elsewhere held its weights
        how = f"{how}; {r.get('stored_as')}"
    return f"; model {desc} ({how})"


def _plot_curves(dataset: str, curves: dict, n: int, out: Path,
                 labels: dict[str, str] = DIRECTIONS) -> None:
    """Recall at K = 1..min(CURVE_K, n) per setting and direction (labels: direction -> short
    name)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = np.array(_ks(n))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for setting, c in curves.items():
        for i, (direction, ys) in enumerate(c.items()):
            ax.plot(ks, ys, ("-", "--", "-.", ":")[i % 4],
                    label=f"{setting} {labels.get(direction, direction)}")
    ax.plot(ks, np.minimum(ks, n) / n, ":", color="gray", label="chance")
    ax.set_xlabel("K")
    ax.set_ylabel("recall at K (paper protocol)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{dataset}: {n} clips")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


# the old names, for callers of before pages.py
_png, _frame = fig_png, frame_png


def first_captions(manifest_dir: Path, split: str) -> dict[str, str]:
    """clip_id -> its official caption (the manifest's `text`) for the split's clips that
    have one."""
    return {k: v[0] for k, v in caption_texts(manifest_dir, split).items() if v}


def clip_spec(ds: AnnotatedClips, i: int) -> np.ndarray:
    """Clip i's log-Mel spectrogram (40, T) at its true length (the padding cut off)."""
    item = ds[i]
    return item["spec"][:, :int(min(item["nframes"], item["spec"].shape[1]))].numpy()


def clip_label(clip, captions: dict[str, str]) -> str:
    """'<clip id> (s-e s)' and its caption in italics, escaped HTML."""
    cap = captions.get(clip.clip_id)
    return (f"{html.escape(clip.clip_id)} ({clip.start_s:.1f}-{clip.end_s:.1f} s)"
            + (f'<br><span class="cap">&ldquo;{html.escape(cap)}&rdquo;</span>' if cap else ""))


def example_row(query_html: str, cells: list[str], true_rank: int | None) -> str:
    """One example: the query cell, its top-K cells, and 'true match at rank R' when the true
    match is not among them (true_rank: 1-based, None when it is)."""
    miss = (f'<p class="miss">true match at rank {true_rank}</p>' if true_rank is not None
            else "")
    return (f'<table><tr><td class="query"><b>query</b> {query_html}</td>{"".join(cells)}'
            f"</tr></table>{miss}")


def result_cell(rank: int, hit: bool, body: str) -> str:
    """A top-K cell: `body`, its rank, green with a tick when it is the true match."""
    return (f'<td class="{"hit" if hit else ""}">{body}<br>#{rank}'
            f'{" &#10003; correct" if hit else ""}</td>')


def _examples(setting: str, ds: AnnotatedClips, a: torch.Tensor, v: torch.Tensor,
              r_av: np.ndarray, r_va: np.ndarray, n: int, paths: dict[str, Path],
              captions: dict[str, str]) -> str:
    """Both directions for `n` queries spread over the clips. A->V: the query's caption, audio
    player and spectrogram -> its top-TOP clips' centre frames; V->A: the query's centre frame
    and caption -> its top-TOP clips, each with audio player and spectrogram. r_av / r_va
    (0-based ranks, metrics.py) give the true match's rank when it is not shown."""
    picks = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    clips = ds.clips

    def audio(c) -> str:
        return audio_tag(audio_data_uri(paths.get(c.video_id), c.start_s, c.end_s))

    def frame(c) -> str:
        return img_tag(frame_png(paths.get(c.video_id), (c.start_s + c.end_s) / 2),
                       alt=c.clip_id)

    av = [f"<h2>{html.escape(setting)}: A->V, audio query -> top-{TOP} video clips</h2>"]
    va = [f"<h2>{html.escape(setting)}: V->A, video query -> top-{TOP} audio clips</h2>"]
    for q in (int(x) for x in picks):
        c = clips[q]
        top = torch.argsort((a[q:q + 1] @ v.T)[0], descending=True)[:TOP].tolist()
        cells = [result_cell(k, j == q, f"{frame(clips[j])}<br>{clip_label(clips[j], captions)}")
                 for k, j in enumerate(top, 1)]
        spec = img_tag(spectrogram_png(clip_spec(ds, q)), "spectrogram")
        av.append(example_row(f"{clip_label(c, captions)}<br>{audio(c)}{spec}", cells,
                              None if q in top else int(r_av[q]) + 1))
        top = torch.argsort((v[q:q + 1] @ a.T)[0], descending=True)[:TOP].tolist()
        cells = [result_cell(k, j == q,
                             audio(clips[j])
                             + img_tag(spectrogram_png(clip_spec(ds, j)), "spectrogram")
                             + f"<br>{clip_label(clips[j], captions)}")
                 for k, j in enumerate(top, 1)]
        va.append(example_row(f"{clip_label(c, captions)}<br>{frame(c)}", cells,
                              None if q in top else int(r_va[q]) + 1))
    return "\n".join(av + va)


INTRO = ("<p>Both retrieval directions for a few queries spread over the clips. A->V: the "
         "query is a clip's audio (player and log-Mel spectrogram, true length; its caption "
         "for reading only) and the {top} video clips it scores highest follow as centre "
         "frames. V->A: the query is a clip's centre frame and the {top} audio clips it scores "
         "highest follow. The correct clip is green; when it is not shown, its rank is given. "
         "Audio players: the clip's first {max_s:g} s, mono 16 kHz.</p>")


def _page(dataset: str, prov: dict, sections: list[str], intro: str | None = None,
          title: str = "qualitative examples") -> str:
    """The examples page: the sections, then the provenance."""
    return page(f"{dataset} {prov['split']}: {title}",
                intro if intro is not None else INTRO.format(top=TOP, max_s=AUDIO_MAX_S),
                [*sections, f"<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=1))}"
                            "</pre>"])
