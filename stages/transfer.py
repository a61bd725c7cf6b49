"""Stage transfer@<target>: target only (and the cascade) trained on a target dataset, every
thesis Table 5.1 row scored on the source's and the target's eval splits."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, check_dataset, clip_stage_options, fill_clip_defaults, \
    invoke, run

log = logging.getLogger("stages.transfer")


@click.command("transfer", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--source-dataset", metavar="NAME",
              help="source dataset  [default: transfer.targets.<dataset>]")
@click.option("--source-features", type=PATH,
              help="source's feature store  [default: data/features/<source>]")
@click.option("--source-manifest", type=PATH,
              help="source's manifest folder  [default: manifests/<source>]")
@click.option("--models", type=PATH, default=Path("data/models"), show_default=True,
              help="pretrain/final.pt, finetune-<source>/final.pt, finetune-<dataset>/final.pt")
@click.option("--out", type=PATH, help="model folder  [default: data/models/transfer-<dataset>]")
@click.option("--reports", type=PATH, default=Path("reports/transfer"), show_default=True,
              help="reports folder: <dataset>.json and <dataset>.md")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.config import ParamsError, load_params
        from pipeline.learn.transfer import Side, transfer
        params = load_params(args.params)
        p = params.transfer
        source = args.source_dataset or p.targets.get(ds)
        if source is None:
            raise ParamsError(f"{args.params}: transfer.targets has no source for {ds}; add "
                              f"`{ds}: <source>` under transfer.targets or pass --source-dataset")
        check_dataset(source, args.params)
        src = Side(source, args.source_features or Path("data/features", source),
                   args.source_manifest or Path("manifests", source))
        r = transfer(Side(ds, args.features, args.manifest), src, args.models,
                     args.out or Path("data/models", f"transfer-{ds}"), args.reports,
                     params.train, params.finetune, p)
        log.info("%s from %s: %d rows; reports in %s/%s.{json,md}", ds, source,
                 len(r["checkpoints"]) + 1, args.reports, ds)
        return 0

    def own_errors() -> tuple:
        from pipeline.evaluate.recall import EvaluateError
        from pipeline.features.store import StoreError
        from pipeline.learn.train import TrainError
        return (EvaluateError, StoreError, TrainError)

    return run(f"transfer@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.transfer [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.transfer")


if __name__ == "__main__":
    raise SystemExit(main())
