"""Spoken-concept check (stage spoken@<dataset>): each word spoken by espeak-ng in a voice and
speed the demo generator does not use (it speaks `-v en-us -s 140`), searched in the index;
a hit when the rank-1 item's clip text (the manifest's `text`, e.g. "slice the carrot")
contains the word as a whole word.

reports/search/<ds>.json   hit_rate (rank-1), hits, n_words, mean reciprocal rank of the first
                           hit within the top, and per word: rank of the first hit (null: none
                           in the top), the top-5
reports/search/<ds>.md     the per-word table
reports/search/<ds>.html   the search page of every query"""
from __future__ import annotations

import html
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline.data.manifest import write_json_atomic
from pipeline.search.model import SearchError
from pipeline.search.query import QUERY_MIN_S, audio_query, checked_model, open_index, read_audio, search

log = logging.getLogger(__name__)

DEMO_VOICE = ("en-us", 140)     # pipeline/data/demo.py _speak: the voice the videos speak in


def synthesize(word: str, voice: str, speed: int, tmp: Path) -> np.ndarray:
    """`word` spoken by espeak-ng (-v voice -s speed words/min) -> (n,) float32 16 kHz mono
    (read_audio resamples espeak-ng's 22.05 kHz). SearchError when espeak-ng is missing or
    fails."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SearchError("espeak-ng not found: install it (apt-get install espeak-ng) to run "
                          "the spoken-concept check")
    path = Path(tmp) / f"spoken-{re.sub(r'[^A-Za-z0-9_-]', '_', word)}.wav"
    r = subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(path), word],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not path.is_file():
        raise SearchError(f"espeak-ng -v {voice} failed for {word!r} (exit {r.returncode}: "
                          f"{r.stderr.strip()[-300:]}); check search.voice (espeak-ng "
                          "--voices lists them)")
    return read_audio(path)[0]


def contains_word(text: str | None, word: str) -> bool:
    """Whether `text` has `word` as a whole word, any case ("egg" is not in "eggplant")."""
    return bool(text) and re.search(rf"(?<![\w']){re.escape(word)}(?![\w'])", text,
                                    re.IGNORECASE) is not None


def spoken_check(index_dir: Path, words: list[str], out_dir: Path, *, voice: str = "en-gb",
                 speed: int = 160, top: int = 10, checkpoint: Path | None = None,
                 device: str = "cpu", media: dict[str, Path] | None = None,
                 min_s: float = QUERY_MIN_S) -> dict:
    """Speaks and searches each word; writes <ds>.json, .md, .html in out_dir -> the summary.
    `media` (video_id -> file) feeds the page's frames and players ({}: placeholders)."""
    from pipeline.search.page import search_page, section
    if not words:
        raise SearchError("no word to check (search.words is empty and no concept names)")
    if (voice, speed) == DEMO_VOICE:
        log.warning("search.voice %s at %d wpm is the demo generator's own: the check then "
                    "only shows the model hears the very recording it was trained on", voice,
                    speed)
    index = open_index(index_dir)
    mf = checked_model(index, checkpoint, device)
    ds = index.dataset
    per_word, sections = {}, []
    with tempfile.TemporaryDirectory(prefix="avl-spoken-") as tmp:
        for w in words:
            q = audio_query(index, mf, synthesize(w, voice, speed, Path(tmp)),
                            f"spoken \u201c{w}\u201d (espeak-ng -v {voice} -s {speed})",
                            min_s=min_s)
            res = search(index, q, top)
            hits = [r for r in res if contains_word(r["text"], w)]
            first = hits[0]["rank"] if hits else None
            per_word[w] = {"hit": first == 1, "first_hit_rank": first,
                           "top5": [{k: r[k] for k in ("rank", "video_id", "clip_id",
                                                        "start_s", "end_s", "text", "score")}
                                    for r in res[:5]]}
            verdict = ("hit" if first == 1 else f"first hit at rank {first}" if first
                       else f"no clip of it in the top {len(res)}")
            log.info("%s: %r -> rank-1 %s %r (%s)", ds, w, res[0]["clip_id"] if res else None,
                     res[0]["text"] if res else None, verdict)
            sections.append(section(q, res, media or {}, f"\u201c{w}\u201d: {verdict}",
                                    {r["item_id"] for r in hits}))
    n = len(words)
    n_hits = sum(v["hit"] for v in per_word.values())
    summary = {"dataset": ds, "hit_rate": n_hits / n, "hits": n_hits, "n_words": n,
               "mrr_top": sum(1 / v["first_hit_rank"] for v in per_word.values()
                              if v["first_hit_rank"]) / n,
               "top": top, "voice": voice, "speed_wpm": speed, "units": index.record["units"],
               "checkpoint": index.record["checkpoint"],
               "checkpoint_sha256": index.record["checkpoint_sha256"], "words": per_word}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(summary, out_dir / f"{ds}.json")
    _write_text(markdown(summary), out_dir / f"{ds}.md")
    _write_text(search_page(index, sections, f"Spoken-concept search on {ds}"),
                out_dir / f"{ds}.html")
    log.info("%s: %d of %d spoken concepts found at rank 1 (hit rate %.2f)", ds, n_hits, n,
             summary["hit_rate"])
    return summary


def markdown(s: dict) -> str:
    """The per-word table of a spoken_check summary."""
    rows = ["| word | rank-1 clip | rank-1 text | first hit rank |", "|---|---|---|---|"]
    for w, v in s["words"].items():
        r1 = v["top5"][0] if v["top5"] else {}
        rows.append(f"| {w} | {r1.get('clip_id') or r1.get('video_id', '')} | "
                    f"{html.escape(r1.get('text') or '')} | {v['first_hit_rank'] or '-'} |")
    return "\n".join([
        f"# Spoken-concept search on {s['dataset']}", "",
        f"**{s['hits']} of {s['n_words']}** words spoken by espeak-ng (`-v {s['voice']} -s "
        f"{s['speed_wpm']}`, not the demo's own voice) found a clip of that concept at rank 1 "
        f"(hit rate {s['hit_rate']:.2f}; mean reciprocal rank of the first hit in the top "
        f"{s['top']}: {s['mrr_top']:.2f}). Index of {s['units']}, checkpoint "
        f"`{s['checkpoint']}` (sha256 `{s['checkpoint_sha256'][:16]}`).", "", *rows]) + "\n"


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
