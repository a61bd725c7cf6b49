"""Queries against a search index (`avl search`): a spoken query (an audio or video file, or an
annotated clip's audio from the feature store) or a typed one (text models) -> the top items.

Audio files are decoded by ffmpeg to 16 kHz mono float32 (any rate and channel count is
resampled and mixed down, and the log says so), then turned into the training recipe's log-Mel
(pipeline/features/logmel.py), padded or cropped to the clip length the index records (the
length evaluation embeds clips with), pooled over its true length. Scores are the inner
products of the index (model.py says which embeddings)."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.features.logmel import SAMPLE_RATE, logmel
from pipeline.learn.runs import ModelFile
from pipeline.learn.sampling import pad_or_crop
from pipeline.search.model import SearchError, arch_of, audio_vectors, load_search_model, \
    text_vectors

log = logging.getLogger(__name__)

FFMPEG_TIMEOUT_S = 300
QUERY_MIN_S = 2.0           # search.query_min_s: see fit_query


@dataclasses.dataclass
class SearchIndex:
    """An opened index folder: its record.json, its items (rows of build.ITEMS_SCHEMA, item_id
    = position) and its VectorIndex per space (loaded on first use)."""

    folder: Path
    record: dict
    items: list[dict]
    _ann: dict = dataclasses.field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return self.record["dataset"]

    def ann(self, space: str):
        from pipeline.search.ann import VectorIndex
        if space not in self._ann:
            self._ann[space] = VectorIndex.load(self.folder / space)
        return self._ann[space]


@dataclasses.dataclass
class Query:
    """A query ready to search: its kind ("audio" file, annotated "clip", "text"), a label for
    tables and pages, its vector (D,) and what the page shows of it."""

    kind: str
    label: str
    vector: np.ndarray
    spec: np.ndarray | None = None      # (40, T) log-Mel of the true length (audio, clip)
    wave: np.ndarray | None = None      # (n,) 16 kHz mono (audio file)
    clip: dict | None = None            # the manifest row (clip)
    text: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> dict:
        d = {"kind": self.kind, "label": self.label, "notes": self.notes}
        if self.clip is not None:
            d["clip"] = {k: self.clip.get(k) for k in ("clip_id", "video_id", "start_s", "end_s",
                                                       "text")}
        if self.text is not None:
            d["text"] = self.text
        return d


def open_index(folder: Path) -> SearchIndex:
    """Reads folder/record.json and items.parquet; SearchError naming the stage that builds
    the index when the folder or its files are missing or unreadable."""
    folder = Path(folder)
    name = folder.name
    build = (f"build it with `avl index --dataset {name}` (stage index@{name}: "
             f"`dvc repro index@{name}`)")
    rec = folder / "record.json"
    if not rec.is_file():
        raise SearchError(f"{folder}: no search index there (no record.json); {build}")
    try:
        record = json.loads(rec.read_text())
        items = pq.read_table(folder / "items.parquet").to_pylist()
    except (OSError, ValueError) as e:
        raise SearchError(f"{folder}: unreadable search index ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); {build} again") \
            from None
    if len(items) != record.get("n_items"):
        raise SearchError(f"{folder}: items.parquet has {len(items)} rows, record.json says "
                          f"{record.get('n_items')}; {build} again")
    return SearchIndex(folder, record, items)


def checked_model(index: SearchIndex, checkpoint: Path | None, device: str = "cpu"
                  ) -> ModelFile:
    """The index's checkpoint (or `checkpoint`), loaded; SearchError when it is of another
    architecture than the index's or not the very file the index was built with."""
    rec = index.record
    path = Path(checkpoint) if checkpoint else Path(rec["checkpoint"])
    dev = torch.device(device if device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    mf = load_search_model(path, dev)
    arch, want = arch_of(mf), rec["arch"]
    dims = {k: mf.config.get(k) for k in ("embed_dim", "mmv_va_dim", "mmv_vat_dim")}
    rec_dims = {k: rec["model_config"].get(k) for k in dims}
    if arch != want or dims != rec_dims:
        raise SearchError(f"{path}: a {arch} model ({_dims(dims)}) but {index.folder} was built "
                          f"with a {want} model ({_dims(rec_dims)}, {rec['checkpoint']}); pass "
                          f"that checkpoint, or rebuild the index with `avl index --dataset "
                          f"{index.dataset}` and this one as search.setting")
    if mf.sha256 != rec["checkpoint_sha256"]:
        raise SearchError(f"index built with another checkpoint (sha "
                          f"{rec['checkpoint_sha256'][:12]}, {rec['checkpoint']}; {path} has "
                          f"sha {mf.sha256[:12]}); "
                          f"rebuild it with `avl index --dataset {index.dataset}` (stage "
                          f"index@{index.dataset}), or pass --checkpoint {rec['checkpoint']}")
    return mf


def _dims(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None)


def _probe_audio(path: Path) -> tuple[int, int]:
    """(sample rate, channels) of the first audio stream; SearchError when there is none."""
    try:
        r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                            "stream=sample_rate,channels", "-of", "json", str(path)],
                           capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        raise SearchError(f"{path}: cannot run ffprobe ({e}); install ffmpeg") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["not media"])[-1][:200]
        raise SearchError(f"{path}: not a readable audio or video file ({why}); give a wav, "
                          "mp3 or a video with a sound track")
    streams = json.loads(r.stdout or "{}").get("streams") or []
    if not streams:
        raise SearchError(f"{path}: has no audio stream; give a wav, mp3 or a video with a "
                          "sound track")
    return int(streams[0].get("sample_rate") or 0), int(streams[0].get("channels") or 0)


def read_audio(path: Path) -> tuple[np.ndarray, list[str]]:
    """An audio file (wav, mp3, ...) or a video's sound track -> ((n,) float32 16 kHz mono,
    notes: what was converted). SearchError in one line for a missing, empty, unreadable or
    zero-length file, or one that is all silence."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"{path}: query file not found")
    if path.stat().st_size == 0:
        raise SearchError(f"{path}: empty file (0 bytes); record the query again")
    rate, channels = _probe_audio(path)
    try:
        r = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-vn",
                            "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:"],
                           capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        raise SearchError(f"{path}: ffmpeg could not decode it ({e})") from None
    if r.returncode != 0:
        why = (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1][:200]
        raise SearchError(f"{path}: ffmpeg could not decode its audio ({why})")
    wave = np.frombuffer(r.stdout, dtype="<f4").astype(np.float32)
    if wave.size == 0:
        raise SearchError(f"{path}: its audio has length zero (no samples decoded); record "
                          "a query of at least half a second")
    if not np.any(np.abs(wave) > 1e-6):
        raise SearchError(f"{path}: its audio is all silence ({wave.size / SAMPLE_RATE:.2f} s "
                          "of zeros); record the query again")
    notes = []
    if rate != SAMPLE_RATE or channels != 1:
        notes.append(f"resampled from {rate} Hz, {channels} channel(s) to {SAMPLE_RATE} Hz mono")
        log.info("%s: %s (the features' recipe)", path, notes[-1])
    return wave, notes


def spec_input(spec: np.ndarray, frames: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A (40, T) log-Mel -> the model's audio input: ((1, 40, frames) padded or cropped, (1,)
    true length (uncropped, as AnnotatedClips gives it), notes when cropped)."""
    notes = []
    t = spec.shape[1]
    if t > frames + 1:            # 1 + n // 160 frames: a query of exactly the length
        notes.append(f"query is {t / 100:.1f} s; its first {frames / 100:.1f} s are used (the "
                     "clip length the model was evaluated with)")
        log.warning("%s", notes[-1])
    x, _ = pad_or_crop(np.asarray(spec, np.float32), frames)
    return torch.from_numpy(x)[None], torch.tensor([t]), notes


def fit_query(wave: np.ndarray, min_s: float) -> tuple[np.ndarray, list[str]]:
    """A query shorter than min_s seconds -> its sound (leading and trailing samples below 1 %
    of its peak cut) centred in min_s of silence, and a note; a longer one unchanged.

    The model learnt from clips of several seconds in which speech alternates with pauses, and
    its audio vector is a mean over time: a lone word cut tight reads as all speech and lands
    on a few hub clips (on the demo, 1 of 10 spoken names found at rank 1 as recorded, 6 of 10
    centred in 2 s)."""
    wave = np.asarray(wave, np.float32)
    n = round(min_s * SAMPLE_RATE)
    if min_s <= 0 or len(wave) >= n:
        return wave, []
    loud = np.flatnonzero(np.abs(wave) > 0.01 * float(np.abs(wave).max()))
    sound = wave[loud[0]:loud[-1] + 1] if len(loud) else wave
    out = np.zeros(max(n, len(sound)), np.float32)
    at = (len(out) - len(sound)) // 2
    out[at:at + len(sound)] = sound
    return out, [f"query of {len(sound) / SAMPLE_RATE:.2f} s centred in {min_s:g} s of "
                 "silence (search.query_min_s)"]


def audio_query(index: SearchIndex, mf: ModelFile, wave: np.ndarray, label: str,
                notes: list[str] | None = None, min_s: float = QUERY_MIN_S) -> Query:
    """A 16 kHz mono wave -> Query (fit_query to min_s, then its log-Mel, the recipe's, and the
    model's audio vector)."""
    wave, fitted = fit_query(wave, min_s)
    spec = logmel(wave).numpy()
    x, n, more = spec_input(spec, index.record["clip_frames"])
    dev = next(mf.model.parameters()).device
    vec = audio_vectors(mf.model, arch_of(mf), x.to(dev), n.to(dev))[0].numpy()
    return Query("audio", label, vec, spec=spec, wave=wave,
                 notes=[*(notes or []), *fitted, *more])


def file_query(index: SearchIndex, mf: ModelFile, path: Path, min_s: float = QUERY_MIN_S
               ) -> Query:
    """--audio FILE: read_audio then audio_query."""
    wave, notes = read_audio(path)
    return audio_query(index, mf, wave, str(path), notes, min_s)


def clip_query(index: SearchIndex, mf: ModelFile, clip_id: str, verify: str = "size") -> Query:
    """--clip CLIP_ID: that annotated clip's audio from the feature store (the record's
    features and manifest), exactly as evaluation reads it."""
    from pipeline.data.manifest import read_clips
    from pipeline.features.store import FeatureStore
    from models.avlnet import visual_of
    from pipeline.learn.avdata import AnnotatedClips, ClipRef
    rec = index.record
    manifest = Path(rec["manifest"]) / "clips.parquet"
    rows = [r for r in read_clips(manifest).to_pylist() if r["clip_id"] == clip_id]
    if not rows:
        raise SearchError(f"{manifest}: no clip {clip_id!r}; give a clip_id of that file")
    r = rows[0]
    store = FeatureStore(rec["features"], verify=verify)
    ds = AnnotatedClips(store, [ClipRef(r["clip_id"], r["video_id"], r["start_s"], r["end_s"])],
                        rec["clip_frames"], visual_of(mf.model))
    if not len(ds):
        raise SearchError(f"clip {clip_id}: its video {r['video_id']} has no usable features "
                          f"in {rec['features']}; run extract@{index.dataset}")
    item = ds[0]
    dev = next(mf.model.parameters()).device
    vec = audio_vectors(mf.model, arch_of(mf), item["spec"][None].to(dev),
                        item["nframes"].reshape(1).to(dev))[0].numpy()
    n = int(min(item["nframes"], item["spec"].shape[1]))
    return Query("clip", f"clip {clip_id}", vec, spec=item["spec"][:, :n].numpy(), clip=r)


def text_query(index: SearchIndex, mf: ModelFile, text: str, words, max_words: int = 20
               ) -> Query:
    """--text: tokenized and encoded as evaluation does (WordVectors.encode, max_words slots);
    SearchError on an audio-video index or when no word is in the word vectors."""
    arch = arch_of(mf)
    if "text" not in index.record["query_spaces"]:
        raise SearchError(f"{index.folder}: an audio-video index ({arch} model, no text "
                          "tower): --text needs an index built with a text model (search."
                          "setting: a data/text-models/... checkpoint); query it with --audio "
                          "or --clip")
    if not text.strip():
        raise SearchError("--text is empty; type a few words")
    if mf.config.get("word_dim", words.dim) != words.dim:
        raise SearchError(f"{index.record['checkpoint']}: its text branch takes "
                          f"{mf.config['word_dim']}-d word vectors, {words.source} has "
                          f"{words.dim}-d ones; use the ones it was trained with "
                          "(text.word_vectors)")
    vec = np.asarray(words.encode(text, max_words=max_words), np.float32)
    if not vec.any():
        raise SearchError(f"--text {text!r}: none of its words is in the word vectors "
                          f"({words.source}); try other words")
    dev = next(mf.model.parameters()).device
    q = text_vectors(mf.model, arch, torch.from_numpy(vec)[None].to(dev))[0].numpy()
    return Query("text", repr(text), q, text=text)


def search(index: SearchIndex, query: Query, top: int = 10) -> list[dict]:
    """The `top` items scoring highest against the query (its kind's space) -> rows of
    {rank, item_id, video_id, clip_id, start_s, end_s, text, split, score}, best first."""
    space = index.record["query_spaces"]["text" if query.kind == "text" else "audio"]
    scores, ids = index.ann(space).search(query.vector[None].astype(np.float32), top)
    out = []
    for s, i in zip(scores[0].tolist(), ids[0].tolist()):
        if i < 0:
            continue
        out.append({"rank": len(out) + 1, **index.items[i], "score": float(s)})
    return out


def format_table(results: list[dict]) -> str:
    """The results as a plain-text table: rank, video_id, start-end, score, clip_id, text."""
    head = f"{'rank':>4}  {'video_id':<14} {'start-end s':>13}  {'score':>9}  " \
           f"{'clip_id':<20} text"
    lines = [head, "-" * len(head)]
    for r in results:
        span = f"{r['start_s']:.1f}-{r['end_s']:.1f}"
        lines.append(f"{r['rank']:>4}  {r['video_id']:<14} {span:>13}  {r['score']:>9.4f}  "
                     f"{r['clip_id'] or '-':<20} {r['text'] or ''}")
    return "\n".join(lines)


def result_json(index: SearchIndex, query: Query, results: list[dict]) -> dict:
    """What --json writes: the query, the index and its checkpoint, the ranked results."""
    rec = index.record
    return {"query": query.describe(), "index": str(index.folder), "dataset": rec["dataset"],
            "units": rec["units"], "checkpoint": rec["checkpoint"],
            "checkpoint_sha256": rec["checkpoint_sha256"], "results": results}
