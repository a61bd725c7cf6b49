"""`avl search`: query a search index (stage index@<ds>) by voice, an annotated clip's audio, or
text (text models), without transcribing: prints the ranked segments; optionally writes them
as JSON and as a self-contained HTML page (query and results with frames and audio)."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.search")


@click.command("search", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--index", "index_dir", type=PATH, required=True,
              help="index folder written by stage index@<ds>, e.g. data/search/demo")
@click.option("--audio", type=PATH, help="spoken query: wav, mp3, or a video's sound track "
                                         "(any rate and channels; resampled to 16 kHz mono)")
@click.option("--clip", "clip_id", metavar="CLIP_ID",
              help="query with an annotated clip's audio from the feature store")
@click.option("--text", help="typed query (an index built with a text model only)")
@click.option("--top", type=click.IntRange(1, 100_000), default=10, show_default=True,
              help="results shown")
@click.option("--html", "html_out", type=PATH, help="write the results page here")
@click.option("--json", "json_out", type=PATH, help="write the results as JSON here")
@click.option("--checkpoint", type=PATH,
              help="model file  [default: the index's; must be the very file it was built "
                   "with]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu",
              show_default=True, help="where the query is embedded")
def cli(index_dir: Path, audio: Path | None, clip_id: str | None, text: str | None, top: int,
        html_out: Path | None, json_out: Path | None, checkpoint: Path | None, device: str,
        params: Path) -> int:
    given = [n for n, v in (("--audio", audio), ("--clip", clip_id), ("--text", text))
             if v is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one query: --audio FILE, --clip CLIP_ID or "
                               f"--text '...' (got {', '.join(given) or 'none'})")

    def body() -> int:
        from pipeline.search import query as q
        index = q.open_index(index_dir)
        mf = q.checked_model(index, checkpoint, device)
        if audio is not None:
            from pipeline.config import load_params
            query = q.file_query(index, mf, audio, load_params(params).search.query_min_s)
        elif clip_id is not None:
            query = q.clip_query(index, mf, clip_id)
        else:
            from pipeline.config import load_params
            from pipeline.text.words import load_word_vectors
            t = load_params(params).text
            words = load_word_vectors(t.word_vectors, t.cache_dir, expected_dim=None)
            query = q.text_query(index, mf, text, words, t.max_words)
        results = q.search(index, query, top)
        click.echo(f"query: {query.label} ({index.record['n_items']} {index.record['units']} "
                   f"of {index.dataset})")
        click.echo(q.format_table(results))
        if json_out is not None:
            from pipeline.data.manifest import write_json_atomic
            write_json_atomic(q.result_json(index, query, results), json_out)
            log.info("results in %s", json_out)
        if html_out is not None:
            _write_page(index, query, results, html_out, params)
        return 0

    def own_errors() -> tuple:
        from pipeline.features.store import StoreError
        from pipeline.search.ann import AnnError
        from pipeline.search.model import SearchError
        return (SearchError, AnnError, StoreError)

    return run("search", body, own_errors)


def _write_page(index, query, results, out: Path, params: Path) -> None:
    """The results page, media from the ledger beside the index's manifest (paths checked to
    stay in the dataset's media folders when params configures the dataset)."""
    import os
    from pipeline.config import load_params
    from pipeline.search.page import load_media, search_page, section
    ds = index.dataset
    dirs = [Path("data/videos", ds)]
    if params.is_file():
        p = load_params(params)
        if ds in p.datasets:
            dirs = p.media_dirs(ds, dirs[0])
    media = load_media(index, Path.cwd(), dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(search_page(index, [section(query, results, media)]))
    os.replace(tmp, out)
    log.info("results page in %s", out)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.search [options]` (`avl search`): the exit code."""
    return invoke(cli, argv, "python -m stages.search")


if __name__ == "__main__":
    raise SystemExit(main())
