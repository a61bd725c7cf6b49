"""Stage images@<set>: fine-tune a 2D-only AVLnet on image + spoken caption pairs (Places
Audio Captions JSON or a CSV list; --demo generates the demo image set first)."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.images")


@click.command("images", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--source", "sources", multiple=True, metavar="SPLIT=FILE",
              help="a manifest and its split (train or val): .json = Places Audio Captions, "
                   "else a CSV image,audio[,split]; repeatable")
@click.option("--demo", type=PATH, help="generate the demo image set into this folder and "
                                        "use it (instead of --source)")
@click.option("--out", type=PATH, required=True, help="run folder (pairs, cache, models)")
@click.option("--report", type=PATH, help="report path without suffix: writes REPORT.json "
                                          "(the metrics, for `dvc metrics`) and REPORT.md")
@click.option("--features", type=PATH, help="train.dataset's feature store, for images.init "
                                            "pretrain-2d  [default: data/features/<train."
                                            "dataset>]")
@click.option("--manifest", type=PATH, help="train.dataset's manifest folder, for images.init "
                                            "pretrain-2d  [default: manifests/<train.dataset>]")
def cli(params: Path, sources: tuple[str, ...], demo: Path | None, out: Path,
        report: Path | None, features: Path | None, manifest: Path | None) -> int:
    def body() -> int:
        from pipeline.config import load_params
        from pipeline.images.run import run_images
        full = load_params(params)
        p, ds = full.images, full.train.dataset
        pairs = []
        if demo is not None:
            from pipeline.images.demo import generate
            pairs = [(path, split) for split, path in generate(p.demo, demo).items()]
        for s in sources:
            split, sep, file = s.partition("=")
            if not sep or not file:
                raise click.BadParameter(f"{s!r}: expected SPLIT=FILE", param_hint="--source")
            pairs.append((Path(file), split))
        if not pairs:
            raise click.UsageError("give --source SPLIT=FILE (repeatable) or --demo FOLDER")
        run_images(pairs, out, p, report, full.train,
                   (features or Path("data/features", ds), manifest or Path("manifests", ds)))
        return 0

    def own_errors() -> tuple:
        from pipeline.data.demo import DemoError
        from pipeline.features.weights import WeightsError
        from pipeline.learn.train import TrainError
        from pipeline.features.store import StoreError
        from pipeline.images.manifest import ManifestError
        return (DemoError, WeightsError, TrainError, StoreError, ManifestError)

    return run("images", body, own_errors)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.images [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.images")


if __name__ == "__main__":
    raise SystemExit(main())
