"""Stage entry points called in-process: exit codes, outputs, one clear line on user errors."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import yaml

from stages import manifest as manifest_stage
from tests.conftest import ROOT


def _params(tmp_path, **youcook2):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["manifest"]["youcook2"].update(youcook2)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def test_manifest_stage_on_the_real_youcook2_file(tmp_path, shared_data):
    params = _params(tmp_path, source_dir=str(shared_data / "youcook2"), download=False)
    rc = manifest_stage.main(["--dataset", "youcook2", "--params", str(params),
                              "--source-spec", str(ROOT / "manifests/youcook2/source.yaml"),
                              "--out", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert summary["videos"] == 1790 and summary["clips"] == 13829
    assert summary["params"] == {"source_dir": str(shared_data / "youcook2"), "download": False}
    assert pq.read_table(tmp_path / "out" / "videos.parquet").num_rows == 1790


def test_manifest_stage_offline_without_files_fails_with_one_clear_line(tmp_path, caplog):
    params = _params(tmp_path, source_dir=str(tmp_path / "nothing"), download=False)
    rc = manifest_stage.main(["--dataset", "youcook2", "--params", str(params),
                              "--source-spec", str(ROOT / "manifests/youcook2/source.yaml"),
                              "--out", str(tmp_path / "out")])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "youcookii_annotations_trainval.json" in errors[0]
    assert str(tmp_path / "nothing") in errors[0] and "source_dir" in errors[0]
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
