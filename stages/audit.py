"""Stage audit: manifests/<ds>/ + availability ledger -> reports/availability/ (per dataset and
a summary): what is available per split, why the rest is missing, what changed since last time."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.download.audit import AuditError, audit_all
from pipeline.config import load_params
from stages.common import run

log = logging.getLogger("stages.audit")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.audit", description=__doc__)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--manifests", type=Path, default=Path("manifests"),
                    help="folder of manifests/<ds>/ (videos, clips, availability parquet)")
    ap.add_argument("--out", type=Path, default=Path("reports/availability"))
    args = ap.parse_args(argv)

    def body() -> int:
        # every dataset's manifests and ledger are checked before any report is rewritten
        results = audit_all({ds: args.manifests / ds for ds in load_params(args.params).datasets},
                            args.out)
        for ds, r in results.items():
            for split, c in r["splits"].items():
                p = c["paper"]
                log.info("%s %s: %d videos, %d available, %d with audio; clips %d/%d covered "
                         "(%s)%s", ds, split, c["videos_listed"], c["videos_available"],
                         c["videos_with_audio"], c["clips_covered"], c["clips_listed"],
                         _pct(c["clip_coverage"]),
                         f"; paper {p['count']:,} {p['measure']}" if p else "")
        log.info("reports in %s", args.out)
        return 0

    return run("audit", body, user_errors=(AuditError,))


if __name__ == "__main__":
    raise SystemExit(main())
