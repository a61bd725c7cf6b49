"""Stage finetune_text@<ds>: fine-tune a text model on a dataset's annotated clips and captions."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, clip_stage_options, fill_clip_defaults, invoke, run

log = logging.getLogger("stages.finetune_text")


@click.command("finetune_text", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--init", type=PATH, default=Path("data/models/pretrain-text/final.pt"),
              show_default=True, help="pretrained model: stage train_text's (text.finetune.init "
                                      "pretrained) or stage train's audio-video AVLnet "
                                      "(audio_video); ignored with none")
@click.option("--out", type=PATH,
              help="the model folder  [default: data/models/finetune-text-<dataset>]")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.learn.runs import finetune
        from pipeline.text.words import load_word_vectors
        t = load_params(args.params).text
        words = load_word_vectors(t.word_vectors, t.cache_dir)
        s = finetune(ds, args.features, args.manifest,
                     None if t.finetune.init == "none" else args.init,
                     args.out or Path("data/models", f"finetune-text-{ds}"), t.train,
                     t.finetune, words, t.max_words)
        log.info("%s: %d steps, last loss %.4f", ds, s["steps"], s.get("loss", float("nan")))
        return 0

    def own_errors() -> tuple:
        from pipeline.features.store import StoreError
        from pipeline.learn.train import TrainError
        return (TrainError, StoreError)

    return run(f"finetune_text@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.finetune_text [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.finetune_text")


if __name__ == "__main__":
    raise SystemExit(main())
