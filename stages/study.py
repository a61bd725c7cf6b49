"""Data-scale study (thesis Fig. 5-3): pretrain, fine-tune and evaluate at several
train.fraction values as DVC experiments, then plot zero-shot and fine-tuned recall against the
fraction (reports/study/<dataset>.json|md|png). Needs a git repository with a commit."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.study")


def _fractions(ctx, param, value: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated numbers, e.g. 0.3,0.6,1") from None


@click.command("study", help=__doc__, context_settings=CONTEXT)
@params_option
@click.option("--dataset", metavar="NAME",
              help="dataset evaluated (its evaluate@ stage)  [default: the first of "
                   "evaluate.datasets]")
@click.option("--fractions", default="0.3,0.6,1", show_default=True, callback=_fractions,
              help="train.fraction values, comma-separated, each in (0, 1]; each must leave "
                   "train.videos_per_batch videos (the demo's 28: >= 0.27)")
@click.option("--target", "targets", multiple=True, metavar="STAGE",
              help="stages each experiment reproduces (with those before them), repeatable  "
                   "[default: evaluate@<dataset>]")
@click.option("--metrics", "metrics_file", metavar="FILE",
              help="recall file read from each experiment  [default: "
                   "reports/recall/<dataset>.json]")
@click.option("--name", "prefix", default="study", show_default=True,
              help="experiment name prefix: <name>-<dataset>-<commit>-f<fraction>")
@click.option("--workspace", is_flag=True,
              help="run the experiments in the workspace (it keeps the last one's params and "
                   "outputs) instead of temporary copies of the git-tracked files")
@click.option("--repo", type=PATH, default=Path("."), show_default=True,
              help="the project (a git repository with a commit and a DVC project)")
@click.option("--out", type=PATH, default=Path("reports/study"), show_default=True,
              help="report folder: <dataset>.json, .md, .png")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)

    def body() -> int:
        from pipeline.learn.study import run_study
        ds = args.dataset
        if ds is None:
            from pipeline.config import load_params
            ds = (load_params(args.params).evaluate.datasets or ["demo"])[0]
        r = run_study(args.repo, ds, args.fractions, args.out, args.metrics_file,
                      list(args.targets), args.prefix, temp=not args.workspace)
        failed = [row for row in r["rows"] if row["status"] != "ok"]
        for row in failed:
            log.error("fraction %g (%s): %s: %s", row["fraction"], row["experiment"],
                      row["status"], row["error"])
        return 1 if failed else 0

    return run("study", body)     # StudyError is a UserError: one line, exit 2


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.study [options]` (`avl study`): the exit code."""
    return invoke(cli, argv, "python -m stages.study")


if __name__ == "__main__":
    raise SystemExit(main())
