"""Stage manifest@<ds>: official annotation files -> manifests/<ds>/{videos,clips}.parquet."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import DATASETS, load_params, to_dict
from pipeline.data.datasets import parser
from pipeline.data.manifest import validate, write_manifest
from pipeline.data.sources import Sources
from stages.common import run

log = logging.getLogger("stages.manifest")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.manifest", description=__doc__)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--source-spec", type=Path, help="default manifests/<ds>/source.yaml")
    ap.add_argument("--out", type=Path, help="default manifests/<ds>")
    args = ap.parse_args(argv)
    ds = args.dataset

    def body() -> int:
        p = getattr(load_params(args.params).manifest, ds)
        sources = Sources(ds, args.source_spec or Path("manifests", ds, "source.yaml"),
                          Path(p.source_dir) if p.source_dir else None, p.download)
        m = parser(ds)(sources, p)
        validate(m, ", ".join(u["path"] for u in sources.used.values()))
        summary = write_manifest(m, args.out or Path("manifests", ds), sources.used, to_dict(p))
        for split, s in summary["splits"].items():
            log.info("%s %s: %d videos, %d clips, checksum %s", ds, split, s["videos"],
                     s["clips"], s["clip_checksum"][:12])
        return 0

    return run(f"manifest@{ds}", body)


if __name__ == "__main__":
    raise SystemExit(main())
