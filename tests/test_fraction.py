"""train.fraction (a seeded, nested subset of the pretraining videos, recorded and keyed for
resume) and the data-scale study runner (DVC experiments per fraction, its report)."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from pipeline.config import ParamsError, load_params
from pipeline.learn.runs import fraction_subset, ids_sha256, pretrain
from pipeline.learn.study import StudyError, check_repo, collect, parse_exp_show, \
    render_md, write_reports
from pipeline.learn.train import TrainError, load_checkpoint
from stages.study import main as study_main
from tests.test_evaluate import TP, build_project

IDS = [f"vid{i:03d}" for i in range(100)]


def test_subset_is_nested_deterministic_seeded_and_in_order():
    subsets = {f: fraction_subset(IDS, f, seed=0) for f in (0.001, 0.1, 0.25, 0.5, 1.0)}
    assert {f: len(s) for f, s in subsets.items()} == {0.001: 1, 0.1: 10, 0.25: 25, 0.5: 50,
                                                       1.0: 100}
    assert subsets[1.0] == IDS                                    # unchanged at 1
    fs = sorted(subsets)
    for small, big in zip(fs, fs[1:]):                            # growing f: nested
        assert set(subsets[small]) < set(subsets[big])
    for s in subsets.values():                                    # the listed order is kept
        assert s == [v for v in IDS if v in set(s)]
    assert fraction_subset(IDS, 0.25, seed=0) == subsets[0.25]    # deterministic
    assert fraction_subset(list(reversed(IDS)), 0.25, 0) == list(reversed(subsets[0.25]))
    assert set(fraction_subset(IDS, 0.25, seed=1)) != set(subsets[0.25])   # seeded
    assert ids_sha256(subsets[0.5]) == ids_sha256(reversed(subsets[0.5]))
    assert ids_sha256(subsets[0.5]) != ids_sha256(subsets[0.25])


@pytest.mark.parametrize("value, words", [(0, "> 0"), (-0.5, "> 0"), (1.5, "<= 1"),
                                          ("half", "expected a number")])
def test_fraction_is_validated_naming_the_key(tmp_path, value, words):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"train": {"fraction": value}}))
    with pytest.raises(ParamsError, match=r"train\.fraction") as e:
        load_params(f)
    assert words in str(e.value)
    f.write_text(yaml.safe_dump({"text": {"train": {"fraction": 2}}}))
    with pytest.raises(ParamsError, match=r"text\.train\.fraction"):
        load_params(f)
    f.write_text(yaml.safe_dump({"train": {"fraction": 1}}))
    assert load_params(f).train.fraction == 1.0 and load_params(f).text.train.fraction == 1.0


def test_pretraining_uses_records_and_keys_the_subset(tmp_path, caplog):
    d = build_project(tmp_path)
    usable = [f"synthvid{i:03d}" for i in range(16)]              # the train split
    half = fraction_subset(usable, 0.5, 0)
    p = dataclasses.replace(TP, epochs=1, fraction=0.5)
    out = d / "models/pretrain"
    with caplog.at_level(logging.INFO):
        s = pretrain("demo", d / "features", d / "manifest", out, p)
    assert s["steps"] == 1                                        # 8 videos: one batch of 8
    assert "pretraining on 8 of 16 videos (fraction 0.5, seed 0)" in caplog.text
    summary = json.loads((out / "summary.json").read_text())["provenance"]
    record = {"fraction": 0.5, "videos": 8, "videos_usable": 16,
              "video_ids_sha256": ids_sha256(half)}
    assert {k: summary[k] for k in record} == record
    final, _ = load_checkpoint(out / "final.pt")
    assert {k: final["provenance"][k] for k in record} == record
    assert final["params"]["fraction"] == 0.5
    ckpt, _ = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["run_key"]["fraction"] == {"fraction": 0.5,
                                           "video_ids_sha256": ids_sha256(half)}

    # the same folder at another fraction: not resumed (mixed), but started over
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = pretrain("demo", d / "features", d / "manifest", out,
                     dataclasses.replace(p, fraction=1.0))
    assert "settings changed" in caplog.text and "fraction" in caplog.text
    assert s["steps"] == 2 and any((out / "stale").iterdir())
    full = json.loads((out / "summary.json").read_text())["provenance"]
    assert (full["fraction"], full["videos"]) == (1.0, 16)
    assert "fraction" not in load_checkpoint(out / "checkpoint.pt")[0]["run_key"]

    with pytest.raises(TrainError, match=r"4 usable demo videos \(train\.fraction 0\.25 of "
                                         r"16\) cannot fill one batch"):
        pretrain("demo", d / "features", d / "manifest", d / "models/other",
                 dataclasses.replace(p, fraction=0.25))


def _recall(scale: float) -> dict:
    return {f"{s}/paper/{d}_R@{k}": min(1.0, scale * k / 10 * (2 if s == "fine_tuned" else 1))
            for s in ("zero_shot", "fine_tuned") for d in ("audio_to_video", "video_to_audio")
            for k in (1, 5, 10)}


def test_study_collects_and_plots_given_results(tmp_path):
    rows = [{"fraction": 1.0, "experiment": "s-f1", "status": "ok", "error": None, "rev": "b",
             "recall": _recall(0.4)},
            {"fraction": 0.1, "experiment": "s-f0.1", "status": "ok", "error": None,
             "rev": "a", "recall": _recall(0.1)},
            {"fraction": 0.5, "experiment": "s-f0.5", "status": "failed",
             "error": "dvc exp run exited with 1"}]
    r = collect("demo", "reports/recall/demo.json", "abcdef1234", rows)
    assert [row["fraction"] for row in r["rows"]] == [0.1, 0.5, 1.0]
    first = r["rows"][0]
    assert first["zero_shot/audio_to_video_R@10"] == pytest.approx(0.1)
    assert first["fine_tuned/video_to_audio_R@1"] == pytest.approx(0.02)
    assert r["rows"][1]["fine_tuned/audio_to_video_R@1"] is None
    md = render_md(r)
    assert "| 0.1 | `s-f0.1` | 1.0/5.0/10.0 | 1.0/5.0/10.0 | 2.0/10.0/20.0 |" in md
    assert "failed: dvc exp run exited with 1" in md
    write_reports(r, tmp_path / "study")
    assert json.loads((tmp_path / "study/demo.json").read_text()) == r
    assert (tmp_path / "study/demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == [
        "demo.json", "demo.md", "demo.png"]


def test_exp_show_json_is_parsed_by_name():
    shown = [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
             {"rev": "c0", "name": "master", "experiments": [
                 {"name": "s-f0.5", "revs": [{"rev": "e1", "name": "s-f0.5", "error": None,
                                              "data": {"timestamp": "t", "params": {},
                                                       "metrics": {
                                                           "m.json": {"data": {"x": 1}},
                                                           "n.json": {"error": {"msg": "gone"}}}}}]}]}]
    got = parse_exp_show(shown)
    assert list(got) == ["s-f0.5"] and got["s-f0.5"]["rev"] == "e1"
    assert got["s-f0.5"]["metrics"] == {"m.json": {"x": 1}, "n.json": {"error": "gone"}}


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def git_env(monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    for k in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{k}_NAME", "test")
        monkeypatch.setenv(f"GIT_{k}_EMAIL", "test@example.com")


def test_study_needs_a_git_repo_with_a_commit_and_dvc(tmp_path, git_env):
    with pytest.raises(StudyError, match="not a git repository"):
        check_repo(tmp_path)
    _git(tmp_path, "init", "-q")
    with pytest.raises(StudyError, match="no commit yet"):
        check_repo(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "start")
    with pytest.raises(StudyError, match="not a DVC project"):
        check_repo(tmp_path)
    assert study_main(["--repo", str(tmp_path), "--dataset", "demo"]) == 2
    assert study_main(["--repo", str(tmp_path), "--dataset", "demo",
                       "--fractions", "0.5,1.5"]) == 2


STAGE = """import json, os, yaml
f = yaml.safe_load(open("params.yaml"))["train"]["fraction"]
os.makedirs("reports/recall", exist_ok=True)
json.dump({f"{s}/paper/{d}_R@{k}": round(f * k / 10 * (2 if s == "fine_tuned" else 1), 6)
           for s in ("zero_shot", "fine_tuned") for d in ("audio_to_video", "video_to_audio")
           for k in (1, 5, 10)}, open("reports/recall/demo.json", "w"))
"""


def test_study_runs_dvc_experiments_end_to_end(tmp_path, git_env, caplog):
    """A trivial one-stage project: train.fraction -> reports/recall/demo.json; the runner
    makes one experiment per fraction and reads their metrics; the workspace is untouched."""
    repo = tmp_path / "proj"
    repo.mkdir()
    (repo / "params.yaml").write_text("train:\n  fraction: 1.0\n")
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {
        "cmd": f"{sys.executable} stage.py", "deps": ["stage.py"],
        "params": ["train.fraction"],
        "metrics": [{"reports/recall/demo.json": {"cache": False}}]}}}))
    _git(repo, "init", "-q")
    dvc = [sys.executable, "-m", "dvc"]
    for args in (["init", "-q"], ["config", "core.analytics", "false"]):
        subprocess.run(dvc + args, cwd=repo, check=True, capture_output=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "start")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    argv = ["--repo", str(repo), "--dataset", "demo", "--fractions", "1,0.25,0.5",
            "--target", "evaluate", "--out", str(repo / "reports/study")]
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert study_main(argv) == 0
    took = time.monotonic() - t0
    r = json.loads((repo / "reports/study/demo.json").read_text())
    assert [row["fraction"] for row in r["rows"]] == [0.25, 0.5, 1.0]
    assert [row["experiment"] for row in r["rows"]] == [
        f"study-demo-{head[:7]}-f{f}" for f in ("0.25", "0.5", "1")]
    for row in r["rows"]:
        f = row["fraction"]
        assert row["status"] == "ok" and row["rev"]
        assert row["zero_shot/audio_to_video_R@10"] == pytest.approx(f)
        assert row["fine_tuned/video_to_audio_R@1"] == pytest.approx(0.2 * f)
    assert "experiment 2/3: fraction 0.5" in caplog.text
    assert (repo / "reports/study/demo.png").is_file()
    assert "study-demo" in (repo / "reports/study/demo.md").read_text()
    # the experiments ran in temporary copies: the workspace's params and files are as they were
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                            text=True).stdout
    assert status.split("\n")[0].endswith("reports/") and "params.yaml" not in status
    assert not (repo / "reports/recall").exists()
    # run again: the experiments of this commit are reused, not run again
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert study_main(argv) == 0
    assert caplog.text.count("reusing it") == 3
    assert json.loads((repo / "reports/study/demo.json").read_text()) == r
    assert took < 30, took
