"""Stage demo: generate the offline demo dataset and pin its annotations in source.yaml."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.demo")


@click.command("demo", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--out", type=PATH, default=Path("data/demo"), show_default=True,
              help="folder of the generated videos and annotations (replaced; inside the "
                   "project: the manifest's file URLs are relative to it)")
@click.option("--source-spec", type=PATH, default=Path("manifests/demo/source.yaml"),
              show_default=True,
              help="source spec written here: pins the annotations' and the media's hashes")
@click.option("--sources", type=PATH, default=Path("data/sources/demo"), show_default=True,
              help="the demo's input folder (replaced): the files the source spec lists, "
                   "which stage manifest@demo reads")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)

    def body() -> int:
        import yaml

        from pipeline.config import load_params, to_dict
        from pipeline.data.demo import generate
        from pipeline.data.sources import sha256_file, sha256_tree
        p = load_params(args.params).demo
        # file URLs in the manifest are project-relative, so the run must be from the root
        root = Path(os.path.relpath(args.out)).as_posix()
        if root.startswith("../"):
            log.error("--out %s is outside the working directory; run from the project root",
                      args.out)
            return 2
        if args.out.exists():
            shutil.rmtree(args.out)
        summary = generate(p, args.out, url_root=root)
        (args.out / "params.resolved.yaml").write_text(yaml.safe_dump(to_dict(p)))
        # the listed files go to the input folder, as `avl sources` puts a real dataset's (the
        # media stay in --out: the annotations' file URLs point there)
        if args.sources.exists():
            shutil.rmtree(args.sources)
        args.sources.mkdir(parents=True)
        shutil.copyfile(args.out / "annotations.json", args.sources / "annotations.json")
        # the ASR captions, as HowTo100M's caption.json sits in its input folder (read by
        # stage captions@demo; not pinned in the spec: download@demo does not use them)
        shutil.copyfile(args.out / "caption.json", args.sources / "caption.json")
        # media_sha256 pins the media too, so download@demo (which depends on this file)
        # re-runs when the generated videos change even if the annotations do not
        spec = {"media_sha256": sha256_tree(args.out / "videos"),
                "files": [{"name": "annotations", "path": "annotations.json", "url": None,
                           "sha256": sha256_file(args.sources / "annotations.json")}]}
        args.source_spec.parent.mkdir(parents=True, exist_ok=True)
        args.source_spec.write_text("# Written by stage `demo`: pins the generated annotations "
                                    "and media."
                                    "\n" + yaml.safe_dump(spec, sort_keys=False))
        log.info("demo: %s", summary)
        return 0

    def own_errors() -> tuple:
        from pipeline.data.demo import DemoError
        return (DemoError,)

    return run("demo", body, own_errors)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.demo [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.demo")


if __name__ == "__main__":
    raise SystemExit(main())
