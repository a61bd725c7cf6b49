"""MSR-VTT parser: synthetic videodatainfo + the real JSFusion split lists, and hostile input."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config import MsrvttManifestParams
from pipeline.data.datasets import msrvtt
from pipeline.data.manifest import ManifestError, read_clips, read_videos, validate, write_manifest
from pipeline.data.sources import Sources

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "msrvtt"
REAL = {"test_1k_a": "MSRVTT_JSFUSION_test.csv", "train_9k": "MSRVTT_train.9k.csv",
        "train_7k": "MSRVTT_train.7k.reconstructed.csv"}


def yt(i: int) -> str:
    """Synthetic 11-character YouTube id; clips 2k and 2k+1 share a YouTube video."""
    return f"yt{i // 2:09d}"


def official_split(i: int) -> str:
    return "train" if i < 6513 else "validate" if i < 7010 else "test"


def info_dict(n: int = 10000) -> dict:
    """videodatainfo for video0..video{n-1}; two captions each, listed in reverse sen_id order."""
    videos = [{"category": i % 20, "url": f"https://www.youtube.com/watch?v={yt(i)}",
               "video_id": f"video{i}", "start time": float(i % 7), "end time": i % 7 + 10.5,
               "split": official_split(i), "id": i} for i in range(n)]
    sentences = []
    for i in range(n):
        for s in (2 * i + 1, 2 * i):
            sentences.append({"caption": f"caption {s} of video{i}", "video_id": f"video{i}",
                              "sen_id": s})
    return {"info": {"year": 2016}, "videos": videos, "sentences": sentences}


def write_info(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def shared(split: str) -> Path:
    path = SHARED / REAL[split]
    if not path.exists():
        pytest.skip(f"shared test data missing: {path}")
    return path


@pytest.fixture(scope="module")
def full_info(tmp_path_factory) -> Path:
    return write_info(tmp_path_factory.mktemp("msrvtt") / "MSRVTT_data.json", info_dict())


def key_num(key: str) -> int:
    return int(key.removeprefix("video"))


# ---------------------------------------------------------------------- split lists


def test_read_split_list_real_files():
    test = msrvtt.read_split_list(shared("test_1k_a"), "test_1k_a")
    nine = msrvtt.read_split_list(shared("train_9k"), "train_9k")
    seven = msrvtt.read_split_list(shared("train_7k"), "train_7k")
    assert (len(test), len(nine), len(seven)) == (1000, 9000, 7010)
    assert test[:2] == ["video9770", "video9771"]
    assert nine[:2] == ["video0", "video1"]
    assert len(set(test)) == 1000 and not set(test) & set(nine)
    assert set(seven) <= set(nine)


def test_real_lists_parse_fully(full_info):
    lists = {s: shared(s) for s in ("train_7k", "train_9k", "test_1k_a")}
    m = msrvtt.parse_files(full_info, lists, "msrvtt")
    validate(m, "msrvtt")
    assert m.splits == ("train_7k", "train_9k", "test_1k_a")
    by_split = {s: [c for c in m.clips if c["split"] == s] for s in m.splits}
    assert {s: len(c) for s, c in by_split.items()} == {
        "train_7k": 7010, "train_9k": 9000, "test_1k_a": 1000}
    keys = {s: {c["clip_id"] for c in cs} for s, cs in by_split.items()}
    assert len({yt(key_num(k)) for ks in keys.values() for k in ks}) == len(m.videos)

    test0 = by_split["test_1k_a"][0]
    assert test0 == {
        "clip_id": "video9770", "video_id": yt(9770), "split": "test_1k_a",
        "start_s": float(9770 % 7), "end_s": 9770 % 7 + 10.5,
        "text": "a person is connecting something to system",
        "source": "MSRVTT_JSFUSION_test.csv:2", "_row": "MSRVTT_JSFUSION_test.csv:2",
        "category": 9770 % 20, "captions": ["caption 19540 of video9770",
                                            "caption 19541 of video9770"],
        "official_split": "test"}
    train0 = by_split["train_9k"][0]
    assert (train0["clip_id"], train0["text"], train0["official_split"]) == (
        "video0", "caption 0 of video0", "train")

    # a YouTube video's split names every canonical split its clips are in, sorted
    videos = {v["video_id"]: v for v in m.videos}
    for vid in (yt(0), yt(9770)):
        want = sorted(s for s, ks in keys.items() if any(yt(key_num(k)) == vid for k in ks))
        assert videos[vid]["split"] == ",".join(want)
    assert videos[yt(0)]["split"] == "train_7k,train_9k"
    assert videos[yt(0)]["url"] == f"https://www.youtube.com/watch?v={yt(0)}"
    assert all(v["duration_s"] is None for v in m.videos)


def test_parse_via_sources_with_pinned_real_lists(tmp_path, full_info):
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copy(full_info, folder / "MSRVTT_data.json")
    shutil.copy(shared("test_1k_a"), folder / "MSRVTT_JSFUSION_test.csv")
    shutil.copy(shared("train_9k"), folder / "MSRVTT_train.9k.csv")
    sources = Sources("msrvtt", ROOT / "manifests" / "msrvtt" / "source.yaml", folder,
                      download=False)
    m = msrvtt.parse(sources, MsrvttManifestParams(splits=["test_1k_a", "train_9k"]))
    assert m.splits == ("train_9k", "test_1k_a")
    assert len(m.clips) == 10000
    assert sources.used["test_1k_a"]["pinned"] and sources.used["train_9k"]["pinned"]
    assert "train_7k" not in sources.used

    summary = write_manifest(m, tmp_path / "out", sources.used, {})
    assert summary["splits"]["test_1k_a"]["clips"] == 1000
    clips = read_clips(tmp_path / "out" / "clips.parquet")
    assert clips.schema.field("category").type == pa.int32()
    assert clips.schema.field("captions").type == pa.list_(pa.string())
    assert read_videos(tmp_path / "out" / "videos.parquet").num_rows == len(m.videos)


# ---------------------------------------------------------------------- small files


def small(tmp_path: Path, n: int = 4, keys: tuple[str, ...] = ("video0", "video1"),
          info: dict | None = None) -> tuple[Path, Path]:
    info_path = write_info(tmp_path / "MSRVTT_data.json", info or info_dict(n))
    lst = tmp_path / "MSRVTT_train.9k.csv"
    lst.write_text("video_id\n" + "".join(f"{k}\n" for k in keys))
    return info_path, lst


def test_small_happy_path(tmp_path):
    info_path, lst = small(tmp_path, keys=("video3", "video0", "video1"))
    test = tmp_path / "MSRVTT_JSFUSION_test.csv"
    test.write_text("key,vid_key,video_id,sentence\nret0,msr2,video2,a dog runs\n")
    m = msrvtt.parse_files(info_path, {"train_9k": lst, "test_1k_a": test}, "msrvtt")
    validate(m, "msrvtt")
    assert [(c["clip_id"], c["split"], c["text"]) for c in m.clips] == [
        ("video3", "train_9k", "caption 6 of video3"),
        ("video0", "train_9k", "caption 0 of video0"),
        ("video1", "train_9k", "caption 2 of video1"),
        ("video2", "test_1k_a", "a dog runs")]
    assert [(v["video_id"], v["split"]) for v in m.videos] == [
        (yt(3), "test_1k_a,train_9k"), (yt(0), "train_9k")]


def test_url_variants_accepted(tmp_path):
    data = info_dict(2)
    data["videos"][0]["url"] = f"http://youtube.com/watch?v={yt(0)}&t=5"
    info_path, lst = small(tmp_path, info=data)
    m = msrvtt.parse_files(info_path, {"train_9k": lst}, "msrvtt")
    assert m.videos[0]["url"] == f"https://www.youtube.com/watch?v={yt(0)}"


def check(err: pytest.ExceptionInfo, file: str, row, fld: str | None) -> None:
    e = err.value
    assert (Path(e.file).name, e.row, e.field) == (file, row, fld), str(e)
    assert file in str(e) and (row is None or str(row) in str(e))
    assert fld is None or repr(fld) in str(e)


@pytest.mark.parametrize("edit,row,fld", [
    (lambda d: d["videos"][1].update(url="https://vimeo.com/12345"), "videos[1]", "url"),
    (lambda d: d["videos"][1].update(url="https://www.youtube.com/watch?v=../../etc/pa"),
     "videos[1]", "url"),
    (lambda d: d["videos"][1].update(url="https://www.youtube.com/embed/abcdefghijk"),
     "videos[1]", "url"),
    (lambda d: d["videos"][1].update(url="file:///etc/passwd"), "videos[1]", "url"),
    (lambda d: d["videos"][1].pop("url"), "videos[1]", "url"),
    (lambda d: d["videos"][1].update(video_id="../video1"), "videos[1]", "video_id"),
    (lambda d: d["videos"][1].update(video_id="video0"), "videos[1]", "video_id"),
    (lambda d: d["videos"][1].update({"start time": 20.0}), "videos[1]", "end time"),
    (lambda d: d["videos"][1].update({"start time": 11.5}), "videos[1]", "end time"),
    (lambda d: d["videos"][1].update({"start time": -1.0}), "videos[1]", "start time"),
    (lambda d: d["videos"][1].update({"end time": float("nan")}), "videos[1]", "end time"),
    (lambda d: d["videos"][1].update({"end time": "12"}), "videos[1]", "end time"),
    (lambda d: d["videos"][1].update(split="dev"), "videos[1]", "split"),
    (lambda d: d["videos"][1].update(category="music"), "videos[1]", "category"),
    (lambda d: d["sentences"][3].update(video_id="video77"), "sentences[3]", "video_id"),
    (lambda d: d["sentences"][3].update(sen_id="3"), "sentences[3]", "sen_id"),
    (lambda d: d.pop("sentences"), None, "sentences"),
])
def test_bad_videodatainfo(tmp_path, edit, row, fld):
    data = info_dict(4)
    edit(data)
    info_path, lst = small(tmp_path, info=data)
    with pytest.raises(ManifestError) as err:
        msrvtt.parse_files(info_path, {"train_9k": lst}, "msrvtt")
    check(err, "MSRVTT_data.json", row, fld)


def test_truncated_json(tmp_path):
    info_path, lst = small(tmp_path)
    info_path.write_text(info_path.read_text()[:200])
    with pytest.raises(ManifestError, match="truncated or invalid JSON") as err:
        msrvtt.parse_files(info_path, {"train_9k": lst}, "msrvtt")
    assert err.value.file == str(info_path) and str(err.value.row).startswith("line 1 col")


@pytest.mark.parametrize("body,row,fld", [
    ("video_id\nvideo0\nvideo9\n", 3, "video_id"),           # not in the videodatainfo
    ("video_id\nvideo0\nvideo1\nvideo0\n", 4, "video_id"),   # duplicate key
    ("video_id\nvideo0\n../video1\n", 3, "video_id"),        # not a clip key
    ("video_id\nvideo0\n\nvideo1,x\n", 4, None),             # wrong field count
    ("vid\nvideo0\n", 1, None),                               # wrong header
    ("", 1, None),                                            # empty file
])
def test_bad_split_list(tmp_path, body, row, fld):
    info_path, lst = small(tmp_path)
    lst.write_text(body)
    with pytest.raises(ManifestError) as err:
        msrvtt.parse_files(info_path, {"train_9k": lst}, "msrvtt")
    check(err, "MSRVTT_train.9k.csv", row, fld)


def test_test_list_needs_its_columns(tmp_path):
    info_path, lst = small(tmp_path)
    with pytest.raises(ManifestError, match="wrong columns") as err:
        msrvtt.parse_files(info_path, {"test_1k_a": lst}, "msrvtt")  # a train list as test
    check(err, "MSRVTT_train.9k.csv", 1, None)


def test_unknown_split_name_is_a_programming_error(tmp_path):
    info_path, lst = small(tmp_path)
    with pytest.raises(ValueError, match="unknown MSR-VTT split"):
        msrvtt.read_split_list(lst, "train_5k")


def test_no_log_noise_on_clean_input(tmp_path, caplog):
    info_path, lst = small(tmp_path)
    with caplog.at_level(logging.WARNING):
        msrvtt.parse_files(info_path, {"train_9k": lst}, "msrvtt")
    assert not caplog.records
