"""CrossTask parser: a small release folder in the official format, and hostile input."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config import CrossTaskManifestParams
from pipeline.data.datasets import crosstask
from pipeline.data.manifest import ManifestError, read_clips, validate, write_manifest
from pipeline.data.sources import Sources

ROOT = Path(__file__).resolve().parents[1]

PRIMARY = """\
10001
Make Jello Shots
http://www.wikihow.com/Make-Jello-Shots
3
pour water,stir mixture,pour mixture into cup

10002
Jack Up a Car
http://www.wikihow.com/Jack-Up-a-Car
2
brake on,raise jack

"""
RELATED = """\
20001
Make Pancakes
http://www.wikihow.com/Make-Pancakes
2
mix batter,flip pancake
"""  # no trailing blank line: tolerated
A1, A2, A3, A4, B1 = "AAAAAAAAAA1", "AAAAAAAAA_2", "AAAAAAAAA-3", "AAAAAAAAAA4", "BBBBBBBBBB1"
VIDEOS = [("10001", A1), ("10001", A2), ("10001", A3), ("10002", A4), ("10002", A2),
          ("20001", B1)]
VAL = [("10001", A1), ("10002", A4)]
ANNOTATIONS = {
    ("10001", A1): "1,1.5,4.0\n3,10.0,12.25\n",
    ("10001", A2): "2,0.0,3.0\n\n3,5.0,6.0\n1,7,9\n",
    ("10002", A4): "2,30.00,41.00\n",
    ("10002", A2): "1,2.0,3.0\n",
}


def url(vid: str) -> str:
    return f"https://www.youtube.com/watch?v={vid}"


def release(tmp_path: Path, videos=VIDEOS, val=VAL, annotations=ANNOTATIONS) -> Path:
    root = tmp_path / "crosstask_release"
    (root / "annotations").mkdir(parents=True)
    (root / "tasks_primary.txt").write_text(PRIMARY)
    (root / "tasks_related.txt").write_text(RELATED)
    (root / "videos.csv").write_text("".join(f"{t},{v},{url(v)}\n" for t, v in videos))
    (root / "videos_val.csv").write_text("".join(f"{t},{v},{url(v)}\n" for t, v in val))
    for (t, v), body in annotations.items():
        (root / "annotations" / f"{t}_{v}.csv").write_text(body)
    return root


def test_read_tasks(tmp_path):
    root = release(tmp_path)
    tasks = crosstask.read_tasks(root / "tasks_primary.txt", "primary")
    assert list(tasks) == ["10001", "10002"]
    assert tasks["10001"] == crosstask.Task(
        "10001", "Make Jello Shots", "http://www.wikihow.com/Make-Jello-Shots",
        ("pour water", "stir mixture", "pour mixture into cup"), "primary")
    assert crosstask.read_tasks(root / "tasks_related.txt", "related")["20001"].steps == (
        "mix batter", "flip pancake")


def test_happy_path(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.data.datasets.crosstask"):
        m = crosstask.parse_folder(release(tmp_path), "crosstask")
    validate(m, "crosstask")
    assert m.splits == ("train", "val")
    assert [(v["video_id"], v["split"], v["task_id"], v["task_kind"]) for v in m.videos] == [
        (A1, "val", "10001", "primary"), (A2, "train", "10001", "primary"),
        (A3, "train", "10001", "primary"), (A4, "val", "10002", "primary"),
        (B1, "train", "20001", "related")]
    assert m.videos[0]["url"] == url(A1) and m.videos[0]["duration_s"] is None
    got = [(c["clip_id"], c["split"], c["start_s"], c["end_s"], c["text"], c["task_id"],
            c["step"]) for c in m.clips]
    assert got == [
        (f"{A1}:10001:0", "val", 1.5, 4.0, "pour water", "10001", 1),
        (f"{A1}:10001:1", "val", 10.0, 12.25, "pour mixture into cup", "10001", 3),
        (f"{A2}:10001:0", "train", 0.0, 3.0, "stir mixture", "10001", 2),
        (f"{A2}:10001:1", "train", 5.0, 6.0, "pour mixture into cup", "10001", 3),
        (f"{A2}:10001:2", "train", 7.0, 9.0, "pour water", "10001", 1),
        (f"{A4}:10002:0", "val", 30.0, 41.0, "raise jack", "10002", 2),
        (f"{A2}:10002:0", "train", 2.0, 3.0, "brake on", "10002", 1)]
    assert m.clips[3]["source"] == f"annotations/10001_{A2}.csv:3"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 videos are listed under several tasks" in warnings[0]


def test_without_related(tmp_path):
    m = crosstask.parse_folder(release(tmp_path), "crosstask", include_related=False)
    assert B1 not in {v["video_id"] for v in m.videos}
    assert len(m.videos) == 4 and len(m.clips) == 7


def test_video_in_val_for_one_task_and_train_for_another(tmp_path):
    videos = VIDEOS + [("10002", A1)]
    annotations = {**ANNOTATIONS, ("10002", A1): "1,0,1\n"}
    m = crosstask.parse_folder(release(tmp_path, videos, annotations=annotations), "crosstask")
    validate(m, "crosstask")
    v = next(v for v in m.videos if v["video_id"] == A1)
    assert (v["split"], v["task_id"]) == ("train,val", "10001")
    assert next(c for c in m.clips if c["clip_id"] == f"{A1}:10002:0")["split"] == "train"


def test_val_only_video_and_unannotated_val(tmp_path, caplog):
    # a val video missing from videos.csv is still val; an unannotated val entry is held out
    videos = [p for p in VIDEOS if p != ("10001", A1)]
    val = VAL + [("10001", A3)]
    with caplog.at_level(logging.WARNING, logger="pipeline.data.datasets.crosstask"):
        m = crosstask.parse_folder(release(tmp_path, videos, val), "crosstask")
    splits = {v["video_id"]: v["split"] for v in m.videos}
    assert splits[A1] == "val" and A3 not in splits
    assert any("1 videos_val.csv entries" in r.getMessage() for r in caplog.records)


def test_parse_via_sources(tmp_path):
    release(tmp_path)
    sources = Sources("crosstask", ROOT / "manifests" / "crosstask" / "source.yaml", tmp_path,
                      download=False)
    m = crosstask.parse(sources, CrossTaskManifestParams(include_related=False))
    assert len(m.videos) == 4 and not sources.used["release"]["pinned"]
    summary = write_manifest(m, tmp_path / "out", sources.used, {})
    assert summary["splits"]["val"] == {"videos": 2, "clips": 3,
                                        "clip_checksum": summary["splits"]["val"]["clip_checksum"]}
    assert read_clips(tmp_path / "out" / "clips.parquet").schema.field("step").type == pa.int32()


def check(err: pytest.ExceptionInfo, file: str, row, fld: str | None) -> None:
    e = err.value
    assert (Path(e.file).name, e.row, e.field) == (file, row, fld), str(e)
    assert file in str(e) and (row is None or f"row {row}" in str(e))
    assert fld is None or repr(fld) in str(e)


@pytest.mark.parametrize("body,row,fld", [
    ("1,1.0,2.0\n4,3.0,5.0\n", 2, "step"),     # task 10001 has 3 steps
    ("0,1.0,2.0\n", 1, "step"),
    ("x,1.0,2.0\n", 1, "step"),
    ("\u00b9,1.0,2.0\n", 1, "step"),
    ("1,5.0,5.0\n", 1, "end"),
    ("1,6.0,5.0\n", 1, "end"),
    ("1,-1.0,5.0\n", 1, "start"),
    ("1,nan,5.0\n", 1, "start"),
    ("1,1.0,inf\n", 1, "end"),
    ("1,1.0,abc\n", 1, "end"),
    ("1,1.0\n", 1, None),
    ("step,start,end\n1,1.0,2.0\n", 1, "step"),  # a header is not the official format
])
def test_bad_annotation(tmp_path, body, row, fld):
    root = release(tmp_path, annotations={**ANNOTATIONS, ("10001", A1): body})
    with pytest.raises(ManifestError) as err:
        crosstask.parse_folder(root, "crosstask")
    check(err, f"10001_{A1}.csv", row, fld)


@pytest.mark.parametrize("name", [f"10001_{A4}.csv", f"10003_{A1}.csv"])
def test_annotation_for_unlisted_video(tmp_path, name):
    root = release(tmp_path)
    (root / "annotations" / name).write_text("1,1.0,2.0\n")
    with pytest.raises(ManifestError, match="does not list") as err:
        crosstask.parse_folder(root, "crosstask")
    check(err, name, None, "file name")


@pytest.mark.parametrize("name", ["notes.csv", "10001_..%2F..%2Fx.csv", "10001_short.csv",
                                  "10.01_AAAAAAAAAA1.csv"])
def test_bad_annotation_file_name(tmp_path, name):
    root = release(tmp_path)
    (root / "annotations" / name).write_text("1,1.0,2.0\n")
    with pytest.raises(ManifestError) as err:
        crosstask.parse_folder(root, "crosstask")
    check(err, name, None, "file name")


@pytest.mark.parametrize("videos,row,fld,match", [
    (VIDEOS + [("10001", "../../etc/pa")], 7, "youtube_id", "not a valid"),
    (VIDEOS + [("10001", "short")], 7, "youtube_id", "not a valid"),
    (VIDEOS + [("10001", A2)], 7, "youtube_id", "duplicate video"),
    (VIDEOS + [("99999", "CCCCCCCCCC1")], 7, "task_id", "unknown task"),
])
def test_bad_videos_csv(tmp_path, videos, row, fld, match):
    with pytest.raises(ManifestError, match=match) as err:
        crosstask.parse_folder(release(tmp_path, videos), "crosstask")
    check(err, "videos.csv", row, fld)


def test_videos_csv_wrong_columns(tmp_path):
    root = release(tmp_path)
    (root / "videos.csv").write_text(f"10001,{A1}\n")
    with pytest.raises(ManifestError, match="expected 3 fields") as err:
        crosstask.parse_folder(root, "crosstask")
    check(err, "videos.csv", 1, None)


def test_bad_val_csv(tmp_path):
    with pytest.raises(ManifestError) as err:
        crosstask.parse_folder(release(tmp_path, val=VAL + [("10001", "bad id!!!!!")]),
                               "crosstask")
    check(err, "videos_val.csv", 3, "youtube_id")


@pytest.mark.parametrize("text,row,fld", [
    (PRIMARY.replace("\n3\n", "\n4\n"), 5, "steps"),
    (PRIMARY.replace("\n3\n", "\nthree\n"), 4, "n_steps"),
    (PRIMARY.replace("10002\n", "10001\n"), 7, "task_id"),
    (PRIMARY.replace("10002\n", "10_02\n"), 7, "task_id"),
    (PRIMARY + "10003\nTruncated\n", 13, None),
])
def test_bad_tasks_file(tmp_path, text, row, fld):
    root = release(tmp_path)
    (root / "tasks_primary.txt").write_text(text)
    with pytest.raises(ManifestError) as err:
        crosstask.parse_folder(root, "crosstask")
    check(err, "tasks_primary.txt", row, fld)


def test_task_in_both_lists(tmp_path):
    root = release(tmp_path)
    (root / "tasks_related.txt").write_text(RELATED.replace("20001", "10002"))
    with pytest.raises(ManifestError, match="also a primary task") as err:
        crosstask.parse_folder(root, "crosstask")
    check(err, "tasks_related.txt", None, "task_id")


def test_missing_files(tmp_path):
    root = release(tmp_path)
    (root / "videos_val.csv").unlink()
    with pytest.raises(ManifestError, match="file not found"):
        crosstask.parse_folder(root, "crosstask")
    for p in (root / "annotations").iterdir():
        p.unlink()
    (root / "annotations").rmdir()
    with pytest.raises(ManifestError, match="missing annotations folder"):
        crosstask.parse_folder(root, "crosstask")
