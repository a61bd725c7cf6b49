"""HowTo100M parser: small HowTo100M_v1.csv / caption.json in the official format, hostile input."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config import HowTo100MManifestParams
from pipeline.data.datasets import howto100m
from pipeline.data.manifest import ManifestError, read_clips, read_videos, validate, write_manifest
from pipeline.data.sources import Sources

ROOT = Path(__file__).resolve().parents[1]
HEADER = "video_id,category_1,category_2,rank,task_id\n"
ROWS = [
    "nVbIUDjzWY4,Cars & Other Vehicles,Motorcycles,27,52907",
    "CTPAZ2euJ2Q,Cars & Other Vehicles,Motorcycles,35,52907",
    '-9Bb6h_ZW3s,"Food and Entertaining","Drinks, Cocktails",1,10001',
    "abcdefghij_,Hobbies and Crafts,Crafts,300,20002",
]
CAPTIONS = {
    "nVbIUDjzWY4": {"start": [0.0, 3.5, 7], "end": [4.0, 8.25, 7], "text": ["a", "b", "c"]},
    "-9Bb6h_ZW3s": {"start": [1.0], "end": [2.5], "text": ["pour the gin"]},
    "zzzzzzzzzzz": {"start": [0.0], "end": [1.0], "text": ["not listed"]},
    "../../etc/p": {"start": [0.0], "end": [1.0], "text": ["hostile key, not listed"]},
    "abcdefghij_": {"start": [], "end": [], "text": []},
}


def write(tmp_path: Path, rows=ROWS, captions=CAPTIONS, header=HEADER) -> tuple[Path, Path]:
    csv_path = tmp_path / "HowTo100M_v1.csv"
    csv_path.write_text(header + "".join(r + "\n" for r in rows))
    cap_path = tmp_path / "caption.json"
    cap_path.write_text(json.dumps(captions))
    return csv_path, cap_path


def test_videos_only(tmp_path):
    csv_path, _ = write(tmp_path)
    m = howto100m.parse_files(csv_path, None, "howto100m")
    validate(m, "howto100m")
    assert m.splits == ("train",) and m.clips == []
    assert m.videos[2] == {
        "video_id": "-9Bb6h_ZW3s", "url": "https://www.youtube.com/watch?v=-9Bb6h_ZW3s",
        "split": "train", "duration_s": None, "_row": 4, "category_1": "Food and Entertaining",
        "category_2": "Drinks, Cocktails", "rank": 1, "task_id": "10001"}
    assert [v["rank"] for v in m.videos] == [27, 35, 1, 300]


def test_columns_in_any_order(tmp_path):
    csv_path, _ = write(tmp_path, rows=["52907,27,nVbIUDjzWY4,Motorcycles,Cars"],
                        header="task_id,rank,video_id,category_2,category_1\n")
    (v,) = howto100m.parse_files(csv_path, None, "howto100m").videos
    assert (v["video_id"], v["category_1"], v["rank"], v["task_id"]) == (
        "nVbIUDjzWY4", "Cars", 27, "52907")


def test_with_captions(tmp_path, caplog):
    csv_path, cap_path = write(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.datasets.howto100m"):
        m = howto100m.parse_files(csv_path, cap_path, "howto100m")
    validate(m, "howto100m")
    assert [(c["clip_id"], c["video_id"], c["start_s"], c["end_s"], c["text"], c["source"])
            for c in m.clips] == [
        ("nVbIUDjzWY4:0", "nVbIUDjzWY4", 0.0, 4.0, "a", "caption.json:nVbIUDjzWY4[0]"),
        ("nVbIUDjzWY4:1", "nVbIUDjzWY4", 3.5, 8.25, "b", "caption.json:nVbIUDjzWY4[1]"),
        ("-9Bb6h_ZW3s:0", "-9Bb6h_ZW3s", 1.0, 2.5, "pour the gin",
         "caption.json:-9Bb6h_ZW3s[0]")]
    assert all(c["split"] == "train" for c in m.clips)
    messages = sorted(r.getMessage() for r in caplog.records)
    assert len(messages) == 2
    assert "skipped 1 captions whose start is not before their end" in messages[0]
    assert "skipped the captions of 2 videos that are not in the video list" in messages[1]


def test_parse_via_sources(tmp_path):
    write(tmp_path)
    spec = ROOT / "manifests" / "howto100m" / "source.yaml"
    sources = Sources("howto100m", spec, tmp_path, download=False)
    m = howto100m.parse(sources, HowTo100MManifestParams())
    assert len(m.videos) == 4 and m.clips == [] and "captions" not in sources.used
    m = howto100m.parse(sources, HowTo100MManifestParams(captions=True))
    assert len(m.clips) == 3 and "captions" in sources.used
    write_manifest(m, tmp_path / "out", sources.used, {})
    videos = read_videos(tmp_path / "out" / "videos.parquet")
    assert videos.schema.field("rank").type == pa.int32()
    assert sorted(videos.column("rank").to_pylist()) == [1, 27, 35, 300]
    assert read_clips(tmp_path / "out" / "clips.parquet").num_rows == 3


def check(err: pytest.ExceptionInfo, file: str, row, fld: str | None) -> None:
    e = err.value
    assert (Path(e.file).name, e.row, e.field) == (file, row, fld), str(e)
    assert file in str(e) and (row is None or f"row {row}" in str(e))
    assert fld is None or repr(fld) in str(e)


@pytest.mark.parametrize("rows,row,fld,match", [
    (ROWS + ["nVbIUDjzWY4,A,B,1,2"], 6, "video_id", "duplicate video id"),
    (ROWS + ["../../etc/pa,A,B,1,2"], 6, "video_id", "not a valid"),
    (ROWS + ["short,A,B,1,2"], 6, "video_id", "not a valid"),
    (ROWS + ["nVbIUDjzWY5,A,B,first,2"], 6, "rank", "non-negative integer"),
    (ROWS + ["nVbIUDjzWY5,A,B,-1,2"], 6, "rank", "non-negative integer"),
    (ROWS + ["nVbIUDjzWY5,A,B,\u00b2,2"], 6, "rank", "non-negative integer"),
    (ROWS + ["nVbIUDjzWY5,A,B,99999999999,2"], 6, "rank", "non-negative integer"),
    (ROWS + ["nVbIUDjzWY5,A,B,1"], 6, None, "expected 5 fields"),
])
def test_bad_csv(tmp_path, rows, row, fld, match):
    csv_path, _ = write(tmp_path, rows=rows)
    with pytest.raises(ManifestError, match=match) as err:
        howto100m.parse_files(csv_path, None, "howto100m")
    check(err, "HowTo100M_v1.csv", row, fld)


@pytest.mark.parametrize("header", ["video_id,category_1,category_2,rank\n",
                                    "video_id,category_1,category_2,rank,task_id,extra\n",
                                    "id,category_1,category_2,rank,task_id\n", ""])
def test_wrong_columns(tmp_path, header):
    csv_path, _ = write(tmp_path, rows=[] if not header else ROWS[:1], header=header)
    with pytest.raises(ManifestError) as err:
        howto100m.parse_files(csv_path, None, "howto100m")
    check(err, "HowTo100M_v1.csv", 1, None)


@pytest.mark.parametrize("entry,row,fld,match", [
    ({"start": [0.0, 1.0], "end": [1.0], "text": ["a"]}, "nVbIUDjzWY4", "start/end/text",
     "2 starts, 1 ends, 1 texts"),
    ({"start": [0.0], "end": [1.0], "text": ["a", "b"]}, "nVbIUDjzWY4", "start/end/text",
     "differ in length"),
    ({"start": [0.0], "end": [1.0]}, "nVbIUDjzWY4", "text", "missing"),
    ({"start": 0.0, "end": [1.0], "text": ["a"]}, "nVbIUDjzWY4", "start", "expected list"),
    ({"start": [-1.0], "end": [1.0], "text": ["a"]}, "nVbIUDjzWY4[0]", "start", "finite"),
    ({"start": [0.0, float("nan")], "end": [1.0, 2.0], "text": ["a", "b"]}, "nVbIUDjzWY4[1]",
     "start", "finite"),
    ({"start": [0.0], "end": [float("inf")], "text": ["a"]}, "nVbIUDjzWY4[0]", "end", "finite"),
    ({"start": ["0.5"], "end": [1.0], "text": ["a"]}, "nVbIUDjzWY4[0]", "start", "seconds"),
    ({"start": [None], "end": [1.0], "text": ["a"]}, "nVbIUDjzWY4[0]", "start", "seconds"),
    ({"start": [True], "end": [1.0], "text": ["a"]}, "nVbIUDjzWY4[0]", "start", "seconds"),
    ({"start": [0.0], "end": [1.0], "text": [7]}, "nVbIUDjzWY4[0]", "text", "expected str"),
])
def test_bad_captions(tmp_path, entry, row, fld, match):
    csv_path, cap_path = write(tmp_path, captions={**CAPTIONS, "nVbIUDjzWY4": entry})
    with pytest.raises(ManifestError, match=match) as err:
        howto100m.parse_files(csv_path, cap_path, "howto100m")
    check(err, "caption.json", row, fld)


def test_truncated_caption_json(tmp_path):
    csv_path, cap_path = write(tmp_path)
    cap_path.write_text(cap_path.read_text()[:-30])
    with pytest.raises(ManifestError, match="truncated or invalid JSON") as err:
        howto100m.parse_files(csv_path, cap_path, "howto100m")
    assert Path(err.value.file).name == "caption.json"
    assert str(err.value.row).startswith("line 1 col")


def test_caption_json_not_an_object(tmp_path):
    csv_path, cap_path = write(tmp_path, captions=[1, 2])
    with pytest.raises(ManifestError, match="expected an object") as err:
        howto100m.parse_files(csv_path, cap_path, "howto100m")
    check(err, "caption.json", None, None)
