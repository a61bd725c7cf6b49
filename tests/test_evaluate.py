"""Pretrain -> fine-tune -> evaluate on a small synthetic store: the stages' library functions
end to end, the reports, and the recall well above chance on learnable data."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import FinetuneParams, ModelParams, TrainParams
from pipeline.evaluate.recall import EvaluateError, evaluate
from pipeline.learn.runs import finetune, pretrain
from pipeline.features.store import ShardWriter, VideoRecord, recipe_sha256, write_index

K = 4


def _arrays(concept: int, seconds: int, rng) -> dict:
    """Features whose every row carries the concept (plus noise), like a real video's."""
    base_a = np.zeros((40, 1), np.float32)
    base_a[concept * 10:(concept + 1) * 10] = 30.0
    t = seconds * 100
    mel = -60 + base_a + 5 * rng.standard_normal((40, t))
    proto2 = np.zeros(2048, np.float32)
    proto2[concept * 512:(concept + 1) * 512] = 1.0
    proto3 = np.roll(proto2, 256)
    return {"resnet152": (proto2 + 0.3 * rng.random((seconds, 2048))).astype(np.float16),
            "resnext101": (proto3 + 0.3 * rng.random((int(seconds * 1.5), 2048))
                           ).astype(np.float16),
            "logmel": np.clip(mel, -80, 0).astype(np.float16)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return build_project(tmp_path_factory.mktemp("proj"))


def build_project(d):
    """Under folder d: features/ (24 synthetic videos of 14 s, 4 concepts, 16 train, 8 val),
    manifest/ (2 clips a video, plus a val clip of a video without features) -> d."""
    rng = np.random.default_rng(0)
    store = d / "features"
    recipe = {"dtype": "float16", "note": "synthetic"}
    w = ShardWriter(store / "shard-00000.h5", recipe)
    videos, clips = [], []
    for i in range(24):
        vid, split, concept = f"synthvid{i:03d}", ("train" if i < 16 else "val"), i % K
        w.add(VideoRecord(vid, "ok", {"recipe_sha256": recipe_sha256(recipe)},
                          _arrays(concept, 14, rng)))
        videos.append({"video_id": vid, "url": f"file:{vid}", "split": split,
                       "duration_s": 14.0})
        for j in range(2):
            clips.append({"clip_id": f"{vid}:{j}", "video_id": vid, "split": split,
                          "start_s": 1.0 + 6 * j, "end_s": 4.0 + 6 * j, "text": "x",
                          "source": "test"})
    rows = w.close()
    write_index(rows, store / "index.parquet")
    (store / "recipe.json").write_text(json.dumps(recipe))
    m = d / "manifest"
    m.mkdir()
    pq.write_table(pa.Table.from_pylist(videos), m / "videos.parquet")
    clips.append({"clip_id": "lostvideo01:0", "video_id": "lostvideo01", "split": "val",
                  "start_s": 0.0, "end_s": 3.0, "text": "x", "source": "test"})
    pq.write_table(pa.Table.from_pylist(clips), m / "clips.parquet")
    (m / "manifest.json").write_text(json.dumps({"splits": {
        "train": {"clip_checksum": "t" * 64}, "val": {"clip_checksum": "v" * 64}}}))
    return d


TP = TrainParams(model=ModelParams(embed_dim=32, audio_widths=[8, 16, 16, 32]), epochs=8,
                 videos_per_batch=8, clips_per_video=2, workers=0, seed=0)
FP = FinetuneParams(batch=16, epochs=3, lr=1e-4)


def test_pretrain_finetune_evaluate(project):
    d = project
    s = pretrain("demo", d / "features", d / "manifest", d / "models/pretrain", TP)
    assert s["steps"] == 8 * 2 and (d / "models/pretrain/final.pt").is_file()
    summary = json.loads((d / "models/pretrain/summary.json").read_text())
    assert summary["provenance"]["split_checksum"] == "t" * 64
    assert summary["provenance"]["videos"] == 16
    f = finetune("demo", d / "features", d / "manifest", d / "models/pretrain/final.pt",
                 d / "models/finetune-demo", TP, FP)
    assert f["steps"] == 3 * 2
    out = d / "reports"
    flat = evaluate("demo", d / "features", d / "manifest",
                    {"zero_shot": d / "models/pretrain/final.pt",
                     "fine_tuned": d / "models/finetune-demo/final.pt"}, out, examples=2)
    assert flat["zero_shot/paper/n_queries"] == 17 and flat["zero_shot/paper/n_missing"] == 1
    assert flat["fine_tuned/available/n_queries"] == 16
    for setting in ("zero_shot", "fine_tuned"):
        for direction in ("audio_to_video", "video_to_audio"):
            for k in (1, 5, 10):
                av = flat[f"{setting}/available/{direction}_R@{k}"]
                pp = flat[f"{setting}/paper/{direction}_R@{k}"]
                assert 0 <= pp <= av <= 1 and pp == pytest.approx(av * 16 / 17)
            assert flat[f"{setting}/paper/{direction}_median_rank"] >= 1
    # (learning itself is tested in test_train.py; 16 steps on a CPU here prove the plumbing)
    # dvc metrics: the headline numbers; details.json: all of them
    saved = json.loads((out / "demo.json").read_text())
    assert len(saved) == 16 and saved == pytest.approx(
        {k: v for k, v in flat.items()
         if "/paper/" in k and ("_R@" in k or k.endswith("_median_rank"))})
    details = json.loads((out / "demo" / "details.json").read_text())
    assert details["metrics"] == pytest.approx(flat, nan_ok=True)
    curve = (out / "curves" / "demo" / "zero_shot.csv").read_text().splitlines()
    # K stops at the 17 official clips (past n every curve is flat)
    assert curve[0] == "K,audio_to_video,video_to_audio,chance" and len(curve) == 1 + 17
    assert curve[-1].startswith("17,") and curve[-1].endswith(",1.0")
    assert float(curve[10].split(",")[1]) == flat["zero_shot/paper/audio_to_video_R@10"]
    md = (out / "demo.md").read_text()
    assert "random (chance, 17 clips)" in md and "ours, paper protocol" in md
    # the reference's median (present clips only) beside ours in the paper-protocol rows
    for setting in ("zero_shot", "fine_tuned"):
        ref = flat[f"{setting}/paper/audio_to_video_median_rank_present"]
        assert ref == flat[f"{setting}/available/audio_to_video_median_rank"]
        assert f"{setting}/paper/audio_to_video_median_rank_present" not in saved
    assert "median over the present clips only" in md
    assert (out / "demo.png").stat().st_size > 5000
    page = (out / "demo.html").read_text()
    # 2 settings x 2 queries x both directions; the synthetic store has no media files
    assert page.count("query</b>") == 8 and "data:image/png;base64" in page
    assert page.count("A->V, audio query") == 2 and page.count("V->A, video query") == 2
    assert "no audio" in page and "no frame" in page and page.rstrip().endswith("</html>")
    details = json.loads((out / "demo" / "details.json").read_text())
    assert details["settings"]["fine_tuned"]["trained_on"]["bn_mode"] == "frozen"


def test_evaluate_without_any_checkpoint_is_a_clear_error(project, tmp_path):
    with pytest.raises(EvaluateError, match="no checkpoint"):
        evaluate("demo", project / "features", project / "manifest",
                 {"zero_shot": tmp_path / "nope.pt"}, tmp_path)


def test_paper_rows_are_in_the_youcook2_table():
    from pipeline.evaluate.recall import markdown
    prov = {"clips_official": 3350, "clips_present": 0, "clips_missing": 3350, "split": "val",
            "audit": None}
    md = markdown("youcook2", {}, prov)
    assert "| HowTo100M zero-shot | paper | 27.4 | 51.6 | 61.5 | 27.3 | 51.2 | 60.8 | |" in md
    assert "random (chance, 3350 clips)" in md


def test_markdown_shows_the_reference_median_beside_ours():
    """avlnet.md's Y (968 of 1000 clips present): ours 3.0, the reference's convention 2.5."""
    import torch

    from pipeline.evaluate.metrics import metrics_of, ranks_from_embeddings
    from pipeline.evaluate.recall import markdown
    y = torch.from_numpy(np.random.RandomState(0).randn(968, 968) + 3 * np.eye(968))
    r = ranks_from_embeddings(y, torch.eye(968, dtype=torch.float64)).numpy()
    m = metrics_of({"audio_to_video": r, "video_to_audio": r}, n_official=1000)
    results = {"zero_shot": {"metrics": m, "checkpoint": "x.pt", "checkpoint_sha256": "0" * 64,
                             "trained_on": {}}}
    prov = {"clips_official": 1000, "clips_present": 968, "clips_missing": 32, "split": "test",
            "audit": None}
    md = markdown("msrvtt", results, prov)
    assert "| HowTo100M zero-shot | ours, paper protocol | 38.1 | 61.9 | 70.6 |" in md
    assert md.count("| 3.0 (2.5) |") == 1 and "| 2.5 |" in md
