"""The caption store (pipeline/text/captions.py): caption.json streamed into Parquet shards and read
back per video; counted skips, whole-file errors, atomic finish, reuse, pickling."""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.safety import UserError
from pipeline.text.captions import (REASONS, CaptionError, CaptionStore, ingest_captions,
                                    videos_digest)


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def captions_json(n_videos: int = 30, seed: int = 0) -> dict:
    """Videos with 0-12 captions each, times as caption.json has them (floats and ints)."""
    rng = random.Random(seed)
    out = {}
    for i in range(n_videos):
        n = rng.randint(0, 12) if i else 12
        t, starts, ends, texts = rng.uniform(0, 3), [], [], []
        for j in range(n):
            d = rng.uniform(2, 6)
            starts.append(round(t, 2) if j % 3 else int(t))     # ints occur in the real file
            ends.append(round(t + d, 2))
            texts.append(" ".join(rng.choice(["so", "add", "the", "salt", "stir", "it's"])
                                  for _ in range(rng.randint(3, 12))))
            t += d + rng.uniform(-0.5, 1)
        out[f"vid{i:03d}_{rng.randrange(10 ** 6)}"] = {"start": starts, "end": ends,
                                                        "text": texts}
    return out


def ingest(src: Path, out: Path, **kw) -> dict:
    kw.setdefault("progress", False)
    return ingest_captions(src, out, **kw)


def assert_no_store(out: Path) -> None:
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


# --------------------------------------------------------------------------- round trip


def test_round_trip_over_many_shards_and_row_groups(tmp_path):
    data = captions_json(30)
    src = write(tmp_path / "caption.json", data)
    out = tmp_path / "captions"
    report = ingest(src, out, shard_captions=25, group_videos=3)
    with_captions = {k: v for k, v in data.items() if v["text"]}
    total = sum(len(v["text"]) for v in data.values())
    c = report["counts"]
    assert (c["entries"], c["videos"], c["captions"], c["captions_read"]) == \
        (30, len(with_captions), total, total)
    assert not any(report["skipped"].values()) and set(report["skipped"]) == set(REASONS)
    shards = sorted(out.glob("captions-*.parquet"))
    assert len(shards) == c["shards"] > 2
    assert [s.name for s in shards] == [f"captions-{i:05d}.parquet" for i in range(len(shards))]
    assert sum(pq.ParquetFile(s).metadata.num_row_groups for s in shards) > len(shards)
    assert not out.with_name("captions.part").exists()

    store = CaptionStore(out)
    assert len(store) == len(with_captions) and store.ids() == sorted(with_captions)
    for vid, v in data.items():
        if not v["text"]:
            assert vid not in store
            continue
        starts, ends, texts = store.get(vid)
        assert starts.dtype == ends.dtype == np.float64
        assert starts.tolist() == [float(x) for x in v["start"]]
        assert ends.tolist() == v["end"] and texts == v["text"]
        assert store.first_start(vid) == min(float(x) for x in v["start"])   # from the index
    assert store.first_start("nope") is None
    assert "nope" not in store and 7 not in store
    with pytest.raises(KeyError):
        store.get("nope")
    assert store.report == json.loads((out / "report.json").read_text())


def test_shards_hold_whole_videos_in_file_order(tmp_path):
    data = captions_json(25, seed=1)
    src = write(tmp_path / "caption.json", data)
    out = tmp_path / "c"
    ingest(src, out, shard_captions=30, group_videos=4)
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["video_id"] for r in index] == sorted(r["video_id"] for r in index)
    rows = []                                        # every shard, row groups in order
    for s in sorted(out.glob("captions-*.parquet")):
        f = pq.ParquetFile(s)
        for rg in range(f.metadata.num_row_groups):
            t = f.read_row_group(rg).to_pylist()
            vids = list(dict.fromkeys(r["video_id"] for r in t))
            assert 1 <= len(vids) <= 4
            for vid in vids:                          # whole and contiguous in one row group
                at = [i for i, r in enumerate(t) if r["video_id"] == vid]
                assert at == list(range(at[0], at[0] + len(at)))
                ix = next(r for r in index if r["video_id"] == vid)
                assert (ix["shard"], ix["row_group"], ix["offset"], ix["count"]) == \
                    (s.name, rg, at[0], len(at))
                assert [t[i]["caption"] for i in at] == list(range(len(at)))
            rows += t
    assert list(dict.fromkeys(r["video_id"] for r in rows)) == \
        [k for k, v in data.items() if v["text"]]          # file order
    # a shard stops at the row group that reaches shard_captions
    for s in out.glob("captions-*.parquet"):
        f = pq.ParquetFile(s)
        last = f.metadata.row_group(f.metadata.num_row_groups - 1).num_rows
        assert f.metadata.num_rows - last < 30


def test_unicode_and_escapes_and_bom(tmp_path):
    texts = ["crème brûlée", "日本語の字幕", "emoji 😀 ok", 'a "quoted" \\ back\\slash\ttab',
             "line\nbreak", ""]
    data = {"vidé_1": {"start": [0, 1, 2, 3, 4, 5], "end": [1, 2, 3, 4, 5, 6], "text": texts}}
    src = tmp_path / "caption.json"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=True).encode())
    ingest(src, tmp_path / "a")
    assert CaptionStore(tmp_path / "a").get("vidé_1")[2] == texts
    write(src, data)                                  # raw UTF-8 this time
    ingest(src, tmp_path / "b")
    store = CaptionStore(tmp_path / "b")
    assert "vidé_1" in store and store.get("vidé_1")[2] == texts


def test_empty_object_is_an_empty_valid_store(tmp_path):
    src = tmp_path / "caption.json"
    src.write_text(" {} \n")
    report = ingest(src, tmp_path / "c")
    assert report["counts"]["videos"] == report["counts"]["captions"] == 0
    store = CaptionStore(tmp_path / "c")
    assert len(store) == 0 and store.ids() == [] and "x" not in store
    with pytest.raises(KeyError):
        store.get("x")


# --------------------------------------------------------------------------- skips


def test_every_skip_reason_is_counted_with_examples(tmp_path):
    data = {
        "good": {"start": [0.0, 2.0], "end": [2.0, 4.0], "text": ["a b", "c d"]},
        "stranger": {"start": [0, 1, 2], "end": [1, 2, 3], "text": ["x", "y", "z"]},
        "not_object": [1, 2],
        "no_text": {"start": [0], "end": [1]},
        "uneven": {"start": [0, 1], "end": [1, 2], "text": ["only one"]},
        "text_not_list": {"start": [0], "end": [1], "text": "x"},
        "mixed": {
            "start": [0, "1", None, True, -1.0, 5, 6, 7, 8, 9.5, 30, 31, [1]],
            "end": [1, 2, 3, 4, 1, 5, 6.5, 4, 9, 12.5, 40, 32, 2],
            "text": ["ok", "s", "n", "b", "neg", "zero", 7, "back", "ok2", "clip", "out",
                     "out2", "nested"]},
        "clipped_only": {"start": [1], "end": [11], "text": ["long"]},
        "unknown_duration": {"start": [100], "end": [200], "text": ["fine"]},
        "all_bad": {"start": [3], "end": [3], "text": ["empty"]},
    }
    known = {k: 10.0 for k in data if k != "stranger"}
    known["unknown_duration"] = None
    src = write(tmp_path / "caption.json", data)
    r = ingest(src, tmp_path / "c", videos=known)
    # a bad entry counts its longest list: not_object 0, no_text 1, uneven 2, text_not_list 1
    assert r["skipped"] == {"unknown_video": 3, "bad_entry": 0 + 1 + 2 + 1,
                            "duplicate_video": 0,
                            "bad_time": 5,          # "1", None, True, -1.0, [1]
                            "bad_text": 1,          # 7
                            "empty_span": 3,        # 5..5, 7..4, all_bad
                            "outside_duration": 2}  # 30, 31 >= 10
    assert r["skipped_videos"] == {"unknown_video": 1, "bad_entry": 4, "duplicate_video": 0}
    assert r["counts"]["end_clipped"] == 2          # mixed 9.5..12.5, clipped_only 1..11
    c = r["counts"]
    assert c["entries"] == len(data) and c["captions"] == 2 + 3 + 1 + 1
    assert c["captions"] + sum(r["skipped"].values()) == c["captions_read"]
    ex = r["examples"]
    assert {e["video_id"] for e in ex["bad_entry"]} == {"not_object", "no_text", "uneven",
                                                       "text_not_list"}
    assert any("missing" in e["why"] for e in ex["bad_entry"])
    assert any("differ in length" in e["why"] for e in ex["bad_entry"])
    assert [e["caption"] for e in ex["bad_time"]] == [1, 2, 3, 4, 12]
    assert ex["bad_text"] == [{"video_id": "mixed", "caption": 6, "start": 6, "end": 6.5,
                               "text": 7}]
    assert ex["unknown_video"] == [{"video_id": "stranger", "captions": 3}]
    assert {e["video_id"] for e in ex["end_clipped"]} == {"mixed", "clipped_only"}
    assert all(e["duration"] == 10.0 for e in ex["outside_duration"] + ex["end_clipped"])
    json.dumps(r, allow_nan=False)                  # strict JSON, examples included

    store = CaptionStore(tmp_path / "c")
    assert store.ids() == ["clipped_only", "good", "mixed", "unknown_duration"]
    starts, ends, texts = store.get("mixed")
    assert texts == ["ok", "ok2", "clip"] and starts.tolist() == [0, 8, 9.5]
    assert ends.tolist() == [1, 9, 10.0]           # clipped to the duration
    assert store.get("clipped_only")[1].tolist() == [10.0]
    assert store.get("unknown_duration")[0].tolist() == [100.0]
    caps = pq.read_table(tmp_path / "c" / "captions-00000.parquet").to_pylist()
    assert [(x["video_id"], x["caption"]) for x in caps if x["video_id"] == "mixed"] == \
        [("mixed", 0), ("mixed", 8), ("mixed", 9)]   # indices in the original list


def test_examples_stop_at_twenty(tmp_path):
    data = {f"v{i}": {"start": [1, 2], "end": [1, 3], "text": ["a", "b"]} for i in range(30)}
    r = ingest(write(tmp_path / "caption.json", data), tmp_path / "c")
    assert r["skipped"]["empty_span"] == 30 and len(r["examples"]["empty_span"]) == 20


def test_repeated_video_key_keeps_the_first(tmp_path):
    src = tmp_path / "caption.json"
    src.write_text('{"a": {"start": [0], "end": [1], "text": ["first"]},'
                   ' "b": {"start": [0], "end": [1], "text": ["b"]},'
                   ' "a": {"start": [0, 2], "end": [1, 3], "text": ["again", "x"]}}')
    r = ingest(src, tmp_path / "c", group_videos=1)
    assert r["skipped"]["duplicate_video"] == 2 and r["counts"]["captions"] == 2
    assert r["counts"]["videos"] == 2
    assert CaptionStore(tmp_path / "c").get("a")[2] == ["first"]


def test_bad_durations_are_refused(tmp_path):
    src = write(tmp_path / "caption.json", {})
    for bad in (-1.0, float("inf"), "10", True):
        with pytest.raises(CaptionError, match="duration of 'v'"):
            ingest(src, tmp_path / "c", videos={"v": bad})
    assert videos_digest({"v": 5}) == videos_digest({"v": 5.0}) != videos_digest({"v": None})
    assert videos_digest({"v": float("nan")}) == videos_digest({"v": None})


def test_nan_duration_is_unknown(tmp_path):
    src = write(tmp_path / "caption.json", {"v": {"start": [100], "end": [200], "text": ["x"]}})
    r = ingest(src, tmp_path / "c", videos={"v": float("nan")})
    assert r["counts"]["captions"] == 1 and not any(r["skipped"].values())
    assert CaptionStore(tmp_path / "c").get("v")[1].tolist() == [200.0]


# --------------------------------------------------------------------------- whole-file errors


def test_truncated_file_names_the_byte_and_leaves_no_store(tmp_path):
    full = json.dumps(captions_json(20)).encode()
    src = tmp_path / "caption.json"
    src.write_bytes(full[:len(full) // 2])
    out = tmp_path / "c"
    with pytest.raises(CaptionError, match=rf"truncated or malformed at byte {len(full) // 2} "
                                           rf"of {len(full) // 2}") as e:
        ingest(src, out, group_videos=2, shard_captions=10)
    assert str(src) in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UserError)
    assert_no_store(out)


def test_malformed_inside_names_a_byte(tmp_path):
    src = tmp_path / "caption.json"
    body = ",".join(f'"v{i}": {{"start": [0], "end": [1], "text": ["t"]}}' for i in range(50))
    src.write_text("{" + body + ', "bad": {"start": [NaN], "end": [1], "text": ["t"]}}')
    with pytest.raises(CaptionError, match=r"malformed at byte \d+ .*lexical error.*NaN"):
        ingest(src, tmp_path / "c")
    assert_no_store(tmp_path / "c")
    src.write_text('{"a": {"start": [0], "end": [1], "text": ["t"]}} trailing')
    with pytest.raises(CaptionError, match="trailing garbage"):
        ingest(src, tmp_path / "c")


@pytest.mark.parametrize("content, what", [
    (b"", "empty"), (b"  \n ", "whitespace only"), (b"hello world", "not JSON"),
    (b"\x89PNG\r\n", "not JSON"), (b'[{"a": 1}]', "a list at the top level"),
    (b'"just a string"', "not JSON")])
def test_not_an_object(tmp_path, content, what):
    src = tmp_path / "caption.json"
    src.write_bytes(content)
    with pytest.raises(CaptionError, match=what) as e:
        ingest(src, tmp_path / "c")
    assert str(src) in str(e.value) and "expected a JSON object" in str(e.value)
    assert_no_store(tmp_path / "c")


def test_missing_file_says_where_it_comes_from(tmp_path):
    src = tmp_path / "nowhere" / "caption.json"
    with pytest.raises(CaptionError) as e:
        ingest(src, tmp_path / "c")
    msg = str(e.value)
    assert "no such file" in msg and "HowTo100M" in msg and "caption.json" in msg
    assert msg.rstrip().endswith(str(src)) and "captions zip" in msg
    with pytest.raises(CaptionError, match="not a file"):
        ingest(tmp_path, tmp_path / "c")


# --------------------------------------------------------------------------- reuse, atomicity


def test_finished_store_is_reused(tmp_path, caplog):
    src = write(tmp_path / "caption.json", captions_json(10))
    out = tmp_path / "c"
    first = ingest(src, out)
    stamp = (out / "captions-00000.parquet").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="pipeline.text.captions"):
        again = ingest(src, out)
    assert again == first and "reusing it" in caplog.text
    assert (out / "captions-00000.parquet").stat().st_mtime_ns == stamp


def test_changed_source_or_video_list_reingests(tmp_path):
    data = captions_json(10)
    src = write(tmp_path / "caption.json", data)
    out = tmp_path / "c"
    first = ingest(src, out)
    vid = next(k for k, v in data.items() if v["text"])
    data[vid]["text"][0] = "changed"
    write(src, data)
    os.utime(src, ns=(1, first["source"]["mtime_ns"] + 10 ** 9))
    second = ingest(src, out)
    assert second["source"]["mtime_ns"] != first["source"]["mtime_ns"]
    assert CaptionStore(out).get(vid)[2][0] == "changed"
    stale = list((tmp_path / "stale").glob("*/c/report.json"))
    assert len(stale) == 1                           # the old store moved aside, not deleted
    third = ingest(src, out, videos={vid: None})
    assert third["videos_digest"] == videos_digest({vid: None})
    assert CaptionStore(out).ids() == [vid]
    assert ingest(src, out, videos={vid: None}) == third


def test_leftovers_of_a_killed_run_are_not_a_store(tmp_path):
    src = write(tmp_path / "caption.json", captions_json(5))
    out = tmp_path / "c"
    part = tmp_path / "c.part"
    part.mkdir()
    (part / "captions-00000.parquet").write_bytes(b"half")
    (part / "index.parquet").write_bytes(b"half")
    with pytest.raises(CaptionError, match="re-run the captions stage"):
        CaptionStore(part)
    ingest(src, out)
    assert not part.exists() and len(CaptionStore(out)) > 0


def test_damaged_store_is_a_caption_error(tmp_path):
    with pytest.raises(CaptionError, match=f"{tmp_path / 'none'}.*re-run the captions stage"):
        CaptionStore(tmp_path / "none")
    data = captions_json(10)
    out = tmp_path / "c"
    ingest(write(tmp_path / "caption.json", data), out)
    shard = out / "captions-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    store = CaptionStore(out)
    with pytest.raises(CaptionError, match="captions-00000.parquet.*re-run the captions stage"):
        store.get(store.ids()[0])
    (out / "index.parquet").write_bytes(b"garbage")
    with pytest.raises(CaptionError, match="index.parquet.*re-run the captions stage"):
        CaptionStore(out)


# --------------------------------------------------------------------------- reading


def test_pickled_store_reads_after_unpickling(tmp_path):
    data = captions_json(20)
    out = tmp_path / "c"
    ingest(write(tmp_path / "caption.json", data), out, group_videos=2)
    store = CaptionStore(out)
    vids = store.ids()
    store.get(vids[0])                              # a file open and a row group cached
    clone = pickle.loads(pickle.dumps(store))
    assert not clone._files and not clone._cache
    for vid in vids:
        assert clone.get(vid)[2] == data[vid]["text"]
    assert len(clone) == len(store) and clone.report == store.report
    store._pid = -1                                 # as after a fork: reopens its files
    assert store.get(vids[-1])[2] == data[vids[-1]]["text"]


def test_get_returns_copies_and_the_cache_stays_small(tmp_path):
    data = captions_json(40)
    out = tmp_path / "c"
    ingest(write(tmp_path / "caption.json", data), out, group_videos=1)
    store = CaptionStore(out)
    vid = store.ids()[0]
    starts = store.get(vid)[0]
    starts[:] = -1
    assert store.get(vid)[0].tolist() == [float(x) for x in data[vid]["start"]]
    for v in store.ids():
        store.get(v)
    assert len(store._cache) == store.CACHE_GROUPS


def test_progress_bar_runs(tmp_path, capsys):
    ingest(write(tmp_path / "caption.json", captions_json(5)), tmp_path / "c", progress=True)
    assert "captions" in capsys.readouterr().err
