"""Stage train_text: pretrain a text model (text.train.model.arch) on ASR caption clips."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.train_text")


@click.command("train_text", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--features", type=PATH,
              help="feature store folder  [default: data/features/<text.train.dataset>]")
@click.option("--manifest", type=PATH,
              help="manifest folder  [default: manifests/<text.train.dataset>]")
@click.option("--captions", type=PATH,
              help="caption store (stage captions@)  [default: data/captions/<dataset>]")
@click.option("--out", type=PATH, default=Path("data/text-models/pretrain"), show_default=True,
              help="model folder: checkpoints (a killed run resumes from the last), final.pt")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.learn.runs import pretrain_text
        from pipeline.text.words import load_word_vectors
        params = load_params(args.params)
        t = params.text
        ds = t.train.dataset
        params.kind(ds)                      # configured in `datasets` (ParamsError if not)
        words = load_word_vectors(t.word_vectors, t.cache_dir, t.train.model.word_dim)
        s = pretrain_text(ds, args.features or Path("data/features", ds),
                          args.manifest or Path("manifests", ds),
                          args.captions or Path("data/captions", ds), words, args.out,
                          t.train, t.max_words)
        log.info("%s: %d steps, last loss %.4f -> %s", ds, s["steps"], s.get("loss", float("nan")),
                 args.out / "final.pt")
        return 0

    def own_errors() -> tuple:
        from pipeline.features.store import StoreError
        from pipeline.learn.train import TrainError
        return (TrainError, StoreError)

    return run("train_text", body, own_errors)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.train_text [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.train_text")


if __name__ == "__main__":
    raise SystemExit(main())
