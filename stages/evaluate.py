"""Stage evaluate@<ds>: recall tables (both directions, both protocols) for each setting."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.evaluate.recall import EvaluateError, evaluate
from pipeline.features.store import StoreError
from stages.common import clip_stage_parser, parse_clip_stage, run

log = logging.getLogger("stages.evaluate")


def main(argv: list[str] | None = None) -> int:
    ap = clip_stage_parser("python -m stages.evaluate", __doc__)
    ap.add_argument("--models", type=Path, default=Path("data/models"),
                    help="pretrain/final.pt (zero-shot) and finetune-<ds>/final.pt")
    ap.add_argument("--out", type=Path, default=Path("reports/recall"))
    args = parse_clip_stage(ap, argv)
    ds = args.dataset

    def body() -> int:
        params = load_params(args.params)
        p = params.evaluate
        where = {"zero_shot": args.models / "pretrain" / "final.pt",
                 "fine_tuned": args.models / f"finetune-{ds}" / "final.pt"}
        evaluate(ds, args.features, args.manifest, {s: where[s] for s in p.settings}, args.out,
                 availability=args.manifest / "availability.parquet", videos_root=Path.cwd(),
                 videos_dir=Path("data/videos", ds), batch=p.batch, examples=p.examples,
                 device=p.device, allow_missing=p.allow_missing, verify=p.verify,
                 clip_frames=params.finetune.clip_frames)   # the length it was fine-tuned on
        log.info("%s: reports in %s/%s.{json,md,png,html}", ds, args.out, ds)
        return 0

    return run(f"evaluate@{ds}", body, (EvaluateError, StoreError))


if __name__ == "__main__":
    raise SystemExit(main())
