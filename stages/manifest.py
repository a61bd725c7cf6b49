"""Stage manifest@<ds>: official annotation files -> manifests/<ds>/{videos,clips}.parquet."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, dataset_option, invoke, params_option, run

log = logging.getLogger("stages.manifest")


@click.command("manifest", help=__doc__, context_settings=CONTEXT)
@dataset_option
@params_option
@click.option("--source-spec", type=PATH,
              help="pins (URL, sha256) of the official files  "
                   "[default: manifests/<dataset>/source.yaml]")
@click.option("--out", type=PATH,
              help="manifest folder: videos.parquet, clips.parquet, manifest.json  "
                   "[default: manifests/<dataset>]")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)
    ds = args.dataset

    def body() -> int:
        from pipeline.config import OWN_KINDS, load_params, to_dict
        from pipeline.data.datasets import parser
        from pipeline.data.manifest import validate, write_manifest
        from pipeline.data.sources import OwnInputs, Sources, source_folder
        params = load_params(args.params)
        kind, p = params.kind(ds), params.manifest.of(ds)
        if kind in OWN_KINDS:   # own media: settings in params, inputs in data/sources/<ds>
            sources = OwnInputs(ds, source_folder(ds))
        else:
            # only data/sources/<ds> (the stage's DVC dependency; `avl sources <ds>` fills it)
            sources = Sources.in_stage(ds, args.source_spec or Path("manifests", ds,
                                                                    "source.yaml"))
        m = parser(kind)(sources, p)
        validate(m, ", ".join(u["path"] for u in sources.used.values()) or str(sources.folder))
        summary = write_manifest(m, args.out or Path("manifests", ds), sources.used, to_dict(p))
        for split, s in summary["splits"].items():
            log.info("%s %s: %d videos, %d clips, checksum %s", ds, split, s["videos"],
                     s["clips"], s["clip_checksum"][:12])
        return 0

    return run(f"manifest@{ds}", body, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.manifest [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.manifest")


if __name__ == "__main__":
    raise SystemExit(main())
