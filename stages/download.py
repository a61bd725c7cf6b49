"""Stage download@<ds>: fetch the manifest's videos with yt-dlp on dask; write the ledger."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cluster import ClusterError
from pipeline.config import DATASETS, load_params
from pipeline.download import DownloadError, download
from pipeline.manifest import read_videos
from stages.common import run

log = logging.getLogger("stages.download")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.download", description=__doc__)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--manifest", type=Path, help="default manifests/<ds>")
    ap.add_argument("--videos", type=Path, help="media folder, default data/videos/<ds>")
    ap.add_argument("--ledger", type=Path, help="attempts history, default data/ledger/<ds>")
    ap.add_argument("--recheck-unavailable", action="store_true",
                    help="also re-try unavailable / needs_auth videos (as the param does)")
    args = ap.parse_args(argv)
    ds = args.dataset
    manifest = args.manifest or Path("manifests", ds)

    def body() -> int:
        params = load_params(args.params)
        p = params.download
        s = download(ds, read_videos(manifest / "videos.parquet"), p, params.cluster,
                     args.videos or Path("data/videos", ds), args.ledger or Path("data/ledger", ds),
                     manifest / "availability.parquet", Path.cwd(),
                     recheck=args.recheck_unavailable or p.recheck_unavailable)
        log.info("%s: %s; reasons: %s", ds, s["status"], s["reasons"] or "none")
        if s["tried"] and s["transient"] / s["tried"] > p.max_transient_fraction:
            log.error("%d of %d tried videos failed transiently or were throttled (more than "
                      "download.max_transient_fraction = %s): check the network, cookies and "
                      "pacing, then re-run (it resumes)", s["transient"], s["tried"],
                      p.max_transient_fraction)
            return 1
        return 0

    return run(f"download@{ds}", body, (DownloadError, ClusterError, FileNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
