"""Stage download@<ds>: fetch the manifest's videos with yt-dlp on dask; write the ledger."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.download.availability import advice
from pipeline.cluster import ClusterError
from pipeline.config import DATASETS, load_params
from pipeline.download.runner import DownloadError, download
from pipeline.data.manifest import read_videos
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

    return run(f"download@{ds}", body, (DownloadError, ClusterError, FileNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
