"""Guards that keep finished work safe: one writer per folder, a free-space floor, moving stale
outputs aside instead of deleting them, path-safe ids and paths from tables, file checksums.

Every error here is a UserError: the stage reports it in one line naming the file and exits 2
(stages/common.py)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

LOCK_NAME = ".avl-writer.lock"
STALE_DIR = "stale"
# ids become file and HDF5 group names: letters, digits, '_', '-', '.', not starting with '.'
SAFE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
MAX_ID_LEN = 200


class UserError(RuntimeError):
    """A problem with the inputs, the settings or the machine (not a bug): one line, exit 2."""


class LockError(UserError):
    """Another run holds the writer lock of a folder."""


class DiskSpaceError(UserError):
    """Free space fell below the configured floor."""


class UnsafeInputError(UserError):
    """A table names an id or a path that could escape its folder."""


# --------------------------------------------------------------------------- writer lock


def _holder_text(info: dict) -> str:
    if not info:
        return "another run (no holder information)"
    return (f"{info.get('stage', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('started', '?')})")


def read_holder(folder: Path) -> dict:
    """The holder information written by the run holding (or last holding) `folder`'s lock."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def writer_lock(folder: Path, stage: str, wait_s: float = 0.0,
                poll_s: float = 1.0) -> Iterator[dict]:
    """Holds the one-writer lock of `folder` (created if missing) while the block runs.

    The lock is an advisory flock on `folder/.avl-writer.lock` (on NFS v4 the kernel maps it to
    a POSIX lock the server arbitrates between machines); it is released by the kernel when the
    holding process dies, so a killed run never blocks the next one: the next run finds the old
    holder information, logs that it takes over, and goes on. A live holder makes this wait up
    to `wait_s` seconds, then raises LockError naming it. Yields the holder information."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LockError(f"{path}: cannot open the writer lock ({e.strerror}); is the folder "
                        "writable?") from None
    locked = False
    try:
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                holder = read_holder(folder)
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"{folder} is being written by {_holder_text(holder)}; wait for it to "
                        f"finish (or stop it), then re-run. Lock file: {path}") from None
                if not announced:
                    log.warning("%s is being written by %s; waiting up to %.0f s", folder,
                                _holder_text(holder), wait_s)
                    announced = True
                time.sleep(poll_s)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning("%s: this file system does not support locks (%s); make sure only "
                            "one run writes %s at a time", path, e.strerror, folder)
                break
        previous = read_holder(folder)
        if previous.get("pid") is not None and not previous.get("released"):
            log.warning("%s: taking over from %s, which ended without releasing it (killed?)",
                        folder, _holder_text(previous))
        info = {"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "argv": sys.argv[:8]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield info
        finally:
            with contextlib.suppress(OSError):
                data = json.dumps({**info, "released": datetime.now(timezone.utc)
                                   .isoformat(timespec="seconds")}).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
    finally:
        if locked:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------- free space


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(path: Path, min_gb: float, param: str, need_bytes: int = 0) -> None:
    """Raises DiskSpaceError when the free space at `path`, less `need_bytes`, is below
    `min_gb` GB; `param` names the setting that sets the floor."""
    if min_gb <= 0 and not need_bytes:
        return
    free = free_bytes(path)
    if free - need_bytes < min_gb * 1e9:
        extra = f" (~{need_bytes / 1e9:.2f} GB needed)" if need_bytes else ""
        raise DiskSpaceError(f"{path}: {free / 1e9:.2f} GB free{extra}, below {param} = "
                             f"{min_gb} GB; free space (or lower {param}), then re-run: finished "
                             "work is kept")


# --------------------------------------------------------------------------- moving aside


def move_aside(paths: Iterable[Path], folder: Path, why: str) -> Path | None:
    """Moves `paths` (inside `folder`) into `folder/stale/<UTC time>/` with a README naming
    `why`; never deletes. Returns the stale folder, or None when there was nothing to move."""
    paths = [Path(p) for p in paths]
    if not paths:
        return None
    dest = Path(folder) / STALE_DIR / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    dest.mkdir(parents=True, exist_ok=False)
    (dest / "README.txt").write_text(
        f"Moved aside by {' '.join(sys.argv[:3]) or 'a stage'} on "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}:\n{why}\n"
        "Delete this folder once you no longer need these files.\n")
    for p in paths:
        os.replace(p, dest / p.name)
    log.warning("moved %d file(s) to %s (%s)", len(paths), dest, why)
    return dest


# --------------------------------------------------------------------------- table rows


def check_safe_id(value: object, where: str) -> str:
    """`value` if it is a non-empty id usable as a file / HDF5 group name (letters, digits,
    '_', '-', '.', not starting with '.'), else UnsafeInputError naming `where`."""
    if (not isinstance(value, str) or not value or len(value) > MAX_ID_LEN
            or value.startswith(".") or not set(value) <= SAFE_ID_CHARS):
        raise UnsafeInputError(f"{where}: id {value!r} is not path-safe (letters, digits, "
                               "'_', '-', '.' only, not starting with '.'); refusing the table "
                               "(was it edited by hand?)")
    return value


def resolve_inside(root: Path, rel: object, allowed: Iterable[Path], where: str) -> Path:
    """`root / rel` (absolute, normalised) if `rel` is a relative path that stays inside one of
    `allowed` (folders relative to `root`), else UnsafeInputError. Lexical, no system call, so
    a ledger of a million rows checks in seconds; whether the file is a regular one is checked
    where it is opened (media.check_regular)."""
    return Path(inside_checker(root, allowed)(rel, where))


def inside_checker(root: Path, allowed: Iterable[Path]) -> Callable[[object, str], str]:
    """resolve_inside's check with `root` and `allowed` prepared once, for the rows of a table:
    check(rel, where) -> the absolute, normalised path as a str, or UnsafeInputError
    (issue 16: preparing them and building a Path per row took most of the 19 s
    read_availability spent on 1.24 M rows)."""
    allowed = list(allowed)
    absolute_ok = any(os.path.isabs(a) for a in allowed)
    root = os.path.abspath(root)
    # an absolute path only for own media referenced outside the project (absolute `allowed`)
    bases = [os.path.normpath(os.path.join(root, a)) for a in allowed]

    def check(rel: object, where: str) -> str:
        if not isinstance(rel, str) or not rel or "\0" in rel or (
                os.path.isabs(rel) and not absolute_ok):
            raise UnsafeInputError(f"{where}: path {rel!r} must be relative to the project "
                                   "folder")
        full = os.path.normpath(os.path.join(root, rel))
        for base in bases:
            if full == base or full.startswith(base + os.sep):
                return full
        raise UnsafeInputError(f"{where}: path {rel!r} leads outside "
                               f"{', '.join(str(a) for a in allowed)}; refusing it")
    return check
