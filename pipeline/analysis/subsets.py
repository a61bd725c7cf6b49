"""Retrieval on the Sounds-N and Speech-N sets (AVLnet Table 4): each setting's checkpoint
scored A->V and V->A on the clips without speech and on as many clips with speech, beside the
paper's numbers and chance.

reports/speech/<ds>.json           headline: "<set>/<setting>/<direction>_R@1|5|10" (dvc metrics)
reports/speech/<ds>.md             the Table 4 layout, with how the sets were found
reports/speech/<ds>/details.json   every metric, the sets' clip ids, provenance, checkpoints"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from torch.utils.data import DataLoader

from pipeline.data.manifest import write_json_atomic
from pipeline.evaluate.metrics import KS, chance, metrics_from_ranks, ranks_from_embeddings
from pipeline.evaluate.recall import EvaluateError, _write_text_atomic, prepare, setting_result
from models.avlnet import visual_of
from pipeline.learn.avdata import AnnotatedClips
from pipeline.learn.runs import collate_clips
from pipeline.learn.train import embed

log = logging.getLogger(__name__)

SETS = {"speech": "Speech", "sounds": "Sounds"}
# AVLnet Table 4 (YouCook2 validation, R@10, percent): set -> setting -> (A->V, V->A)
PAPER_TABLE4 = {"speech": {"zero_shot": (88.0, 88.0), "fine_tuned": (92.5, 91.7)},
                "sounds": {"zero_shot": (32.4, 33.6), "fine_tuned": (44.0, 46.8)}}
PAPER_N = 241


def read_subsets(path: Path) -> dict:
    """subsets.json of stage speech@<ds> -> its dict; EvaluateError naming the stage if absent."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EvaluateError(f"{path}: not found; run stage speech@<dataset> first") from None
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluateError(f"{path}: unreadable ({e}); re-run stage speech@<dataset>") from None


def evaluate_subsets(dataset: str, features: Path, manifest_dir: Path,
                     checkpoints: dict[str, Path], subsets_file: Path, out_dir: Path, *,
                     batch: int = 64, device: str = "cpu", clip_frames: int = 0,
                     allow_missing: bool = False, verify: str = "sha256") -> dict:
    """Scores every setting on both sets; writes the reports -> the flat metrics."""
    sets = read_subsets(subsets_file)
    pp = prepare(dataset, features, manifest_dir, checkpoints, out_dir, text=False,
                 device=device, clip_frames=clip_frames, allow_missing=allow_missing,
                 verify=verify)
    if sets["split"] != pp.split:
        raise EvaluateError(f"{subsets_file}: its sets come from split {sets['split']}, the "
                            f"evaluation split is {pp.split}; re-run stage speech@{dataset}")
    by_id = {c.clip_id: c for c in pp.clips}
    results: dict = {}
    counts = {}
    for name in SETS:
        ids = sets[name]
        refs = [by_id[i] for i in ids if i in by_id]
        ds = AnnotatedClips(pp.store, refs, pp.ds.frames, pp.ds.visual) if refs else None
        counts[name] = {"official": len(ids), "present": len(ds) if ds else 0}
        for setting, mf in pp.models.items():
            if ds is None or not len(ds):
                log.warning("%s: the %s set is empty: not scored", dataset, SETS[name])
                continue
            e = embed(mf.model, DataLoader(ds.with_visual(visual_of(mf.model)),
                                           batch_size=batch, collate_fn=collate_clips), pp.dev)
            a, v = e["audio"], e["video"]
            m = metrics_from_ranks(ranks_from_embeddings(a, v).numpy(),
                                   ranks_from_embeddings(v, a).numpy(), n_official=len(ids))
            results.setdefault(name, {})[setting] = setting_result(mf, pp.present[setting], m)
            log.info("%s %s-%d %s: R@10 A->V %.3f, V->A %.3f", dataset, SETS[name], len(ids),
                     setting, m["paper"]["audio_to_video_R@10"],
                     m["paper"]["video_to_audio_R@10"])
    flat = {f"{n}/{s}/{proto}/{k}": v for n, r in results.items() for s, x in r.items()
            for proto, mm in x["metrics"].items() for k, v in mm.items()}
    head = {k.replace("/paper/", "/"): v for k, v in flat.items()
            if "/paper/" in k and "_R@" in k}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(head, out_dir / f"{dataset}.json")
    write_json_atomic({"dataset": dataset, "provenance": pp.prov, "sets": sets,
                       "counts": counts, "results": results, "metrics": flat,
                       "chance": {n: chance(c["official"]) for n, c in counts.items()}},
                      out_dir / dataset / "details.json")
    _write_text_atomic(markdown(dataset, sets, counts, results), out_dir / f"{dataset}.md")
    return flat


def markdown(dataset: str, sets: dict, counts: dict, results: dict) -> str:
    """Table 4's layout: rows = set x setting, columns A->V and V->A R@1/5/10 (percent)."""
    head = ["| set | setting | source | A->V R@1 | R@5 | R@10 | V->A R@1 | R@5 | R@10 |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, label in SETS.items():
        n = counts[name]["official"]
        ch = chance(n) if n else {f"R@{k}": 0.0 for k in KS}
        cells = " | ".join(f"{100 * ch[f'R@{k}']:.1f}" for k in KS)
        rows.append(f"| {label}-{n} | random (chance) | expected | {cells} | {cells} |")
        for setting in ("zero_shot", "fine_tuned"):
            if setting in PAPER_TABLE4[name]:
                av, va = PAPER_TABLE4[name][setting]
                rows.append(f"| {label}-{PAPER_N} (YouCook2) | {setting} | paper | | | "
                            f"{av:.1f} | | | {va:.1f} |")
        for setting, r in results.get(name, {}).items():
            m = r["metrics"]["paper"]
            rows.append(f"| {label}-{n} | {setting} | ours | "
                        + " | ".join(f"{100 * m[f'audio_to_video_R@{k}']:.1f}" for k in KS)
                        + " | "
                        + " | ".join(f"{100 * m[f'video_to_audio_R@{k}']:.1f}" for k in KS)
                        + " |")
    detector = sets.get("detector", "?")
    lines = [f"# Speech vs sounds: retrieval on {dataset} ({sets['split']})", "",
             f"Sets found by {detector} (stage speech@{dataset}): "
             f"{sets['clips_with_speech']} {sets['split']} clips with speech, "
             f"{sets['clips_without_speech']} without. Sounds-N: the clips without speech; "
             f"Speech-N: N clips with speech drawn at random (seed {sets['seed']}). The paper's "
             f"sets are YouCook2's validation clips with and without ASR words (N = "
             f"{PAPER_N}; it reports R@10 only). R@K in percent, paper protocol (clips without "
             "features count as failures).", ""]
    if sets.get("agreement") is not None:
        lines += [f"The detector agrees with the ground truth ({sets['truth']}) on "
                  f"{100 * sets['agreement']:.1f} % of {sets['agreement_clips']} clips.", ""]
    missing = {n: c["official"] - c["present"] for n, c in counts.items()
               if c["official"] > c["present"]}
    if missing:
        lines += ["Clips without features: " + ", ".join(f"{SETS[n]} {k}"
                                                       for n, k in missing.items()), ""]
    return "\n".join(lines + head + rows) + "\n"

