"""Stage download@<ds>: fetch the manifest's videos with yt-dlp on dask; write the ledger."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, dataset_option, invoke, params_option, run

log = logging.getLogger("stages.download")


@click.command("download", help=__doc__, context_settings=CONTEXT)
@dataset_option
@params_option
@click.option("--manifest", type=PATH,
              help="manifest folder (videos.parquet in, availability.parquet out)  "
                   "[default: manifests/<dataset>]")
@click.option("--videos", type=PATH, help="media folder  [default: data/videos/<dataset>]")
@click.option("--ledger", type=PATH,
              help="attempts history (journal)  [default: data/ledger/<dataset>]")
@click.option("--recheck-unavailable", is_flag=True,
              help="also re-try unavailable / needs_auth videos (as the param "
                   "download.recheck_unavailable does)")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)
    ds = args.dataset
    manifest = args.manifest or Path("manifests", ds)

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.data.manifest import read_videos
        from pipeline.download.availability import advice
        from pipeline.download.runner import download
        params = load_params(args.params)
        p = params.download
        media = params.media_dirs(ds, Path("data/videos", ds))[1:]
        if media:   # own media: local files referenced in place, never copied
            p = dataclasses.replace(p, reference_root=str(media[0]))
        s = download(ds, read_videos(manifest / "videos.parquet"), p, params.cluster,
                     args.videos or Path("data/videos", ds), args.ledger or Path("data/ledger", ds),
                     manifest / "availability.parquet", Path.cwd(),
                     recheck=args.recheck_unavailable or p.recheck_unavailable)
        log.info("%s: %s; reasons: %s", ds, s["status"], s["reasons"] or "none")
        if s["reasons"].get("file_invalid"):
            log.warning("%s: %d videos downloaded as files that are not media: %s", ds,
                        s["reasons"]["file_invalid"], advice("file_invalid"))
        if s["attempted"] and s["transient"] / s["attempted"] > p.max_transient_fraction:
            # the reason most of them share decides the advice: network, pacing, this machine
            top, n = max(s["retry_reasons"].items(), key=lambda kv: (kv[1], kv[0]))
            log.error("%d of %d videos tried failed in a way a re-run may fix (more than "
                      "download.max_transient_fraction = %s); most often %s (%d): %s",
                      s["transient"], s["attempted"], p.max_transient_fraction, top, n,
                      advice(top))
            return 1
        return 0

    def own_errors() -> tuple:
        from pipeline.cluster import ClusterError
        from pipeline.download.runner import DownloadError
        return (DownloadError, ClusterError, FileNotFoundError)

    return run(f"download@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.download [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.download")


if __name__ == "__main__":
    raise SystemExit(main())
