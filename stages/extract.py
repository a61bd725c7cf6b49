"""Stage extract@<ds>: 2D/3D features and log-Mel of every downloaded video into sharded stores."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, dataset_option, invoke, params_option, run

log = logging.getLogger("stages.extract")


@click.command("extract", help=__doc__, context_settings=CONTEXT)
@dataset_option
@params_option
@click.option("--availability", type=PATH,
              help="the download ledger  [default: manifests/<dataset>/availability.parquet]")
@click.option("--videos", type=PATH,
              help="the only folder the ledger's media paths may point into  "
                   "[default: data/videos/<dataset>]")
@click.option("--out", type=PATH, help="feature store folder  [default: data/features/<dataset>]")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)
    ds = args.dataset
    ledger = args.availability or Path("manifests", ds, "availability.parquet")
    videos = args.videos or Path("data/videos", ds)

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.download.ledger import read_availability
        from pipeline.features.extract import extract
        params = load_params(args.params)
        root = Path.cwd()
        # ids path-safe, paths inside the videos folder: checked before any work (LedgerError)
        dirs = params.media_dirs(ds, videos)   # own media: their folder too
        table = read_availability(ledger, root, dirs)
        s = extract(ds, table, args.out or Path("data/features", ds), params.extract,
                    params.cluster, root, videos_dir=dirs, where=str(ledger),
                    demo=ds == "demo" or ds in params.demo_language)
        log.info("%s: %s", ds, s["status"])
        return 0

    # ExtractError, StoreError, ClusterError, LockError, DiskSpaceError, LedgerError are all
    # UserErrors: one line, exit 2
    return run(f"extract@{ds}", body, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.extract [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.extract")


if __name__ == "__main__":
    raise SystemExit(main())
