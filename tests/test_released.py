"""Released checkpoints (issue 12, item 5): a bare state_dict under the released names
(AVLnet_release.pth: no config) evaluates through stage evaluate with its configuration inferred
from its shapes, and scores exactly as the same weights saved as our own checkpoint."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from models.avlnet import AVLnet
from pipeline.config import EvaluateParams, ModelParams, ParamsError, from_dict, to_dict
from pipeline.download.ledger import AVAILABILITY_SCHEMA
from pipeline.features.store import ShardWriter, VideoRecord, recipe_sha256, write_index
from pipeline.learn.runs import CONFIG_INFERRED, CONFIG_RECORDED, infer_config, \
    load_model_file
from pipeline.learn.train import FINAL, RunFiles, TrainError


TINY = ModelParams(embed_dim=32, audio_widths=[8, 16, 16, 32], video_norm="batchnorm")
ARCH = {"arch": "avlnet", "embed_dim": 32, "head": "gating", "audio_widths": [8, 16, 16, 32],
        "video_norm": "batchnorm", "video_dim": 4096, "n_mels": 40}


def tiny_state_dict(m: ModelParams = TINY, seed: int = 0) -> dict:
    """A seeded AVLnet's weights, BatchNorm statistics included (random, so a loader that
    dropped or mixed up any entry would score differently)."""
    torch.manual_seed(seed)
    model = AVLnet(m.embed_dim, m.head, tuple(m.audio_widths), m.video_norm)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(0.5 + torch.rand_like(v))
        elif k.endswith("running_mean"):
            v.copy_(0.1 * torch.randn_like(v))
        elif v.is_floating_point():
            v.add_(0.05 * torch.randn_like(v))
    return sd


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder: features, manifest (val clips, one of them lost), an empty ledger,
    our checkpoint of the tiny model in data/models/pretrain and the same weights as bare
    state_dicts under data/models/released and outside data/models."""
    d = tmp_path_factory.mktemp("released")
    rng = np.random.default_rng(0)
    store = d / "data/features/demo"
    recipe = {"dtype": "float16", "note": "synthetic"}
    w = ShardWriter(store / "shard-00000.h5", recipe)
    videos, clips = [], []
    for i in range(10):
        vid = f"relvid{i:03d}"
        w.add(VideoRecord(vid, "ok", {"recipe_sha256": recipe_sha256(recipe)}, {
            "resnet152": rng.random((8, 2048)).astype(np.float16),
            "resnext101": rng.random((12, 2048)).astype(np.float16),
            "logmel": (-60 + 10 * rng.standard_normal((40, 800))).astype(np.float16)}))
        videos.append({"video_id": vid, "url": f"file:{vid}", "split": "val", "duration_s": 8.0})
        for j in range(2):
            clips.append({"clip_id": f"{vid}:{j}", "video_id": vid, "split": "val",
                          "start_s": 0.5 + 3.5 * j, "end_s": 3.0 + 4 * j, "text": "x",
                          "source": "test"})
    write_index(w.close(), store / "index.parquet")
    (store / "recipe.json").write_text(json.dumps(recipe))
    clips.append({"clip_id": "lostvideo01:0", "video_id": "lostvideo01", "split": "val",
                  "start_s": 0.0, "end_s": 3.0, "text": "x", "source": "test"})
    m = d / "manifests/demo"
    m.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(videos), m / "videos.parquet")
    pq.write_table(pa.Table.from_pylist(clips), m / "clips.parquet")
    (m / "manifest.json").write_text(json.dumps({"splits": {"val": {"clip_checksum": "v" * 64}}}))
    pq.write_table(AVAILABILITY_SCHEMA.empty_table(), m / "availability.parquet")
    sd = tiny_state_dict()
    # ours, as the training loop writes it (sha256 recorded in checksums.json beside it)
    (d / "data/models/pretrain").mkdir(parents=True)
    RunFiles(d / "data/models/pretrain", 0).save(FINAL, {
        "model": sd, "config": to_dict(TINY), "provenance": {"dataset": "demo"},
        "global_step": 1})
    (d / "data/models/released").mkdir(parents=True)
    torch.save(dict(sd), d / "data/models/released/AVLnet_release.pth")
    (d / "elsewhere").mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}},
               d / "elsewhere/wrapped.pth")
    return d


def run_stage(d, monkeypatch, evaluate: dict, out: str) -> int:
    """stages.evaluate's entry (as `python -m stages.evaluate` runs it) in project `d`."""
    from stages.evaluate import main as evaluate_main
    monkeypatch.chdir(d)
    (d / f"params-{out}.yaml").write_text(yaml.safe_dump({"evaluate": evaluate}))
    return evaluate_main(["--dataset", "demo", "--params", f"params-{out}.yaml",
                          "--out", out])


def test_released_state_dict_scores_as_our_checkpoint_through_the_stage(project, monkeypatch,
                                                                       caplog):
    caplog.set_level(logging.INFO)
    rc = run_stage(project, monkeypatch, {
        "settings": ["zero_shot"], "examples": 1, "device": "cpu",
        "checkpoints": {"released": "data/models/released/AVLnet_release.pth",
                        "wrapped": "elsewhere/wrapped.pth"}}, "reports")
    assert rc == 0, caplog.text
    details = json.loads((project / "reports/demo/details.json").read_text())["settings"]
    ours = details["zero_shot"]["metrics"]                   # every metric, both protocols
    assert ours["paper"]["n_queries"] == 21 and ours["paper"]["n_missing"] == 1
    assert 0 < ours["available"]["audio_to_video_R@10"] < 1  # not a degenerate score
    flat = json.loads((project / "reports/demo.json").read_text())   # dvc metrics
    headline = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("zero_shot/")}
    assert headline
    for setting in ("released", "wrapped"):
        assert details[setting]["metrics"] == ours           # identical, not approximately
        assert {k.split("/", 1)[1]: v for k, v in flat.items()
                if k.startswith(setting + "/")} == headline
    assert details["zero_shot"]["config_source"] == CONFIG_RECORDED
    assert details["released"]["config_source"] == CONFIG_INFERRED
    assert details["released"]["model_config"] == ARCH == details["zero_shot"]["model_config"]
    assert details["released"]["stored_as"] == "bare state_dict"
    assert details["wrapped"]["stored_as"] == \
        "state_dict under 'state_dict', 'module.' key prefix removed"
    assert details["released"]["trained_on"] == {}
    md = (project / "reports/demo.md").read_text()
    assert md.count("(inferred from state_dict shapes; ") == 2
    assert "video_norm batchnorm, video_dim 4096 (inferred from state_dict shapes; bare " \
           "state_dict)" in md
    assert md.count("video_dim 4096 (recorded)") == 1
    assert "| released | ours, paper protocol |" in md
    # a file outside data/models (the stage's DVC dependency): DVC sees its path only
    assert "elsewhere/wrapped.pth of setting wrapped is outside data/models" in caplog.text
    assert "AVLnet_release.pth of setting released is outside" not in caplog.text


def test_released_checkpoint_alone_replaces_the_default_settings(project, monkeypatch):
    rc = run_stage(project, monkeypatch, {
        "settings": [], "examples": 0, "device": "cpu",
        "checkpoints": {"released": "data/models/released/AVLnet_release.pth"}}, "alone")
    assert rc == 0
    flat = json.loads((project / "alone/demo.json").read_text())
    assert flat and {k.split("/")[0] for k in flat} == {"released"}


@pytest.mark.parametrize("damage, words", [
    (lambda sd: sd.pop("DAVEnet_projection.weight"),
     "state_dict has no 'DAVEnet_projection.weight' (needed to infer embed_dim)"),
    (lambda sd: sd.pop("DAVEnet.layer3.0.conv1.weight"),
     "state_dict has no 'DAVEnet.layer3.0.conv1.weight' (needed to infer audio_widths)"),
    (lambda sd: sd.pop("DAVEnet.layer2.1.bn2.running_var"),
     "missing 'DAVEnet.layer2.1.bn2.running_var'"),
    (lambda sd: sd.update({"GU_video.cg.fc.weight": torch.zeros(16, 16)}),
     "'GU_video.cg.fc.weight' has shape (16, 16), expected (32, 32)"),
    (lambda sd: sd.update({"GU_text.fc.weight": torch.zeros(4, 4)}),
     "unexpected 'GU_text.fc.weight'"),
    (lambda sd: sd.update({"GU_video.fc.weight": torch.zeros(32, 1000)}),   # 2048: visual 2d
     "'GU_video.fc.weight' takes 1000-d video input; this pipeline's video features are "
     "4096-d"),
])
def test_a_damaged_state_dict_is_one_clear_line(tmp_path, damage, words):
    sd = tiny_state_dict()
    damage(sd)
    torch.save(sd, tmp_path / "AVLnet_release.pth")
    with pytest.raises(TrainError) as e:
        load_model_file(tmp_path / "AVLnet_release.pth")
    msg = str(e.value)
    assert words in msg and "\n" not in msg
    assert msg.startswith(str(tmp_path / "AVLnet_release.pth") + ": ")


def test_a_damaged_released_file_fails_the_stage_in_one_line(project, monkeypatch, caplog):
    sd = tiny_state_dict()
    del sd["DAVEnet_projection.weight"]
    torch.save(sd, project / "elsewhere/broken.pth")
    rc = run_stage(project, monkeypatch, {
        "settings": ["zero_shot"], "device": "cpu",
        "checkpoints": {"released": "elsewhere/broken.pth"}}, "broken")
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "elsewhere/broken.pth: state_dict has no 'DAVEnet_projection.weight'" in errors[0]
    assert not (project / "broken").exists()          # checked before any report is written


@pytest.mark.parametrize("m", [
    ModelParams(embed_dim=24, head="linear", audio_widths=[4, 8, 8, 16]),
    ModelParams(embed_dim=24, head="mlp", audio_widths=[4, 8, 16, 16], video_norm="batchnorm"),
    ModelParams(embed_dim=48, head="gating", audio_widths=[8, 8, 16, 16]),
])
def test_config_inferred_for_every_head(tmp_path, m):
    sd = tiny_state_dict(m, seed=3)
    torch.save({"model": sd}, tmp_path / "m.pt")        # ours without its config
    mf = load_model_file(tmp_path / "m.pt")
    expect = {k: getattr(m, k) for k in ("arch", "embed_dim", "head", "audio_widths", "video_norm")}
    assert mf.config == {**expect, "video_dim": 4096, "n_mels": 40}
    assert mf.config_source == CONFIG_INFERRED and mf.stored_as == "state_dict under 'model'"
    got = mf.model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_paper_sized_release_layout_is_inferred_as_the_paper_model():
    with torch.device("meta"):                   # shapes only: no 84 M parameters allocated
        sd = AVLnet().state_dict()
    assert len(sd) == 141                        # avlnet.md: the released file's entries
    assert infer_config(sd, "AVLnet_release.pth") == {
        "arch": "avlnet", "embed_dim": 4096, "head": "gating",
        "audio_widths": [128, 256, 512, 1024],
        "video_norm": "none", "video_dim": 4096, "n_mels": 40}


def test_files_that_are_not_state_dicts_are_one_line(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    for name, words in (("notes.pth", "not a loadable checkpoint"),
                        ("meta.pth", "not a state_dict (entry 'epoch' is not a tensor)"),
                        ("list.pth", "holds a list, not a state_dict"),
                        ("absent.pth", "not found")):
        with pytest.raises(TrainError, match=re.escape(words)) as e:
            load_model_file(tmp_path / name)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("data, words", [
    ({"settings": [], "checkpoints": {}}, "nothing to evaluate"),
    ({"checkpoints": {"zero_shot": "x.pth"}}, "checkpoints.zero_shot: a built-in setting"),
    ({"checkpoints": {"Released/1": "x.pth"}}, "not a usable setting name"),
    ({"checkpoints": {"released": " "}}, "an empty path"),
    ({"checkpoints": ["x.pth"]}, "expected a mapping"),
])
def test_checkpoints_param_is_checked(data, words):
    with pytest.raises(ParamsError, match=words) as e:
        from_dict(EvaluateParams, data, "evaluate")
    assert str(e.value).startswith("evaluate.")
