"""Stage captions@<ds>: a dataset's ASR captions (caption.json) -> a Parquet caption store."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, dataset_option, invoke, params_option, run

log = logging.getLogger("stages.captions")


@click.command("captions", help=__doc__, context_settings=CONTEXT)
@dataset_option
@params_option
@click.option("--source", type=PATH, help="caption.json  [default: data/sources/<dataset>/"
                                          "caption.json]")
@click.option("--manifest", type=PATH, help="manifest folder (its videos and their durations)  "
                                            "[default: manifests/<dataset>]")
@click.option("--out", type=PATH, help="caption store folder  [default: data/captions/<dataset>]")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)
    ds = args.dataset

    def body() -> int:
        from pipeline.data.manifest import read_videos
        from pipeline.text.captions import ingest_captions
        manifest = args.manifest or Path("manifests", ds)
        videos = {r["video_id"]: r["duration_s"] for r in
                  read_videos(manifest / "videos.parquet").to_pylist()}
        report = ingest_captions(args.source or Path("data/sources", ds, "caption.json"),
                                 args.out or Path("data/captions", ds), videos=videos)
        skipped = {k: v for k, v in report["skipped"].items() if v}
        log.info("%s: %d captions of %d videos kept; skipped: %s; end clipped to the video: %d",
                 ds, report["counts"]["captions"], report["counts"]["videos"], skipped or "none",
                 report["counts"].get("end_clipped", 0))
        return 0

    return run(f"captions@{ds}", body, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.captions [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.captions")


if __name__ == "__main__":
    raise SystemExit(main())
