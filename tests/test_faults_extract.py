"""Fault injection on extract@ (issue 18, items 1-6, 8, 9): finished shards survive byte-identical
or are moved to stale/, never deleted; every refusal is exit 2 with ONE log line naming the file.

The stage runs in-process (`stages.extract.main`) on a few one-second generated videos with
seeded random backbones and a threads-only dask cluster; the cases that need another process
(a second writer, dropped file permissions, a worker process on a full disk) start one."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cluster import ClusterError, check_address
from pipeline.config import ClusterParams, ExtractParams, Params, to_dict
from pipeline.features.extract import classify, extract
from pipeline.download.ledger import AVAILABILITY_SCHEMA
from pipeline.safety import LOCK_NAME, UnsafeInputError
from pipeline.features.store import (AV_MISMATCH, INDEX_SCHEMA, STATUSES, FeatureStore, ShardWriter,
                            StoreError, VideoRecord, scan, sum_path, write_index)
from stages.extract import main
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

DS = "youcook2"
EXTRACT = {"weights_2d": "random:3", "weights_3d": "random:4", "batch_2d": 8, "batch_3d": 4,
           "shard_videos": 1, "min_free_gb": 0.0, "max_failure_fraction": 1.0}
CLUSTER = {"workers": 1, "threads_per_worker": 1, "processes": False}
VIDS = ("clipaaaaaaa", "clipbbbbbbb")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def make_video(path: Path, video_s: float, audio_s: float | None = None) -> Path:
    """H.264 + AAC mp4; audio as long as the video unless `audio_s` says otherwise (no
    -shortest: the streams keep their own lengths)."""
    audio_s = video_s if audio_s is None else audio_s
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=10:duration={video_s}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={audio_s}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(path))
    return path


def ledger_rows(root: Path, files: dict[str, Path], duration_s: float = 1.0) -> list[dict]:
    rows = []
    for vid, f in files.items():
        row = {f_.name: None for f_ in AVAILABILITY_SCHEMA}
        row.update(video_id=vid, url=f"https://www.youtube.com/watch?v={vid}", split="val",
                   status="available", path=str(f.relative_to(root)), attempts=1,
                   sha256=hashlib.sha256(f.read_bytes()).hexdigest(), duration_s=duration_s)
        rows.append(row)
    return rows


def write_ledger(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=AVAILABILITY_SCHEMA), path)
    return path


def write_params(path: Path, extract_: dict | None = None, cluster: dict | None = None) -> Path:
    data = to_dict(Params())
    data["datasets"][DS] = DS
    data["extract"].update({**EXTRACT, **(extract_ or {})})
    data["cluster"].update({**CLUSTER, **(cluster or {})})
    path.write_text(yaml.safe_dump(data))
    return path


@dataclasses.dataclass
class Project:
    """A project folder: videos/, availability.parquet, params.yaml, features/ (the store)."""

    root: Path
    files: dict[str, Path]

    @property
    def store(self) -> Path:
        return self.root / "features"

    @property
    def avail(self) -> Path:
        return self.root / "availability.parquet"

    def run(self, *extra: str, extract_: dict | None = None, cluster: dict | None = None,
            avail: Path | None = None, out: Path | None = None) -> int:
        """The stage, in-process, from the project folder."""
        pfile = write_params(self.root / "params.yaml", extract_, cluster)
        old = os.getcwd()
        os.chdir(self.root)
        try:
            return main(["--dataset", DS, "--params", str(pfile), "--availability",
                         str(avail or self.avail), "--videos", "videos", "--out",
                         str(out or self.store), *extra])
        finally:
            os.chdir(old)

    def cmd(self, pfile: Path) -> list[str]:
        return [sys.executable, "-m", "stages.extract", "--dataset", DS, "--params", str(pfile),
                "--availability", str(self.avail), "--videos", "videos", "--out",
                str(self.store)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Project:
    """A finished store of two one-second videos, one shard each."""
    root = tmp_path_factory.mktemp("project")
    (root / "videos").mkdir()
    files = {v: make_video(root / "videos" / f"{v}.mp4", 1) for v in VIDS}
    write_ledger(root / "availability.parquet", ledger_rows(root, files))
    p = Project(root, files)
    assert p.run() == 0
    return p


@pytest.fixture
def project(pristine, tmp_path) -> Project:
    """A copy of the pristine project to damage."""
    root = tmp_path / "project"
    shutil.copytree(pristine.root, root, symlinks=True)
    return Project(root, {v: root / "videos" / f.name for v, f in pristine.files.items()})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but the lock file, whose holder info changes) -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name == "stages"]


def assert_one_line(caplog, *names) -> str:
    """The stage logged exactly one error, on one line, naming each of `names`."""
    errs = error_lines(caplog)
    assert len(errs) == 1, errs
    assert "\n" not in errs[0] and "Traceback" not in errs[0], errs[0]
    for n in names:
        assert str(n) in errs[0], (n, errs[0])
    return errs[0]


def assert_index_matches_store(store: Path) -> None:
    """index.parquet names only shards that are in the store, with their recorded checksum."""
    for r in pq.read_table(store / "index.parquet").to_pylist():
        if r["shard"]:
            assert (store / r["shard"]).is_file(), r
            assert r["shard_sha256"] == hashlib.sha256(
                (store / r["shard"]).read_bytes()).hexdigest()


def shard_of(store: Path, vid: str) -> Path:
    return store / FeatureStore(store, verify="none").info(vid)["shard"]


def overwrite_data(shard: Path, n: int = 64) -> None:
    """64 bytes inside the first ResNet-152 chunk become b'{' (float16 0x7B7B = 61280: one
    unit-norm value became 61280, as in the issue)."""
    with h5py.File(shard, "r") as f:
        vid = next(iter(f["videos"]))
        off = f["videos"][vid]["resnet152"].id.get_chunk_info(0).byte_offset
    with open(shard, "r+b") as fh:
        fh.seek(off + 16)
        fh.write(b"{" * n)


# --------------------------------------------------------------------------- 1. unreadable


def test_shard_locked_by_another_program_stops_the_run_and_is_kept(project, caplog):
    """An HDF5 lock error on a finished shard is the machine's problem, not the shard's: stop,
    name it, touch nothing (the old code deleted it as 'left by an interrupted run')."""
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        pytest.skip("HDF5 file locking is off")
    shard = shard_of(project.store, VIDS[0])
    before = snapshot(project.store)
    fd = os.open(shard, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)          # what a program writing it would hold
        assert project.run() == 2
    finally:
        os.close(fd)
    assert_one_line(caplog, shard, "cannot read this finished shard")
    assert snapshot(project.store) == before and not (project.store / "stale").exists()


def test_shard_without_read_permission_stops_the_run_and_is_kept(project):
    """PermissionError on a finished shard: one line naming it, exit 2, nothing moved. Run in a
    process without the root capability to bypass file modes (when the tests run as root)."""
    shard = shard_of(project.store, VIDS[1])
    before = snapshot(project.store)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be enforced")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
        if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
            pytest.skip("cannot drop capabilities here (setpriv refused)")
    pfile = write_params(project.root / "params.yaml")
    shard.chmod(0)
    try:
        r = subprocess.run(prefix + project.cmd(pfile), cwd=project.root, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        shard.chmod(0o644)
    assert r.returncode == 2, r.stderr[-2000:]
    errs = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errs) == 1 and str(shard) in errs[0] and "Permission denied" in errs[0], r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(project.store) == before and not (project.store / "stale").exists()


# --------------------------------------------------------------------------- 3. checksums


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "garble_unsummed"])
def test_bad_shard_is_detected_moved_aside_and_only_it_redone(project, caplog, damage):
    """64 overwritten bytes (sha256), a truncated file (size), garbled bytes in a shard with no
    recorded checksum (contents): readers raise StoreError naming the shard; the next run moves
    it to stale/ (bytes kept) and re-extracts its videos only."""
    bad = shard_of(project.store, VIDS[0])
    good = shard_of(project.store, VIDS[1])
    good_stat = (good.stat().st_ino, good.stat().st_mtime_ns)
    if damage == "overwrite":
        overwrite_data(bad)
    elif damage == "truncate":
        data = bad.read_bytes()
        bad.write_bytes(data[:len(data) * 2 // 3])
    else:
        sum_path(bad).unlink()
        data = bytearray(bad.read_bytes())
        data[:512] = os.urandom(512)            # the superblock: not HDF5 any more
        bad.write_bytes(bytes(data))
    damaged = bad.read_bytes()

    # the next reader (training, evaluation) stops, naming it; with verify=size too (then the
    # size, the HDF5 chunk checksums or the garbled superblock give it away)
    for verify in ("sha256", "size"):
        with pytest.raises(StoreError) as e:
            FeatureStore(project.store, verify=verify).read(VIDS[0], "resnet152")
        assert str(bad) in str(e.value) and f"extract@{project.store.name}" in str(e.value)
        assert "\n" not in str(e.value)

    caplog.clear()
    caplog.set_level(logging.INFO)
    assert project.run() == 0
    [aside] = list((project.store / "stale").glob(f"*/{bad.name}"))
    assert aside.read_bytes() == damaged                       # moved, not deleted
    assert "proven bad" in (aside.parent / "README.txt").read_text()
    assert any(bad.name in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert (good.stat().st_ino, good.stat().st_mtime_ns) == good_stat   # the other one kept
    store = FeatureStore(project.store, verify="sha256")
    assert store.info(VIDS[0])["shard"] not in (bad.name, good.name)   # redone, new number
    assert store.info(VIDS[1])["shard"] == good.name
    assert store.read(VIDS[0], "resnet152").shape == (1, 2048)
    assert_index_matches_store(project.store)


def test_store_made_before_checksums_keeps_working(project, caplog):
    """No sidecars, an index without the checksum columns: readers warn and read; the next run
    records the checksums (a warning), moves nothing, extracts nothing."""
    for s in project.store.glob("shard-*.sum.json"):
        s.unlink()
    old_schema = pa.schema([f for f in INDEX_SCHEMA
                            if f.name not in ("shard_sha256", "shard_bytes", "video_s",
                                              "audio_s")])
    index = pq.read_table(project.store / "index.parquet")
    pq.write_table(index.select(old_schema.names), project.store / "index.parquet")
    shards = {p.name: p.read_bytes() for p in project.store.glob("shard-*.h5")}
    caplog.set_level(logging.INFO)
    store = FeatureStore(project.store, verify="sha256")
    assert store.read(VIDS[0], "logmel").shape[0] == 40
    assert "no recorded checksum" in caplog.text
    caplog.clear()
    assert project.run() == 0
    assert "recorded it now" in caplog.text
    assert {p.name: p.read_bytes() for p in project.store.glob("shard-*.h5")} == shards
    assert len(list(project.store.glob("shard-*.sum.json"))) == len(shards)
    assert not (project.store / "stale").exists()
    assert_index_matches_store(project.store)


def test_parquet_shard_pages_carry_checksums(tmp_path):
    """Parquet shards: the file's sha256 (verify=sha256) and the page CRCs (any verify) catch
    64 overwritten bytes; extraction's scan classifies the shard as bad, not as unreadable."""
    rng = np.random.default_rng(0)
    w = ShardWriter(tmp_path / "shard-00000.parquet", {"dtype": "float16"})
    w.add(VideoRecord("parquetvid1", "ok", {}, {
        "resnet152": rng.standard_normal((5, 2048)).astype(np.float16),
        "resnext101": rng.standard_normal((7, 2048)).astype(np.float16),
        "logmel": rng.standard_normal((40, 500)).astype(np.float16)}))
    write_index(w.close(), tmp_path / "index.parquet")
    assert FeatureStore(tmp_path).read("parquetvid1", "resnet152").shape == (5, 2048)
    shard = tmp_path / "shard-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[2000:2064] = b"{" * 64
    shard.write_bytes(bytes(data))
    for verify in ("sha256", "size"):
        with pytest.raises(StoreError, match=str(shard)):
            FeatureStore(tmp_path, verify=verify).read("parquetvid1", "resnet152")
    assert [b for b, _ in scan(tmp_path, "sha256").bad] == [shard]


def test_corrupt_or_hostile_index_is_a_store_error(project):
    index = project.store / "index.parquet"
    t = pq.read_table(index)
    bad = t.set_column(t.schema.get_field_index("shard"), "shard",
                       pa.array(["../../etc/passwd"] * t.num_rows, pa.string()))
    pq.write_table(bad, index)
    with pytest.raises(StoreError, match=r"index.parquet, row 0 .*field 'shard'"):
        FeatureStore(project.store)
    index.write_bytes(b"garbage")
    with pytest.raises(StoreError, match="index.parquet: unreadable index"):
        FeatureStore(project.store)
    with pytest.raises(ValueError):
        FeatureStore(project.store, verify="md5")


def test_verify_shards_checks_up_front(project):
    store = FeatureStore(project.store, verify="sha256")
    assert store.verify_shards() == 2 and store.verify_shards() == 0
    fresh = FeatureStore(project.store, verify="sha256")
    overwrite_data(shard_of(project.store, VIDS[1]))
    with pytest.raises(StoreError, match="sha256"):
        fresh.verify_shards([VIDS[1]])


# --------------------------------------------------------------------------- 2. weights


@pytest.mark.parametrize("weights", ["/etc/passwd", "nosuch/resnet.pth"])
def test_mistyped_weights_path_is_one_line_and_the_store_is_untouched(project, caplog,
                                                                       weights):
    """The old code first deleted every shard 'made with another recipe', then crashed."""
    before = snapshot(project.store)
    assert project.run(extract_={"weights_2d": weights}) == 2
    assert_one_line(caplog, weights, "extract.weights_2d")
    assert snapshot(project.store) == before and not (project.store / "stale").exists()


# --------------------------------------------------------------------------- 4. the ledger


@pytest.mark.parametrize("vid, path", [
    ("../../evil", None), ("a/b/c", None),
    ("okvideo0001", "/etc/passwd"), ("okvideo0001", "../../etc/passwd"),
    ("okvideo0001", "../availability.parquet")])
def test_hostile_ledger_stops_before_any_work(project, caplog, vid, path):
    rows = ledger_rows(project.root, project.files)
    rows[0].update(video_id=vid, path=path or rows[0]["path"])
    write_ledger(project.avail, rows)
    before = snapshot(project.store)
    assert project.run() == 2
    field = "'path'" if path else "'video_id'"
    assert_one_line(caplog, project.avail, field)
    assert snapshot(project.store) == before


def test_special_file_in_the_ledger_is_refused_unopened(project, caplog):
    """A FIFO named by the ledger would hang a reader: it is refused unopened, its video gets
    a status saying so (retried once the path is a readable file) and the run goes on."""
    fifo = project.root / "videos" / "fifo.mp4"
    os.mkfifo(fifo)
    rows = ledger_rows(project.root, project.files)
    write_ledger(project.avail, rows + [{**rows[0], "video_id": "fifovideo01",
                                         "path": "videos/fifo.mp4"}])
    before = snapshot(project.store)
    assert project.run() == 0
    r = FeatureStore(project.store).info("fifovideo01")
    assert r["status"] == "probe_error" and "FIFO" in r["message"]
    assert all(snapshot(project.store)[k] == v for k, v in before.items()
               if k.startswith("shard-"))
    fifo.unlink()
    shutil.copy(project.files[VIDS[0]], fifo)       # a real file there now: extracted again
    assert project.run() == 0
    assert FeatureStore(project.store).info("fifovideo01")["status"] == "ok"


def test_hostile_ids_are_refused_where_shards_are_written(project, tmp_path):
    """Defence in depth: extract() checks a table it is handed, and so does the shard writer."""
    rows = ledger_rows(project.root, project.files)
    rows[0]["video_id"] = "../../evil"
    table = pa.Table.from_pylist(rows, schema=AVAILABILITY_SCHEMA)
    p = ExtractParams(**EXTRACT)
    with pytest.raises(UnsafeInputError, match=r"\.\./\.\./evil"):
        extract(DS, table, tmp_path / "s", p, ClusterParams(**CLUSTER), project.root)
    assert not (tmp_path / "s").exists()
    w = ShardWriter(tmp_path / "w" / "shard-00000.h5", {"dtype": "float16"})
    with pytest.raises(UnsafeInputError):
        with w:
            w.add(VideoRecord("a/b/c", "ok"))
    assert not list((tmp_path / "w").iterdir())


# --------------------------------------------------------------------------- 5. one writer


HOLD = """
import sys, time
from pathlib import Path
from pipeline.safety import writer_lock
out = Path(sys.argv[1])
with writer_lock(out, "extract@youcook2"):
    (out / "shard-00007.h5.part").write_bytes(b"a live writer's shard" * 100)
    print("held", flush=True)
    time.sleep(600)
"""


def test_second_writer_stops_and_a_killed_writers_lock_is_taken_over(project, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(project.store)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        part = project.store / "shard-00007.h5.part"
        live = part.read_bytes()
        before = snapshot(project.store)
        # a new video to do: the second run would write shards
        extra = make_video(project.root / "videos" / "new.mp4", 1)
        write_ledger(project.avail, ledger_rows(project.root,
                                                {**project.files, "newvideo001": extra}))
        assert project.run() == 2
        assert_one_line(caplog, project.store, f"extract@{DS} (pid {holder.pid}")
        assert snapshot(project.store) == before and part.read_bytes() == live
    finally:
        holder.kill()                            # SIGKILL: the lock is never released
        holder.wait()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert project.run() == 0
    assert "taking over" in caplog.text
    assert not part.exists()                     # now it is a killed run's leftover
    store = FeatureStore(project.store)
    assert store.ids() == sorted([*VIDS, "newvideo001"])
    assert_index_matches_store(project.store)


# --------------------------------------------------------------------------- 6. A/V lengths


def test_video_and_audio_of_very_different_lengths_are_flagged(project, caplog):
    files = {"v3a12______": make_video(project.root / "videos" / "v3a12.mp4", 3, 12),
             "v12a3______": make_video(project.root / "videos" / "v12a3.mp4", 12, 3)}
    write_ledger(project.avail, ledger_rows(project.root, {**project.files, **files}, 12.0))
    assert project.run() == 0
    store = FeatureStore(project.store)
    for vid, (vs, aus) in {"v3a12______": (3, 12), "v12a3______": (12, 3)}.items():
        r = store.info(vid)
        assert r["status"] == AV_MISMATCH and AV_MISMATCH in r["flags"].split(",")
        assert abs(r["video_s"] - vs) < 0.7 and abs(r["audio_s"] - aus) < 0.1, r
        assert "extract.max_av_mismatch_s" in r["message"]
    for vid in VIDS:
        r = store.info(vid)
        assert r["status"] == "ok" and abs(r["video_s"] - r["audio_s"]) < 0.7
    assert store.ids() == sorted(VIDS)           # not used for training
    assert STATUSES.index(AV_MISMATCH) == STATUSES.index("ok") - 1


def test_classify_flags_av_mismatch_beyond_the_tolerance():
    from pipeline.features.decode import DecodePlan
    p = DecodePlan(Path("x"), 320, 240, 0, True, 12.0, 0, 1)
    st, flags, msg = classify(p, 3, 72, 12 * 16000, 0.5, None, 2.0)
    assert st == AV_MISMATCH and "video 3.00 s, audio 12.00 s" in msg
    assert classify(p, 12, 12 * 24, 11 * 16000, 0.5, None, 2.0)[0] == "ok"      # within 2 s
    assert classify(p, 12, 12 * 24, 3 * 16000, 0.5, None, 2.0)[1] == [AV_MISMATCH]


# --------------------------------------------------------------------------- 8. free space


def test_free_space_floor_stops_before_any_work(project, caplog):
    extra = make_video(project.root / "videos" / "new.mp4", 1)
    write_ledger(project.avail, ledger_rows(project.root,
                                            {**project.files, "newvideo001": extra}))
    before = snapshot(project.store)
    assert project.run(extract_={"min_free_gb": 1e6}) == 2
    assert_one_line(caplog, project.store, "extract.min_free_gb")
    assert snapshot(project.store) == before


@contextlib.contextmanager
def tiny_fs(path: Path, size: str):
    """A real tmpfs of `size` mounted at `path` (skips when mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:100]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_during_extraction_is_one_line_in_a_worker_process(project, tmp_path):
    """The store on a real 256 KB file system, the ledger's durations too short for the
    driver's estimate: the worker process finds the disk full before writing a video and
    raises; the old code let HDF5 crash the worker (a segfault closing a file after a failed
    write), and dask re-ran the shard on 4 workers, then printed a raw traceback."""
    write_ledger(project.avail, ledger_rows(project.root, project.files, duration_s=0.01))
    with tiny_fs(tmp_path / "full", "256k") as full:
        pfile = write_params(project.root / "params.yaml", cluster={"processes": True})
        cmd = project.cmd(pfile)
        cmd[cmd.index("--out") + 1] = str(full / "features")
        t0 = time.monotonic()
        r = subprocess.run(cmd, cwd=project.root, capture_output=True, text=True, timeout=400,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 2, r.stderr[-3000:]
        errs = [line for line in r.stderr.splitlines() if " ERROR " in line]
        assert len(errs) == 1, r.stderr[-3000:]
        assert str(full / "features") in errs[0] and "extract.min_free_gb" in errs[0]
        assert "Traceback" not in r.stderr and "Restarting worker" not in r.stderr
        # no finished shard; a .part of a task cancelled mid-way is the next run's to remove
        assert not list((full / "features").glob("shard-*.h5"))
    assert time.monotonic() - t0 < 300


def test_full_temporary_folder_is_one_line(project, tmp_path, caplog, monkeypatch):
    """The decoded audio is spooled to the temporary folder: a full /tmp is a one-line
    DiskSpaceError naming it, before anything is written."""
    extra = make_video(project.root / "videos" / "new.mp4", 1)
    write_ledger(project.avail, ledger_rows(project.root,
                                            {**project.files, "newvideo001": extra}))
    before = snapshot(project.store)
    with tiny_fs(tmp_path / "tmpfull", "16k") as small:
        monkeypatch.setattr(tempfile, "tempdir", str(small))
        assert project.run() == 2
        assert_one_line(caplog, small, "temporary folder")
    assert snapshot(project.store) == before


# --------------------------------------------------------------------------- 9. one line


@pytest.mark.parametrize("content", [b"", b"PAR1 not really parquet" * 10])
def test_corrupt_or_empty_ledger_is_one_line(project, caplog, content):
    project.avail.write_bytes(content)
    before = snapshot(project.store)
    assert project.run() == 2
    assert_one_line(caplog, project.avail)
    assert snapshot(project.store) == before


def test_read_only_store_is_one_line(project, caplog, tmp_path):
    before = snapshot(project.store)
    ro = tmp_path / "ro"
    ro.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    if subprocess.run(["mount", "--bind", str(project.store), str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        assert project.run(out=ro) == 2
        assert_one_line(caplog, ro)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert snapshot(project.store) == before


@pytest.mark.parametrize("address", ["nonsense", "tcp://:x", "tcp://127.0.0.1:9",
                                     "tcp://nonexistent.invalid:8786"])
def test_bad_scheduler_address_is_one_line(project, caplog, address):
    extra = make_video(project.root / "videos" / "new.mp4", 1)
    write_ledger(project.avail, ledger_rows(project.root,
                                            {**project.files, "newvideo001": extra}))
    assert project.run(cluster={"scheduler_address": address}) == 2
    assert_one_line(caplog, address)
    assert_index_matches_store(project.store)


def test_bad_scheduler_addresses_are_cluster_errors():
    for address in ("nonsense", "tcp://:x", "tcp://:8786", "tcp://host"):
        with pytest.raises(ClusterError, match="not a scheduler address"):
            check_address(address, 1.0)
    with pytest.raises(ClusterError, match="cannot reach"):
        check_address("tcp://127.0.0.1:9", 1.0)


def test_nothing_downloaded_is_an_error_unless_allowed(project, caplog):
    rows = ledger_rows(project.root, project.files)
    for r in rows:
        r.update(status="transient_failure", path=None, sha256=None, reason="network")
    write_ledger(project.avail, rows)
    before = snapshot(project.store)
    assert project.run() == 2
    assert_one_line(caplog, project.avail, "no downloaded video", "extract.allow_empty")
    assert snapshot(project.store) == before
    caplog.clear()
    empty = project.root / "empty"
    assert project.run(extract_={"allow_empty": True}, out=empty) == 0
    store = FeatureStore(empty)
    assert {store.info(v)["status"] for v in VIDS} == {"not_downloaded"}
    assert "transient_failure" in store.info(VIDS[0])["message"]


def test_rerun_with_everything_extracted_is_a_quiet_no_op(project, caplog):
    before = snapshot(project.store)
    assert project.run() == 0 and not error_lines(caplog)
    assert snapshot(project.store) == before
    assert np.isfinite(FeatureStore(project.store).read(VIDS[0], "resnext101")).all()
