"""Fetch a built-in dataset's official files into data/sources/<dataset>/ and track the folder
with DVC: copied from manifest.<dataset>.source_dir or downloaded from the URLs pinned in
manifests/<dataset>/source.yaml, checked against the pins, then `dvc add`ed (commit the printed
.dvc file with git). Stage manifest@<dataset> reads only that folder. For an own-media dataset
(kind custom or lsmdc) it creates data/sources/<dataset>/ (with the media folder) and
manifests/<dataset>/source.yaml, and says where the files go."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click

from pipeline.config import DATASETS, OWN_KINDS, load_params
from stages.common import CONTEXT, PATH, invoke, params_option, run

log = logging.getLogger("stages.sources")
BUILT_IN = ", ".join(d for d in DATASETS if d != "demo")   # the datasets with official files


def dvc_add(folder: Path) -> list[Path]:
    """`dvc add folder` (the project's DVC, run from the project root) -> the files to commit
    with git: folder.dvc, and the .gitignore beside it when DVC wrote one. UserError with DVC's
    last line when it fails (not a DVC project, a folder tracked by git...)."""
    from pipeline.safety import UserError
    p = subprocess.run([sys.executable, "-m", "dvc", "add", "--quiet", str(folder)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        why = (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()[-1]
        raise UserError(f"`dvc add {folder}` failed: {why} (run from the project root, a git "
                        "and DVC repository; `--no-dvc-add` only fetches and checks)")
    pointer = folder.with_name(folder.name + ".dvc")
    ignore = folder.parent / ".gitignore"
    return [pointer] + ([ignore] if ignore.is_file() and f"/{folder.name}" in
                        ignore.read_text().split() else [])


@click.command("sources", help=__doc__, context_settings=CONTEXT)
@params_option
@click.argument("name", required=False, metavar="[DATASET]")
@click.option("--dataset", metavar="NAME",
              help=f"a built-in dataset with official files ({BUILT_IN}) or an own-media "
                   "dataset of params `datasets` (or give it as the argument: `avl sources "
                   "youcook2`)")
@click.option("--source-spec", type=PATH,
              help="pins of the official files  [default: manifests/<dataset>/source.yaml]")
@click.option("--out", type=PATH,
              help="the input folder to fill  [default: data/sources/<dataset>]")
@click.option("--dvc-add/--no-dvc-add", default=True, show_default=True,
              help="track the folder with DVC (`dvc add`) once its files are checked")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)
    names = {n for n in (args.name, args.dataset) if n is not None}
    if len(names) != 1:
        raise click.UsageError("name one dataset: as the argument or with --dataset")
    ds = names.pop()

    def body() -> int:
        from pipeline.data.sources import Sources, source_folder
        from pipeline.safety import UserError
        params = load_params(args.params)
        kind = params.datasets.get(ds)
        if ds == "demo":
            raise UserError("the demo's files are written by stage demo (into data/sources/demo):"
                            " run `dvc repro demo`")
        if kind in OWN_KINDS:   # own media: set up the folders; the files are the user's
            from pipeline.data.datasets.custom import prepare
            made = prepare(ds, kind, params.manifest.of(ds))
            for path in made:
                log.info("created %s", path)
            log.info("%s (%s): put its media and lists under %s/ (or point "
                     "manifest.%s.media at a folder), commit manifests/%s/source.yaml, then "
                     "`dvc repro`. The folder is a plain DVC dependency: media are never "
                     "copied into the DVC cache", ds, kind, source_folder(ds), ds, ds)
            return 0
        if ds not in DATASETS:
            raise UserError(f"no built-in dataset named {ds!r}: official files exist for "
                            f"{BUILT_IN}")
        if ds not in params.datasets:
            log.warning("%s is not in params.yaml `datasets`: add `%s: %s` to it to build its "
                        "manifest", ds, ds, ds)
        p = getattr(params.manifest, ds)
        folder = args.out or source_folder(ds)
        spec = args.source_spec or Path("manifests", ds, "source.yaml")
        sources = Sources(ds, spec, folder, p.download,
                          copy_from=Path(p.source_dir) if p.source_dir else None)
        used = sources.fetch_all()
        for name, u in used.items():
            log.info("%s: %s sha256 %s (%s)", name, folder / u["path"], u["sha256"][:16],
                     "matches the pin" if u["pinned"] else "not pinned: recorded only")
        # leftovers of a killed copy or download must not be tracked with the folder
        for tmp in sorted(folder.rglob(".fetch-*")) + sorted(folder.rglob(".copy-*")):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
        listed = {Path(u["path"]).parts[0] for u in used.values()}
        extra = sorted(q.name for q in folder.iterdir() if q.name not in listed)
        if extra:
            log.warning("%s also holds files %s does not list (%s): they are tracked with the "
                        "folder, and the manifest ignores them", folder, spec, ", ".join(extra))
        if not args.dvc_add:
            log.info("%s: %d official files checked (not tracked with DVC: --no-dvc-add)",
                     folder, len(used))
            return 0
        files = dvc_add(folder)
        log.info("%s: %d official files checked and tracked by DVC", folder, len(used))
        click.echo(f"{folder} is tracked by DVC. Commit its pointer, and push its data to the "
                   "DVC remote:\n"
                   f"  git add {' '.join(str(f) for f in files)} && "
                   f"git commit -m \"{ds}: official files\"\n"
                   "  dvc push")
        return 0

    return run(f"sources@{ds}", body)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.sources --dataset NAME [options]`: the exit code."""
    return invoke(cli, argv, "python -m stages.sources")


if __name__ == "__main__":
    raise SystemExit(main())
