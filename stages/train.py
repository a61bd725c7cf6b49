"""Stage train: pretrain AVLnet on random 10 s windows of a dataset's feature store."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.train")


@click.command("train", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--features", type=PATH,
              help="feature store folder  [default: data/features/<train.dataset>]")
@click.option("--manifest", type=PATH, help="manifest folder  [default: manifests/<train.dataset>]")
@click.option("--out", type=PATH, default=Path("data/models/pretrain"), show_default=True,
              help="model folder: checkpoints (a killed run resumes from the last), final.pt")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.learn.runs import pretrain
        p = load_params(args.params).train
        ds = p.dataset
        s = pretrain(ds, args.features or Path("data/features", ds),
                     args.manifest or Path("manifests", ds), args.out, p)
        log.info("%s: %d steps, last loss %.4f -> %s", ds, s["steps"], s.get("loss", float("nan")),
                 args.out / "final.pt")
        return 0

    def own_errors() -> tuple:
        from pipeline.features.store import StoreError
        from pipeline.learn.train import TrainError
        return (TrainError, StoreError)

    return run("train", body, own_errors)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.train [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.train")


if __name__ == "__main__":
    raise SystemExit(main())
