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
@click.option("--init", type=PATH, default=Path("data/text-models/pretrain/final.pt"),
              show_default=True, help="stage train_text's model: the start with "
                                      "text.finetune.init pretrained")
@click.option("--init-av", type=PATH, default=Path("data/models/pretrain/final.pt"),
              show_default=True, help="stage train's audio-video AVLnet: the start with "
                                      "text.finetune.init audio_video (a fresh text branch)")
@click.option("--out", type=PATH,
              help="the model folder  [default: data/text-models/finetune-<dataset>]")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.learn.runs import finetune
        from pipeline.text.words import load_word_vectors
        t = load_params(args.params).text
        words = load_word_vectors(t.word_vectors, t.cache_dir, t.train.model.word_dim)
        s = finetune(ds, args.features, args.manifest,
                     {"none": None, "pretrained": args.init,
                      "audio_video": args.init_av}[t.finetune.init],
                     args.out or Path("data/text-models", f"finetune-{ds}"), t.train,
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
