"""Stage extract: statuses for every kind of bad input, time alignment, parity with a plain
forward of the reference-decoded frames, HDF5/Parquet reader, resume after kill -9, recipes."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline.config import ClusterParams, ExtractParams
from pipeline.features.decode import SIZE_3D
from pipeline.features.extract import ExtractError, classify, extract, plan_shards
from pipeline.download.ledger import AVAILABILITY_SCHEMA
from pipeline.features.store import FeatureStore, StoreError, read_shard_rows, scan
from pipeline.features.weights import CLIP_MEAN, load_backbone
from tests.conftest import ROOT
from tests.test_decode import run_reference

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

CLUSTER = ClusterParams(workers=1, threads_per_worker=1, processes=False)
PARAMS = ExtractParams(weights_2d="random:3", weights_3d="random:4", batch_2d=8, batch_3d=4,
                       shard_videos=4)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def video(path: Path, seconds: float, size: str = "160x120", rate: int = 10,
          audio: str | None = "sine=frequency=440:sample_rate=44100", extra=()) -> Path:
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"{audio}:duration={seconds}", "-c:a", "aac"]
    ffmpeg(*args, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", *extra, str(path))
    return path


def ledger_row(vid: str, status: str = "available", path: str | None = None,
               sha256: str | None = None, duration_s: float | None = None,
               reason: str | None = None) -> dict:
    """One availability.parquet row (every AVAILABILITY_SCHEMA field)."""
    row = {f.name: None for f in AVAILABILITY_SCHEMA}
    row.update(video_id=vid, url=f"https://www.youtube.com/watch?v={vid}", split="val",
               status=status, path=path, sha256=sha256, duration_s=duration_s, reason=reason,
               attempts=1)
    return row


def ledger(root: Path, files: dict[str, Path], duration_s: float = 2.0) -> pa.Table:
    """An availability table listing `files` as downloaded (paths relative to `root`)."""
    rows = []
    for vid, f in files.items():
        ok = f.exists()
        rows.append(ledger_row(vid, path=str(f.relative_to(root)),
                               sha256=hashlib.sha256(f.read_bytes()).hexdigest() if ok
                               else "0" * 64, duration_s=duration_s))
    return pa.Table.from_pylist(rows, schema=AVAILABILITY_SCHEMA)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Every edge case of the issue as an 11-character id -> file under one root."""
    root = tmp_path_factory.mktemp("root")
    d = root / "videos"
    d.mkdir()
    v = {
        "align12s___": video(d / "a.mp4", 12, rate=30),
        "align12_5s_": video(d / "b.mp4", 12.5, rate=30),
        "short0_4s__": video(d / "c.mp4", 0.4, rate=30),
        "short1s____": video(d / "d.mp4", 1, rate=30),
        "noaudio____": video(d / "e.mp4", 2, audio=None),
        "silent_____": video(d / "f.mp4", 2, audio="anullsrc=r=44100:cl=stereo"),
        "portrait___": video(d / "g.mp4", 2, size="120x160"),
        "uhd4k______": video(d / "h.mp4", 1, size="3840x2160", rate=5),
        "vfr________": video(d / "i.mp4", 3, rate=30, extra=(
            "-vf", r"select=lt(n\,30)+not(mod(n\,3))", "-fps_mode", "vfr")),
    }
    full = video(d / "j.mp4", 8, size="320x240", rate=30)
    cut = d / "k.mp4"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    v["truncated__"] = cut
    junk = d / "l.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes())
    v["junk_______"] = junk
    ffmpeg("-i", str(v["noaudio____"]), "-c", "copy", "-metadata:s:v:0", "rotate=90",
           str(d / "m.mp4"))
    v["rotated____"] = d / "m.mp4"
    v["-missing___"] = d / "gone.mp4"                  # the ledger says available; it is not
    return root, v


@pytest.fixture(scope="module")
def store(media, tmp_path_factory) -> Path:
    root, files = media
    out = tmp_path_factory.mktemp("features")
    table = ledger(root, files)
    gone = pa.Table.from_pylist([ledger_row("privatevid1", "unavailable", reason="private")],
                                schema=table.schema)
    p = dataclasses.replace(PARAMS, max_failure_fraction=1.0)
    events = []
    s = extract("youcook2", pa.concat_tables([table, gone]), out, p, CLUSTER, root,
                on_event=events.append)
    assert len(events) == len(files)
    assert s["status"]["ok"] >= 6
    return out


EXPECTED = {"align12s___": "ok", "align12_5s_": "ok", "short0_4s__": "too_short_2d",
            "short1s____": "ok", "noaudio____": "no_audio_stream", "silent_____": "silent_audio",
            "portrait___": "ok", "uhd4k______": "ok", "vfr________": "ok",
            "truncated__": "truncated", "junk_______": "probe_error",
            "rotated____": "no_audio_stream", "-missing___": "probe_error",
            "privatevid1": "not_downloaded"}


def test_every_edge_case_gets_its_status(store):
    s = FeatureStore(store)
    got = {r["video_id"]: r["status"] for r in s.index.to_pylist()}
    assert got == EXPECTED
    assert "private" in s.info("privatevid1")["message"]
    assert "media file missing" in s.info("-missing___")["message"]
    assert "gone.mp4" in s.info("-missing___")["message"]
    assert "decoded" in s.info("truncated__")["message"]
    assert s.info("noaudio____")["n_logmel"] == 0 and not s.info("noaudio____")["has_audio"]
    assert s.info("silent_____")["n_logmel"] > 0
    assert s.info("short0_4s__")["n_resnet152"] == 0 and s.info("short0_4s__")["n_resnext101"] == 1
    assert 0 < s.info("truncated__")["decoded_s"] < 6
    r = s.info("rotated____")
    assert (r["width"], r["height"]) == (120, 160) and r["rotation"] % 180 == 90
    assert s.info("uhd4k______")["n_resnet152"] == 1
    assert s.info("vfr________")["n_resnet152"] == 3 and s.info("vfr________")["n_resnext101"] == 5
    assert s.ids() == sorted(v for v, st in EXPECTED.items() if st == "ok")


@pytest.mark.parametrize("vid, n2d, n3d", [("align12s___", 12, 18), ("align12_5s_", 13, 19),
                                           ("short1s____", 1, 2)])
def test_time_alignment(store, vid, n2d, n3d):
    """features.md: 12 s -> 12 and 18 rows, 12.5 s -> 13 and 19."""
    s = FeatureStore(store)
    assert s.read(vid, "resnet152").shape == (n2d, 2048)
    assert s.read(vid, "resnext101").shape == (n3d, 2048)
    assert s.info(vid)["n_logmel"] == s.read(vid, "logmel").shape[1]


def test_features_equal_a_plain_forward_of_the_reference_frames(store, media):
    """The cross-video batching, zero padding and post-processing change nothing: stored rows
    equal ResNet-152 / ResNeXt-101 run directly on the reference chains' frames."""
    root, files = media
    s = FeatureStore(store)
    ref = run_reference(files["align12_5s_"])
    r2d, _ = load_backbone("resnet152", "random:3")
    r3d, _ = load_backbone("resnext101", "random:4")
    with torch.inference_mode():
        x = torch.from_numpy(ref["2d"].copy()).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
            (torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + 1e-8)
        want2d = F.normalize(r2d(x), dim=1).half().numpy()
        frames = np.concatenate([ref["3d"], np.zeros((19 * 16 - 300, SIZE_3D, SIZE_3D, 3),
                                                     np.uint8)])
        clips = torch.from_numpy(frames).float().view(19, 16, SIZE_3D, SIZE_3D, 3)
        clips = clips.permute(0, 4, 1, 2, 3) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1)
        want3d = F.normalize(r3d(clips), dim=1).half().numpy()
    got2d = s.read("align12_5s_", "resnet152").astype(np.float32)
    got3d = s.read("align12_5s_", "resnext101").astype(np.float32)
    for got, want in ((got2d, want2d), (got3d, want3d)):
        err = np.abs(got - want).max()
        # rows in another order (a scatter bug across the batched videos) would be far off
        shifted = np.abs(got[1:] - want[:-1]).max(axis=1).min()
        print(f"aligned {err:.2e}, shifted by one row {shifted:.2e}")
        assert err < 2e-3 and err < shifted / 4


def test_logmel_is_the_recipe_on_the_decoded_audio(store, media):
    from pipeline.features.logmel import logmel
    _, files = media
    audio = run_reference(files["align12s___"])["audio"]
    want = logmel(audio).half().numpy()
    got = FeatureStore(store).read("align12s___", "logmel")
    assert got.shape == want.shape and np.abs(got.astype(np.float32) - want).max() < 0.05


def test_hdf5_layout_chunked_along_time_and_windows(store):
    import h5py
    s = FeatureStore(store)
    r = s.info("align12_5s_")
    with h5py.File(store / r["shard"], "r") as f:
        g = f["videos"]["align12_5s_"]
        assert g["resnext101"].chunks[1] == 2048 and g["resnext101"].chunks[0] <= 48
        assert g["logmel"].shape[0] == 40 and g["logmel"].chunks[0] == 40
        assert g.attrs["status"] == "ok" and f.attrs["complete"]
    full = s.read("align12_5s_", "resnext101")
    assert np.array_equal(s.read("align12_5s_", "resnext101", 3, 18), full[3:18])
    mel = s.read("align12_5s_", "logmel")
    assert np.array_equal(s.read("align12_5s_", "logmel", 100, 1100), mel[:, 100:1100])
    assert s.recipe["dtype"] == "float16" and s.recipe["l2_normalize"]["enabled"]
    assert s.recipe["resnet152"]["weights_sha256"] == "random-seed-3"
    with pytest.raises(StoreError, match="not in"):
        s.info("nosuchvideo")
    assert s.read("noaudio____", "logmel").shape == (40, 0)


def test_parquet_store_reads_the_same(store, media, tmp_path):
    root, files = media
    pick = {k: files[k] for k in ("align12s___", "noaudio____", "junk_______")}
    p = dataclasses.replace(PARAMS, format="parquet", max_failure_fraction=1.0)
    extract("youcook2", ledger(root, pick), tmp_path, p, CLUSTER, root)
    a, b = FeatureStore(store), FeatureStore(tmp_path)
    assert b.ids(("ok", "no_audio_stream", "probe_error")) == sorted(pick)
    assert b.info("align12s___")["shard"].endswith(".parquet")
    for vid in ("align12s___", "noaudio____"):
        for feat in ("resnet152", "resnext101", "logmel"):
            x, y = a.read(vid, feat), b.read(vid, feat)
            assert x.shape == y.shape and x.dtype == y.dtype == np.float16
            assert np.abs(x.astype(np.float32) - y.astype(np.float32)).max(initial=0) < 5e-3, \
                (vid, feat)
    assert np.array_equal(b.read("align12s___", "logmel", 10, 50),
                          b.read("align12s___", "logmel")[:, 10:50])


def test_rerun_does_nothing_and_recipe_change_redoes(media, tmp_path):
    root, files = media
    pick = ledger(root, {"short1s____": files["short1s____"]})
    extract("youcook2", pick, tmp_path, PARAMS, CLUSTER, root)
    first = sorted(tmp_path.glob("shard-*"))
    stamp = first[0].stat().st_mtime_ns
    s = extract("youcook2", pick, tmp_path, dataclasses.replace(PARAMS, batch_2d=3), CLUSTER,
                root)
    assert s["this_run"] == {} and first[0].stat().st_mtime_ns == stamp
    old = first[0].read_bytes()
    s = extract("youcook2", pick, tmp_path, dataclasses.replace(PARAMS, dtype="float32"),
                CLUSTER, root)
    assert s["this_run"] == {"ok": 1}                               # redone, in a new shard
    assert not first[0].exists()                                    # the old one moved aside
    [aside] = list((tmp_path / "stale").glob(f"*/{first[0].name}"))
    assert aside.read_bytes() == old and (aside.parent / "README.txt").is_file()
    assert (aside.parent / (first[0].name + ".sum.json")).is_file()
    store = FeatureStore(tmp_path)
    assert store.read("short1s____", "resnet152").dtype == np.float32
    assert all((tmp_path / r["shard"]).is_file() for r in store.index.to_pylist())


def test_missing_file_is_retried_once_it_is_back(media, tmp_path):
    root, files = media
    path = root / "videos" / "late.mp4"
    path.unlink(missing_ok=True)
    table = ledger(root, {"latefile___": path})
    p = dataclasses.replace(PARAMS, max_failure_fraction=1.0)
    extract("youcook2", table, tmp_path, p, CLUSTER, root)
    assert FeatureStore(tmp_path).info("latefile___")["status"] == "probe_error"
    shutil.copy(files["short1s____"], path)        # the download stage fetched it again
    s = extract("youcook2", table, tmp_path, p, CLUSTER, root)
    assert s["this_run"] == {"ok": 1}
    assert FeatureStore(tmp_path).info("latefile___")["status"] == "ok"


def test_failure_fraction_fails_the_stage(media, tmp_path):
    root, files = media
    pick = ledger(root, {k: files[k] for k in ("junk_______", "short1s____")})
    with pytest.raises(ExtractError, match="max_failure_fraction"):
        extract("youcook2", pick, tmp_path, PARAMS, CLUSTER, root)
    assert FeatureStore(tmp_path).info("junk_______")["status"] == "probe_error"


def test_missing_official_weights_is_one_clear_error(media, tmp_path):
    root, files = media
    p = dataclasses.replace(PARAMS, weights_2d="random", weights_3d="kinetics",
                            weights_dir=str(tmp_path / "w"))
    with pytest.raises(ExtractError, match=r"resnext-101-kinetics\.pth.*put it at"):
        extract("youcook2", ledger(root, {"short1s____": files["short1s____"]}), tmp_path / "s",
                p, CLUSTER, root)
    assert not (tmp_path / "s").exists()                  # nothing made before the check


def test_classify_precedence():
    from pipeline.features.decode import DecodePlan
    p = DecodePlan(Path("x"), 320, 240, 0, True, 10.0, 0, 1)
    assert classify(p, 10, 240, 160000, 0.5, None) == ("ok", [], None)
    st, flags, msg = classify(p, 4, 96, 64000, 0.5, None)
    assert st == "truncated" and "decoded 4.00 s of a 10.00 s" in msg
    assert classify(p, 0, 0, 0, 0.0, "boom")[:2] == ("decode_error", [
        "decode_error", "too_short_2d", "too_short_3d", "silent_audio"])
    assert classify(None, 0, 0, 0, 0.0, "x.mp4: not media")[0] == "probe_error"


def test_plan_shards_by_count_and_seconds():
    p = ExtractParams(shard_videos=2, shard_seconds=100.0)
    vids = [(f"v{i}", f"p{i}", None, d) for i, d in enumerate([90, 20, 5, 5, 5])]
    shards = plan_shards(vids, p, 7)
    assert [n for n, _ in shards] == [7, 8, 9]
    assert [[v for v, _, _ in s] for _, s in shards] == [["v0"], ["v1", "v2"], ["v3", "v4"]]
    # at least min_shards shards, however large shard_videos is
    many = plan_shards([(f"v{i}", "p", None, 1.0) for i in range(36)], ExtractParams(), 0,
                       min_shards=4)
    assert [len(s) for _, s in many] == [9, 9, 9, 9]


# --------------------------------------------------------------------------- kill -9


def test_kill_9_mid_run_then_rerun_keeps_finished_shards(media, tmp_path):
    """The stage in a subprocess (its own dask cluster) is killed with SIGKILL, whole process
    group, once a shard is finished; the re-run keeps that shard as it is, removes the
    partial one, extracts the rest once, and the index lists every video exactly once."""
    root, files = media
    names = ["short1s____", "noaudio____", "silent_____", "portrait___", "vfr________"]
    avail = root / "avail.parquet"
    pq.write_table(ledger(root, {k: files[k] for k in names}), avail)   # paths videos/...
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["extract"].update(weights_2d="random:3", weights_3d="random:4", shard_videos=1,
                             batch_2d=8, batch_3d=4)
    params["cluster"].update(workers=1, threads_per_worker=1, processes=True)
    params["datasets"]["youcook2"] = "youcook2"
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "features"
    cmd = [sys.executable, "-m", "stages.extract", "--dataset", "youcook2", "--params",
           str(pfile), "--availability", str(avail), "--videos", "videos", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if scan(out).done:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before a shard was finished"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept = scan(out).done
    assert kept
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p, _, _ in kept}
    rerun = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    found = scan(out, "sha256")
    done = found.done
    assert not found.partial and not found.bad and not list(out.glob("*.part"))
    for name, stamp in stamps.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stamp
    ids = [r["video_id"] for _, _, rows in done for r in rows]
    assert sorted(ids) == sorted(names)                 # every video in exactly one shard
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert sorted(r["video_id"] for r in index) == sorted(names)
    for r in index:
        recipe, rows = read_shard_rows(out / r["shard"])
        assert r["video_id"] in {x["video_id"] for x in rows}
