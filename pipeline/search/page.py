"""Self-contained HTML of search results: the query (its audio player and spectrogram, or its
text), then each result's centre frame and an audio player of its segment, cut from the
dataset's media (the download ledger's `path`; a missing file gives a placeholder)."""
from __future__ import annotations

import html
import logging
from pathlib import Path

from pipeline.evaluate.pages import audio_data_uri, audio_data_uri_from_wave, audio_tag, \
    frame_png, img_tag, media_paths, page, spectrogram_png
from pipeline.features.logmel import SAMPLE_RATE
from pipeline.search.query import Query, SearchIndex

log = logging.getLogger(__name__)


def load_media(index: SearchIndex, root: Path, videos_dirs: list[Path] | None = None
               ) -> dict[str, Path]:
    """video_id -> media file, from the ledger beside the index's manifest
    (availability.parquet; paths relative to `root`, checked to stay in `videos_dirs` when
    given); {} with a warning when there is no ledger (the page then shows placeholders)."""
    from pipeline.download.ledger import read_availability
    path = Path(index.record["manifest"]) / "availability.parquet"
    if not path.is_file():
        log.warning("%s: no download ledger; the page shows no frames or result audio", path)
        return {}
    ledger = read_availability(path, root if videos_dirs else None, videos_dirs or None)
    return media_paths(ledger, root)


def query_html(q: Query, media: dict[str, Path]) -> str:
    """The query's cell: audio player and spectrogram (audio file, clip) or the typed text."""
    parts = [f"<b>query</b> {html.escape(q.label)}"]
    if q.kind == "audio" and q.wave is not None:
        parts.append(audio_tag(audio_data_uri_from_wave(q.wave, SAMPLE_RATE)))
    elif q.kind == "clip" and q.clip is not None:
        c = q.clip
        parts.append(f"{html.escape(c['video_id'])} {c['start_s']:.1f}-{c['end_s']:.1f} s "
                     f"<span class=cap>{html.escape(c.get('text') or '')}</span>")
        parts.append(audio_tag(audio_data_uri(media.get(c["video_id"]), c["start_s"],
                                              c["end_s"])))
    else:
        parts.append(f"<span class=cap>&ldquo;{html.escape(q.text or '')}&rdquo;</span>")
    if q.spec is not None and q.spec.shape[1]:
        parts.append(img_tag(spectrogram_png(q.spec), "query spectrogram"))
    for n in q.notes:
        parts.append(f"<small>{html.escape(n)}</small>")
    return '<td class="query">' + "<br>".join(parts) + "</td>"


def result_html(r: dict, media: dict[str, Path], hit: bool = False) -> str:
    """A result's cell: centre frame, audio of its segment, rank, score, ids and text."""
    path = media.get(r["video_id"])
    frame = frame_png(path, (r["start_s"] + r["end_s"]) / 2)
    audio = audio_data_uri(path, r["start_s"], r["end_s"])
    return (f'<td class="{"hit" if hit else ""}">{img_tag(frame, r["video_id"])}'
            f"{audio_tag(audio)}#{r['rank']} score {r['score']:.4f}<br>"
            f"{html.escape(r['video_id'])} {r['start_s']:.1f}-{r['end_s']:.1f} s<br>"
            f"{html.escape(r['clip_id'] or '')}<br><span class=cap>"
            f"{html.escape(r['text'] or '')}</span></td>")


def section(q: Query, results: list[dict], media: dict[str, Path], heading: str = "",
            hits: set[int] | None = None) -> str:
    """One query and its results as a table row (results whose item_id is in `hits` marked)."""
    cells = [query_html(q, media)] + [result_html(r, media, r["item_id"] in (hits or set()))
                                      for r in results]
    head = f"<h2>{html.escape(heading)}</h2>" if heading else ""
    return f"{head}<table><tr>{''.join(cells)}</tr></table>"


def search_page(index: SearchIndex, sections: list[str], title: str = "") -> str:
    """The whole page: what was searched (index, checkpoint) then the sections."""
    rec = index.record
    intro = (f"<p>Index <code>{html.escape(str(index.folder))}</code>: {rec['n_items']} "
             f"{html.escape(rec['units'])} of {html.escape(rec['dataset'])}, model "
             f"{html.escape(rec['arch'])} <code>{html.escape(rec['checkpoint'])}</code> (sha256 "
             f"<code>{rec['checkpoint_sha256'][:16]}</code>). Scores are inner products of the "
             "query's embedding with each segment's video embedding; each result shows its "
             "centre frame and its audio.</p>")
    return page(title or f"Search {rec['dataset']}", intro, sections)
