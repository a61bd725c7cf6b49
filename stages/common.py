"""Shared stage plumbing: one logging set-up, and configuration errors as clean exits."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from pipeline.config import ParamsError
from pipeline.manifest import ManifestError
from pipeline.sources import SourceError

log = logging.getLogger("stages")

# errors in the inputs or settings: reported in one line, exit 2; anything else is a bug
USER_ERRORS = (ParamsError, ManifestError, SourceError)


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
