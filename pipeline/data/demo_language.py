"""A second-language demo (issue 15, acceptance "Demo cascade"): the English demo's concepts
(same colour, shape, motion per concept) narrated in another espeak-ng language, speech only (no
concept tones), as a `custom` own-media dataset WITHOUT clip annotations: stage segment@<name>
cuts its clips from the speech later.

<media>/<code>-NNN.mp4     the videos (H.264/AAC, as the English demo encodes them); file names
                           become the custom dataset's ids. The folder is replaced as a whole.
<truth>/words.parquet      ground truth, outside the media folder (stage segment@ writes into
                           data/sources/<name>/): video_id (the custom id, stable_id(file)),
                           file, start_s, end_s, word (as spoken), concept (English name)
<truth>/segments.parquet   video_id, file, start_s, end_s, concept: where each object is shown
<truth>/summary.json       counts, the language, its voices and words, timings

A language is one LANGUAGES entry: espeak-ng voices and the concepts' names in it."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DemoLanguageParams, DemoParams, ParamsError, load_params
from pipeline.data import demo
from pipeline.data.datasets.common import stable_id
from pipeline.data.manifest import write_json_atomic, write_parquet_atomic
from pipeline.safety import UserError

log = logging.getLogger(__name__)


class DemoLanguageError(UserError):
    """An unknown language, a missing tool (espeak-ng, ffmpeg) or a failed synthesis/encode."""


@dataclass(frozen=True)
class Language:
    """How one language's narration sounds: espeak-ng voices and the concepts' names."""

    code: str
    voices: tuple[tuple[str, int, int], ...]   # (espeak-ng voice, words per minute, pitch 0-99)
    names: dict[str, str]                      # English concept name -> spoken name


# Six voices each, as the English demo (demo.VOICES): a segment's first voice is drawn among
# len(demo.VOICES) and each repetition takes the next, so the model hears every name in every
# voice. Variants (+m3, +f2, ...) are espeak-ng's (`espeak-ng --voices=variant`).
LANGUAGES: dict[str, Language] = {
    "de": Language("de", (("de", 140, 50), ("de+m3", 125, 40), ("de+f2", 155, 60),
                          ("de+f4", 150, 55), ("de+m1", 135, 45), ("de+f3", 145, 65)),
                   {"tomato": "Tomate", "carrot": "Karotte", "cheese": "Käse", "lime": "Limette",
                    "blueberry": "Heidelbeere", "eggplant": "Aubergine", "egg": "Ei",
                    "bread": "Brot", "beet": "Rote Bete", "cucumber": "Gurke", "mint": "Minze",
                    "olive": "Olive"}),
    "fr": Language("fr", (("fr-fr", 140, 50), ("fr-fr+m3", 125, 40), ("fr-fr+f2", 155, 60),
                          ("fr-be+f4", 150, 55), ("fr-fr+m1", 135, 45), ("fr-ch+f3", 145, 65)),
                   {"tomato": "tomate", "carrot": "carotte", "cheese": "fromage",
                    "lime": "citron vert", "blueberry": "myrtille", "eggplant": "aubergine",
                    "egg": "oeuf", "bread": "pain", "beet": "betterave",
                    "cucumber": "concombre", "mint": "menthe", "olive": "olive"}),
    "es": Language("es", (("es", 140, 50), ("es+m3", 125, 40), ("es+f2", 155, 60),
                          ("es-419+f4", 150, 55), ("es+m1", 135, 45), ("es-419+f3", 145, 65)),
                   {"tomato": "tomate", "carrot": "zanahoria", "cheese": "queso", "lime": "lima",
                    "blueberry": "arándano", "eggplant": "berenjena", "egg": "huevo",
                    "bread": "pan", "beet": "remolacha", "cucumber": "pepino",
                    "mint": "menta", "olive": "aceituna"}),
}


def language(code: str) -> Language:
    """The LANGUAGES entry for `code`; DemoLanguageError naming the known ones otherwise."""
    if code not in LANGUAGES:
        raise DemoLanguageError(f"unknown demo language {code!r}: LANGUAGES in "
                                f"pipeline/data/demo_language.py has {', '.join(LANGUAGES)}; "
                                "use one of those or add an entry (voices and names)")
    return LANGUAGES[code]


def read_params(path: Path, name: str) -> DemoLanguageParams:
    """`demo_language.<name>` of params file `path`, validated -> DemoLanguageParams;
    ParamsError naming the key when the dataset has no entry."""
    section = load_params(path).demo_language
    if name not in section:
        raise ParamsError(f"{path}: demo_language.{name} is missing: add `demo_language: "
                          f"{{{name}: {{language: de}}}}`")
    return section[name]


def demo_params(p: DemoLanguageParams) -> DemoParams:
    """The English demo's DemoParams that plan() this dataset: every segment narrated and none
    with its concept's sound (spoken_fraction = speech_only_fraction = 1), no noise. n_val is
    only balances the concepts over two halves of the videos: the custom dataset has no split
    until stage segment@ draws one."""
    return DemoParams(seed=p.seed, n_videos=p.n_videos, n_val=max(1, p.n_videos // 2),
                      n_concepts=p.n_concepts, min_duration_s=p.min_duration_s,
                      max_duration_s=p.max_duration_s, segments_per_video=p.segments_per_video,
                      frame_sizes=[p.frame_size], fps=p.fps, speech=True, spoken_fraction=1.0,
                      speech_only_fraction=1.0, noise_level=0.0, workers=p.workers)


def plans(p: DemoLanguageParams) -> list[demo.VideoPlan]:
    """The videos: demo.plan() with demo_params(p), renamed <code>-NNN (in plan order)."""
    out = demo.plan(demo_params(p))
    return [dataclasses.replace(v, video_id=f"{p.language}-{v.index:03d}") for v in out]


def _replace_dir(new: Path, final: Path) -> None:
    """Puts folder `new` at `final`, replacing what was there (stale files go with it)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old)
    else:
        os.replace(new, final)


def generate(p: DemoLanguageParams, media: Path, truth: Path) -> dict:
    """Writes the videos to `media` (replaced) and the ground truth + summary.json to `truth`.

    Inputs: validated params; media, the custom dataset's media folder; truth, a folder
    outside it. Output: the summary dict (also truth/summary.json). Raises DemoLanguageError for
    an unknown language, a missing espeak-ng/ffmpeg, or a failed synthesis/encode."""
    lang = language(p.language)
    exe = {t: shutil.which(t) for t in ("espeak-ng", "ffmpeg")}
    for tool, path in exe.items():
        if path is None:
            raise DemoLanguageError(f"{tool} not found: install it (apt-get install {tool}); "
                                    f"the {p.language} demo needs it")
    t0 = time.monotonic()
    media, truth = Path(media).resolve(), Path(truth).resolve()
    if truth == media or media in truth.parents or truth in media.parents:
        raise DemoLanguageError(f"the truth folder {truth} must lie outside the media folder "
                                f"{media} (and not hold it): stage segment@ reads every file "
                                "there")
    videos = plans(p)
    dp = demo_params(p)
    # summary.json is written last: an old one must not vouch for a half-finished run
    (truth / "summary.json").unlink(missing_ok=True)
    used = sorted({s.concept for v in videos for s in v.segments})
    # as many voice slots as the English demo has (its plan draws a start voice among them)
    voices = tuple(lang.voices[k % len(lang.voices)] for k in range(len(demo.VOICES)))
    media.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{media.name}.new-", dir=media.parent))
    new.chmod(0o755)   # mkdtemp makes it owner-only; the media folder is an ordinary one
    total = 0
    try:
        with tempfile.TemporaryDirectory(prefix="avlnet-demo-lang-") as tmp_name:
            tmp = Path(tmp_name)
            try:
                speech = demo._speak(used, tmp, voices, lang.names)
            except demo.DemoError as e:
                raise DemoLanguageError(f"{p.language}: {e}") from None
            with concurrent.futures.ThreadPoolExecutor(p.workers) as pool:
                futures = [pool.submit(demo._encode, v, dp, new, speech, tmp, exe["ffmpeg"])
                           for v in videos]
                try:
                    for fut in concurrent.futures.as_completed(futures):
                        total += fut.result()
                except demo.DemoError as e:
                    raise DemoLanguageError(str(e)) from None
                finally:
                    for fut in futures:
                        fut.cancel()
        words = demo.spoken_words(videos, speech)
        _replace_dir(new, media)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _write_truth(videos, words, lang, truth)
    summary = {
        "language": lang.code, "videos": len(videos), "media": str(media),
        "segments": sum(len(v.segments) for v in videos),
        "spoken_words": len(words["word"]),
        "total_seconds": round(sum(v.duration_s for v in videos), 3), "total_bytes": total,
        "concepts": {c: lang.names[c] for c in used},
        "voices": [v for v, _, _ in lang.voices], "seed": p.seed,
        "elapsed_s": round(time.monotonic() - t0, 2)}
    write_json_atomic(summary, truth / "summary.json")
    log.info("demo_language: %d %s videos, %.0f s of media, %.1f MB in %.1f s", len(videos),
             lang.code, summary["total_seconds"], total / 1e6, summary["elapsed_s"])
    return summary


def _write_truth(videos: list[demo.VideoPlan], words: dict, lang: Language, truth: Path) -> None:
    """words.parquet and segments.parquet (see the module docstring), atomically."""
    import pyarrow as pa
    file_of = {v.video_id: f"{v.video_id}.mp4" for v in videos}
    files = [file_of[v] for v in words["video_id"]]
    write_parquet_atomic(pa.table({
        "video_id": pa.array([stable_id(f) for f in files], pa.string()),
        "file": pa.array(files, pa.string()),
        "start_s": pa.array(words["start_s"], pa.float64()),
        "end_s": pa.array(words["end_s"], pa.float64()),
        "word": pa.array([lang.names[w] for w in words["word"]], pa.string()),
        "concept": pa.array(words["word"], pa.string())}), truth / "words.parquet")
    segs = [(file_of[v.video_id], s) for v in videos for s in v.segments]
    write_parquet_atomic(pa.table({
        "video_id": pa.array([stable_id(f) for f, _ in segs], pa.string()),
        "file": pa.array([f for f, _ in segs], pa.string()),
        "start_s": pa.array([float(s.start_s) for _, s in segs], pa.float64()),
        "end_s": pa.array([float(s.end_s) for _, s in segs], pa.float64()),
        "concept": pa.array([s.concept for _, s in segs], pa.string())}),
        truth / "segments.parquet")
