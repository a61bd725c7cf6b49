"""Stage segment@<ds>: clips from the speech in a custom dataset's media (silero-vad segments
merged/cut to min_s..max_s), drawn into video-disjoint train/val/test splits -> the dataset's
annotations CSV (manifest.<ds>.annotations), with its provenance JSON beside it."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, dataset_option, invoke, params_option, run

log = logging.getLogger("stages.segment")


@click.command("segment", help=__doc__, context_settings=CONTEXT)
@dataset_option
@params_option
@click.option("--media", type=PATH, help="folder of the media files  [default: the dataset's "
                                         "manifest.<ds>.media inside data/sources/<ds>]")
@click.option("--out", type=PATH, help="the annotations CSV to write  [default: data/sources/"
                                       "<ds>/segments.csv]")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)
    ds = args.dataset

    def body() -> int:
        from pipeline.analysis.speech import Detector
        from pipeline.config import MEDIA_EXTENSIONS, load_params
        from pipeline.data.segment import Clipping, Draw, SegmentError, build
        params = load_params(args.params)
        p = params.segment
        own = params.manifest.of(ds) if params.kind(ds) == "custom" else None
        media = args.media
        if media is None:
            if own is None or own.media is None:
                raise SegmentError(f"{ds}: not a custom dataset with a media folder; pass "
                                   "--media")
            media = params.media_dirs(ds, Path("data/videos", ds))[-1]
        d = Detector(threshold=p.threshold, min_speech_ms=p.min_speech_ms,
                     min_silence_ms=p.min_silence_ms, speech_pad_ms=p.speech_pad_ms)
        r = Clipping(min_s=p.min_s, max_s=p.max_s, merge_gap_s=p.merge_gap_s,
                     extend_short=p.extend_short)
        dr = Draw(val_fraction=p.val_fraction, test_fraction=p.test_fraction,
                  n_train=p.n_train, n_val=p.n_val, n_test=p.n_test, seed=p.seed)
        build(media, args.out or Path("data/sources", ds, "segments.csv"), d, r, dr,
              extensions=own.extensions if own is not None else MEDIA_EXTENSIONS,
              max_failed_fraction=p.max_failed_fraction, label=f"segment@{ds}")
        return 0

    return run(f"segment@{ds}", body, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.segment [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.segment")


if __name__ == "__main__":
    raise SystemExit(main())
