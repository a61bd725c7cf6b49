"""Stage demo: generate the offline demo dataset and pin its annotations in source.yaml."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import yaml

from pipeline.config import load_params, to_dict
from pipeline.data.demo import DemoError, generate
from pipeline.data.sources import sha256_file, sha256_tree
from stages.common import run

log = logging.getLogger("stages.demo")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.demo", description=__doc__)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=Path("data/demo"))
    ap.add_argument("--source-spec", type=Path, default=Path("manifests/demo/source.yaml"))
    args = ap.parse_args(argv)

    def body() -> int:
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
        # media_sha256 pins the media too, so download@demo (which depends on this file)
        # re-runs when the generated videos change even if the annotations do not
        spec = {"default_dir": root, "media_sha256": sha256_tree(args.out / "videos"),
                "files": [{"name": "annotations", "path": "annotations.json", "url": None,
                           "sha256": sha256_file(args.out / "annotations.json")}]}
        args.source_spec.parent.mkdir(parents=True, exist_ok=True)
        args.source_spec.write_text("# Written by stage `demo`: pins the generated annotations "
                                    "and media."
                                    "\n" + yaml.safe_dump(spec, sort_keys=False))
        log.info("demo: %s", summary)
        return 0

    return run("demo", body, (DemoError,))


if __name__ == "__main__":
    raise SystemExit(main())
