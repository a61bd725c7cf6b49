"""Own media (kind `custom`) and LSMDC: manifests from a folder, URL/path lists and annotations
(CSV, JSONL, YouCook2 JSON); stable path-safe ids; per-file statuses through download and
extract with files referenced in place (never copied)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import ParamsError, load_params
from pipeline.data.datasets import custom, lsmdc
from pipeline.data.datasets.custom import OwnInputs, stable_id
from pipeline.data.manifest import ManifestError, validate, write_manifest
from pipeline.data.sources import SourceError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def make_media(path: Path, seconds: float = 4, audio: str | None = "sine=frequency=440",
               size: str = "160x120") -> Path:
    """A small test video: moving pattern, with `audio` (a lavfi source; None: no audio)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"{audio}:duration={seconds}", "-c:a", "aac"]
    ffmpeg(*args, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-shortest", str(path))
    return path


def own_folder(base: Path) -> Path:
    """data/sources/<name>/media with good, corrupt, silent, no-audio and oddly named files."""
    media = base / "media"
    make_media(media / "good.mp4")
    make_media(media / "sub dir" / "Crème brûlée #1.mkv")
    make_media(media / "silent.mp4", audio="anullsrc=r=44100:cl=mono")
    make_media(media / "noaudio.mp4", audio=None)
    (media / "corrupt.mp4").write_bytes(os.urandom(3000))
    (media / "notes.txt").write_text("not media: skipped by extension")
    (media / ".hidden.mp4").write_bytes(b"skipped: hidden")
    return media


def parse_custom(tmp_path: Path, monkeypatch, **entry):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps(
        {"datasets": {"mine": "custom"}, "train": {"dataset": "mine"},
         "finetune": {"datasets": []}, "evaluate": {"datasets": ["mine"]},
         "manifest": {"mine": entry}}))
    p = load_params(tmp_path / "params.yaml")
    inputs = OwnInputs("mine", Path("data/sources/mine"))
    m = custom.parse(inputs, p.manifest.of("mine"))
    validate(m, "test")
    return m, inputs


def test_folder_ids_names_urls_and_whole_video_clips(tmp_path, monkeypatch):
    own_folder(tmp_path / "data/sources/mine")
    m, _ = parse_custom(tmp_path, monkeypatch)
    names = sorted(v["name"] for v in m.videos)
    assert names == ["corrupt.mp4", "good.mp4", "noaudio.mp4", "silent.mp4",
                     "sub dir/Crème brûlée #1.mkv"]
    for v in m.videos:
        assert v["video_id"] == stable_id(v["name"])
        assert set(v["video_id"]) <= set("abcdefghijklmnopqrstuvwxyz"
                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        path = urllib.parse.unquote(v["url"].removeprefix("file:"))
        assert (tmp_path / path).is_file(), v["url"]     # project-relative, quoted
        assert v["split"] == "test"
    odd = next(v for v in m.videos if v["name"].startswith("sub dir"))
    assert odd["video_id"].startswith("Creme_brulee_1-")
    assert len(m.clips) == 5 and all(c["start_s"] == 0 for c in m.clips)
    assert m.roles == {"eval": "test"}


def test_ids_do_not_depend_on_where_the_folder_lies(tmp_path, monkeypatch):
    own_folder(tmp_path / "a/data/sources/mine")
    m1, _ = parse_custom(tmp_path / "a", monkeypatch)
    shutil.copytree(tmp_path / "a/data", tmp_path / "b/data")
    m2, _ = parse_custom(tmp_path / "b", monkeypatch)
    assert [v["video_id"] for v in m1.videos] == [v["video_id"] for v in m2.videos]


def test_list_of_urls_and_paths_with_annotations(tmp_path, monkeypatch):
    base = tmp_path / "data/sources/mine"
    make_media(base / "media" / "a.mp4")
    make_media(base / "media" / "b.mp4")
    (base / "list.csv").write_text(
        "url,path,split,title\n"
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ,,train,a song\n"
        "https://example.org/videos/talk.mp4?x=1,,test,\n"
        ",b.mp4,train,\n")
    (base / "ann.jsonl").write_text(
        json.dumps({"video": "a.mp4", "start": 0, "end": 2, "text": "first", "split": "test"})
        + "\n" + json.dumps({"video": "dQw4w9WgXcQ", "start": 1, "end": 3.5, "text": "x"})
        + "\n" + json.dumps({"video": "b", "start": 0.5, "end": 1.5, "split": "train"}) + "\n")
    m, inputs = parse_custom(tmp_path, monkeypatch, media_list="list.csv", annotations="ann.jsonl")
    ids = {v["name"]: v["video_id"] for v in m.videos}
    assert ids["https://www.youtube.com/watch?v=dQw4w9WgXcQ"] == "dQw4w9WgXcQ"
    assert ids["b.mp4"] == stable_id("b.mp4")       # listed and in the folder: one video
    assert len(m.videos) == 4
    by_text = {c["text"]: c for c in m.clips}
    assert by_text["first"]["split"] == "test" and by_text["first"]["end_s"] == 2
    assert by_text["x"]["split"] == "train"          # the list's split when the row has none
    assert m.roles == {"eval": "test", "train": "train"}
    assert set(inputs.used) == {"media_list", "annotations"}
    summary = write_manifest(m, tmp_path / "manifests/mine", inputs.used, {})
    assert summary["roles"] == {"eval": "test", "train": "train"}
    assert pq.read_table(tmp_path / "manifests/mine/videos.parquet").column("name").to_pylist()


def test_youcook2_format_annotations(tmp_path, monkeypatch):
    base = tmp_path / "data/sources/mine"
    make_media(base / "media" / "cook one.mp4")
    (base / "ann.json").write_text(json.dumps({"database": {"cook one": {
        "subset": "validation", "annotations": [
            {"id": 0, "segment": [0, 2], "sentence": "crack the eggs"},
            {"id": 1, "segment": [2, 4], "sentence": "whisk"}]}}}))
    m, _ = parse_custom(tmp_path, monkeypatch, annotations="ann.json")
    assert [(c["split"], c["text"]) for c in m.clips] == [("val", "crack the eggs"),
                                                           ("val", "whisk")]


@pytest.mark.parametrize("files,entry,needle", [
    ({"list.csv": "path\n../../../etc/passwd\n"}, {"media_list": "list.csv"}, "outside the media"),
    ({"list.csv": "url\nftp://x/y.mp4\n"}, {"media_list": "list.csv"}, "only http(s)"),
    ({"list.csv": "url,path,title\n,,x\n"}, {"media_list": "list.csv"}, "exactly one of"),
    ({"ann.csv": "video,start,end\nnope.mp4,0,1\n"}, {"annotations": "ann.csv"},
     "none of the dataset's media"),
    ({"ann.csv": "video,start,end,split\ngood.mp4,0,1,Bad Split\n"},
     {"annotations": "ann.csv"}, "plain split name"),
    ({}, {"annotations": "missing.csv"}, "not found"),
])
def test_bad_inputs_name_the_file_and_row(tmp_path, monkeypatch, files, entry, needle):
    base = tmp_path / "data/sources/mine"
    make_media(base / "media" / "good.mp4")
    for name, text in files.items():
        (base / name).write_text(text)
    with pytest.raises((ManifestError, SourceError)) as e:
        parse_custom(tmp_path, monkeypatch, **entry)
    assert needle in str(e.value)


def test_empty_or_missing_media_folder(tmp_path, monkeypatch):
    with pytest.raises(ManifestError, match="media folder not found"):
        parse_custom(tmp_path, monkeypatch)
    (tmp_path / "data/sources/mine/media").mkdir(parents=True)
    (tmp_path / "data/sources/mine/media/readme.txt").write_text("x")
    with pytest.raises(ManifestError, match="no media found"):
        parse_custom(tmp_path, monkeypatch)


def test_params_names_and_kinds(tmp_path):
    def load(d):
        f = tmp_path / "p.yaml"
        f.write_text(json.dumps(d))
        return load_params(f)
    p = load({"datasets": {"demo": "demo", "my-clips": "custom", "lsmdc16": "lsmdc"},
              "manifest": {"my-clips": {"media": "/abs/folder"}}})
    assert p.kind("my-clips") == "custom" and p.manifest.of("my-clips").media == "/abs/folder"
    assert p.manifest.of("lsmdc16").annotations["test"].startswith("LSMDC16")
    assert p.media_dirs("my-clips", Path("data/videos/my-clips"))[1] == Path("/abs/folder")
    assert p.media_dirs("lsmdc16", Path("v"))[1] == Path("data/sources/lsmdc16/media")
    for bad, msg in [({"datasets": ["demo"]}, "mapping name -> kind"),
                     ({"datasets": {"yc": "youcook2"}}, "keeps its name"),
                     ({"datasets": {"msrvtt": "custom"}}, "built-in dataset's name"),
                     ({"datasets": {"Bad Name": "custom"}}, "not a usable name"),
                     ({"datasets": {"curves": "custom"}}, "is reserved"),
                     ({"datasets": {"demo": "demo"}, "evaluate": {"datasets": ["x"]}},
                      "not in `datasets`"),
                     ({"datasets": {"demo": "demo", "m": "custom"},
                       "manifest": {"m": {"media": None}}}, "set `media`")]:
        with pytest.raises(ParamsError, match=msg.replace("`", ".")):
            load(bad)
    with pytest.raises(ParamsError, match="no dataset named"):
        p.kind("other")


LSMDC_ROWS = [
    ("0001_American_Beauty_00.00.51.926-00.00.54.129", "00.00.51.926", "00.00.54.129",
     "00.00.51.784", "00.00.54.269", "SOMEONE looks out of a window."),
    ("0001_American_Beauty_00.01.03.055-00.01.06.419", "00.01.03.055", "00.01.06.419",
     "00.01.02.947", "00.01.06.459", "He smiles, then turns away."),
]


def test_lsmdc_official_format(tmp_path, monkeypatch):
    base = tmp_path / "data/sources/lsmdc16"
    make_media(base / "media/0001_American_Beauty" / f"{LSMDC_ROWS[0][0]}.avi", seconds=2.5)
    (base / "LSMDC16_annos_training.csv").write_text(
        "".join("\t".join(r) + "\n" for r in LSMDC_ROWS))
    (base / "test.csv").write_text(f"{LSMDC_ROWS[0][0]}\tSOMEONE looks out of a window.\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps(
        {"datasets": {"lsmdc16": "lsmdc"}, "train": {"dataset": "lsmdc16"},
         "finetune": {"datasets": []}, "evaluate": {"datasets": []},
         "manifest": {"lsmdc16": {"annotations": {"train": "LSMDC16_annos_training.csv",
                                                  "test": "test.csv"}}}}))
    p = load_params("params.yaml")
    m = lsmdc.parse(OwnInputs("lsmdc16", Path("data/sources/lsmdc16")),
                    p.manifest.of("lsmdc16"))
    validate(m, "test")
    assert [v["video_id"] for v in m.videos] == [r[0] for r in LSMDC_ROWS]   # ids kept
    first = m.videos[0]
    assert first["split"] == "test,train"
    assert urllib.parse.unquote(first["url"]).endswith(f"{LSMDC_ROWS[0][0]}.avi")
    # the missing clip file is listed where the release puts it (download: not_found)
    assert "0001_American_Beauty/" in urllib.parse.unquote(m.videos[1]["url"])
    train = [c for c in m.clips if c["split"] == "train"]
    assert train[0]["end_s"] == pytest.approx(54.269 - 51.784)
    assert train[1]["text"] == "He smiles, then turns away."
    assert m.roles == {"eval": "test", "train": "train"} and m.clip_frames == 3072


def test_lsmdc_bad_rows(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("clip\t00.00.01.000\t00.00.02.000\t00.00.01.000\n")
    with pytest.raises(ManifestError, match="expected 6 tab-separated fields"):
        lsmdc.read_annotations(f)
    f.write_text("clip\t1\t2\t00.00.01.000\t00.00.02.000\ttext\n")
    f.write_text("clip\t00.00.01.000\t00.00.02.000\t1.5\t00.00.02.000\ttext\n")
    with pytest.raises(ManifestError, match="HH.MM.SS.mmm"):
        lsmdc.read_annotations(f)


@pytest.mark.parametrize("spans, frames", [
    ([(0.0, 4.0), (10.0, 18.98)], 1024),     # longest 8.98 s: 898 frames -> 4 x 256
    ([(0.0, 2.56)], 256),
    ([(0.0, 300.0)], 5120),                  # capped: the YouCook2 length
])
def test_own_clip_frames_follow_the_longest_clip(tmp_path, spans, frames):
    """An own dataset's clips are padded to its longest clip (rounded up to 256 frames, at most
    5120), not always to 51 s; a manifest that records a length keeps it."""
    import pyarrow as pa

    from pipeline.learn.sampling import OWN_CLIP_FRAMES, clip_frames_of
    assert clip_frames_of("mine", tmp_path) == OWN_CLIP_FRAMES      # no clips.parquet
    pq.write_table(pa.table({"start_s": [s for s, _ in spans], "end_s": [e for _, e in spans]}),
                   tmp_path / "clips.parquet")
    assert clip_frames_of("mine", tmp_path) == frames
    (tmp_path / "manifest.json").write_text(json.dumps({"clip_frames": 3072}))
    assert clip_frames_of("mine", tmp_path) == 3072
    assert clip_frames_of("demo", tmp_path) == 512                   # built-in: the table
