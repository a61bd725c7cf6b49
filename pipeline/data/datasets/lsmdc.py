"""LSMDC (kind `lsmdc`, a licensed dataset: clips are local files) -> a canonical Manifest.

The official annotation files (LSMDC16_annos_training.csv, _val.csv, _test.csv,
LSMDC16_challenge_1000_publictect.csv) are tab-separated, without a header, one clip per line:

    clip_id  start_aligned  end_aligned  start_extracted  end_extracted  sentence

with times as HH.MM.SS.mmm; the clip files are distributed as <movie>/<clip_id>.avi (the movie
being the clip id without its last `_<times>` part). Each clip file is one video and one clip
spanning it (its length: end_extracted - start_extracted). Clip ids are path-safe and become
the video ids as they are (a longer or odd one gets a stable hashed id). Files are found under
the media folder by name, recursively, in any container; a clip whose file is missing is still
listed (the download stage records it as not_found)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pyarrow as pa

from pipeline.config import LsmdcManifestParams
from pipeline.data.datasets.common import WHOLE_VIDEO_S, OwnVideos, file_url, roles, stable_id
from pipeline.data.sources import OwnInputs
from pipeline.data.manifest import Manifest, ManifestError

_TIME = re.compile(r"\A(\d+)\.(\d{2})\.(\d{2})\.(\d{1,3})\Z")
_SAFE = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}\Z")


def lsmdc_time(value: str, path: Path, row: int, fld: str) -> float:
    """HH.MM.SS.mmm -> seconds."""
    m = _TIME.match(value.strip())
    if not m:
        raise ManifestError(path, row, fld, f"expected a time HH.MM.SS.mmm, got {value!r}")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def read_annotations(path: Path) -> list[dict]:
    """Rows of one official annotation file: clip_id, duration_s (None for a two-column file:
    clip id and sentence) and text."""
    out = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for i, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if not fields or all(not x.strip() for x in fields):
                    continue
                if len(fields) == 6:
                    clip, _, _, s_ext, e_ext, text = fields
                    start = lsmdc_time(s_ext, path, i, "start_extracted")
                    end = lsmdc_time(e_ext, path, i, "end_extracted")
                    if not start < end:
                        raise ManifestError(path, i, "end_extracted", f"{e_ext} is not after "
                                            f"{s_ext}")
                    duration: float | None = end - start
                elif len(fields) == 2:
                    (clip, text), duration = fields, None
                else:
                    raise ManifestError(path, i, None, f"expected 6 tab-separated fields (clip "
                                        "id, aligned start/end, extracted start/end, sentence), "
                                        f"got {len(fields)}")
                out.append({"clip_id": clip.strip(), "duration_s": duration,
                            "text": text.strip(), "_row": i})
    except FileNotFoundError:
        raise ManifestError(path, None, None, "not found") from None
    except UnicodeDecodeError as e:
        raise ManifestError(path, None, None, f"not UTF-8 text: {e}") from None
    return out


def parse(inputs: OwnInputs, params: LsmdcManifestParams) -> Manifest:
    """Every split's clips; clip files found by name under the media folder."""
    media = inputs.media_root(params.media)
    if media is None or not media.is_dir():
        raise ManifestError(media or inputs.folder, None, None, "media folder of the LSMDC "
                            f"clips not found: set manifest.{inputs.dataset}.media")
    files: dict[str, Path] = {}
    for f in sorted(media.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            files.setdefault(f.stem, f)
    videos = OwnVideos(inputs.dataset)
    clips = []
    for split, rel in sorted(params.annotations.items()):
        path = inputs.file(f"annotations_{split}", rel, f"annotations.{split}")
        for r in read_annotations(path):
            clip = r["clip_id"]
            vid = clip if _SAFE.match(clip) else stable_id(clip)
            f = files.get(clip)
            if f is None:   # listed anyway: the download stage records it as not_found
                movie = clip.rsplit("_", 1)[0] if "_" in clip else clip
                f = media / movie / f"{clip}.avi"
            videos.add(vid, file_url(f), clip, None, f"{path.name}:{r['_row']}",
                       r["duration_s"])
            clips.append({"clip_id": clip, "video_id": vid, "split": split, "start_s": 0.0,
                          "end_s": r["duration_s"] or WHOLE_VIDEO_S, "text": r["text"],
                          "source": f"{path.name}:{r['_row']}", "_row": r["_row"]})
    if not clips:
        raise ManifestError(inputs.folder, None, None, "the annotation files list no clips")
    by_video: dict[str, set[str]] = {}
    for c in clips:
        by_video.setdefault(c["video_id"], set()).add(c["split"])
    rows = [{"video_id": vid, "url": v["url"], "name": v["name"], "duration_s": v["duration_s"],
             "split": ",".join(sorted(by_video[vid])), "_row": v["_row"]}
            for vid, v in videos.rows.items()]
    splits = tuple(sorted(params.annotations))
    m = Manifest(inputs.dataset, splits, videos=rows, clips=clips,
                 video_extra={"name": pa.string()})
    m.youtube_ids = False
    m.roles = roles(splits, splits[-1])
    m.clip_frames = 3072   # LSMDC clips last seconds, as MSR-VTT's: the MSR-VTT length
    return m


__all__ = ["lsmdc_time", "parse", "read_annotations"]
