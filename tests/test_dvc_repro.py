"""`dvc repro` of the demo pipeline in a throw-away copy of the project: runs, is idempotent,
and a param change re-runs only the stage that reads it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import copy_project, with_german_demo

TINY_CLUSTER = {"workers": 1, "threads_per_worker": 2, "processes": True}
TINY_EXTRACT = {"shard_videos": 2}
TINY_TRAIN = {"videos_per_batch": 2, "clips_per_video": 2, "epochs": 2, "workers": 0,
              "window_s": 4,
              "model": {"embed_dim": 16, "head": "gating", "audio_widths": [8, 8, 16, 16],
                        "loss": "mms", "mms_margin": 0.001, "ranking_margin": 0.1,
                        "temperature": 0.1, "video_norm": "batchnorm"}}
TINY_FINETUNE = {"batch": 2, "epochs": 1}
TINY_TEXT = {"train": {**TINY_TRAIN, "model": {**TINY_TRAIN["model"],
                                               "arch": "avlnet_text_tri"},
                       "caption_min_s": 2.0, "caption_frames": 300},
             "finetune": TINY_FINETUNE}
TINY_DEMO = {"n_videos": 4, "n_val": 1, "n_concepts": 3, "min_duration_s": 5.0,
             "max_duration_s": 6.0, "segments_per_video": 1,
             "frame_sizes": ["320x240"], "fps": 30, "workers": 2}
TINY_LANGUAGE = {"n_videos": 4, "n_concepts": 3, "min_duration_s": 8.0, "max_duration_s": 9.0,
                 "segments_per_video": 1}


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{args} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def _set_params(project: Path, fn) -> None:
    f = project / "params.yaml"
    data = yaml.safe_load(f.read_text())
    fn(data)
    f.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tracked project files (as a fresh clone has them) in a new git repo."""
    dest = copy_project(tmp_path_factory.mktemp("clone") / "p")
    # with the opt-in German demo, as docs/guide/transfer.md adds it
    _set_params(dest, lambda d: (with_german_demo(d), d["demo"].update(TINY_DEMO), d["cluster"].update(TINY_CLUSTER),
                                 d["extract"].update(TINY_EXTRACT), d["train"].update(TINY_TRAIN),
                                 d["finetune"].update(TINY_FINETUNE),
                                 d["text"]["train"].update(TINY_TEXT["train"]),
                                 d["text"]["finetune"].update(TINY_TEXT["finetune"]),
                                 d["demo_language"]["demo_de"].update(TINY_LANGUAGE),
                                 d["transfer"].update(target_only_epochs=1)))
    _run(dest, "git", "init", "-q")
    _run(dest, "git", "add", "-A")
    _run(dest, "git", "commit", "-qm", "clone")
    return dest


def test_repro_runs_the_whole_demo(project):
    out = _run(project, "dvc", "repro")
    for stage in ("demo", "manifest@demo", "download@demo", "audit", "extract@demo", "train",
                  "finetune@demo", "evaluate@demo", "captions@demo", "train_text",
                  "finetune_text@demo", "evaluate_text@demo", "speech@demo",
                  "speech_recall@demo", "concepts@demo", "index@demo", "spoken@demo",
                  "demo_language@demo_de", "segment@demo_de", "manifest@demo_de",
                  "extract@demo_de", "finetune@demo_de", "transfer@demo_de"):
        assert f"Running stage '{stage}'" in out
    videos = pq.read_table(project / "manifests/demo/videos.parquet").to_pylist()
    assert len(videos) == 4
    assert sorted({v["split"] for v in videos}) == ["train", "val"]
    for v in videos:
        assert (project / v["url"].removeprefix("file:")).is_file()
    # every demo video went through yt-dlp into data/videos and the ledger
    avail = pq.read_table(project / "manifests/demo/availability.parquet").to_pylist()
    assert [a["status"] for a in avail] == ["available"] * 4
    for a in avail:
        assert a["path"].startswith("data/videos/demo/") and a["has_audio"]
        assert (project / a["path"]).read_bytes() == \
            (project / a["url"].removeprefix("file:")).read_bytes()
    assert list((project / "data/ledger/demo").glob("attempts-*.parquet"))
    report = json.loads((project / "reports/availability/demo.json").read_text())
    assert report["splits"]["total"]["videos_with_audio"] == 4
    assert (project / "reports/availability/summary.md").is_file()
    # every downloaded video has its features, with the demo's recorded random weights
    index = pq.read_table(project / "data/features/demo/index.parquet").to_pylist()
    assert [r["status"] for r in index] == ["ok"] * 4
    assert all(r["n_resnet152"] >= 5 and r["n_resnext101"] >= 7 for r in index)
    recipe = json.loads((project / "data/features/demo/recipe.json").read_text())
    assert recipe["resnet152"]["weights_sha256"] == "random-seed-0"
    for run in ("pretrain", "finetune-demo"):
        assert (project / f"data/models/{run}/final.pt").is_file()
    recall = json.loads((project / "reports/recall/demo/details.json").read_text())["metrics"]
    assert recall["fine_tuned/paper/n_queries"] == 1
    assert 0 <= recall["zero_shot/paper/audio_to_video_R@10"] <= 1
    for ext in ("md", "png", "html"):
        assert (project / f"reports/recall/demo.{ext}").is_file()
    text = json.loads((project / "reports/text/demo.json").read_text())
    assert 0 <= text["fine_tuned/paper/text_to_video_R@10"] <= 1
    # the analyses and search: which clips carry speech, the sets' recall, concepts, index
    sets = json.loads((project / "data/speech/demo/subsets.json").read_text())
    assert sets["clips"] == 4 and sets["video_status"] == {"ok": 4}
    for f in ("reports/speech/demo.md", "reports/concepts/demo.html",
              "data/search/demo/record.json", "reports/search/demo.html"):
        assert (project / f).is_file(), f
    assert json.loads((project / "reports/search/demo.json").read_text())["n_words"] == 3
    # the second-language demo: clips cut from its speech, then the Table 5.1 rows on both
    clips = pq.read_table(project / "manifests/demo_de/clips.parquet").to_pylist()
    assert clips and {c["split"] for c in clips} <= {"train", "val"}
    transfer = json.loads((project / "reports/transfer/demo_de.json").read_text())
    assert 0 <= transfer["cascade/target/audio_to_video_R@10"] <= 1, transfer
    shown = _run(project, "dvc", "metrics", "show")
    assert "fine_tuned/paper/audio_to_video_R@10" in shown
    assert "fine_tuned/paper/text_audio_to_video_R@10" in shown


def test_second_repro_does_nothing(project):
    out = _run(project, "dvc", "repro")
    assert "Running stage" not in out
    assert "up to date" in _run(project, "dvc", "status")


def test_one_param_change_reruns_only_its_stage(project):
    _set_params(project, lambda d: d["manifest"]["demo"].update(download=False))
    status = _run(project, "dvc", "status")
    assert "manifest@demo" in status and "demo:" not in status.replace("manifest@demo:", "")
    out = _run(project, "dvc", "repro")
    assert "Running stage 'manifest@demo'" in out and "Running stage 'demo'" not in out
    assert "up to date" in _run(project, "dvc", "status")


def test_download_param_change_resumes_without_refetching(project):
    ledger = project / "data/ledger/demo"
    before = sorted(p.name for p in ledger.glob("attempts-*.parquet"))
    _set_params(project, lambda d: d["download"].update(verify="size"))
    out = _run(project, "dvc", "repro")
    assert "Running stage 'download@demo'" in out
    assert "Running stage 'demo'" not in out and "Running stage 'manifest@demo'" not in out
    # persist: the media and history survived; every file was checked, none fetched again
    assert sorted(p.name for p in ledger.glob("attempts-*.parquet")) == before
    assert "verified=4" in out
    assert "up to date" in _run(project, "dvc", "status")


def test_extract_param_change_reruns_only_extract_and_keeps_shards(project):
    store = project / "data/features/demo"
    shards = {p.name: p.stat().st_mtime_ns for p in store.glob("shard-*.h5")}
    assert shards
    _set_params(project, lambda d: d["extract"].update(batch_2d=4))
    out = _run(project, "dvc", "repro")
    assert "Running stage 'extract@demo'" in out
    assert "Running stage 'download@demo'" not in out and "Running stage 'audit'" not in out
    # nor the store: training downstream is not re-run for a batch size
    assert "Running stage 'train'" not in out and "Running stage 'evaluate@demo'" not in out
    # batch size does not change the recipe: the finished shards stay as they are
    assert {p.name: p.stat().st_mtime_ns for p in store.glob("shard-*.h5")} == shards
    assert "0 to do" in out
    assert "up to date" in _run(project, "dvc", "status")


def test_evaluate_param_change_reruns_only_evaluate(project):
    _set_params(project, lambda d: d["evaluate"].update(examples=2))
    out = _run(project, "dvc", "repro")
    assert "Running stage 'evaluate@demo'" in out
    for other in ("train", "finetune@demo", "extract@demo", "download@demo"):
        assert f"Running stage '{other}'" not in out
    assert "up to date" in _run(project, "dvc", "status")
