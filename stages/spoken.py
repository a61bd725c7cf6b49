"""Stage spoken@<ds>: speak each concept name with espeak-ng (a voice the demo does not use),
search the index, report how often the rank-1 clip is of that concept (reports/search/<ds>.*)."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from stages.common import CONTEXT, PATH, dataset_option, invoke, params_option, run

log = logging.getLogger("stages.spoken")


@click.command("spoken", help=__doc__, context_settings=CONTEXT)
@dataset_option
@params_option
@click.option("--index", "index_dir", type=PATH,
              help="index folder  [default: data/search/<dataset>]")
@click.option("--out", type=PATH, default=Path("reports/search"), show_default=True,
              help="reports folder: <dataset>.{json,md,html}")
def cli(dataset: str, params: Path, index_dir: Path | None, out: Path) -> int:
    def body() -> int:
        from pipeline.config import load_params
        from pipeline.data.demo import CONCEPTS
        from pipeline.search.page import load_media
        from pipeline.search.query import open_index
        from pipeline.search.spoken import spoken_check
        pp = load_params(params)
        p = pp.search
        folder = index_dir or Path("data/search", dataset)
        words = list(p.words) or [c.name for c in CONCEPTS[:pp.demo.n_concepts]]
        media = load_media(open_index(folder), Path.cwd(),
                           pp.media_dirs(dataset, Path("data/videos", dataset)))
        s = spoken_check(folder, words, out, voice=p.voice, speed=p.speed, top=p.top,
                         device=p.device, media=media, min_s=p.query_min_s)
        log.info("%s: %d of %d spoken concepts at rank 1; reports in %s/%s.{json,md,html}",
                 dataset, s["hits"], s["n_words"], out, dataset)
        return 0

    def own_errors() -> tuple:
        from pipeline.features.store import StoreError
        from pipeline.search.ann import AnnError
        from pipeline.search.model import SearchError
        return (SearchError, AnnError, StoreError)

    return run(f"spoken@{dataset}", body, own_errors, dataset=dataset, params=params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.spoken [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.spoken")


if __name__ == "__main__":
    raise SystemExit(main())
