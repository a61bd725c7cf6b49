"""The language cascade (thesis ch. 5, Table 5.1; extensions.md §4): train a target dataset's
"target only" model (and the cascade pretrain -> source -> target), then score every row on the
source's and the target's eval splits and write the Table 5.1 report.

Inputs: the pretrained model (zero-shot), finetune@<source>'s and finetune@<target>'s models,
both datasets' feature stores and manifests. Outputs: <out>/target-only/ and <out>/cascade/
(run folders of pipeline/learn/train.py: checkpoints, resume, stale/ as finetune@'s),
<out>/summary.json, reports/transfer/<target>.json (flat numbers for `dvc metrics`) and
reports/transfer/<target>.md (the tables, rendered from that dict)."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from torch.utils.data import DataLoader

from pipeline.config import FinetuneParams, TrainParams, TransferParams
from pipeline.data.manifest import write_json_atomic
from pipeline.evaluate.metrics import DIRECTIONS, KS, chance, metrics_from_ranks, \
    ranks_from_embeddings
from pipeline.evaluate.recall import prepare, setting_result
from pipeline.learn.runs import collate_clips, finetune, load_clips
from pipeline.learn.sampling import eval_split, train_split
from pipeline.learn.train import FINAL, embed
from pipeline.safety import UserError

log = logging.getLogger(__name__)

# the rows of Table 5.1, in its order; "random" is chance, the others one checkpoint each
ROWS = ("random", "target_only", "zero_shot", "source_finetune", "target_finetune", "cascade")
ROLES = ("source", "target")
TARGET_ONLY, CASCADE = "target-only", "cascade"      # run folders under the stage's --out


class TransferError(UserError):
    """A missing input model or dataset, source == target, a target with no train clips."""


@dataclasses.dataclass(frozen=True)
class Side:
    """One dataset of the transfer: its name, feature store and manifest folders."""

    name: str
    features: Path
    manifest: Path


def input_models(models: Path, source: str, target: str) -> dict[str, tuple[Path, str]]:
    """Row -> (the checkpoint the stage reads, the stage that makes it)."""
    return {"zero_shot": (models / "pretrain" / FINAL, "train"),
            "source_finetune": (models / f"finetune-{source}" / FINAL, f"finetune@{source}"),
            "target_finetune": (models / f"finetune-{target}" / FINAL, f"finetune@{target}")}


def row_checkpoints(models: Path, out: Path, source: str, target: str, cascade: bool
                    ) -> dict[str, Path]:
    """Row -> checkpoint, in Table 5.1's order (random has none)."""
    rows = {"target_only": out / TARGET_ONLY / FINAL,
            **{r: p for r, (p, _) in input_models(models, source, target).items()}}
    if cascade:
        rows["cascade"] = out / CASCADE / FINAL
    return {r: rows[r] for r in ROWS if r in rows}


def check_inputs(source: Side, target: Side, models: Path) -> None:
    """Every input present before any training: TransferError in one line naming the file and
    the stage that makes it."""
    if source.name == target.name:
        raise TransferError(f"transfer@{target.name}: the source is the target itself; give "
                            "another dataset as the source (transfer.targets.<target>: <source>)")
    for path, stage in input_models(models, source.name, target.name).values():
        if not path.is_file():
            raise TransferError(f"{path}: not found; stage {stage} makes it (`dvc repro "
                                f"{stage}`)")
    for side in (source, target):
        for f in ("clips.parquet", "manifest.json"):
            if not (side.manifest / f).is_file():
                raise TransferError(f"{side.manifest / f}: not found; stage manifest@{side.name} "
                                    f"makes it (`dvc repro manifest@{side.name}`)")
        if not side.features.is_dir():
            raise TransferError(f"{side.features}: no feature store; stage extract@{side.name} "
                                f"makes it (`dvc repro extract@{side.name}`)")
        split = eval_split(side.name, side.manifest)
        if not load_clips(side.manifest, split):
            raise TransferError(f"{side.manifest / 'clips.parquet'}: {side.name} has no {split} "
                                "clips to evaluate on")
    split = train_split(target.name, target.manifest)
    if split is None or not load_clips(target.manifest, split):
        raise TransferError(f"{target.manifest / 'clips.parquet'}: target {target.name} has no "
                            f"{split or 'train'} clips to fine-tune on (build its clips with "
                            "split train, e.g. stage segment@)")


def train_rows(target: Side, source_model: Path, out: Path, tp: TrainParams,
               fp: FinetuneParams, cascade: bool, target_only_epochs: int = 0
               ) -> dict[str, dict]:
    """The rows this stage trains, with finetune@'s code path (resumable run folders):
    target only (fp's recipe from scratch, as finetune.init none, with BatchNorm trained,
    train.lr and `target_only_epochs` epochs when > 0) in out/target-only, and with
    `cascade` finetune@<source>'s model fine-tuned onto the target in out/cascade -> row ->
    training summary."""
    # from scratch a model has no BatchNorm statistics to keep and no features to protect with
    # a small step: the target-only baseline learns them (bn_mode train) at pretraining's lr
    scratch = dataclasses.replace(fp, init="none", bn_mode="train", lr=tp.lr,
                                  epochs=target_only_epochs or fp.epochs)
    done = {"target_only": finetune(target.name, target.features, target.manifest, None,
                                    out / TARGET_ONLY, tp, scratch)}
    if cascade:
        done["cascade"] = finetune(target.name, target.features, target.manifest,
                                   source_model, out / CASCADE, tp,
                                   dataclasses.replace(fp, init="pretrained"))
    return done


def score(side: Side, checkpoints: dict[str, Path], reports: Path, p: TransferParams,
          clip_frames: int) -> dict:
    """Every row's checkpoint on `side`'s eval split (recall.prepare's checks and loading;
    the paper protocol: missing clips count as failures) -> {"dataset", "split", "clips_official",
    "clips_present", "provenance", "rows": row -> recall.setting_result (metrics: paper)}."""
    pp = prepare(side.name, side.features, side.manifest, checkpoints, reports, text=False,
                 device=p.device, clip_frames=clip_frames, verify=p.verify)
    rows = {}
    for row, path in pp.present.items():
        mf = pp.models[row]
        loader = DataLoader(pp.ds_for(row), batch_size=p.batch, collate_fn=collate_clips)
        e = embed(mf.model, loader, pp.dev)
        m = metrics_from_ranks(ranks_from_embeddings(e["audio"], e["video"]).numpy(),
                               ranks_from_embeddings(e["video"], e["audio"]).numpy(),
                               n_official=len(pp.clips))
        rows[row] = setting_result(mf, path, m["paper"])
        log.info("%s on %s: A->V R@1/5/10 %s", row, side.name,
                 "/".join(f"{m['paper'][f'audio_to_video_R@{k}']:.3f}" for k in KS))
        mf.model.cpu()
    return {"dataset": side.name, "split": pp.split, "clips_official": len(pp.clips),
            "clips_present": len(pp.ds), "provenance": pp.prov, "rows": rows}


def flat_metrics(scored: dict[str, dict]) -> dict[str, float]:
    """role -> score() -> "<row>/<role>/<direction>_R@K" and "..._median_rank" (random: the
    chance of the split's official clip count): the stage's metrics JSON."""
    out = {}
    for role, s in scored.items():
        ch = chance(s["clips_official"])
        for d in DIRECTIONS:
            out |= {f"random/{role}/{d}_R@{k}": ch[f"R@{k}"] for k in KS}
            out[f"random/{role}/{d}_median_rank"] = ch["median_rank"]
        for row, r in s["rows"].items():
            out |= {f"{row}/{role}/{d}_{m}": r["metrics"][f"{d}_{m}"] for d in DIRECTIONS
                    for m in (*(f"R@{k}" for k in KS), "median_rank")}
    return {k: out[k] for r in ROWS for k in out if k.split("/")[0] == r}


def labels(source: str, target: str, pretrained_on: str | None) -> dict[str, str]:
    """Table 5.1's row names for these datasets."""
    return {"random": "random (chance)", "target_only": "target only (from scratch)",
            "zero_shot": f"zero-shot ({pretrained_on or 'pretrained'} pretraining)",
            "source_finetune": f"+ {source} fine-tune", "target_finetune": f"+ {target} fine-tune",
            "cascade": f"+ {source} then {target}"}


def verdict(flat: dict[str, float], target: str, split: str) -> list[str]:
    """Plain sentences: does fine-tuning onto the target (from the pretrained model, and the
    cascade) beat target only on the target's eval split, A->V R@1, R@5 and R@10?"""
    out = []
    for row, name in (("target_finetune", "fine-tuning the pretrained model onto"),
                      ("cascade", "the cascade (source, then)")):
        if f"{row}/target/audio_to_video_R@1" not in flat:
            continue
        parts, wins = [], 0
        for k in (1, 5, 10):
            a, b = (flat[f"{r}/target/audio_to_video_R@{k}"] for r in (row, "target_only"))
            wins += a > b
            parts.append(f"R@{k} {100 * a:.1f} vs {100 * b:.1f} "
                         f"({'beats' if a > b else 'does not beat'})")
        word = "Yes" if wins == 3 else "Partly" if wins else "No"
        out.append(f"- {word}: {name} {target} vs target only on {target}'s {split} split "
                   f"(A->V): {'; '.join(parts)}.")
    return out


def markdown(report: dict) -> str:
    """Table 5.1 layout from the report dict (never recomputed): A->V and V->A tables, rows x
    (source, target) R@1/R@5/R@10 in percent; the verdict; each row's checkpoint."""
    src, tgt, flat = report["source"], report["target"], report["metrics"]
    lab = labels(src, tgt, report["pretrained_on"])
    ev = report["eval"]
    lines = [f"# Transfer to {tgt} from {src} (thesis Table 5.1 layout)", "",
             "Recall in percent, paper protocol (clips without features count as failures; ties "
             "ranked pessimistically). Eval splits: "
             + "; ".join(f"{ev[r]['dataset']} ({r}) {ev[r]['split']}, {ev[r]['clips_present']} "
                         f"of {ev[r]['clips_official']} clips with features" for r in ROLES)
             + ".", ""]
    for d, arrow in DIRECTIONS.items():
        lines += [f"## {arrow}", "",
                  f"| train | {src} R@1 | R@5 | R@10 | {tgt} R@1 | R@5 | R@10 |",
                  "|---|---|---|---|---|---|---|"]
        for row in ROWS:
            if f"{row}/target/{d}_R@1" not in flat:
                continue
            cells = [f"{100 * flat[f'{row}/{role}/{d}_R@{k}']:.1f}" for role in ROLES for k in KS]
            lines.append(f"| {lab[row]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Does fine-tuning onto the target beat target only?", "",
              *verdict(flat, tgt, ev["target"]["split"]), "", "## Checkpoints", ""]
    for row, c in report["checkpoints"].items():
        t = c["trained_on"]
        on = (f"trained on {t.get('dataset')} {t.get('split')} ({t.get('clips') or t.get('videos')}"
              f" {'clips' if t.get('clips') else 'videos'}), init {t.get('init') or 'none'}"
              if t else "no provenance recorded")
        lines.append(f"- {lab[row]}: `{c['checkpoint']}` (sha256 `{c['checkpoint_sha256'][:16]}`);"
                     f" {on}")
    return "\n".join(lines) + "\n"


def transfer(target: Side, source: Side, models: Path, out: Path, reports: Path,
             tp: TrainParams, fp: FinetuneParams, p: TransferParams) -> dict:
    """Checks the inputs, trains the target-only (and cascade) rows, scores every row on both
    eval splits, writes out/summary.json, reports/<target>.json and .md -> the report dict
    (source, target, pretrained_on, eval, metrics, checkpoints, trained)."""
    check_inputs(source, target, models)
    checkpoints = row_checkpoints(models, out, source.name, target.name, p.cascade)
    trained = train_rows(target, checkpoints["source_finetune"], out, tp, fp, p.cascade,
                         p.target_only_epochs)
    scored = {role: score(side, checkpoints, reports, p, fp.clip_frames)
              for role, side in zip(ROLES, (source, target))}
    rows = scored["target"]["rows"]
    report = {"source": source.name, "target": target.name,
              "pretrained_on": rows["zero_shot"]["trained_on"].get("dataset"),
              "eval": {role: {k: s[k] for k in ("dataset", "split", "clips_official",
                                                "clips_present")}
                       for role, s in scored.items()},
              "metrics": flat_metrics(scored),
              "checkpoints": {r: {k: rows[r][k] for k in ("checkpoint", "checkpoint_sha256",
                                                          "trained_on")} for r in rows},
              "trained": trained}
    if (rows["target_finetune"]["trained_on"] or {}).get("init") is None:
        log.warning("%s: finetune@%s's model was trained from scratch (finetune.init none), not "
                    "from the pretrained model: its row is not Table 5.1's", target.name,
                    target.name)
    write_json_atomic({"source": source.name, "target": target.name, "cascade": p.cascade,
                       "trained": trained, "params": dataclasses.asdict(p)},
                      out / "summary.json")
    reports.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report["metrics"], reports / f"{target.name}.json")
    md = reports / f"{target.name}.md"
    tmp = md.with_name(f".{md.name}.tmp-{os.getpid()}")
    tmp.write_text(markdown(report))
    os.replace(tmp, md)
    for line in verdict(report["metrics"], target.name, report["eval"]["target"]["split"]):
        log.info("%s", line)
    return report
