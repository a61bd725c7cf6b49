"""Stage train: pretrain AVLnet on random 10 s windows of a dataset's feature store."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.learn.runs import pretrain
from pipeline.features.store import StoreError
from pipeline.learn.train import TrainError
from stages.common import run

log = logging.getLogger("stages.train")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--features", type=Path, help="default data/features/<train.dataset>")
    ap.add_argument("--manifest", type=Path, help="default manifests/<train.dataset>")
    ap.add_argument("--out", type=Path, default=Path("data/models/pretrain"))
    args = ap.parse_args(argv)

    def body() -> int:
        p = load_params(args.params).train
        ds = p.dataset
        s = pretrain(ds, args.features or Path("data/features", ds),
                     args.manifest or Path("manifests", ds), args.out, p)
        log.info("%s: %d steps, last loss %.4f -> %s", ds, s["steps"], s.get("loss", float("nan")),
                 args.out / "final.pt")
        return 0

    return run("train", body, (TrainError, StoreError))


if __name__ == "__main__":
    raise SystemExit(main())
