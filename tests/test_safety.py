"""pipeline/safety.py and the stages' one-line errors: the writer lock across processes (live
holder, killed holder), moving aside, the free-space floor, path-safe ids and paths."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.safety import (LOCK_NAME, DiskSpaceError, LockError, UnsafeInputError,
                             check_free_space, check_safe_id, move_aside, resolve_inside,
                             writer_lock)
from stages.common import run
from tests.conftest import ROOT

HOLD = """
import sys, time
from pipeline.safety import writer_lock
with writer_lock(sys.argv[1], "holder-stage"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_stops_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path,
                                                                                  caplog):
    work = tmp_path / "store"
    work.mkdir()
    (work / "shard-00000.h5.part").write_bytes(b"live writer's bytes")
    proc = _holder(work)
    try:
        with pytest.raises(LockError) as e:
            with writer_lock(work, "second"):
                pass
        msg = str(e.value)
        assert f"pid {proc.pid}" in msg and "holder-stage" in msg and str(work) in msg
        assert "\n" not in msg
        # waiting: gives up after wait_s, still naming the holder
        t0 = time.monotonic()
        with pytest.raises(LockError):
            with writer_lock(work, "second", wait_s=1.0, poll_s=0.2):
                pass
        assert time.monotonic() - t0 >= 1.0
        assert (work / "shard-00000.h5.part").read_bytes() == b"live writer's bytes"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    caplog.set_level(logging.WARNING)
    with writer_lock(work, "third") as info:
        assert info["pid"] == os.getpid()
        held = json.loads((work / LOCK_NAME).read_text())
        assert held["stage"] == "third"
    assert f"taking over from holder-stage (pid {proc.pid}" in caplog.text
    # released cleanly: the next holder does not warn
    caplog.clear()
    with writer_lock(work, "fourth"):
        pass
    assert "taking over" not in caplog.text


def test_a_waiting_writer_gets_the_lock_when_the_holder_finishes(tmp_path):
    proc = _holder(tmp_path)
    try:
        import threading
        threading.Timer(0.5, proc.kill).start()
        with writer_lock(tmp_path, "waiter", wait_s=30, poll_s=0.1) as info:
            assert info["stage"] == "waiter"
    finally:
        proc.kill()
        proc.wait()


def test_move_aside_never_deletes(tmp_path):
    a, b = tmp_path / "shard-00001.h5", tmp_path / "shard-00002.h5"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    dest = move_aside([a, b], tmp_path, "made with another recipe")
    assert dest.parent == tmp_path / "stale" and not a.exists() and not b.exists()
    assert (dest / "shard-00001.h5").read_bytes() == b"one"
    assert "made with another recipe" in (dest / "README.txt").read_text()
    assert move_aside([], tmp_path, "nothing") is None


def test_free_space_floor(tmp_path):
    check_free_space(tmp_path, 0.001, "x.min_free_gb")
    with pytest.raises(DiskSpaceError) as e:
        check_free_space(tmp_path, 1e9, "extract.min_free_gb")
    assert str(e.value).startswith(f"{tmp_path}: ") and "extract.min_free_gb" in str(e.value)
    with pytest.raises(DiskSpaceError) as e:
        check_free_space(tmp_path / "not" / "yet", 0.0, "train.min_free_gb", need_bytes=10**18)
    assert "needed" in str(e.value)


@pytest.mark.parametrize("bad", ["../../evil", "a/b/c", "", ".hidden", "x\0y", "a b", 7, None,
                                 "é" * 3, "x" * 201])
def test_unsafe_ids_are_refused(bad):
    with pytest.raises(UnsafeInputError) as e:
        check_safe_id(bad, "ledger.parquet, row 3")
    assert str(e.value).startswith("ledger.parquet, row 3: id ")


def test_safe_ids_pass():
    for ok in ("-M8Fnl5T5r4", "video_0001", "lsmdc.0001-clip"):
        assert check_safe_id(ok, "x") == ok


@pytest.mark.parametrize("rel", ["/etc/passwd", "../../etc/passwd", "data/videos/demo/../../x",
                                 "data/videos/demox/a.mp4", "", None, "data/videos"])
def test_paths_outside_the_allowed_folder_are_refused(tmp_path, rel):
    with pytest.raises(UnsafeInputError):
        resolve_inside(tmp_path, rel, ["data/videos/demo"], "availability.parquet, row 0")


def test_paths_inside_pass(tmp_path):
    got = resolve_inside(tmp_path, "data/videos/demo/ab/abc.mp4", ["data/videos/demo"], "x")
    assert got == tmp_path / "data/videos/demo/ab/abc.mp4"


@pytest.mark.parametrize("err, words", [
    (OSError(errno.ENOSPC, "No space left on device", "data/features/demo/shard-00003.h5.part"),
     "data/features/demo/shard-00003.h5.part: No space left on device; the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied", "data/models/pretrain"),
     "data/models/pretrain: Permission denied; permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "reports/recall/demo.md"),
     "reports/recall/demo.md: Read-only file system; the file system is read-only"),
])
def test_environment_errors_are_one_line_exit_2(caplog, err, words):
    def body():
        raise err
    assert run("stage@x", body) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()


def test_other_os_errors_are_bugs_and_propagate():
    def body():
        raise OSError(errno.EINVAL, "Invalid argument")
    with pytest.raises(OSError):
        run("stage@x", body)
