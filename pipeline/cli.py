"""`avl`: one command line for the whole pipeline. Each subcommand is a stage's own click command
(stages/<name>.py, the code `python -m stages.<name>` and `dvc repro` run), imported only when
it is called, so `avl --help` and `avl <stage> --help` load no torch, dask, pyarrow or h5py."""
from __future__ import annotations

import importlib
import importlib.util
from typing import NamedTuple, Sequence

import click

from pipeline import __version__


class Command(NamedTuple):
    module: str   # defines `cli` (a click command) and `main(argv) -> int`
    help: str     # the line `avl --help` shows


# the registry, in pipeline order; a module not present (yet) is left out of `avl`
COMMANDS = {
    "demo": Command("stages.demo", "Generate the offline demo dataset (videos, speech, "
                                   "annotations)."),
    "sources": Command("stages.sources", "Fetch a built-in dataset's official files into "
                                         "data/sources/<dataset>/ (DVC-tracked), or set up "
                                         "an own-media dataset's folders."),
    "demo_language": Command("stages.demo_language", "Generate a second-language demo: the "
                                                     "demo's concepts narrated in another "
                                                     "language, without clip annotations."),
    "segment": Command("stages.segment", "Clips from the speech in a custom dataset's media, "
                                         "drawn into video-disjoint train/val/test splits "
                                         "(annotations CSV)."),
    "manifest": Command("stages.manifest", "Annotation files -> the dataset's manifests "
                                           "(videos, clips)."),
    "download": Command("stages.download", "Download a dataset's videos (yt-dlp on dask) and "
                                           "record each one's status."),
    "extract": Command("stages.extract", "Extract visual features and log-Mel audio into "
                                         "sharded feature stores."),
    "train": Command("stages.train", "Pretrain AVLnet on random 10 s windows of "
                                     "train.dataset."),
    "finetune": Command("stages.finetune", "Fine-tune the pretrained model on a dataset's "
                                           "annotated train clips."),
    "evaluate": Command("stages.evaluate", "Recall@K tables and pages for each model "
                                           "setting on a dataset."),
    "captions": Command("stages.captions", "ASR captions (caption.json) -> a dataset's "
                                           "Parquet caption store."),
    "train_text": Command("stages.train_text", "Pretrain a text model (AVLnet-Text Tri / "
                                               "Fused, MMV) on ASR caption clips."),
    "finetune_text": Command("stages.finetune_text", "Fine-tune a text model on a dataset's "
                                                     "annotated clips and captions."),
    "evaluate_text": Command("stages.evaluate_text", "Text retrieval tables (T->V, T+A->V, "
                                                     "...) for each text model setting."),
    "transfer": Command("stages.transfer", "The language cascade (Table 5.1): target only "
                                           "and source -> target models, each scored on "
                                           "both datasets."),
    "images": Command("stages.images", "Images with spoken captions (Table 2): fine-tune a "
                                       "2D-only AVLnet with ResNet-152 frozen and trained."),
    "study": Command("stages.study", "Data-scale study: pretrain, fine-tune and evaluate at "
                                     "several train.fraction values as DVC experiments and "
                                     "plot recall against the fraction."),
    "index": Command("stages.index", "Embed a dataset's clips or windows with one checkpoint "
                                     "into a search index (data/search/<dataset>)."),
    "search": Command("stages.search", "Search an index by voice (audio file or clip) or "
                                       "text, without transcribing."),
    "spoken": Command("stages.spoken", "Spoken-concept check: espeak-ng queries of the "
                                       "concept names, rank-1 hit rate."),
    "speech": Command("stages.speech", "Which clips carry speech (silero-vad, optional ASR) "
                                       "and the Sounds-N / Speech-N evaluation sets."),
    "speech_recall": Command("stages.speech_recall", "Recall on the Sounds and Speech sets "
                                                     "beside the paper's Table 4."),
    "concepts": Command("stages.concepts", "Concept discovery: label embedding dimensions by "
                                           "their top audio steps' words and top clips' labels."),
    "audit": Command("stages.audit", "Availability reports of every dataset, compared with "
                                     "the last audit."),
}


def _present(name: str) -> bool:
    try:
        return importlib.util.find_spec(COMMANDS[name].module) is not None
    except ModuleNotFoundError:
        return False


class Stages(click.Group):
    """Subcommands from COMMANDS, each imported only when it is called (or its help shown)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _present(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _present(name):
            return None
        return importlib.import_module(COMMANDS[name].module).cli

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # the registry's lines: listing the commands imports none of them
        rows = [(name, COMMANDS[name].help) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group("avl", cls=Stages, context_settings={"help_option_names": ["-h", "--help"],
                                                   "max_content_width": 100},
             epilog="Run from the project root (the folder of params.yaml); `avl <command> "
                    "--help` lists a command's options. `dvc repro` runs the same stages in "
                    "order, with the paths of dvc.yaml.")
@click.version_option(__version__, "--version", prog_name="avl",
                      message="%(prog)s (avlnet-pipeline) %(version)s")
def cli() -> None:
    """AVLnet pipeline: audio-visual language learning from video. Each command is one
    pipeline stage; it reads its settings from params.yaml and exits 0 when done, 2 on a
    user error (one line naming the file or key and the fix)."""


def main(argv: Sequence[str] | None = None) -> int:
    """The `avl` console script: the exit code of the command run."""
    from stages.common import invoke
    return invoke(cli, argv, "avl")
