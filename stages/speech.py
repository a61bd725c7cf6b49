"""Stage speech@<ds>: which clips carry speech (silero-vad, optionally an ASR backend's words),
and the Sounds-N / Speech-N evaluation sets of the evaluation split (AVLnet Table 4)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import click

from stages.common import CONTEXT, PATH, dataset_option, invoke, params_option, run

log = logging.getLogger("stages.speech")


@click.command("speech", help=__doc__, context_settings=CONTEXT)
@dataset_option
@params_option
@click.option("--manifest", type=PATH, help="manifest folder (clips.parquet, availability."
                                            "parquet)  [default: manifests/<dataset>]")
@click.option("--videos", type=PATH, help="the dataset's media folder  [default: data/videos/"
                                          "<dataset>]")
@click.option("--out", type=PATH, help="output folder  [default: data/speech/<dataset>]")
def cli(**kw) -> int:
    args = SimpleNamespace(**kw)
    ds = args.dataset

    def body() -> int:
        from pipeline.analysis.speech import Detector, run as detect
        from pipeline.config import load_params
        from pipeline.download.ledger import read_availability
        from pipeline.evaluate.pages import media_paths
        from pipeline.learn.sampling import eval_split
        params = load_params(args.params)
        p = params.analysis.speech
        manifest = args.manifest or Path("manifests", ds)
        videos = args.videos or Path("data/videos", ds)
        ledger = read_availability(manifest / "availability.parquet", Path.cwd(),
                                   params.media_dirs(ds, videos))
        d = Detector(threshold=p.threshold, min_speech_ms=p.min_speech_ms,
                     min_silence_ms=p.min_silence_ms, speech_pad_ms=p.speech_pad_ms,
                     min_clip_speech_s=p.min_clip_speech_s, asr=p.asr, asr_model=p.asr_model)
        truth = p.truth.get(ds)
        summary = detect(ds, manifest / "clips.parquet", media_paths(ledger, Path.cwd()),
                         args.out or Path("data/speech", ds), d, splits=p.splits,
                         eval_split=eval_split(ds, manifest), n=p.n, seed=p.seed,
                         truth=Path(truth) if truth else None)
        log.info("%s: Sounds-%d and Speech-%d written", ds, len(summary["sounds"]),
                 len(summary["speech"]))
        return 0

    def own_errors() -> tuple:
        from pipeline.download.ledger import LedgerError
        return (LedgerError,)

    return run(f"speech@{ds}", body, own_errors, dataset=ds, params=args.params)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.speech [options]` (as dvc.yaml runs it): the exit code."""
    return invoke(cli, argv, "python -m stages.speech")


if __name__ == "__main__":
    raise SystemExit(main())
