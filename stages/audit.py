"""Stage audit: manifests/<ds>/ + availability ledger -> reports/availability/ (per dataset and
a summary): what is available per split, why the rest is missing, what changed since last time."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.audit")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


@click.command("audit", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--manifests", type=PATH, default=Path("manifests"), show_default=True,
              help="folder of manifests/<dataset>/ (videos, clips, availability parquet)")
@click.option("--out", type=PATH, default=Path("reports/availability"), show_default=True,
              help="reports folder: one report per dataset and a summary")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.download.audit import AUDITED, audit_all, verdict
        # each dataset on its own: one with missing or unreadable inputs keeps its last reports
        results = audit_all({ds: args.manifests / ds for ds in load_params(args.params).datasets},
                            args.out)
        for ds, r in results.items():
            for split, c in r["splits"].items() if r["status"] == AUDITED else ():
                p = c["paper"]
                log.info("%s %s: %d videos, %d available, %d with audio; clips %d/%d covered "
                         "(%s)%s", ds, split, c["videos_listed"], c["videos_available"],
                         c["videos_with_audio"], c["clips_covered"], c["clips_listed"],
                         _pct(c["clip_coverage"]),
                         f"; paper {p['count']:,} {p['measure']}" if p else "")
        log.info("reports in %s", args.out)
        code, line = verdict(results)
        if line:
            (log.error if code else log.warning)("%s", line)
        return code

    def own_errors() -> tuple:
        from pipeline.download.audit import AuditError
        return (AuditError,)

    return run("audit", body, user_errors=own_errors)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.audit [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.audit")


if __name__ == "__main__":
    raise SystemExit(main())
