"""Stage extract@<ds>: 2D/3D features and log-Mel of every downloaded video into sharded stores."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.cluster import ClusterError
from pipeline.config import DATASETS, load_params
from pipeline.extract import ExtractError, extract
from stages.common import run

log = logging.getLogger("stages.extract")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.extract", description=__doc__)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--availability", type=Path,
                    help="the download ledger, default manifests/<ds>/availability.parquet")
    ap.add_argument("--out", type=Path, help="feature store folder, default data/features/<ds>")
    args = ap.parse_args(argv)
    ds = args.dataset
    ledger = args.availability or Path("manifests", ds, "availability.parquet")

    def body() -> int:
        params = load_params(args.params)
        if not ledger.is_file():
            raise ExtractError(f"{ledger} not found: run `dvc repro download@{ds}` first")
        s = extract(ds, pq.read_table(ledger), args.out or Path("data/features", ds),
                    params.extract, params.cluster, Path.cwd())
        log.info("%s: %s", ds, s["status"])
        return 0

    return run(f"extract@{ds}", body, (ExtractError, ClusterError))


if __name__ == "__main__":
    raise SystemExit(main())
