"""YouCook2 parser on the real annotation file, and hostile or malformed variants of it."""
from __future__ import annotations

import copy
import json

import pyarrow.parquet as pq
import pytest

from pipeline.config import YouCook2ManifestParams
from pipeline.data.datasets import youcook2
from pipeline.data.manifest import ManifestError, validate, write_manifest
from pipeline.data.sources import Sources
from tests.conftest import ROOT

REAL = "youcook2/youcookii_annotations_trainval.json"


@pytest.fixture(scope="module")
def real_db():
    from tests.conftest import SHARED_DATA
    if not (SHARED_DATA / REAL).exists():
        pytest.skip("../shared/data not present")
    return json.loads((SHARED_DATA / REAL).read_text())


def test_real_file_counts_through_the_pinned_source(shared_data, tmp_path):
    src = Sources("youcook2", ROOT / "manifests/youcook2/source.yaml", shared_data / "youcook2",
                  download=False)
    m = youcook2.parse(src, YouCook2ManifestParams())
    validate(m, "youcook2")
    assert src.used["annotations"]["pinned"]
    summary = write_manifest(m, tmp_path, src.used, {})
    assert summary["splits"]["train"]["videos"] == 1333
    assert summary["splits"]["val"]["videos"] == 457
    assert summary["splits"]["train"]["clips"] == 10337
    assert summary["splits"]["val"]["clips"] == 3492
    clips = pq.read_table(tmp_path / "clips.parquet").to_pylist()
    first = next(c for c in clips if c["clip_id"] == "GLd3aX16zBg:0")
    assert first["start_s"] == 90 and first["end_s"] == 102 and first["split"] == "train"
    assert first["text"] == "spread margarine on two slices of white bread"
    videos = {v["video_id"]: v for v in pq.read_table(tmp_path / "videos.parquet").to_pylist()}
    assert videos["GLd3aX16zBg"]["duration_s"] == 241.62
    assert videos["GLd3aX16zBg"]["recipe_type"] == "113"
    # the official JSON's 'cc' URL: the key's URL wins
    assert videos["FHvZgt3ExDI"]["url"] == "https://www.youtube.com/watch?v=FHvZgt3ExDI"


def test_output_is_deterministic(shared_data, tmp_path):
    src = Sources("youcook2", ROOT / "manifests/youcook2/source.yaml", shared_data / "youcook2",
                  False)
    for out in ("a", "b"):
        write_manifest(youcook2.parse(src, YouCook2ManifestParams()), tmp_path / out, {}, {})
    for name in ("videos.parquet", "clips.parquet", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _small(real_db):
    keys = ["GLd3aX16zBg", "FHvZgt3ExDI"]
    return {"database": {k: copy.deepcopy(real_db["database"][k]) for k in keys}}


def _parse(tmp_path, db, raw: str | None = None):
    f = tmp_path / "youcookii_annotations_trainval.json"
    f.write_text(raw if raw is not None else json.dumps(db))
    m = youcook2.parse_file(f, "youcook2")
    validate(m, str(f))
    return m


def _mutate(db, fn):
    db = copy.deepcopy(db)
    fn(db["database"])
    return db


CASES = [
    ("bad id with ../", lambda d: d.__setitem__("../../etc/pwd", d.pop("GLd3aX16zBg")),
     "database.../../etc/pwd", "database key", "not a valid 11-character"),
    ("start after end", lambda d: d["GLd3aX16zBg"]["annotations"][1].__setitem__(
        "segment", [130, 120]), "database.GLd3aX16zBg.annotations[1]", "segment", "not before"),
    ("negative time", lambda d: d["GLd3aX16zBg"]["annotations"][0].__setitem__(
        "segment", [-1, 5]), "database.GLd3aX16zBg.annotations[0]", "segment", ">= 0"),
    ("text time", lambda d: d["GLd3aX16zBg"]["annotations"][0].__setitem__(
        "segment", ["a", 5]), "database.GLd3aX16zBg.annotations[0]", "segment", "time"),
    ("unknown split", lambda d: d["GLd3aX16zBg"].__setitem__("subset", "testing"),
     "database.GLd3aX16zBg", "subset", "unknown split 'testing'"),
    ("missing field", lambda d: d["GLd3aX16zBg"].pop("annotations"),
     "database.GLd3aX16zBg", "annotations", "missing"),
    ("duplicate annotation id", lambda d: d["GLd3aX16zBg"]["annotations"][1].__setitem__("id", 0),
     "database.GLd3aX16zBg.annotations[1]", "clip_id", "duplicate clip id"),
    ("wrong type", lambda d: d["GLd3aX16zBg"].__setitem__("duration", "long"),
     "database.GLd3aX16zBg", "duration", "expected int or float"),
]


@pytest.mark.parametrize("name, fn, row, field, words", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_names_file_row_field(tmp_path, real_db, name, fn, row, field, words):
    with pytest.raises(ManifestError) as e:
        _parse(tmp_path, _mutate(_small(real_db), fn))
    assert e.value.row == row and e.value.field == field
    msg = str(e.value)
    assert "youcookii_annotations_trainval.json" in msg and words in msg


def test_duplicate_video_key_is_caught(tmp_path, real_db):
    raw = json.dumps(_small(real_db))
    dup = raw.replace('"FHvZgt3ExDI"', '"GLd3aX16zBg"')
    with pytest.raises(ManifestError, match="duplicate key 'GLd3aX16zBg'"):
        _parse(tmp_path, None, dup)


def test_truncated_json(tmp_path, real_db):
    raw = json.dumps(_small(real_db))
    with pytest.raises(ManifestError, match=r"line 1 col \d+.*truncated or invalid JSON"):
        _parse(tmp_path, None, raw[: len(raw) // 2])


def test_demo_style_file_urls(tmp_path, real_db):
    db = _small(real_db)
    db["database"]["GLd3aX16zBg"]["video_url"] = "file:data/demo/videos/GLd3aX16zBg.mp4"
    db["database"]["FHvZgt3ExDI"]["video_url"] = "file:data/demo/videos/FHvZgt3ExDI.mp4"
    f = tmp_path / "a.json"
    f.write_text(json.dumps(db))
    m = youcook2.parse_file(f, "demo", file_urls=True)
    assert m.videos[0]["url"] == "file:data/demo/videos/GLd3aX16zBg.mp4"
    for bad in ("file:../../etc/passwd", "file:/etc/passwd", "https://example.com/a.mp4"):
        db["database"]["GLd3aX16zBg"]["video_url"] = bad
        f.write_text(json.dumps(db))
        with pytest.raises(ManifestError, match="video_url"):
            youcook2.parse_file(f, "demo", file_urls=True)
