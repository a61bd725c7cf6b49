"""Stage evaluate_text@<ds>: text retrieval tables (T->V, T+A->V, ... both protocols)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, clip_stage_options, fill_clip_defaults, invoke, run

log = logging.getLogger("stages.evaluate_text")


@click.command("evaluate_text", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--models", type=PATH, default=Path("data/text-models"), show_default=True,
              help="pretrain/final.pt (zero-shot) and finetune-<dataset>/final.pt; "
                   "text.evaluate.checkpoints adds settings, any files")
@click.option("--out", type=PATH, default=Path("reports/text"), show_default=True,
              help="reports folder: <dataset>.{json,md,png,html} and <dataset>/")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.evaluate.recall import setting_checkpoints
        from pipeline.evaluate.text import evaluate_text
        from pipeline.text.words import load_word_vectors
        params = load_params(args.params)
        t = params.text
        p = t.evaluate
        checkpoints = setting_checkpoints(ds, args.models, p.settings, p.checkpoints)
        evaluate_text(ds, args.features, args.manifest, checkpoints, args.out,
                      # each checkpoint's word size is checked against the vectors there
                      load_word_vectors(t.word_vectors, t.cache_dir, expected_dim=None),
                      max_words=t.max_words,
                      availability=args.manifest / "availability.parquet",
                      videos_root=Path.cwd(),
                      videos_dir=params.media_dirs(ds, Path("data/videos", ds)), batch=p.batch,
                      examples=p.examples, device=p.device, allow_missing=p.allow_missing,
                      verify=p.verify, clip_frames=t.finetune.clip_frames)
        log.info("%s: reports in %s/%s.{json,md,png,html}", ds, args.out, ds)
        return 0

    def own_errors() -> tuple:
        from pipeline.evaluate.recall import EvaluateError
        from pipeline.features.store import StoreError
        return (EvaluateError, StoreError)

    return run(f"evaluate_text@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.evaluate_text [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.evaluate_text")


if __name__ == "__main__":
    raise SystemExit(main())
