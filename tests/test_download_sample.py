"""Samples (issue 12, item 4): download.max_videos / download.splits fetch a sample first; the
audit reports on the sample ("sample of N of M listed videos") and counts no unattempted video
as missing; a larger sample extends the first. Offline: a media server on 127.0.0.1."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.config import DownloadParams, ParamsError
from pipeline.data.manifest import Manifest, write_manifest
from pipeline.download.ledger import read_attempts, read_availability, read_selection, \
    sample_videos
from stages import audit as audit_stage
from stages import download as download_stage
from tests.conftest import ROOT

TRAIN = [f"tr{i:09d}" for i in range(6)]
VAL = [f"va{i:09d}" for i in range(6)]


def test_sample_videos_filters_splits_then_takes_the_first_ids():
    t = pa.table({"video_id": ["d", "b", "a", "c", "e"],
                  "split": ["val", "train,val", "train", "val", "test"]})
    ids = lambda x: x.column("video_id").to_pylist()  # noqa: E731
    assert ids(sample_videos(t)) == ["d", "b", "a", "c", "e"]          # 0 / []: everything
    assert ids(sample_videos(t, 0, ["val"])) == ["d", "b", "c"]        # multi-split rows too
    assert ids(sample_videos(t, 2, ["val"])) == ["b", "c"]             # first by id, in order
    assert ids(sample_videos(t, 3)) == ["b", "a", "c"]
    assert ids(sample_videos(t, 2, ["test", "train"])) == ["b", "a"]
    assert ids(sample_videos(t, 99, ["nope"])) == []
    # a larger sample extends a smaller one
    assert set(ids(sample_videos(t, 2))) <= set(ids(sample_videos(t, 4)))


@pytest.mark.parametrize("bad", ["", "a,b", " val"])
def test_splits_param_refuses_what_is_not_a_split_name(bad):
    with pytest.raises(ParamsError, match=r"splits\[0\]"):
        DownloadParams(splits=[bad])
    with pytest.raises(ParamsError, match="max_videos"):
        from pipeline.config import from_dict
        from_dict(DownloadParams, {"max_videos": -1})


@pytest.fixture(scope="module")
def media(tiny_mp4) -> bytes:
    return tiny_mp4


def _project(tmp: Path, base: str, **download) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["cluster"].update(workers=1, threads_per_worker=2, processes=False)
    data["download"].update(attempts_per_run=1, backoff_s=0.0, min_free_gb=0.0, retries=0,
                            fragment_retries=0, extractor_retries=0, socket_timeout_s=2.0,
                            **download)
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))
    m = Manifest("demo", ("train", "val"))
    m.videos = [{"video_id": v, "url": f"{base}/v/{v}.mp4", "split": s, "duration_s": 1.0}
                for s, ids in (("train", TRAIN), ("val", VAL)) for v in ids]
    m.clips = [{"clip_id": f"{v}:0", "video_id": v, "split": s, "start_s": 0.0, "end_s": 1.0,
                "text": "a clip", "source": "test"}
               for s, ids in (("train", TRAIN), ("val", VAL)) for v in ids]
    write_manifest(m, tmp / "manifests" / "demo", {}, {})
    return tmp


def _set(proj: Path, **download) -> None:
    data = yaml.safe_load((proj / "params.yaml").read_text())
    data["download"].update(download)
    (proj / "params.yaml").write_text(yaml.safe_dump(data))


def _download(proj: Path, monkeypatch, caplog) -> tuple[int, list[str]]:
    monkeypatch.chdir(proj)
    caplog.clear()
    caplog.set_level(logging.INFO)
    rc = download_stage.main(["--dataset", "demo"])
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _ids(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if not x.startswith("#")]


def test_download_and_audit_a_sample_then_extend_it(tmp_path, http_server, media,
                                                    monkeypatch, caplog):
    base, routes = http_server
    for v in TRAIN + VAL:
        routes[f"/v/{v}.mp4"] = (200, media, {"Content-Type": "video/mp4"})
    proj = _project(tmp_path, base, max_videos=3, splits=["val"])
    assert _download(proj, monkeypatch, caplog) == (0, [])
    tried = read_attempts(proj / "data" / "ledger" / "demo").column("video_id").to_pylist()
    assert sorted(tried) == VAL[:3]                       # the first 3 val videos by id
    apath = proj / "manifests" / "demo" / "availability.parquet"
    avail = {r["video_id"]: r["status"] for r in read_availability(apath).to_pylist()}
    assert len(avail) == 12 and sorted(v for v, s in avail.items() if s == "available") == VAL[:3]
    assert read_selection(apath) == {"max_videos": 3, "splits": ["val"]}
    runs = list((proj / "data" / "ledger" / "demo" / "runs").glob("*.json"))
    assert json.loads(runs[0].read_text())["selected"] == 3

    # the audit reports on the sample: nothing outside it is missing or never reached
    caplog.clear()
    assert audit_stage.main([]) == 0
    out = proj / "reports" / "availability"
    r = json.loads((out / "demo.json").read_text())
    assert r["sample"] == {"videos": 3, "listed": 12, "max_videos": 3, "splits": ["val"]}
    t = r["splits"]["total"]
    assert (t["videos_listed"], t["videos_with_audio"], t["videos_known_gone"],
            t["videos_never_reached"], t["videos_in_manifest"]) == (3, 3, 0, 0, 12)
    assert (t["clips_listed"], t["clips_covered"], t["clip_coverage"]) == (3, 3, 1.0)
    assert r["splits"]["train"]["videos_listed"] == 0
    for split in ("train", "val"):
        assert _ids(out / "demo" / split / "missing_ids.txt") == []
        assert _ids(out / "demo" / split / "never_reached_ids.txt") == []
    assert "Sample of 3 of 12 listed videos" in (out / "demo.md").read_text()
    assert "Sample of 3 of 12" in (out / "summary.md").read_text()

    # a larger sample over every split (the first 8 ids: the 6 train, 2 of the val ones
    # downloaded already, which are checked, not fetched again)
    _set(proj, max_videos=8, splits=[])
    files = {p: p.read_bytes() for p in (proj / "data" / "videos").rglob("*.mp4")}
    assert _download(proj, monkeypatch, caplog) == (0, [])
    attempts = read_attempts(proj / "data" / "ledger" / "demo").column("video_id").to_pylist()
    assert sorted(attempts) == TRAIN + VAL[:3]            # each tried once
    assert all(p.read_bytes() == b for p, b in files.items())
    assert audit_stage.main([]) == 0
    r = json.loads((out / "demo.json").read_text())
    # the sample, and the video tried before outside it (va..2): 9 of 12
    assert r["sample"] == {"videos": 9, "listed": 12, "max_videos": 8, "splits": []}
    assert r["splits"]["total"]["videos_with_audio"] == 9
    assert r["changes"]["newly_checked"]["count"] == 6

    # the whole manifest: no sample any more
    _set(proj, max_videos=0)
    assert _download(proj, monkeypatch, caplog) == (0, [])
    assert read_selection(apath) is None
    assert audit_stage.main([]) == 0
    r = json.loads((out / "demo.json").read_text())
    assert r["sample"] is None and r["splits"]["total"]["videos_with_audio"] == 12


def test_splits_naming_none_of_the_datasets_splits_is_one_line(tmp_path, http_server,
                                                               monkeypatch, caplog):
    base, _ = http_server
    proj = _project(tmp_path, base, splits=["vall"])
    rc, errors = _download(proj, monkeypatch, caplog)
    assert rc == 2 and len(errors) == 1
    assert "download.splits ['vall'] names none of demo's splits (train, val)" in errors[0]
    assert not (proj / "manifests" / "demo" / "availability.parquet").exists()
    # a split this dataset lacks, beside one it has: a warning, and the sample of the other
    _set(proj, splits=["vall", "val"], max_videos=1)
    caplog.clear()
    assert _download(proj, monkeypatch, caplog) == (0, [])   # a 404: gone, not transient
    assert any("['vall'] are not splits of this dataset" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert read_attempts(proj / "data" / "ledger" / "demo").column("video_id").to_pylist() \
        == [VAL[0]]
