"""Stage extract@<ds>: 2D/3D features and log-Mel of every downloaded video into sharded stores."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import DATASETS, load_params
from pipeline.features.extract import extract
from pipeline.download.ledger import read_availability
from stages.common import run

log = logging.getLogger("stages.extract")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.extract", description=__doc__)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--availability", type=Path,
                    help="the download ledger, default manifests/<ds>/availability.parquet")
    ap.add_argument("--videos", type=Path,
                    help="the only folder the ledger's media paths may point into, default "
                         "data/videos/<ds>")
    ap.add_argument("--out", type=Path, help="feature store folder, default data/features/<ds>")
    args = ap.parse_args(argv)
    ds = args.dataset
    ledger = args.availability or Path("manifests", ds, "availability.parquet")
    videos = args.videos or Path("data/videos", ds)

    def body() -> int:
        params = load_params(args.params)
        root = Path.cwd()
        # ids path-safe, paths inside the videos folder: checked before any work (LedgerError)
        table = read_availability(ledger, root, videos)
        s = extract(ds, table, args.out or Path("data/features", ds), params.extract,
                    params.cluster, root, videos_dir=videos, where=str(ledger))
        log.info("%s: %s", ds, s["status"])
        return 0

    # ExtractError, StoreError, ClusterError, LockError, DiskSpaceError, LedgerError are all
    # UserErrors: one line, exit 2
    return run(f"extract@{ds}", body)


if __name__ == "__main__":
    raise SystemExit(main())
