"""Stage transfer@<target> on two small synthetic datasets ("source" and "target"): the Table 5.1
rows on both eval splits, the report's layout, the resume of the rows it trains, bad inputs."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import FinetuneParams, ModelParams, TrainParams, to_dict
from pipeline.data.sources import sha256_file
from pipeline.features.store import ShardWriter, VideoRecord, recipe_sha256, write_index
from pipeline.learn.runs import finetune, pretrain
from pipeline.config import TransferParams
from pipeline.learn.transfer import ROWS, Side, TransferError, transfer
from pipeline.learn.train import FINAL
from stages.transfer import main as transfer_main
from tests.test_evaluate import K, _arrays

TP = TrainParams(model=ModelParams(embed_dim=32, audio_widths=[8, 16, 16, 32]), epochs=2,
                 videos_per_batch=6, clips_per_video=2, workers=0, seed=0, device="cpu")
FP = FinetuneParams(batch=8, epochs=2, lr=1e-4)


def build_dataset(d: Path, name: str, shift: int) -> Side:
    """d/<name>-features and d/<name>-manifest: 18 videos of 10 s (12 train, 6 val), 2 clips
    each; `shift` rolls the concept's mel bands (another language, the same concepts)."""
    rng = np.random.default_rng(shift)
    recipe = {"dtype": "float16", "note": "synthetic"}
    store, m = d / f"{name}-features", d / f"{name}-manifest"
    w = ShardWriter(store / "shard-00000.h5", recipe)
    videos, clips = [], []
    for i in range(18):
        vid, split = f"{name}{i:03d}", ("train" if i < 12 else "val")
        arrays = _arrays(i % K, 10, rng)
        arrays["logmel"] = np.roll(arrays["logmel"], shift, axis=0)
        w.add(VideoRecord(vid, "ok", {"recipe_sha256": recipe_sha256(recipe)}, arrays))
        videos.append({"video_id": vid, "url": f"file:{vid}", "split": split,
                       "duration_s": 10.0})
        clips += [{"clip_id": f"{vid}:{j}", "video_id": vid, "split": split,
                   "start_s": 1.0 + 5 * j, "end_s": 4.0 + 5 * j, "text": "x", "source": "test"}
                  for j in range(2)]
    write_index(w.close(), store / "index.parquet")
    (store / "recipe.json").write_text(json.dumps(recipe))
    m.mkdir()
    pq.write_table(pa.Table.from_pylist(videos), m / "videos.parquet")
    pq.write_table(pa.Table.from_pylist(clips), m / "clips.parquet")
    (m / "manifest.json").write_text(json.dumps({
        "splits": {"train": {"clip_checksum": "t" * 64}, "val": {"clip_checksum": "v" * 64}},
        "roles": {"train": "train", "eval": "val"}, "clip_frames": 512}))
    return Side(name, store, m)


def params_file(d: Path) -> Path:
    """A params file with datasets source and target (custom) and the tiny recipes above."""
    f = d / "params.yaml"
    f.write_text(yaml.safe_dump({
        "datasets": {"source": "custom", "target": "custom"},
        "train": {**to_dict(TP), "dataset": "source"},
        "finetune": {**to_dict(FP), "datasets": ["source", "target"]},
        "evaluate": {"datasets": []},
        "transfer": {"target_only_epochs": FP.epochs + 1}}, sort_keys=False))
    return f


def stage(d: Path, *extra: str) -> int:
    src, tgt = d / "source", d / "target"
    return transfer_main(["--dataset", "target", "--source-dataset", "source",
                          "--params", str(d / "params.yaml"),
                          "--features", str(tgt) + "-features",
                          "--manifest", str(tgt) + "-manifest",
                          "--source-features", str(src) + "-features",
                          "--source-manifest", str(src) + "-manifest",
                          "--models", str(d / "models"),
                          "--out", str(d / "models/transfer-target"),
                          "--reports", str(d / "reports"), *extra])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Pretrained on source, fine-tuned on each (finetune@'s code), then stage transfer@target."""
    d = tmp_path_factory.mktemp("transfer")
    src, tgt = build_dataset(d, "source", 0), build_dataset(d, "target", 5)
    params_file(d)
    models = d / "models"
    pretrain("source", src.features, src.manifest, models / "pretrain", TP)
    for side in (src, tgt):
        finetune(side.name, side.features, side.manifest, models / "pretrain" / FINAL,
                 models / f"finetune-{side.name}", TP, FP)
    assert stage(d) == 0
    return d


def test_rows_on_both_datasets(project):
    flat = json.loads((project / "reports/target.json").read_text())
    for row in ROWS:
        for role in ("source", "target"):
            for direction in ("audio_to_video", "video_to_audio"):
                for k in (1, 5, 10):
                    assert 0 <= flat[f"{row}/{role}/{direction}_R@{k}"] <= 1
                assert flat[f"{row}/{role}/{direction}_median_rank"] >= 1
    # chance over the 12 val clips of each
    assert flat["random/target/audio_to_video_R@10"] == pytest.approx(10 / 12)
    assert flat["random/source/video_to_audio_R@1"] == pytest.approx(1 / 12)
    assert len(flat) == len(ROWS) * 2 * 2 * 4
    # the rows it trained: target only from scratch, the cascade from finetune@source's model
    run = project / "models/transfer-target"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["source"] == "source" and set(summary["trained"]) == {"target_only", "cascade"}
    only = json.loads((run / "target-only/summary.json").read_text())["provenance"]
    cascade = json.loads((run / "cascade/summary.json").read_text())["provenance"]
    assert only["init"] is None and only["dataset"] == "target" and only["clips"] == 24
    # transfer.target_only_epochs: the model from scratch trains longer than the fine-tuned rows
    epochs = {r: json.loads((run / f / "summary.json").read_text())["epochs"]
              for r, f in (("only", "target-only"), ("cascade", "cascade"))}
    assert epochs == {"only": FP.epochs + 1, "cascade": FP.epochs}
    assert cascade["init"] == str(project / "models/finetune-source" / FINAL)


def test_markdown_layout(project):
    md = (project / "reports/target.md").read_text()
    assert md.startswith("# Transfer to target from source (thesis Table 5.1 layout)")
    assert md.count("| train | source R@1 | R@5 | R@10 | target R@1 | R@5 | R@10 |") == 2
    a2v, v2a = md.split("## A->V")[1].split("## V->A")
    labels = ["random (chance)", "target only (from scratch)", "zero-shot (source pretraining)",
              "+ source fine-tune", "+ target fine-tune", "+ source then target"]
    for table in (a2v, v2a.split("## Does")[0]):
        rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
        assert [r.split(" | ")[0][2:] for r in rows] == labels
        assert all(len(r.split("|")) == 9 for r in rows)
    assert "| random (chance) | 8.3 | 41.7 | 83.3 | 8.3 | 41.7 | 83.3 |" in a2v
    verdicts = md.split("## Does fine-tuning onto the target beat target only?")[1]
    assert verdicts.count("vs target only on target's val split (A->V): R@1 ") == 2
    assert ("beat" in verdicts) and verdicts.lstrip().startswith(("- Yes", "- Partly", "- No"))
    for f in ("target-only", "cascade"):
        path = project / "models/transfer-target" / f / FINAL
        assert f"`{path}` (sha256 `{sha256_file(path)[:16]}`)" in md
    assert f"sha256 `{sha256_file(project / 'models/pretrain' / FINAL)[:16]}`" in md


def test_second_run_does_not_retrain(project):
    run = project / "models/transfer-target"
    logs = {f: (run / f / "log.jsonl").read_text() for f in ("target-only", "cascade")}
    finals = {f: sha256_file(run / f / FINAL) for f in logs}
    before = json.loads((project / "reports/target.json").read_text())
    assert stage(project) == 0
    for f in logs:
        assert (run / f / "log.jsonl").read_text() == logs[f]
        assert sha256_file(run / f / FINAL) == finals[f]
    assert json.loads((project / "reports/target.json").read_text()) == before


def _sides(d: Path) -> tuple[Side, Side]:
    return (Side("target", d / "target-features", d / "target-manifest"),
            Side("source", d / "source-features", d / "source-manifest"))


def test_a_missing_model_names_the_stage_that_makes_it(project, tmp_path):
    tgt, src = _sides(project)
    models = tmp_path / "models"
    with pytest.raises(TransferError, match=r"pretrain/final.pt: not found; stage train makes"):
        transfer(tgt, src, models, tmp_path / "out", tmp_path / "r", TP, FP, TransferParams())
    shutil.copytree(project / "models/pretrain", models / "pretrain")
    with pytest.raises(TransferError, match=r"finetune-source/final.pt: not found; stage "
                                            r"finetune@source makes it"):
        transfer(tgt, src, models, tmp_path / "out", tmp_path / "r", TP, FP, TransferParams())
    assert not (tmp_path / "out").exists() and not (tmp_path / "r").exists()


def test_the_stage_reports_a_missing_model_in_one_line(project, tmp_path, caplog):
    shutil.copytree(project / "models/pretrain", tmp_path / "models/pretrain")
    shutil.copytree(project / "models/finetune-source", tmp_path / "models/finetune-source")
    d = project
    with caplog.at_level(logging.INFO):
        rc = transfer_main(["--dataset", "target", "--source-dataset", "source",
                            "--params", str(d / "params.yaml"),
                            "--features", str(d / "target-features"),
                            "--manifest", str(d / "target-manifest"),
                            "--source-features", str(d / "source-features"),
                            "--source-manifest", str(d / "source-manifest"),
                            "--models", str(tmp_path / "models"), "--out", str(tmp_path / "o"),
                            "--reports", str(tmp_path / "r")])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in caplog.text
    assert "finetune-target/final.pt: not found; stage finetune@target" in errors[0]


def test_source_equal_to_target_is_refused(project, tmp_path):
    tgt, _ = _sides(project)
    with pytest.raises(TransferError, match="the source is the target itself"):
        transfer(tgt, tgt, project / "models", tmp_path / "o", tmp_path / "r", TP, FP,
                 TransferParams())
    from pipeline.config import ParamsError
    with pytest.raises(ParamsError, match="targets: demo: the source is the target"):
        TransferParams(targets={"demo": "demo"})
    assert stage(project, "--source-dataset", "target") == 2


def test_a_target_without_train_clips_is_refused(project, tmp_path):
    tgt, src = _sides(project)
    m = tmp_path / "target-manifest"
    shutil.copytree(tgt.manifest, m)
    clips = pq.read_table(m / "clips.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist([c for c in clips if c["split"] != "train"]),
                   m / "clips.parquet")
    with pytest.raises(TransferError, match="target target has no train clips to fine-tune on"):
        transfer(Side("target", tgt.features, m), src, project / "models", tmp_path / "o",
                 tmp_path / "r", TP, FP, TransferParams())
    assert not (tmp_path / "o").exists()


def test_no_source_given_or_configured_is_one_line(project, caplog):
    d = project
    with caplog.at_level(logging.INFO):
        rc = transfer_main(["--dataset", "target", "--params", str(d / "params.yaml")])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "transfer.targets has no source for target" in errors[0]
