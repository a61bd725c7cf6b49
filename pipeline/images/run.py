"""One images run (the stage's body): pairs manifests -> decoded cache -> the 2D-only AVLnet to
start from (pretrained here when images.init is pretrain-2d) -> fine-tuned with the encoder
frozen and with it trained -> reports/images/<set>.{json,md} beside AVLnet Table 2."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from pipeline.config import ImagesParams, TrainParams
from pipeline.data.manifest import write_json_atomic
from pipeline.images.finetune import PAPER, PAPER_RESDAVENET, finetune
from pipeline.images.load import decode_pairs, open_cache
from pipeline.images.manifest import OK, read_pairs, write_pairs
from pipeline.safety import UserError

log = logging.getLogger(__name__)

DIRECTIONS = {"audio_to_image": "A->I", "image_to_audio": "I->A"}
KS = (1, 5, 10)
PRETRAIN_2D = "pretrain-2d"


class ImagesError(UserError):
    """Too many unusable pairs, no train / val pairs, or no 2D-only model to start from."""


def initial_model(p: ImagesParams, out_dir: Path, train: TrainParams | None,
                  pretrain_data: tuple[Path, Path] | None) -> str:
    """The checkpoint the fine-tunes start from -> a path, or 'none'. For images.init
    pretrain-2d: pretrains a 2D-only AVLnet on train.dataset's (features, manifest) with the
    train section's recipe into out_dir/pretrain-2d (resumed when killed)."""
    if p.init != PRETRAIN_2D:
        if p.init != "none" and not Path(p.init).is_file():
            raise ImagesError(f"images.init {p.init!r}: no such checkpoint; give a 2D-only "
                              f"AVLnet's final.pt (a train run with train.model.visual: 2d), "
                              f"{PRETRAIN_2D} or none")
        return p.init
    if train is None or pretrain_data is None:
        raise ImagesError(f"images.init {PRETRAIN_2D} pretrains on train.dataset's features: "
                          "give --features and --manifest (or images.init: a checkpoint)")
    from pipeline.learn.runs import pretrain
    tp = dataclasses.replace(train, model=dataclasses.replace(train.model, visual="2d"))
    out = out_dir / PRETRAIN_2D
    log.info("pretraining a 2D-only AVLnet on %s (train section, model.visual 2d) -> %s",
             train.dataset, out)
    pretrain(train.dataset, pretrain_data[0], pretrain_data[1], out, tp)
    return str(out / "final.pt")


def run_images(sources: list[tuple[Path, str]], out_dir: Path, p: ImagesParams,
               report: Path | None = None, train: TrainParams | None = None,
               pretrain_data: tuple[Path, Path] | None = None) -> dict:
    """(file, split) manifests (Places JSON or CSV list; splits train and val) -> out_dir/
    {pairs.parquet, cache/, pretrain-2d/, frozen/, <encoder>/ (model.pt, metrics.json)} and the
    report dict, also written to report.json and report.md when `report` (a path without
    suffix) is given. ImagesError when more than p.max_failure_fraction of the pairs are
    unusable."""
    out_dir = Path(out_dir)
    rows = read_pairs(sources)
    other = sorted({r["split"] for r in rows} - {"train", "val"})
    if other:
        raise ImagesError(f"split(s) {other}: images uses train and val only (give each "
                          "manifest as train=FILE or val=FILE; a CSV's split column too)")
    decode_pairs(rows, out_dir / "cache", p.resize, p.image_size, p.audio_frames)
    counts = write_pairs(rows, out_dir / "pairs.parquet")
    bad = sum(r["status"] != OK for r in rows)
    if rows and bad / len(rows) > p.max_failure_fraction:
        raise ImagesError(f"{bad} of {len(rows)} pairs are unusable ({counts}); see the status "
                          f"and error columns of {out_dir / 'pairs.parquet'}, or raise "
                          f"images.max_failure_fraction ({p.max_failure_fraction})")
    ids = {s: [r["pair_id"] for r in rows if r["split"] == s and r["status"] == OK]
           for s in ("train", "val")}
    if len(ids["train"]) < 2 or not ids["val"]:          # before any pretraining
        raise ImagesError(f"{len(ids['train'])} usable train and {len(ids['val'])} usable val "
                          f"pairs ({counts}): fine-tuning needs at least 2 train pairs and 1 "
                          f"val pair; see {out_dir / 'pairs.parquet'}")
    init = initial_model(p, out_dir, train, pretrain_data)
    q = dataclasses.replace(p, init=init)
    cache = open_cache(out_dir / "cache")
    labels = {r["pair_id"]: r["label"] for r in rows if r.get("label") is not None}
    unlabelled = sum(i not in labels for i in ids["val"])
    if labels and unlabelled:
        log.warning("%d of %d val pairs have no label: the report has no label recall",
                    unlabelled, len(ids["val"]))
    runs = {}
    for mode in (["frozen"] if p.frozen_baseline else []) + [p.encoder]:
        log.info("fine-tuning with the encoder %s on %d train pairs", mode, len(ids["train"]))
        runs[mode] = finetune(q, cache, ids["train"], ids["val"], out_dir / mode, encoder=mode,
                              labels=labels)
        log.info("%s: val %s", mode, _summary(runs[mode]["after"]))
    first = next(iter(runs.values()))
    result = {"init": p.init, "init_checkpoint": init, "encoder": p.encoder,
              "n_train": len(ids["train"]), "n_val": len(ids["val"]), "statuses": counts,
              "before": first["before"],
              "chance": {f"{what}R@{k}": first["after"][f"chance_{what}R@{k}"]
                         for what in ("", "label_") for k in KS
                         if f"chance_{what}R@{k}" in first["after"]},
              "after": {m: r["after"] for m, r in runs.items()},
              "steps": {m: len(r["losses"]) for m, r in runs.items()},
              "seconds": {m: round(r["seconds"], 1) for m, r in runs.items()},
              "weights": first["weights"], "paper_table2": PAPER,
              "paper_table2_resdavenet": PAPER_RESDAVENET}
    result["verdict"] = verdict(result)
    for line in result["verdict"]:
        log.info("%s", line)
    if report is not None:
        write_report(result, Path(report))
    return result


def _summary(m: dict) -> str:
    return ", ".join(f"{a} R@1/5/10 " + "/".join(f"{100 * m[f'{d}_R@{k}']:.1f}" for k in KS)
                     for d, a in DIRECTIONS.items())


def verdict(result: dict) -> list[str]:
    """Plain sentences: does the trained encoder beat the frozen one, and chance, on val
    (both directions, R@1/5/10; then the label recall, when the pairs are labelled)?"""
    after, enc = result["after"], result["encoder"]
    out = []
    for what in ("", "label_"):
        if f"{what}R@1" not in result["chance"]:
            continue
        for base in ("frozen", "chance"):
            if base == "frozen" and "frozen" not in after:
                continue
            parts, wins = [], 0
            for d, arrow in DIRECTIONS.items():
                for k in KS:
                    a = after[enc][f"{d}_{what}R@{k}"]
                    b = (after["frozen"][f"{d}_{what}R@{k}"] if base == "frozen"
                         else result["chance"][f"{what}R@{k}"])
                    wins += a > b
                    parts.append(f"{arrow} R@{k} {100 * a:.1f} vs {100 * b:.1f}")
            n = 2 * len(KS)
            word = "Yes" if wins == n else "Partly" if wins else "No"
            vs = "the frozen encoder" if base == "frozen" else "chance"
            level = "the label recall" if what else "the pair recall"
            out.append(f"- {word} ({wins} of {n}), {level}: the {enc}-trained encoder vs {vs}: "
                       f"{'; '.join(parts)}.")
    return out


def markdown(result: dict) -> str:
    """The report page from the result dict (never recomputed)."""
    lines = [f"# Images with spoken captions: {result['name']}", "",
             f"A 2D-only AVLnet (init `{result['init']}`) fine-tuned on {result['n_train']} "
             f"image + spoken caption pairs, evaluated on {result['n_val']} val pairs. Recall "
             "in percent (ties ranked pessimistically). Visual encoder: ResNet-152, "
             f"weights `{result['weights'].get('weights')}`; trained part: `{result['encoder']}`.",
             "", "| model | A->I R@1 | R@5 | R@10 | I->A R@1 | R@5 | R@10 |",
             "|---|---|---|---|---|---|---|"]

    def row(name: str, m: dict, what: str = "") -> str:
        return f"| {name} | " + " | ".join(f"{100 * m[f'{d}_{what}R@{k}']:.1f}"
                                           for d in DIRECTIONS for k in KS) + " |"

    def rows(what: str) -> list[str]:
        chance = {f"{d}_{what}R@{k}": result["chance"][f"{what}R@{k}"] for d in DIRECTIONS
                  for k in KS}
        start = ("the 2D-only pretrained model" if result["init"] != "none" else
                  "from scratch")
        out = [row("chance", chance, what),
               row(f"before fine-tuning ({start})", result["before"], what)]
        for mode, m in result["after"].items():
            kind = "frozen encoder" if mode == "frozen" else f"encoder trained ({mode})"
            out.append(row(f"fine-tuned, {kind}", m, what))
        return out

    lines += rows("")
    for name, key in (("AVLnet", "paper_table2"), ("ResDAVEnet", "paper_table2_resdavenet")):
        paper = {f"{d}_R@{k}": v / 100 for d in DIRECTIONS
                 for k, v in zip(KS, result[key][d])}
        lines.append(row(f"paper Table 2, {name} (Places 400k, 1k test pairs)", paper))
    if "label_R@1" in result["chance"]:
        lines += ["", "### Label recall", "",
                  "A hit when one of the top K shows the query's label (the pairs' `label`: the "
                  "demo's concept), whichever pair it is: did the model match what the caption "
                  "names? The pair recall above also asks for the very image, which a caption "
                  "that only names its concept cannot single out among the val pairs of that "
                  "concept.",
                  "", "| model | A->I R@1 | R@5 | R@10 | I->A R@1 | R@5 | R@10 |",
                  "|---|---|---|---|---|---|---|", *rows("label_")]
    lines += ["", "## Does training the visual encoder help?", "", *result["verdict"], "",
              "Pairs by split and status: " + "; ".join(
                  f"{split} " + ", ".join(f"{k} {v}" for k, v in sorted(st.items()))
                  for split, st in sorted(result["statuses"].items())) + ". "
              "Steps: " + ", ".join(f"{m} {n}" for m, n in result["steps"].items()) + "; "
              "seconds: " + ", ".join(f"{m} {s}" for m, s in result["seconds"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(result: dict, report: Path) -> None:
    """report.json (the result) and report.md (markdown()), each written atomically."""
    report.parent.mkdir(parents=True, exist_ok=True)
    result = {"name": report.name, **result}
    write_json_atomic(result, report.with_suffix(".json"))
    md = report.with_suffix(".md")
    tmp = md.with_name(f".{md.name}.tmp-{os.getpid()}")
    tmp.write_text(markdown(result))
    os.replace(tmp, md)
