"""Stage concepts@<ds>: audio-visual concept discovery (AVLnet Sec. 4): each embedding dimension
labelled by its top audio steps' words and its top clips' labels, ranked by purity."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, clip_stage_options, fill_clip_defaults, invoke, run

log = logging.getLogger("stages.concepts")


@click.command("concepts", help=__doc__, context_settings=CONTEXT)
@clip_stage_options
@click.option("--models", type=PATH, default=Path("data/models"), show_default=True,
              help="pretrain/final.pt (setting zero_shot), finetune-<dataset>/final.pt "
                   "(fine_tuned)")
@click.option("--words", type=PATH, help="word timings parquet (video_id, start_s, end_s, word)  "
                                         "[default: analysis.concepts.words_files, else "
                                         "data/demo/words.parquet (demo) or "
                                         "data/speech/<dataset>/words.parquet]")
@click.option("--out", type=PATH, default=Path("reports/concepts"), show_default=True,
              help="reports folder: <dataset>.{json,md,html} and <dataset>/dimensions.parquet")
def cli(**kw) -> int:
    args = fill_clip_defaults(SimpleNamespace(**kw))
    ds = args.dataset

    def body() -> int:
        from pipeline.analysis.concepts import demo_vocabulary, discover, setting_checkpoint, \
            words_file
        from pipeline.config import load_params
        params = load_params(args.params)
        p = params.analysis.concepts
        vocabulary = p.vocabulary.get(ds) or (demo_vocabulary(params.demo.n_concepts)
                                              if params.kind(ds) == "demo" else None)
        labels = p.labels_files.get(ds)
        discover(ds, args.features, args.manifest, setting_checkpoint(ds, args.models, p.setting),
                 args.out, words=args.words or words_file(ds, p.words_files),
                 vocabulary=vocabulary, labels=Path(labels) if labels else None, split=p.split,
                 top=p.top, show=p.show, stop_words=p.stop_words, window_s=p.window_s,
                 threshold=p.threshold, batch=p.batch, device=p.device,
                 clip_frames=params.finetune.clip_frames, verify=p.verify, setting=p.setting,
                 availability=args.manifest / "availability.parquet", videos_root=Path.cwd(),
                 videos_dir=params.media_dirs(ds, Path("data/videos", ds)))
        log.info("%s: reports in %s/%s.{json,md,html}", ds, args.out, ds)
        return 0

    def own_errors() -> tuple:
        from pipeline.analysis.concepts import ConceptsError
        from pipeline.features.store import StoreError
        return (ConceptsError, StoreError)

    return run(f"concepts@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.concepts [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.concepts")


if __name__ == "__main__":
    raise SystemExit(main())
