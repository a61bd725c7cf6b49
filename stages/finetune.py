"""Stage finetune@<ds>: fine-tune the pretrained AVLnet on a dataset's annotated train clips."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, clip_stage_options, fill_clip_defaults, invoke, run

log = logging.getLogger("stages.finetune")


@click.command("finetune", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--init", type=PATH, default=Path("data/models/pretrain/final.pt"),
              show_default=True, help="pretrained model (ignored with finetune.init: none)")
@click.option("--out", type=PATH, help="model folder  [default: data/models/finetune-<dataset>]")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.learn.runs import finetune
        params = load_params(args.params)
        p = params.finetune
        s = finetune(ds, args.features, args.manifest,
                     args.init if p.init == "pretrained" else None,
                     args.out or Path("data/models", f"finetune-{ds}"), params.train, p)
        log.info("%s: %d steps, last loss %.4f", ds, s["steps"], s.get("loss", float("nan")))
        return 0

    def own_errors() -> tuple:
        from pipeline.features.store import StoreError
        from pipeline.learn.train import TrainError
        return (TrainError, StoreError)

    return run(f"finetune@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.finetune [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.finetune")


if __name__ == "__main__":
    raise SystemExit(main())
