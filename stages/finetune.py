"""Stage finetune@<ds>: fine-tune the pretrained AVLnet on a dataset's annotated train clips."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.runs import finetune
from pipeline.store import StoreError
from pipeline.train import TrainError
from stages.common import run

log = logging.getLogger("stages.finetune")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.finetune", description=__doc__)
    ap.add_argument("--dataset", required=True, choices=["demo", "youcook2", "msrvtt",
                                                         "crosstask"])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--features", type=Path, help="default data/features/<ds>")
    ap.add_argument("--manifest", type=Path, help="default manifests/<ds>")
    ap.add_argument("--init", type=Path, default=Path("data/models/pretrain/final.pt"),
                    help="pretrained model (ignored with finetune.init: none)")
    ap.add_argument("--out", type=Path, help="default data/models/finetune-<ds>")
    args = ap.parse_args(argv)
    ds = args.dataset

    def body() -> int:
        params = load_params(args.params)
        p = params.finetune
        s = finetune(ds, args.features or Path("data/features", ds),
                     args.manifest or Path("manifests", ds),
                     args.init if p.init == "pretrained" else None,
                     args.out or Path("data/models", f"finetune-{ds}"), params.train, p)
        log.info("%s: %d steps, last loss %.4f", ds, s["steps"], s.get("loss", float("nan")))
        return 0

    return run(f"finetune@{ds}", body, (TrainError, StoreError))


if __name__ == "__main__":
    raise SystemExit(main())
