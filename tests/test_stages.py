"""Stage entry points called in-process: exit codes, outputs, one clear line on user errors."""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import yaml

from stages import manifest as manifest_stage
from tests.conftest import ROOT


def _params(tmp_path, **youcook2):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["datasets"]["youcook2"] = "youcook2"   # --dataset takes configured datasets only
    data["manifest"]["youcook2"].update(youcook2)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def test_manifest_stage_on_the_real_youcook2_file(tmp_path, shared_data, monkeypatch):
    params = _params(tmp_path, source_dir=str(shared_data / "youcook2"), download=False)
    # the stage reads its input folder only (data/sources/<ds>, from the working directory)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/sources/youcook2").mkdir(parents=True)
    shutil.copy(shared_data / "youcook2/youcookii_annotations_trainval.json",
                tmp_path / "data/sources/youcook2")
    rc = manifest_stage.main(["--dataset", "youcook2", "--params", str(params),
                              "--source-spec", str(ROOT / "manifests/youcook2/source.yaml"),
                              "--out", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert summary["videos"] == 1790 and summary["clips"] == 13829
    assert summary["params"] == {"source_dir": str(shared_data / "youcook2"), "download": False}
    assert pq.read_table(tmp_path / "out" / "videos.parquet").num_rows == 1790


def test_manifest_stage_without_its_input_folder_fails_with_one_clear_line(tmp_path, caplog,
                                                                           monkeypatch):
    params = _params(tmp_path, source_dir=str(tmp_path / "nothing"), download=False)
    monkeypatch.chdir(tmp_path)   # no data/sources/youcook2 here
    rc = manifest_stage.main(["--dataset", "youcook2", "--params", str(params),
                              "--source-spec", str(ROOT / "manifests/youcook2/source.yaml"),
                              "--out", str(tmp_path / "out")])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "data/sources/youcook2/youcookii_annotations_trainval.json is missing" in errors[0]
    assert "run `avl sources youcook2`" in errors[0]
    assert not (tmp_path / "out").exists()


def test_bad_params_stop_before_any_work(tmp_path, caplog):
    params = _params(tmp_path, sourcedir="x")
    rc = manifest_stage.main(["--dataset", "youcook2", "--params", str(params),
                              "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "manifest.youcook2.sourcedir: unknown key" in caplog.text
    assert not (tmp_path / "out").exists()


def test_demo_stage_missing_tool_is_one_clear_line(tmp_path, monkeypatch, caplog):
    from stages import demo as demo_stage
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither ffmpeg nor espeak-ng on PATH
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    rc = demo_stage.main(["--out", "data/demo", "--source-spec", "manifests/demo/source.yaml"])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not found: install" in errors[0]
    assert not (tmp_path / "manifests/demo/source.yaml").exists()
