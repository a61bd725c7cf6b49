"""Stage demo_language@<name>: the demo's concepts narrated in another language, speech only
and without clip annotations -> the media folder of custom dataset <name> (its clips come from
stage segment@<name>), plus the ground truth outside it."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.demo_language")


@click.command("demo_language", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--name", required=True, metavar="NAME",
              help="the dataset: params demo_language.<NAME> holds its settings")
@click.option("--language", metavar="CODE",
              help="language code (a key of LANGUAGES: de, fr, es)  [default: params "
                   "demo_language.<NAME>.language]")
@click.option("--out", type=PATH, help="media folder written (replaced)  [default: "
                                       "data/sources/<NAME>/media]")
@click.option("--truth", type=PATH, help="folder of words.parquet, segments.parquet and "
                                         "summary.json, outside --out  [default: "
                                         "data/demo_language/<NAME>]")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)

    def body() -> int:
        import yaml

        from pipeline.config import to_dict
        from pipeline.data.demo_language import generate, read_params
        p = read_params(args.params, args.name)
        if args.language is not None and args.language != p.language:
            log.info("--language %s replaces params' %s", args.language, p.language)
            p = dataclasses.replace(p, language=args.language)
        truth = args.truth or Path("data/demo_language", args.name)
        summary = generate(p, args.out or Path("data/sources", args.name, "media"), truth)
        (truth / "params.resolved.yaml").write_text(yaml.safe_dump(to_dict(p)))
        log.info("demo_language@%s: %s", args.name, summary)
        return 0

    return run(f"demo_language@{args.name}", body)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.demo_language [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.demo_language")


if __name__ == "__main__":
    raise SystemExit(main())
