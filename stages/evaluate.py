"""Stage evaluate@<ds>: recall tables (both directions, both protocols) for each setting."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.evaluate import EvaluateError, evaluate
from pipeline.store import StoreError
from stages.common import run

log = logging.getLogger("stages.evaluate")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    ap.add_argument("--dataset", required=True, choices=["demo", "youcook2", "msrvtt",
                                                         "crosstask"])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--features", type=Path, help="default data/features/<ds>")
    ap.add_argument("--manifest", type=Path, help="default manifests/<ds>")
    ap.add_argument("--models", type=Path, default=Path("data/models"),
                    help="pretrain/final.pt (zero-shot) and finetune-<ds>/final.pt")
    ap.add_argument("--out", type=Path, default=Path("reports/recall"))
    args = ap.parse_args(argv)
    ds = args.dataset

    def body() -> int:
        params = load_params(args.params)
        p = params.evaluate
        where = {"zero_shot": args.models / "pretrain" / "final.pt",
                 "fine_tuned": args.models / f"finetune-{ds}" / "final.pt"}
        manifest = args.manifest or Path("manifests", ds)
        evaluate(ds, args.features or Path("data/features", ds), manifest,
                 {s: where[s] for s in p.settings}, args.out,
                 availability=manifest / "availability.parquet", videos_root=Path.cwd(),
                 batch=p.batch, examples=p.examples, device=p.device,
                 clip_frames=params.finetune.clip_frames)   # the length it was fine-tuned on
        log.info("%s: reports in %s/%s.{json,md,png,html}", ds, args.out, ds)
        return 0

    return run(f"evaluate@{ds}", body, (EvaluateError, StoreError))


if __name__ == "__main__":
    raise SystemExit(main())
