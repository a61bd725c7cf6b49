"""Stage finetune@<ds>: fine-tune the pretrained AVLnet on a dataset's annotated train clips."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.learn.runs import finetune
from pipeline.features.store import StoreError
from pipeline.learn.train import TrainError
from stages.common import clip_stage_parser, parse_clip_stage, run

log = logging.getLogger("stages.finetune")


def main(argv: list[str] | None = None) -> int:
    ap = clip_stage_parser("python -m stages.finetune", __doc__)
    ap.add_argument("--init", type=Path, default=Path("data/models/pretrain/final.pt"),
                    help="pretrained model (ignored with finetune.init: none)")
    ap.add_argument("--out", type=Path, help="default data/models/finetune-<ds>")
    args = parse_clip_stage(ap, argv)
    ds = args.dataset

    def body() -> int:
        params = load_params(args.params)
        p = params.finetune
        s = finetune(ds, args.features, args.manifest,
                     args.init if p.init == "pretrained" else None,
                     args.out or Path("data/models", f"finetune-{ds}"), params.train, p)
        log.info("%s: %d steps, last loss %.4f", ds, s["steps"], s.get("loss", float("nan")))
        return 0

    return run(f"finetune@{ds}", body, (TrainError, StoreError))


if __name__ == "__main__":
    raise SystemExit(main())
