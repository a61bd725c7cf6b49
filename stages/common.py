"""Shared stage plumbing: one logging set-up, and configuration errors as clean exits."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from pipeline.config import ParamsError
from pipeline.data.manifest import ManifestError
from pipeline.safety import UserError
from pipeline.data.sources import SourceError

log = logging.getLogger("stages")

# errors in the inputs or settings: reported in one line, exit 2; anything else is a bug
USER_ERRORS = (ParamsError, ManifestError, SourceError, UserError)


def setup_logging(stage: str) -> None:
    """Logs to stderr with time and stage name; level from AVL_LOG_LEVEL (default INFO)."""
    level = os.environ.get("AVL_LOG_LEVEL", "INFO").upper()
    # no force=True: a host that configured logging already (pytest, a notebook) keeps it
    logging.basicConfig(level=level, stream=sys.stderr, datefmt="%H:%M:%S",
                        format=f"%(asctime)s {stage} %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def run(stage: str, body: Callable[[], int],
        user_errors: tuple[type[Exception], ...] = ()) -> int:
    """Runs a stage body after logging set-up; user errors (the shared ones plus the stage's
    own `user_errors`) become one clear line and exit 2."""
    setup_logging(stage)
    try:
        return body()
    except USER_ERRORS + user_errors as e:
        log.error("%s failed: %s", stage, e)
        return 2
    except OSError as e:
        # the machine, not the code: a full disk, a read-only or unreadable file. One line that
        # names the file; finished outputs are written atomically, so nothing done is lost
        if e.errno not in OS_ERRNOS:
            raise
        log.error("%s failed: %s", stage, describe_os_error(e))
        return 2


# errno values that mean the environment refused (not a bug): reported in one line, exit 2
OS_ERRNOS = {errno.ENOSPC: "the disk is full: free space, then re-run (finished work is kept)",
             errno.EDQUOT: "the disk quota is exceeded: free space, then re-run",
             errno.EACCES: "permission denied: check the owner and mode of the file or folder",
             errno.EPERM: "operation not permitted: check the owner and mode",
             errno.EROFS: "the file system is read-only: point the stage at a writable folder",
             errno.EIO: "an I/O error: check the disk (dmesg), then re-run"}


def describe_os_error(e: OSError) -> str:
    """One line: the file(s) named by `e`, what happened and what to do."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    hint = OS_ERRNOS.get(e.errno, e.strerror or str(e))
    return f"{where or 'a file'}: {e.strerror or type(e).__name__}; {hint}"


def clip_stage_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments the per-dataset clip stages (finetune@, evaluate@) share: --dataset,
    --params, --features, --manifest; parse with parse_clip_stage for the defaults."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--dataset", required=True, choices=["demo", "youcook2", "msrvtt",
                                                         "crosstask"])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--features", type=Path, help="default data/features/<ds>")
    ap.add_argument("--manifest", type=Path, help="default manifests/<ds>")
    return ap


def parse_clip_stage(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parses, filling --features and --manifest from --dataset when not given."""
    args = ap.parse_args(argv)
    args.features = args.features or Path("data/features", args.dataset)
    args.manifest = args.manifest or Path("manifests", args.dataset)
    return args
