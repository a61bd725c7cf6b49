"""Availability audit: exact counts per split, clip coverage, changes between audits, reports."""
from __future__ import annotations

import json
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.download.audit import (PAPER_COUNTS, REASON_MEANING, audit_and_write, audit_dataset,
                            read_snapshot, write_summary)
from pipeline.download.ledger import (ATTEMPT_SCHEMA, attempts_table, current_status,
                                      write_availability)
from pipeline.data.manifest import Manifest, read_videos, write_manifest
from stages import audit as audit_stage

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPLITS = {"youcook2": ("train", "val"), "crosstask": ("train", "val"), "msrvtt": ("train_7k", "train_9k", "test_1k_a"),
          "demo": ("train", "val")}

# youcook2-style scenario: id -> (split, number of clips)
YC = {"AAAAAAAAAA1": ("train", 3), "AAAAAAAAAA2": ("train", 2), "AAAAAAAAAA3": ("train", 1),
      "AAAAAAAAAA4": ("val", 2), "AAAAAAAAAA5": ("val", 1), "AAAAAAAAAA6": ("val", 1),
      "AAAAAAAAAA7": ("val", 1)}


def attempt(vid: str, status: str, reason: str | None = None, kind: str | None = None,
            has_audio: bool | None = None, hour: int = 0, ytdlp: str = "2026.10.26") -> dict:
    """One ledger attempt row with every ATTEMPT_SCHEMA field, as the download stage writes it."""
    t, ok = T0 + timedelta(hours=hour), status == "available"
    row = {"attempt_id": f"{vid}-{hour}", "run_id": f"run{hour}", "video_id": vid, "shard": 0,
           "url": f"https://www.youtube.com/watch?v={vid}", "started_at": t,
           "finished_at": t + timedelta(seconds=5), "elapsed_s": 5.0, "status": status,
           "reason": reason, "kind": kind, "message": None if ok else f"ERROR: [youtube] {reason}",
           "exc_class": None if ok else "DownloadError", "http_status": None,
           "ytdlp_version": ytdlp, "path": f"data/media/{vid}.mp4" if ok else None,
           "filesize": 1000 if ok else None, "sha256": "0" * 64 if ok else None,
           "duration_s": 60.0 if ok else None, "width": 640 if ok else None,
           "height": 360 if ok else None, "vcodec": "avc1" if ok else None,
           "acodec": "mp4a" if has_audio else None, "has_audio": has_audio if ok else None,
           "format_id": "18" if ok else None, "worker": "w0"}
    assert set(row) == set(ATTEMPT_SCHEMA.names)
    return row


def make_manifest(mdir: Path, ds: str, videos: dict[str, str], clips: list[tuple]) -> None:
    """videos: id -> comma-joined splits; clips: (clip_id, video_id, split)."""
    m = Manifest(ds, SPLITS[ds])
    m.videos = [{"video_id": v, "url": f"https://www.youtube.com/watch?v={v}", "split": s,
                 "duration_s": 60.0} for v, s in videos.items()]
    m.clips = [{"clip_id": c, "video_id": v, "split": s, "start_s": 1.0, "end_s": 5.0,
                "text": "stir", "source": f"test:{i}"} for i, (c, v, s) in enumerate(clips)]
    write_manifest(m, mdir, {}, {})


def write_ledger(mdir: Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["video_id"], r["finished_at"]))
    table = current_status(read_videos(mdir / "videos.parquet"), attempts_table(rows))
    write_availability(table, mdir / "availability.parquet")


ROUND1 = [attempt("AAAAAAAAAA1", "available", has_audio=True),
          attempt("AAAAAAAAAA2", "available", has_audio=False),   # available WITHOUT audio
          attempt("AAAAAAAAAA3", "transient_failure", "network", "transient"),
          attempt("AAAAAAAAAA3", "unavailable", "private", "permanent", hour=1),
          attempt("AAAAAAAAAA4", "available", has_audio=True, hour=2),
          attempt("AAAAAAAAAA5", "pending", "bot_check", "throttled"),
          attempt("AAAAAAAAAA7", "needs_auth", "age_restricted", "needs_auth")]  # 6: never tried
ROUND2 = [attempt("AAAAAAAAAA1", "unavailable", "removed_by_uploader", "permanent", hour=5,
                  ytdlp="2026.11.01"),
          attempt("AAAAAAAAAA3", "available", has_audio=True, hour=5, ytdlp="2026.11.01"),
          attempt("AAAAAAAAAA5", "available", has_audio=True, hour=6, ytdlp="2026.11.01"),
          attempt("AAAAAAAAAA6", "available", has_audio=False, hour=6, ytdlp="2026.11.01")]


@pytest.fixture
def youcook2(tmp_path) -> Path:
    mdir = tmp_path / "manifests" / "youcook2"
    clips = [(f"{v}:{i}", v, s) for v, (s, n) in YC.items() for i in range(n)]
    make_manifest(mdir, "youcook2", {v: s for v, (s, _) in YC.items()}, clips)
    write_ledger(mdir, ROUND1)
    return mdir


def _pick(c: dict) -> tuple:
    return (c["videos_listed"], c["videos_available"], c["videos_with_audio"],
            c["clips_listed"], c["clips_covered"], c["clip_coverage"])


def test_counts_per_split_coverage_and_reasons(youcook2):
    r = audit_dataset("youcook2", youcook2, None)
    assert json.loads(json.dumps(r)) == r                       # JSON-able as is
    sp = r["splits"]
    assert list(sp) == ["train", "val", "total"]
    # train: 1 with audio (3 clips), 1 available without audio (2 clips), 1 private (1 clip)
    assert _pick(sp["train"]) == (3, 2, 1, 6, 3, 0.5)
    assert _pick(sp["val"]) == (4, 1, 1, 5, 2, 0.4)
    assert _pick(sp["total"]) == (7, 3, 2, 11, 5, round(5 / 11, 6))
    assert sp["train"]["by_status"] == {"available": 2, "unavailable": 1, "needs_auth": 0,
                                        "transient_failure": 0, "pending": 0}
    assert sp["val"]["by_status"] == {"available": 1, "unavailable": 0, "needs_auth": 1,
                                      "transient_failure": 0, "pending": 2}
    assert sp["train"]["by_reason"] == {"no_audio": 1, "private": 1}
    assert sp["val"]["by_reason"] == {"age_restricted": 1, "bot_check": 1, "not_checked": 1}
    for c in sp.values():   # every video that is not usable has exactly one reason
        assert sum(c["by_reason"].values()) == c["videos_listed"] - c["videos_with_audio"]
    assert r["ledger_found"] is True and r["changes"] is None
    assert r["ytdlp_versions"] == {"2026.10.26": 6}
    assert r["newest_last_checked"] == "2026-01-01T02:00:05+00:00"
    assert datetime.fromisoformat(r["audit_date"]).tzinfo is not None


def test_paper_counts_side_by_side_for_youcook2(youcook2, tmp_path):
    r = audit_dataset("youcook2", youcook2, None)
    assert r["splits"]["train"]["paper"] == {"measure": "clips_covered", "count": 9586,
                                             "listed": 10337, "comparable": True, "note": None,
                                             "ours": 3}
    assert r["splits"]["val"]["paper"]["count"] == 3350
    assert r["splits"]["total"]["paper"] is None
    audit_and_write("youcook2", youcook2, tmp_path / "out")
    md = (tmp_path / "out" / "youcook2.md").read_text()
    assert "| train | 3 | 2 | 1 | 6 | 3 | 50.0% | 9,586 of 10,337 clips (ours 3) |" in md
    assert "| val | 4 | 1 | 1 | 5 | 2 | 40.0% | 3,350 of 3,492 clips (ours 2) |" in md
    assert "cookies" in md and "| bot_check | 1 |" in md
    assert PAPER_COUNTS["crosstask"]["train"]["comparable"] is False
    assert PAPER_COUNTS["howto100m"]["train"]["count"] == 1166089


def test_crosstask_train_is_marked_not_comparable(tmp_path):
    mdir = tmp_path / "crosstask"
    make_manifest(mdir, "crosstask", {"CCCCCCCCCC1": "train", "CCCCCCCCCC2": "val"},
                  [("c1", "CCCCCCCCCC1", "train"), ("c2", "CCCCCCCCCC2", "val")])
    write_ledger(mdir, [attempt("CCCCCCCCCC1", "available", has_audio=True),
                        attempt("CCCCCCCCCC2", "available", has_audio=True)])
    r = audit_and_write("crosstask", mdir, tmp_path / "out")
    assert r["splits"]["train"]["paper"]["comparable"] is False
    assert r["splits"]["val"]["paper"] == {"measure": "clips_covered", "count": 2819,
                                           "listed": None, "comparable": True, "note": None,
                                           "ours": 1}
    md = (tmp_path / "out" / "crosstask.md").read_text()
    assert "17,840 clips (not comparable) (ours 1)" in md and "ASR-defined" in md


def test_video_in_two_splits_counts_in_both(tmp_path):
    mdir = tmp_path / "msrvtt"
    make_manifest(mdir, "msrvtt", {"MMMMMMMMMM1": "train_9k,test_1k_a",
                                   "MMMMMMMMMM2": "train_7k,train_9k"},
                  [("video1", "MMMMMMMMMM1", "train_9k"), ("video2", "MMMMMMMMMM1", "test_1k_a"),
                   ("video3", "MMMMMMMMMM2", "train_7k"), ("video3", "MMMMMMMMMM2", "train_9k")])
    write_ledger(mdir, [attempt("MMMMMMMMMM1", "available", has_audio=True),
                        attempt("MMMMMMMMMM2", "unavailable", "removed_by_uploader", "permanent")])
    r = audit_and_write("msrvtt", mdir, tmp_path / "out")
    sp = r["splits"]
    assert _pick(sp["train_9k"]) == (2, 1, 1, 2, 1, 0.5)
    assert _pick(sp["test_1k_a"]) == (1, 1, 1, 1, 1, 1.0)
    assert _pick(sp["train_7k"]) == (1, 0, 0, 1, 0, 0.0)
    assert _pick(sp["total"]) == (2, 1, 1, 4, 2, 0.5)           # each video once in the total
    assert sp["total"]["paper"]["count"] == 5722 and sp["total"]["paper"]["ours"] == 1
    assert sp["test_1k_a"]["paper"]["ours"] == 1
    out = tmp_path / "out" / "msrvtt"
    assert (out / "train_9k" / "missing_ids.txt").read_text().splitlines()[1:] == ["MMMMMMMMMM2"]
    assert (out / "test_1k_a" / "missing_ids.txt").read_text().splitlines()[1:] == []


def _ids(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and len([x for x in lines if x.startswith("#")]) == 1
    return lines[1:]


def test_missing_ids_split_known_gone_from_never_reached(youcook2, tmp_path):
    """missing_ids.txt: known gone (or without audio); never_reached_ids.txt: pending or a
    failure a re-run may fix. Each unusable video is in exactly one of them."""
    write_ledger(youcook2, ROUND1 + [attempt("AAAAAAAAAA4", "transient_failure", "network",
                                             "transient", hour=3)])
    r = audit_and_write("youcook2", youcook2, tmp_path / "out")
    out = tmp_path / "out" / "youcook2"
    # val: 4 now a network failure, 5 bot-checked (pending), 6 never tried, 7 age-restricted
    assert _ids(out / "val" / "missing_ids.txt") == ["AAAAAAAAAA7"]
    assert _ids(out / "val" / "never_reached_ids.txt") == ["AAAAAAAAAA4", "AAAAAAAAAA5",
                                                           "AAAAAAAAAA6"]
    # train: 2 has no audio, 3 is private; 1 is usable
    assert _ids(out / "train" / "missing_ids.txt") == ["AAAAAAAAAA2", "AAAAAAAAAA3"]
    assert _ids(out / "train" / "never_reached_ids.txt") == []
    # the JSON and the summary count what the files list
    for split, gone, never in (("train", 2, 0), ("val", 1, 3), ("total", 3, 3)):
        c = r["splits"][split]
        assert (c["videos_known_gone"], c["videos_never_reached"]) == (gone, never)
        assert c["videos_with_audio"] + gone + never == c["videos_listed"]
    write_summary({"youcook2": r}, tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert [(w["split"], w["videos_known_gone"], w["videos_never_reached"]) for w in rows] == \
        [("train", 2, 0), ("val", 1, 3), ("total", 3, 3)]
    md = (tmp_path / "out" / "youcook2.md").read_text()
    assert "3 known gone or without audio" in md and "3 not reached yet" in md


def test_changes_since_previous_audit(youcook2, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = audit_and_write("youcook2", youcook2, out)
    assert first["changes"] is None and not (out / "youcook2" / "changes").exists()
    snap = read_snapshot(out / "youcook2" / "snapshot.parquet")
    assert snap["audit_date"] == first["audit_date"]
    assert snap["videos"]["AAAAAAAAAA3"] == {"status": "unavailable", "reason": "private",
                                             "has_audio": None}
    write_ledger(youcook2, ROUND1 + ROUND2)
    monkeypatch.setattr("pipeline.download.audit.MAX_IDS", 1)   # the JSON keeps at most MAX_IDS ids
    second = audit_and_write("youcook2", youcook2, out)
    ch = second["changes"]
    assert ch["previous_audit"] == first["audit_date"]
    assert ch["newly_gone"] == {"count": 1, "ids": ["AAAAAAAAAA1"], "ids_truncated": False}
    assert ch["came_back"] == {"count": 1, "ids": ["AAAAAAAAAA3"], "ids_truncated": False}
    # a bot check taught nothing: AAAAAAAAAA5 was pending, so it is newly checked, not back
    assert ch["newly_checked"] == {"count": 2, "ids": ["AAAAAAAAAA5"], "ids_truncated": True}
    checked = (out / "youcook2" / "changes" / "newly_checked.txt").read_text().splitlines()
    assert checked[1:] == ["AAAAAAAAAA5", "AAAAAAAAAA6"]                 # the full list
    assert _pick(second["splits"]["train"]) == (3, 2, 1, 6, 1, round(1 / 6, 6))
    assert second["ytdlp_versions"] == {"2026.10.26": 3, "2026.11.01": 4}
    gone = (out / "youcook2" / "changes" / "newly_gone.txt").read_text().splitlines()
    assert gone[0].startswith("#") and gone[1:] == ["AAAAAAAAAA1"]
    md = (out / "youcook2.md").read_text()
    assert "newly gone: 1 (AAAAAAAAAA1)" in md and "came back: 1 (AAAAAAAAAA3)" in md
    # a third audit with no change in between reports none
    third = audit_and_write("youcook2", youcook2, out)
    assert [third["changes"][k]["count"] for k in ("newly_gone", "came_back",
                                                   "newly_checked")] == [0, 0, 0]


def test_missing_availability_means_all_pending(tmp_path):
    mdir = tmp_path / "youcook2"
    make_manifest(mdir, "youcook2", {"AAAAAAAAAA1": "train", "AAAAAAAAAA2": "val"},
                  [("a", "AAAAAAAAAA1", "train"), ("b", "AAAAAAAAAA2", "val")])
    r = audit_and_write("youcook2", mdir, tmp_path / "out")
    assert r["ledger_found"] is False and r["newest_last_checked"] is None
    assert r["splits"]["total"]["by_status"]["pending"] == 2
    assert r["splits"]["total"]["by_reason"] == {"not_checked": 2}
    assert _pick(r["splits"]["train"]) == (1, 0, 0, 1, 0, 0.0)
    assert "No availability.parquet" in (tmp_path / "out" / "youcook2.md").read_text()


def test_png_is_a_valid_png(youcook2, tmp_path):
    audit_and_write("youcook2", youcook2, tmp_path / "out")
    data = (tmp_path / "out" / "youcook2.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 100
    import matplotlib.image
    assert matplotlib.image.imread(tmp_path / "out" / "youcook2.png").shape[:2] == (height, width)


def test_summary_has_one_row_per_dataset_and_split(youcook2, tmp_path):
    r = audit_dataset("youcook2", youcook2, None)
    write_summary({"youcook2": r}, tmp_path)
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [(w["dataset"], w["split"]) for w in rows] == [("youcook2", "train"),
                                                          ("youcook2", "val"),
                                                          ("youcook2", "total")]
    assert rows[0]["clips_covered"] == 3 and rows[0]["paper"] == "9,586 of 10,337 clips"
    assert "| youcook2 | val | 4 | 1 | 1 | 5 | 2 | 40.0% |" in (tmp_path / "summary.md").read_text()


def test_every_ledger_reason_is_explained():
    availability = pytest.importorskip("pipeline.download.availability")
    assert set(availability.REASONS) <= set(REASON_MEANING)


def test_stage_end_to_end(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("datasets: {demo: demo}\n")
    mdir = Path("manifests/demo")
    make_manifest(mdir, "demo", {"DDDDDDDDDD1": "train", "-DDDDDDDDD2": "val"},
                  [("d1:0", "DDDDDDDDDD1", "train"), ("d1:1", "DDDDDDDDDD1", "train"),
                   ("d2:0", "-DDDDDDDDD2", "val")])
    write_ledger(mdir, [attempt("DDDDDDDDDD1", "available", has_audio=True),
                        attempt("-DDDDDDDDD2", "transient_failure", "network", "transient")])
    caplog.set_level("INFO")
    assert audit_stage.main([]) == 0
    out = tmp_path / "reports" / "availability"
    for f in ("demo.json", "demo.md", "demo.png", "summary.json", "summary.md",
              "demo/snapshot.parquet", "demo/train/missing_ids.txt", "demo/val/missing_ids.txt",
              "demo/val/never_reached_ids.txt"):
        assert (out / f).is_file(), f
    r = json.loads((out / "demo.json").read_text())
    assert _pick(r["splits"]["total"]) == (2, 1, 1, 3, 2, round(2 / 3, 6))
    assert _ids(out / "demo" / "val" / "never_reached_ids.txt") == ["-DDDDDDDDD2"]
    assert _ids(out / "demo" / "val" / "missing_ids.txt") == []
    assert pq.read_table(out / "demo" / "snapshot.parquet").num_rows == 2
    assert "demo val: 1 videos, 0 available" in caplog.text
    # a dataset without manifests: the others are audited, one warning line names it, exit 0
    (tmp_path / "params.yaml").write_text("datasets: {demo: demo, youcook2: youcook2}\n")
    caplog.clear()
    assert audit_stage.main([]) == 0
    assert not [x for x in caplog.records if x.levelname == "ERROR"]
    warnings = [x.getMessage() for x in caplog.records if x.levelname == "WARNING"]
    assert len(warnings) == 1 and "manifests/youcook2/videos.parquet not found" in warnings[0]
    assert "demo val: 1 videos, 0 available" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"]["youcook2"]["status"] == "missing_inputs"
    assert summary["datasets"]["demo"]["status"] == "audited"
    assert {r["dataset"] for r in summary["rows"]} == {"demo"}
    assert not (out / "youcook2.json").exists()
    # no dataset can be audited: one error line, exit 2
    caplog.clear()
    assert audit_stage.main(["--manifests", "elsewhere"]) == 2
    errors = [x.getMessage() for x in caplog.records if x.levelname == "ERROR"]
    assert len(errors) == 1 and "no dataset could be audited" in errors[0] \
        and "elsewhere/youcook2/videos.parquet not found" in errors[0] \
        and "elsewhere/demo/videos.parquet not found" in errors[0]


def _tree(folder: Path, prefix: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)).startswith(prefix)}


@pytest.mark.parametrize("lost", ["availability.parquet", "videos.parquet"])
def test_a_dataset_with_missing_inputs_keeps_its_last_good_reports_and_baseline(
        lost, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("datasets: {demo: demo, youcook2: youcook2}\n")
    demo = Path("manifests/demo")
    make_manifest(demo, "demo", {"DDDDDDDDDD1": "train"}, [("d1:0", "DDDDDDDDDD1", "train")])
    write_ledger(demo, [attempt("DDDDDDDDDD1", "available", has_audio=True)])
    yc = Path("manifests/youcook2")
    make_manifest(yc, "youcook2", {v: s for v, (s, _) in YC.items()},
                  [(f"{v}:{i}", v, s) for v, (s, n) in YC.items() for i in range(n)])
    write_ledger(yc, ROUND1)
    times = iter([T0 + timedelta(days=d) for d in range(10)])
    monkeypatch.setattr("pipeline.download.audit.now", lambda: next(times))
    assert audit_stage.main([]) == 0
    out = tmp_path / "reports" / "availability"
    first = json.loads((out / "youcook2.json").read_text())["audit_date"]
    kept = _tree(out, "youcook2")
    assert "youcook2/snapshot.parquet" in kept and "youcook2.md" in kept

    moved = tmp_path / lost
    (yc / lost).rename(moved)
    caplog.clear()
    caplog.set_level("INFO")
    assert audit_stage.main([]) == 0
    warnings = [x.getMessage() for x in caplog.records if x.levelname == "WARNING"
                and x.name.startswith("stages")]
    assert len(warnings) == 1 and str(yc / lost) in warnings[0] and "youcook2" in warnings[0]
    assert _tree(out, "youcook2") == kept                  # reports and baseline untouched
    assert json.loads((out / "demo.json").read_text())["audit_date"] > first   # demo re-audited
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"]["youcook2"] == {
        "status": "missing_inputs", "message": summary["datasets"]["youcook2"]["message"],
        "last_good_audit": first}
    assert str(yc / lost) in summary["datasets"]["youcook2"]["message"]
    md = (out / "summary.md").read_text()
    assert "Not audited this time" in md and f"last good audit: {first}" in md

    # the inputs come back with news: compared with the last GOOD audit, not the failed one
    moved.rename(yc / lost)
    write_ledger(yc, ROUND1 + ROUND2)
    assert audit_stage.main([]) == 0
    r = json.loads((out / "youcook2.json").read_text())
    assert r["changes"]["previous_audit"] == first
    assert r["changes"]["newly_gone"]["ids"] == ["AAAAAAAAAA1"]
    assert r["changes"]["came_back"]["ids"] == ["AAAAAAAAAA3"]


def test_sample_is_reported_as_a_sample(tmp_path):
    """A download of a sample (download.max_videos / splits, recorded in availability.parquet)
    is audited over the sample plus every video tried; the rest are neither missing nor never
    reached."""
    mdir = tmp_path / "youcook2"
    make_manifest(mdir, "youcook2", {v: s for v, (s, _) in YC.items()},
                  [(f"{v}:{i}", v, s) for v, (s, n) in YC.items() for i in range(n)])
    rows = sorted([attempt("AAAAAAAAAA4", "available", has_audio=True),
                   attempt("AAAAAAAAAA1", "unavailable", "private", "permanent")],
                  key=lambda r: r["video_id"])
    table = current_status(read_videos(mdir / "videos.parquet"), attempts_table(rows))
    # the sample: the first 2 val videos by id (4 and 5); 1 was tried in an earlier run
    write_availability(table, mdir / "availability.parquet", {"max_videos": 2,
                                                               "splits": ["val"]})
    r = audit_and_write("youcook2", mdir, tmp_path / "out")
    assert r["sample"] == {"videos": 3, "listed": 7, "max_videos": 2, "splits": ["val"]}
    sp = r["splits"]
    assert (sp["total"]["videos_listed"], sp["total"]["videos_in_manifest"]) == (3, 7)
    assert (sp["val"]["videos_listed"], sp["val"]["videos_in_manifest"]) == (2, 4)
    assert (sp["train"]["videos_listed"], sp["train"]["videos_in_manifest"]) == (1, 3)
    assert sp["total"]["by_status"] == {"available": 1, "unavailable": 1, "needs_auth": 0,
                                        "transient_failure": 0, "pending": 1}
    assert sp["total"]["by_reason"] == {"private": 1, "not_checked": 1}
    # clips: only those of sampled videos are listed; coverage is over them
    assert (sp["val"]["clips_listed"], sp["val"]["clips_covered"],
            sp["val"]["clips_in_manifest"]) == (3, 2, 5)
    out = tmp_path / "out" / "youcook2"
    assert _ids(out / "val" / "never_reached_ids.txt") == ["AAAAAAAAAA5"]
    assert _ids(out / "val" / "missing_ids.txt") == []
    assert _ids(out / "train" / "missing_ids.txt") == ["AAAAAAAAAA1"]
    assert _ids(out / "train" / "never_reached_ids.txt") == []    # 2 and 3: not in the sample
    md = (tmp_path / "out" / "youcook2.md").read_text()
    assert "Sample of 3 of 7 listed videos (download.max_videos = 2; download.splits = val)" \
        in md
    write_summary({"youcook2": r}, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["datasets"]["youcook2"]["sample"]["videos"] == 3
    assert "Sample of 3 of 7" in (tmp_path / "out" / "summary.md").read_text()
    # without a recorded sample the whole manifest counts, as before
    write_availability(table, mdir / "availability.parquet")
    r = audit_and_write("youcook2", mdir, tmp_path / "out")
    assert r["sample"] is None and r["splits"]["total"]["videos_listed"] == 7
