"""DVC-native use, in throw-away git repositories holding the project: the input folders
data/sources/<name> as stage dependencies (`avl sources`), the default local remote (push, then
pull in a fresh clone), the declared plots, the headline metrics, and experiments (`dvc exp run
--temp`, `--queue` + `dvc queue start`). One tiny demo is reproduced for the whole module."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.data.sources import SourceError, Sources
from stages import sources as sources_stage
from tests.conftest import ROOT, copy_project
from tests.test_dvc_repro import (TINY_CLUSTER, TINY_DEMO, TINY_EXTRACT, TINY_FINETUNE,
                                  TINY_TEXT, TINY_TRAIN, _set_params)

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t"}
# two validation videos: chance and the curves are not all 1.0
DEMO = {**TINY_DEMO, "n_val": 2}
HEADLINE = {f"{s}/paper/{d}_{m}" for s in ("zero_shot", "fine_tuned")
            for d in ("audio_to_video", "video_to_audio")
            for m in ("R@1", "R@5", "R@10", "median_rank")}
YC2 = "youcookii_annotations_trainval.json"


def _sh(cwd: Path, *args: str, ok: bool = True, timeout: int = 900
        ) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, f"{args} failed:\n{p.stdout}\n{p.stderr}"
    p.out = p.stdout + p.stderr   # type: ignore[attr-defined]
    return p


def _project(dest: Path, params) -> Path:
    """The project's files (as a fresh clone has them) in a new git repo at `dest`, params
    changed by `params`, committed."""
    copy_project(dest)
    _set_params(dest, params)
    _sh(dest, "git", "init", "-q")
    _sh(dest, "git", "add", "-A")
    _sh(dest, "git", "commit", "-qm", "clone")
    return dest


def _tiny(d: dict) -> None:
    d["demo"].update(DEMO)
    d["cluster"].update(TINY_CLUSTER)
    d["extract"].update(TINY_EXTRACT)
    d["train"].update(TINY_TRAIN)
    d["finetune"].update(TINY_FINETUNE)
    d["text"]["train"].update(TINY_TEXT["train"])
    d["text"]["finetune"].update(TINY_TEXT["finetune"])


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The tiny demo reproduced (`dvc repro`) and committed, as its author would."""
    dest = _project(tmp_path_factory.mktemp("native") / "p", _tiny)
    _sh(dest, "dvc", "repro")
    _sh(dest, "git", "add", "-A")
    _sh(dest, "git", "commit", "-qm", "demo reproduced")
    return dest


@pytest.fixture(scope="module")
def clone(repo) -> Path:
    """`dvc push` to the default remote, then a fresh `git clone` beside it and `dvc pull`."""
    _sh(repo, "dvc", "push")
    dest = repo.parent / "clone"
    _sh(repo.parent, "git", "clone", "-q", str(repo), str(dest))
    assert not (dest / "data").exists()
    _sh(dest, "dvc", "pull")
    return dest


def _data_files(root: Path) -> dict[str, str]:
    """sha256 of every file under root/data (what DVC tracks: not the writer locks, stale/, or
    data/weights/, the caches a stage writes on first use: the word vectors' there)."""
    out = {}
    for p in sorted((root / "data").rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and p.name != ".avl-writer.lock" and "/stale/" not in rel \
                and not rel.startswith("data/weights/"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    head, *rows = path.read_text().splitlines()
    return [dict(zip(head.split(","), r.split(","))) for r in rows]


# --------------------------------------------------------------------------- dvc.yaml, config


def test_dvc_yaml_declares_inputs_plots_and_headline_metrics():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    st = dvc["stages"]
    assert "data/sources/${key}" in st["manifest"]["do"]["deps"]
    assert "data/sources/demo" in st["demo"]["outs"]
    assert [next(iter(m)) for m in st["evaluate"]["do"]["metrics"]] == \
        ["reports/recall/${item}.json"]
    assert [next(iter(m)) for m in st["evaluate_text"]["do"]["metrics"]] == \
        ["reports/text/${item}.json"]
    assert [next(iter(p)) for p in dvc["plots"]] == [
        "reports/recall/curves", "reports/text/curves", "data/models/pretrain/loss.csv",
        "reports/availability/status"]


def test_the_default_remote_is_a_folder_beside_the_project():
    assert _sh(ROOT, "dvc", "remote", "default").stdout.strip() == "local"
    listed = _sh(ROOT, "dvc", "remote", "list").stdout.split()
    url = Path(listed[listed.index("local") + 1])
    assert url == ROOT.parent / "avl-dvc-remote"   # relative to .dvc/: outside the repository


# --------------------------------------------------------------------------- input folders


def test_demo_inputs_are_a_dependency_and_a_swapped_file_is_noticed(repo):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert "data/sources/demo" in [o["path"] for o in lock["demo"]["outs"]]
    assert "data/sources/demo" in [d["path"] for d in lock["manifest@demo"]["deps"]]
    # the manifest reads the input folder, not the generated media folder
    summary = json.loads((repo / "manifests/demo/manifest.json").read_text())
    ann = (repo / "data/sources/demo/annotations.json").read_bytes()
    assert summary["sources"]["annotations"]["sha256"] == hashlib.sha256(ann).hexdigest()
    # git keeps the pointers of dvc-added input folders, never their files
    assert _sh(repo, "git", "check-ignore", "-q", "data/sources/demo/annotations.json",
               ok=False).returncode == 0
    assert _sh(repo, "git", "check-ignore", "-q", "data/sources/youcook2.dvc",
               ok=False).returncode == 1
    f = repo / "data/sources/demo/annotations.json"
    f.write_bytes(ann + b"\n")
    status = _sh(repo, "dvc", "status").out
    assert re.search(r"manifest@demo:\s+changed deps:\s+modified:\s+data/sources/demo", status)
    _sh(repo, "dvc", "checkout", "--force", "data/sources/demo")
    assert f.read_bytes() == ann
    assert "up to date" in _sh(repo, "dvc", "status").out


def test_sources_tracks_the_official_files_and_the_stage_reads_only_them(tmp_path,
                                                                          shared_data):
    def params(d):
        d["datasets"]["youcook2"] = "youcook2"
        d["manifest"]["youcook2"].update(source_dir=str(shared_data / "youcook2"))
    p = _project(tmp_path / "p", params)
    # the stage does not look at source_dir: only data/sources/youcook2 counts
    out = _sh(p, sys.executable, "-m", "stages.manifest", "--dataset", "youcook2", ok=False)
    assert out.returncode == 2 and "avl sources youcook2" in out.out
    assert f"data/sources/youcook2/{YC2} is missing" in out.out
    assert _sh(p, "dvc", "repro", "manifest@youcook2", ok=False).returncode != 0

    out = _sh(p, sys.executable, "-m", "stages.sources", "youcook2").out
    assert "git add data/sources/youcook2.dvc && git commit" in out and "dvc push" in out
    assert (p / "data/sources/youcook2" / YC2).read_bytes() == \
        (shared_data / "youcook2" / YC2).read_bytes()
    assert not (p / "data/sources/.gitignore").exists()   # the folder was ignored already
    _sh(p, "git", "add", "data/sources/youcook2.dvc")
    _sh(p, "git", "commit", "-qm", "youcook2: official files")
    # a second run checks the pins again and changes nothing
    _sh(p, sys.executable, "-m", "stages.sources", "--dataset", "youcook2")
    assert _sh(p, "git", "status", "--porcelain").stdout == ""

    _sh(p, "dvc", "repro", "manifest@youcook2")
    assert pq.read_table(p / "manifests/youcook2/videos.parquet").num_rows == 1790
    assert "up to date" in _sh(p, "dvc", "status", "manifest@youcook2").out
    # any change in the folder, even a file no pin covers, is a changed dependency
    (p / "data/sources/youcook2/notes.txt").write_text("mine\n")
    status = _sh(p, "dvc", "status", "manifest@youcook2", "data/sources/youcook2.dvc").out
    assert re.search(r"manifest@youcook2:\s+changed deps:\s+modified:\s+data/sources/youcook2",
                     status)
    assert re.search(r"youcook2.dvc:\s+changed outs:\s+modified:\s+data/sources/youcook2",
                     status)
    (p / "data/sources/youcook2/notes.txt").unlink()
    assert "up to date" in _sh(p, "dvc", "status", "manifest@youcook2").out
    # a swapped pinned file: DVC re-runs the stage, and the pin refuses it
    ann = p / "data/sources/youcook2" / YC2
    ann.write_bytes(ann.read_bytes() + b" ")
    out = _sh(p, "dvc", "repro", "manifest@youcook2", ok=False)
    assert out.returncode != 0 and "sha256 mismatch" in out.out
    assert "avl sources youcook2" in out.out


def test_sources_downloads_checks_pins_and_needs_a_dvc_project(tmp_path, http_server,
                                                                monkeypatch, caplog):
    base, routes = http_server
    body = b'{"database": {}}\n'
    routes["/ann.json"] = (200, body, {})
    spec = tmp_path / "source.yaml"
    spec.write_text(yaml.safe_dump({"files": [
        {"name": "annotations", "path": "ann.json", "url": f"{base}/ann.json",
         "sha256": hashlib.sha256(body).hexdigest()}]}))
    monkeypatch.chdir(tmp_path)   # not a git/DVC repository
    args = ["youcook2", "--params", str(ROOT / "params.yaml"), "--source-spec", str(spec)]
    assert sources_stage.main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "dvc add data/sources/youcook2" in errors[0]
    assert (tmp_path / "data/sources/youcook2/ann.json").read_bytes() == body
    routes.clear()   # fetched once: the second run only checks
    assert sources_stage.main([*args, "--no-dvc-add"]) == 0
    # a server sending other bytes than the pin: refused, nothing left in the folder
    routes["/ann.json"] = (200, body + b" ", {})
    (tmp_path / "data/sources/youcook2/ann.json").unlink()
    assert sources_stage.main([*args, "--no-dvc-add"]) == 2
    assert "sha256 mismatch for ann.json" in caplog.text
    assert list((tmp_path / "data/sources/youcook2").iterdir()) == []


@pytest.mark.parametrize("name, words", [("demo", "dvc repro demo"),
                                         ("nope", "no built-in dataset named 'nope'")])
def test_sources_refuses_what_it_does_not_fetch(name, words, caplog):
    assert sources_stage.main([name, "--params", str(ROOT / "params.yaml")]) == 2
    assert words in caplog.text


def test_source_dir_copy_is_checked_before_it_lands(tmp_path):
    body = b"official\n"
    spec = tmp_path / "source.yaml"
    spec.write_text(yaml.safe_dump({"files": [
        {"name": "a", "path": "sub/a.txt", "url": None,
         "sha256": hashlib.sha256(body).hexdigest()}]}))
    src = tmp_path / "shared"
    (src / "sub").mkdir(parents=True)
    (src / "sub/a.txt").write_bytes(b"not it\n")
    s = Sources("youcook2", spec, tmp_path / "in", download=False, copy_from=src)
    with pytest.raises(SourceError, match="shared/sub/a.txt.*source_dir.*sha256 mismatch.*"
                                          "nothing was kept"):
        s.fetch_all()
    assert not (tmp_path / "in/sub/a.txt").exists()
    (src / "sub/a.txt").write_bytes(body)
    assert s.fetch_all()["a"]["pinned"] and (tmp_path / "in/sub/a.txt").read_bytes() == body


def test_stage_reads_only_the_input_folder_and_says_how_to_fill_it(tmp_path, monkeypatch):
    spec = tmp_path / "source.yaml"
    spec.write_text(yaml.safe_dump({"files": [
        {"name": "annotations", "path": "ann.json", "url": "http://127.0.0.1:9/ann.json",
         "sha256": None}]}))
    monkeypatch.chdir(tmp_path)
    s = Sources.in_stage("msrvtt", spec)
    assert s.folder == Path("data/sources/msrvtt")
    with pytest.raises(SourceError, match=r"data/sources/msrvtt/ann.json is missing: run "
                                          r"`avl sources msrvtt`"):
        s.get("annotations")


# --------------------------------------------------------------------------- metrics, plots


def test_metrics_are_the_headline_numbers_and_details_keep_the_rest(repo):
    metrics = json.loads((repo / "reports/recall/demo.json").read_text())
    assert set(metrics) == HEADLINE
    shown = json.loads(_sh(repo, "dvc", "metrics", "show", "--json").stdout)
    text = json.loads((repo / "reports/text/demo.json").read_text())
    speech = json.loads((repo / "reports/speech/demo.json").read_text())
    assert shown[""]["data"] == {"reports/recall/demo.json": {"data": metrics},
                                 "reports/text/demo.json": {"data": text},
                                 "reports/speech/demo.json": {"data": speech}}
    details = json.loads((repo / "reports/recall/demo/details.json").read_text())
    assert {k: details["metrics"][k] for k in HEADLINE} == metrics
    assert details["metrics"]["fine_tuned/paper/n_queries"] == 2
    # settings x (available: 13 metrics; paper: the same plus each direction's
    # median_rank_present, the reference's convention)
    assert len(details["metrics"]) == 2 * (13 + 15)


def test_plots_show_renders_the_declared_series(repo, tmp_path):
    _sh(repo, "dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    specs = {s["title"]["text"]: s["data"]["values"] for s in (
        json.loads(m) for m in re.findall(r"var spec = (\{.*?\});\n", page, re.S))}
    details = json.loads((repo / "reports/recall/demo/details.json").read_text())["metrics"]
    for setting in ("zero_shot", "fine_tuned"):
        f = f"reports/recall/curves/demo/{setting}.csv"
        rows = _csv(repo / f)
        n = int(details[f"{setting}/paper/n_queries"])       # the curve stops at K = n
        assert [r["K"] for r in rows] == [str(k) for k in range(1, min(50, n) + 1)]
        drawn = {(v["K"], v["field"]): v["dvc_inferred_y_value"] for v in specs[f]}
        assert drawn == {(r["K"], c): r[c] for r in rows
                         for c in ("audio_to_video", "video_to_audio", "chance")}
        for d in ("audio_to_video", "video_to_audio"):   # the curve agrees with the metrics
            for k in (1, 5, 10):
                assert float(rows[min(k, n) - 1][d]) == details[f"{setting}/paper/{d}_R@{k}"]
        assert [float(r["chance"]) for r in rows] == [0.5, 1.0]   # 2 clips: K = 1, 2
    loss = _csv(repo / "data/models/pretrain/loss.csv")
    assert len(loss) == TINY_TRAIN["epochs"] and all(float(r["loss"]) > 0 for r in loss)
    assert [(v["step"], v["loss"]) for v in specs["pretraining loss (stage train)"]] == \
        [(r["step"], r["loss"]) for r in loss]
    status = {v["status"]: v["videos"] for v in specs["reports/availability/status/demo.csv"]}
    assert status["available"] == "4" and set(status) >= {"unavailable", "pending"}


# --------------------------------------------------------------------------- remote


def test_push_then_pull_in_a_fresh_clone_restores_every_output(repo, clone):
    remote = repo.parent / "avl-dvc-remote"    # .dvc/config: ../../avl-dvc-remote
    assert (remote / "files" / "md5").is_dir()
    assert "Data and pipelines are up to date" in _sh(clone, "dvc", "status").out
    theirs, ours = _data_files(repo), _data_files(clone)
    assert "data/models/pretrain/final.pt" in ours and "data/sources/demo/annotations.json" \
        in ours and any(k.startswith("data/features/demo/") for k in ours)
    assert ours == theirs


# --------------------------------------------------------------------------- experiments


def test_experiments_temp_and_queue_in_the_clone(clone):
    out = _sh(clone, "dvc", "exp", "run", "--temp", "-S", "evaluate.batch=3").out
    assert "Running stage 'evaluate@demo'" in out
    for stage in ("demo", "extract@demo", "train", "finetune@demo"):
        assert f"Running stage '{stage}'" not in out   # restored from the cache, not re-run
    for change in ("evaluate.batch=5", "evaluate.examples=1"):
        _sh(clone, "dvc", "exp", "run", "--queue", "-S", change)
    _sh(clone, "dvc", "queue", "start")
    deadline = time.monotonic() + 900
    while re.search(r"\b(Queued|Running)\b", status := _sh(clone, "dvc", "queue", "status").out):
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 2, status
    exps = [e for row in json.loads(_sh(clone, "dvc", "exp", "show", "--json").stdout)
            for e in (row.get("experiments") or [])]
    seen = {}
    for e in exps:
        for rev in e["revs"]:
            data = rev["data"]
            ev = data["params"]["params.yaml"]["data"]["evaluate"]
            seen[(ev["batch"], ev["examples"])] = set(
                data["metrics"]["reports/recall/demo.json"]["data"])
    default = yaml.safe_load((clone / "params.yaml").read_text())["evaluate"]
    assert set(seen) == {(3, default["examples"]), (5, default["examples"]),
                         (default["batch"], 1)}
    assert all(keys == HEADLINE for keys in seen.values())
    # the workspace is untouched
    assert "Data and pipelines are up to date" in _sh(clone, "dvc", "status").out
