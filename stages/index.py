"""Stage index@<ds>: embed a dataset's clips or sliding windows with one checkpoint into a
search index (data/search/<ds>/: vectors, items.parquet, record.json) for `avl search`."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, clip_stage_options, fill_clip_defaults, invoke, run

log = logging.getLogger("stages.index")


@click.command("index", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--models", type=PATH, default=Path("data/models"), show_default=True,
              help="where search.setting zero_shot (pretrain/final.pt) and fine_tuned "
                   "(finetune-<dataset>/final.pt) are; data/text-models for a text model")
@click.option("--out", type=PATH, help="index folder  [default: data/search/<dataset>]")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.search.build import build_index, setting_checkpoint
        params = load_params(args.params)
        p = params.search
        out = args.out or Path("data/search", ds)
        build_index(ds, args.features, args.manifest,
                    setting_checkpoint(p.setting, ds, args.models), out, setting=p.setting,
                    units=p.units, splits=p.splits, window_s=p.window_s, hop_s=p.hop_s,
                    clip_frames=params.finetune.clip_frames,   # the length it was tuned on
                    batch=p.batch, device=p.device, verify=p.verify, ann_kind=p.ann,
                    exact_max=p.exact_max, seed=p.seed, threads=p.threads or None)
        log.info("%s: search index in %s; query it with `avl search --index %s --audio "
                 "FILE`", ds, out, out)
        return 0

    def own_errors() -> tuple:
        from pipeline.features.store import StoreError
        from pipeline.search.ann import AnnError
        from pipeline.search.model import SearchError
        return (SearchError, AnnError, StoreError)

    return run(f"index@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.index [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.index")


if __name__ == "__main__":
    raise SystemExit(main())
