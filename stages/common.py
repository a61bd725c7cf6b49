"""Shared stage plumbing: the command-line options the stages share (click), one logging
set-up, and configuration errors as clean exits. Light on purpose: `--help` of any stage (and of
`avl`) imports only this, click and pipeline.config; the stages import their heavy modules (torch,
dask, pyarrow, h5py) inside their bodies."""
from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import click

log = logging.getLogger("stages")

# options of paths: given as text, handed to the stage as pathlib.Path
PATH = click.Path(path_type=Path)
# -h as well as --help (as argparse had); help wrapped to at most 100 columns
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def shared_user_errors() -> tuple[type[Exception], ...]:
    """Errors in the inputs or settings, shared by all stages: reported in one line, exit 2;
    anything else is a bug. Imported when needed (pipeline.data.manifest loads pyarrow)."""
    from pipeline.config import ParamsError
    from pipeline.data.manifest import ManifestError
    from pipeline.data.sources import SourceError
    from pipeline.safety import UserError
    return (ParamsError, ManifestError, SourceError, UserError)


def setup_logging(stage: str) -> None:
    """Logs to stderr with time and stage name; level from AVL_LOG_LEVEL (default INFO)."""
    level = os.environ.get("AVL_LOG_LEVEL", "INFO").upper()
    # no force=True: a host that configured logging already (pytest, a notebook) keeps it
    logging.basicConfig(level=level, stream=sys.stderr, datefmt="%H:%M:%S",
                        format=f"%(asctime)s {stage} %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def run(stage: str, body: Callable[[], int],
        user_errors: Sequence[type[Exception]] | Callable[[], Sequence[type[Exception]]] = (),
        *, dataset: str | None = None, params: Path | None = None) -> int:
    """Runs a stage body after logging set-up; user errors (the shared ones plus the stage's
    own `user_errors`, a tuple or a function returning one so that the heavy modules defining
    them load only when needed) become one clear line and exit 2. With `dataset`, first checks
    that params file `params` configures a dataset of that name."""
    setup_logging(stage)
    try:
        if dataset is not None:
            check_dataset(dataset, params if params is not None else Path("params.yaml"))
        return body()
    except Exception as e:
        # the shared errors first: resolving the stage's own may import torch
        if isinstance(e, shared_user_errors()) or isinstance(
                e, tuple(user_errors() if callable(user_errors) else user_errors)):
            log.error("%s failed: %s", stage, e)
            return 2
        # the machine, not the code: a full disk, a read-only or unreadable file. One line that
        # names the file; finished outputs are written atomically, so nothing done is lost
        if isinstance(e, OSError) and e.errno in OS_ERRNOS:
            log.error("%s failed: %s", stage, describe_os_error(e))
            return 2
        raise


def check_dataset(name: str, params: Path) -> None:
    """ParamsError unless params file `params` lists a dataset called `name` in `datasets`
    (any name: custom datasets take their own); the message lists the configured ones."""
    from pipeline.config import ParamsError, load_params
    configured = load_params(params).datasets
    if name not in configured:
        raise ParamsError(f"{params}: `datasets` has no dataset named {name!r} (configured: "
                          f"{', '.join(configured) or 'none'}); pass one of those to --dataset, "
                          f"or add `{name}: <kind>` to `datasets`")


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


def params_option(f: Callable) -> Callable:
    """--params: the params file, as every stage has."""
    return click.option("--params", type=PATH, default=Path("params.yaml"), show_default=True,
                        help="params file with the settings of every stage")(f)


def dataset_option(f: Callable) -> Callable:
    """--dataset NAME: a name from params `datasets`, checked when the stage runs (run())."""
    return click.option("--dataset", required=True, metavar="NAME",
                        help="dataset to process: a name from params.yaml `datasets` "
                             "(e.g. demo)")(f)


def clip_stage_options(f: Callable) -> Callable:
    """The options the per-dataset clip stages (finetune@, evaluate@) share: --dataset,
    --params, --features, --manifest; fill_clip_defaults gives the defaults."""
    f = click.option("--manifest", type=PATH,
                     help="manifest folder  [default: manifests/<dataset>]")(f)
    f = click.option("--features", type=PATH,
                     help="feature store folder  [default: data/features/<dataset>]")(f)
    return dataset_option(params_option(f))


def fill_clip_defaults(args: SimpleNamespace) -> SimpleNamespace:
    """Fills --features and --manifest from --dataset when not given."""
    args.features = args.features or Path("data/features", args.dataset)
    args.manifest = args.manifest or Path("manifests", args.dataset)
    return args


def invoke(command: click.Command, argv: Sequence[str] | None, prog: str) -> int:
    """Runs click `command` on `argv` (default sys.argv[1:]) as program `prog` and returns its
    exit code instead of exiting: the stage's own (0, 1, 2), 0 for --help, 2 for a usage
    error (printed as click prints it), 130 when interrupted."""
    try:
        rc = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=prog,
                          standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:   # Ctrl-C (KeyboardInterrupt) or end of input
        click.echo("interrupted", err=True)
        return 130
    return rc if isinstance(rc, int) else 0
