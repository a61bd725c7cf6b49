"""Stage speech_recall@<ds>: recall of each setting (evaluate.settings and .checkpoints) on the
Sounds-N and Speech-N sets of stage speech@<ds>, beside the paper's Table 4 and chance."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, clip_stage_options, fill_clip_defaults, invoke, run

log = logging.getLogger("stages.speech_recall")


@click.command("speech_recall", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--models", type=PATH, default=Path("data/models"), show_default=True,
              help="pretrain/final.pt (zero-shot) and finetune-<dataset>/final.pt")
@click.option("--speech", type=PATH, help="stage speech@'s folder  [default: data/speech/"
                                          "<dataset>]")
@click.option("--out", type=PATH, default=Path("reports/speech"), show_default=True,
              help="reports folder: <dataset>.{json,md} and <dataset>/details.json")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.analysis.subsets import evaluate_subsets
        from pipeline.config import load_params
        from pipeline.evaluate.recall import setting_checkpoints
        params = load_params(args.params)
        p = params.evaluate
        checkpoints = setting_checkpoints(ds, args.models, p.settings, p.checkpoints)
        evaluate_subsets(ds, args.features, args.manifest, checkpoints,
                         (args.speech or Path("data/speech", ds)) / "subsets.json", args.out,
                         batch=p.batch, device=p.device, allow_missing=p.allow_missing,
                         verify=p.verify, clip_frames=params.finetune.clip_frames)
        log.info("%s: reports in %s/%s.{json,md}", ds, args.out, ds)
        return 0

    def own_errors() -> tuple:
        from pipeline.evaluate.recall import EvaluateError
        from pipeline.features.store import StoreError
        return (EvaluateError, StoreError)

    return run(f"speech_recall@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.speech_recall [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.speech_recall")


if __name__ == "__main__":
    raise SystemExit(main())
