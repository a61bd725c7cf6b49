"""2D-only and 3D-only models (train.model.visual, issue 15 item 3; Table 3 "2D only"): each
mode trains and embeds with its input size, a checkpoint is evaluated, fine-tuned and indexed
with its recorded streams only, old checkpoints (no `visual`) are 2d3d, and a mismatch or a store
without the needed features is one clear line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from models.avlnet import visual_of
from pipeline.config import FinetuneParams, ModelParams, TrainParams
from pipeline.evaluate.recall import evaluate
from pipeline.features.store import FEATURES, FeatureStore, ShardWriter, StoreError, \
    VideoRecord, recipe_sha256, write_index
from pipeline.learn.avdata import AnnotatedClips, PretrainVideos, check_visual
from pipeline.learn.runs import collate_clips, finetune, load_clips, load_model_file, pretrain
from pipeline.learn.train import TrainError, _check_visual, build_model, embed
from pipeline.search.build import SegmentVideos
from tests.test_evaluate import build_project

DIMS = {"2d3d": 4096, "2d": 2048, "3d": 2048}
TP = TrainParams(model=ModelParams(embed_dim=32, audio_widths=[8, 16, 16, 32]), epochs=2,
                 videos_per_batch=8, clips_per_video=2, workers=0, seed=0)
FP = FinetuneParams(batch=16, epochs=1, lr=1e-4)
FRAMES = 512          # the fixture's clips last 3 s (300 frames)


def tp(visual: str) -> TrainParams:
    return dataclasses.replace(TP, model=dataclasses.replace(TP.model, visual=visual))


def rewrite_store(src: Path, dst: Path, change) -> Path:
    """dst = the store src with each video's arrays replaced by change(arrays) -> dst."""
    s = FeatureStore(src)
    recipe = {"dtype": "float16", "note": "synthetic, rewritten"}
    w = ShardWriter(dst / "shard-00000.h5", recipe)
    for vid in s.ids():
        arrays = {f: s.read(vid, f) for f in FEATURES if s.info(vid)[f"n_{f}"]}
        w.add(VideoRecord(vid, "ok", {"recipe_sha256": recipe_sha256(recipe)}, change(arrays)))
    write_index(w.close(), dst / "index.parquet")
    (dst / "recipe.json").write_text(json.dumps(recipe))
    return dst


def noise(a: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(a.shape).astype(a.dtype)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The synthetic project of test_evaluate, one pretraining run per visual (4 steps each),
    and stores with the 3D (or 2D) features replaced by noise or left out."""
    d = build_project(tmp_path_factory.mktemp("visual"))
    for v in DIMS:
        pretrain("demo", d / "features", d / "manifest", d / f"models/{v}", tp(v))
    rewrite_store(d / "features", d / "noise3d", lambda a: {**a, "resnext101": noise(
        a["resnext101"], 1)})
    rewrite_store(d / "features", d / "noise2d", lambda a: {**a, "resnet152": noise(
        a["resnet152"], 2)})
    rewrite_store(d / "features", d / "only2d",
                  lambda a: {k: x for k, x in a.items() if k != "resnext101"})
    return d


def embeddings(model, store: Path, d: Path, visual: str) -> dict[str, torch.Tensor]:
    ds = AnnotatedClips(FeatureStore(store), load_clips(d / "manifest", "val"), FRAMES, visual)
    return embed(model.eval(), DataLoader(ds, batch_size=8, collate_fn=collate_clips),
                 torch.device("cpu"))


@pytest.mark.parametrize("visual", list(DIMS))
def test_each_visual_trains_records_and_embeds_with_its_size(project, visual):
    d = project
    mf = load_model_file(d / f"models/{visual}/final.pt")
    assert visual_of(mf.model) == visual and mf.model.GU_video.fc.in_features == DIMS[visual]
    # recorded in the checkpoint; the default stays out of the reported config (as before)
    assert torch.load(d / f"models/{visual}/final.pt")["config"]["visual"] == visual
    assert mf.config.get("visual", "2d3d") == visual
    store = FeatureStore(d / "features")
    item = PretrainVideos(store, store.ids(), 2, visual=visual)[0]
    assert item["video"].shape == (2, DIMS[visual])
    norms = item["video"].norm(dim=1)      # each stream L2-normalised: sqrt(streams)
    assert torch.allclose(norms, torch.full((2,), (DIMS[visual] / 2048) ** 0.5))
    seg = SegmentVideos(store, [{"video_id": store.ids()[0], "start_s": 1.0, "end_s": 6.0}],
                        visual)[0]
    assert seg["video"].shape == (DIMS[visual],)
    e = embeddings(mf.model, d / "features", d, visual)
    assert e["video"].shape == e["audio"].shape == (16, 32)


@pytest.mark.parametrize("visual, corrupted, changes", [
    ("2d", "noise3d", False), ("3d", "noise2d", False), ("2d3d", "noise3d", True),
    ("2d3d", "noise2d", True)])
def test_a_model_reads_only_its_streams(project, visual, corrupted, changes):
    d = project
    model = load_model_file(d / f"models/{visual}/final.pt").model
    clean = embeddings(model, d / "features", d, visual)
    noisy = embeddings(model, d / corrupted, d, visual)
    assert torch.equal(clean["audio"], noisy["audio"])
    assert torch.equal(clean["video"], noisy["video"]) != changes


def test_evaluation_follows_each_checkpoints_visual(project):
    d = project
    ckpts = {v: d / f"models/{v}/final.pt" for v in DIMS}
    flat = evaluate("demo", d / "features", d / "manifest", ckpts, d / "reports", examples=0)
    assert {k.split("/")[0] for k in flat} == set(DIMS)
    details = json.loads((d / "reports/demo/details.json").read_text())
    assert details["settings"]["2d"]["model_config"]["visual"] == "2d"
    assert "visual" not in details["settings"]["2d3d"]["model_config"]
    assert "visual 3d" in (d / "reports/demo.md").read_text()
    # a 2D-only store: the 2d model scores exactly as on the full store; the others cannot run
    only2d = evaluate("demo", d / "only2d", d / "manifest", {"2d": ckpts["2d"]},
                      d / "reports2d", examples=0)
    assert only2d == {k: v for k, v in flat.items() if k.startswith("2d/")}
    for v in ("2d3d", "3d"):
        with pytest.raises(StoreError) as e:
            evaluate("demo", d / "only2d", d / "manifest", {"2d": ckpts["2d"], v: ckpts[v]},
                     d / "reports-bad", examples=0)
        msg = str(e.value)
        assert msg.startswith(f"{d / 'only2d'}: has no resnext101 (3D) features, which a model "
                              f"with visual {v} needs") and "visual: 2d" in msg
        assert "\n" not in msg


def test_a_store_without_the_features_is_one_line(project):
    d = project
    with pytest.raises(StoreError, match="has no resnext101 .* train.model.visual: 2d"):
        pretrain("demo", d / "only2d", d / "manifest", d / "models/bad", tp("3d"))
    assert not (d / "models/bad").exists()
    store = FeatureStore(d / "features")          # rows present, but the recipe names 2D only
    store.recipe = {"resnet152": {}, "logmel": {}}
    check_visual(store, "2d", store.ids())
    with pytest.raises(StoreError, match="has no resnext101 .3D. features"):
        check_visual(store, "3d", store.ids())


def test_fine_tuning_another_visual_is_refused_like_any_architecture_setting(project):
    d = project
    for init, params in (("2d", "2d3d"), ("2d3d", "2d"), ("3d", "2d")):
        with pytest.raises(TrainError) as e:
            finetune("demo", d / "features", d / "manifest", d / f"models/{init}/final.pt",
                     d / f"models/ft-{init}-{params}", tp(params), FP)
        assert f"visual {init!r} (here {params!r})" in str(e.value)
        assert "use the train.model settings it was trained with" in str(e.value)
    s = finetune("demo", d / "features", d / "manifest", d / "models/2d/final.pt",
                 d / "models/ft-2d", tp("2d"), FP)
    assert s["steps"] == 2
    assert visual_of(load_model_file(d / "models/ft-2d/final.pt").model) == "2d"
    # the low-resource text init (partial) refuses another visual too
    state = torch.load(d / "models/2d/final.pt")
    with pytest.raises(TrainError, match="visual '2d' .here '2d3d'"):
        _check_visual(state, d / "models/2d/final.pt", "2d3d")


def test_an_old_checkpoint_without_visual_is_2d3d(project, tmp_path):
    d = project
    state = torch.load(d / "models/2d3d/final.pt")
    config = {k: v for k, v in state["config"].items() if k != "visual"}
    torch.save({"model": state["model"], "config": config}, tmp_path / "old.pt")
    mf = load_model_file(tmp_path / "old.pt")
    assert visual_of(mf.model) == "2d3d" and mf.model.GU_video.fc.in_features == 4096
    assert "visual" not in mf.config
    s = finetune("demo", d / "features", d / "manifest", tmp_path / "old.pt", tmp_path / "ft",
                 tp("2d3d"), FP)
    assert s["steps"] == 2
    with pytest.raises(TrainError, match="visual '2d3d' .here '2d'"):
        finetune("demo", d / "features", d / "manifest", tmp_path / "old.pt", tmp_path / "ft2",
                 tp("2d"), FP)


def test_a_bare_state_dict_with_one_stream_is_inferred_as_2d(tmp_path):
    model = build_model(dataclasses.replace(TP.model, visual="2d"))
    torch.save(model.state_dict(), tmp_path / "AVLnet_2d.pth")
    mf = load_model_file(tmp_path / "AVLnet_2d.pth")
    assert mf.config["visual"] == "2d" and mf.config["video_dim"] == 2048
    assert visual_of(mf.model) == "2d"
    torch.save(build_model(TP.model).state_dict(), tmp_path / "AVLnet.pth")
    assert "visual" not in load_model_file(tmp_path / "AVLnet.pth").config
