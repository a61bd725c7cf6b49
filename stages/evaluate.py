"""Stage evaluate@<ds>: recall tables (both directions, both protocols) for each setting."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, clip_stage_options, fill_clip_defaults, invoke, run

log = logging.getLogger("stages.evaluate")


@click.command("evaluate", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--models", type=PATH, default=Path("data/models"), show_default=True,
              help="pretrain/final.pt (zero-shot) and finetune-<dataset>/final.pt; "
                   "evaluate.checkpoints adds settings, any files")
@click.option("--out", type=PATH, default=Path("reports/recall"), show_default=True,
              help="reports folder: <dataset>.{json,md,png,html} and <dataset>/")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.evaluate.recall import evaluate, setting_checkpoints
        params = load_params(args.params)
        p = params.evaluate
        checkpoints = setting_checkpoints(ds, args.models, p.settings, p.checkpoints)
        evaluate(ds, args.features, args.manifest, checkpoints, args.out,
                 availability=args.manifest / "availability.parquet", videos_root=Path.cwd(),
                 videos_dir=params.media_dirs(ds, Path("data/videos", ds)), batch=p.batch, examples=p.examples,
                 device=p.device, allow_missing=p.allow_missing, verify=p.verify,
                 clip_frames=params.finetune.clip_frames)   # the length it was fine-tuned on
        log.info("%s: reports in %s/%s.{json,md,png,html}", ds, args.out, ds)
        return 0

    def own_errors() -> tuple:
        from pipeline.evaluate.recall import EvaluateError
        from pipeline.features.store import StoreError
        return (EvaluateError, StoreError)

    return run(f"evaluate@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.evaluate [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.evaluate")


if __name__ == "__main__":
    raise SystemExit(main())
