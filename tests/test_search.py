"""Spoken-query search (pipeline/search): index builds on clips and windows, queries by audio
file, clip and text whose scores equal brute-force dot products of the model's own evaluation
embeddings, every bad input's one-line error, the results page, the spoken-concept check."""
from __future__ import annotations

import json
import shutil
import subprocess
import wave

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.config import ModelParams, from_dict, to_dict
from pipeline.download.ledger import AVAILABILITY_SCHEMA
from pipeline.evaluate.text import direction_pairs
from pipeline.features.logmel import logmel
from pipeline.features.store import FeatureStore, ShardWriter, VideoRecord, recipe_sha256, \
    write_index
from pipeline.learn.avdata import AnnotatedClips, ClipRef
from pipeline.learn.runs import collate_clips
from pipeline.learn.sampling import pad_or_crop
from pipeline.learn.textdata import TextClips
from pipeline.learn.train import build_model, embed
from pipeline.search import query as q
from pipeline.search.build import build_index, windows
from pipeline.search.model import SearchError, audio_vectors
from pipeline.search.page import load_media, search_page, section
from pipeline.text.words import load_word_vectors, write_word2vec
from tests.test_evaluate import _arrays as evaluate_arrays

K = 4
NAMES = ["tomato", "carrot", "cheese", "lime"]
SECONDS = 14
N_VIDEOS = 8
WIDTHS = [8, 16, 16, 32]


def _arrays(concept: int, rng) -> dict:
    """Features whose every row carries the concept (plus noise), as in test_evaluate."""
    return evaluate_arrays(concept, SECONDS, rng)


def _ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *map(str, args)], check=True,
                   timeout=60)


def _wav(path, x: np.ndarray, sr: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def _save_model(path, seed: int, **model) -> None:
    """A seeded model of the given ModelParams saved as our checkpoints hold it."""
    mp = from_dict(ModelParams, {"embed_dim": 32, "audio_widths": WIDTHS,
                                 "video_norm": "batchnorm", **model})
    torch.manual_seed(seed)
    m = build_model(mp)
    for mod in m.modules():        # batchnorm statistics as after training, not the identity
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(0, 0.02)
            mod.running_var.uniform_(0.5, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": m.state_dict(), "config": to_dict(mp)}, path)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("proj")
    rng = np.random.default_rng(0)
    store = d / "features"
    recipe = {"dtype": "float16", "note": "synthetic"}
    w = ShardWriter(store / "shard-00000.h5", recipe)
    videos, clips, ledger = [], [], []
    media = d / "data" / "videos" / "demo"
    media.mkdir(parents=True)
    for i in range(N_VIDEOS):
        vid, split, concept = f"synthvid{i:03d}", ("train" if i < 6 else "val"), i % K
        w.add(VideoRecord(vid, "ok", {"recipe_sha256": recipe_sha256(recipe)},
                          _arrays(concept, rng)))
        videos.append({"video_id": vid, "url": f"file:{vid}", "split": split,
                       "duration_s": float(SECONDS)})
        for j in range(2):
            clips.append({"clip_id": f"{vid}_{j}", "video_id": vid, "split": split,
                          "start_s": 1.0 + 6 * j, "end_s": 4.5 + 6 * j,
                          "text": f"slice the {NAMES[concept]}", "source": "test"})
        _ffmpeg("-f", "lavfi", "-i", f"color=c=0x{30 * i:02x}8040:size=32x24:rate=2",
                "-f", "lavfi", "-i", f"sine=frequency={300 + 100 * i}", "-t", SECONDS,
                "-c:v", "libx264", "-c:a", "aac", "-shortest", media / f"{vid}.mp4")
        ledger.append({"video_id": vid, "url": f"file:{vid}", "split": split,
                       "status": "available", "path": f"data/videos/demo/{vid}.mp4",
                       "attempts": 1})
    write_index(w.close(), store / "index.parquet")
    (store / "recipe.json").write_text(json.dumps(recipe))
    m = d / "manifest"
    m.mkdir()
    videos.append({"video_id": "lostvideo01", "url": "file:lost", "split": "val",
                   "duration_s": 10.0})
    clips.append({"clip_id": "lostvideo01_0", "video_id": "lostvideo01", "split": "val",
                  "start_s": 0.0, "end_s": 3.0, "text": "slice the lime", "source": "test"})
    pq.write_table(pa.Table.from_pylist(videos), m / "videos.parquet")
    pq.write_table(pa.Table.from_pylist(clips), m / "clips.parquet")
    pq.write_table(pa.Table.from_pylist(ledger, schema=AVAILABILITY_SCHEMA),
                   m / "availability.parquet")
    (m / "manifest.json").write_text(json.dumps({"splits": {}}))
    models = d / "models"
    _save_model(models / "av.pt", 0)
    _save_model(models / "av-other.pt", 1)
    for arch in ("avlnet_text_tri", "avlnet_text_fused", "mmv_fac"):
        _save_model(models / f"{arch}.pt", 2, arch=arch, word_dim=8, mmv_va_dim=24,
                    mmv_vat_dim=16)
    vocab = ["slice", "the", *NAMES]
    write_word2vec(d / "words.bin", vocab, np.random.default_rng(1).standard_normal(
        (len(vocab), 8)).astype(np.float32))
    # query files: a 2 s wav, its 44.1 kHz stereo and mp3 versions, a zero-length and a
    # silent wav, a text file, a video without sound
    t = np.arange(32000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 \
        + 0.02 * np.random.default_rng(2).standard_normal(t.size)
    qd = d / "queries"
    qd.mkdir()
    _wav(qd / "q.wav", x)
    _ffmpeg("-i", qd / "q.wav", "-ar", 44100, "-ac", 2, qd / "stereo44k.wav")
    _ffmpeg("-i", qd / "q.wav", "-ar", 44100, "-ac", 2, "-c:a", "libmp3lame", qd / "q.mp3")
    _wav(qd / "zero.wav", np.zeros(0))
    _wav(qd / "silent.wav", np.zeros(16000))
    (qd / "empty.wav").write_bytes(b"")
    (qd / "notes.wav").write_text("not audio at all\n")
    _ffmpeg("-f", "lavfi", "-i", "color=size=32x24:rate=2", "-t", 2, "-c:v", "libx264",
            qd / "mute.mp4")
    return d


def _build(d, name: str, model: str = "av.pt", **kw) -> q.SearchIndex:
    out = d / "search" / name
    if not out.exists():
        build_index("demo", d / "features", d / "manifest", d / "models" / model, out,
                    setting=str(d / "models" / model), clip_frames=512, verify="size", **kw)
    return q.open_index(out)


def _model(index):
    return q.checked_model(index, None)


def test_windows_cover_the_video():
    assert windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert windows(9, 4, 2) == [(0, 4), (2, 6), (4, 8), (5, 9)]
    assert windows(3, 4, 2) == [(0, 3)] and windows(0, 4, 2) == []


def test_clip_index_record_and_items(project):
    index = _build(project, "clips")
    rec = index.record
    assert rec["n_items"] == 2 * N_VIDEOS == len(index.items)
    assert rec["videos_without_features"] == 1 and rec["clips_without_features"] == 1
    assert rec["videos_without_features_ids"] == ["lostvideo01"]
    assert rec["arch"] == "avlnet" and rec["spaces"]["video"]["dim"] == 32
    assert len(rec["checkpoint_sha256"]) == 64 and rec["recipe_sha256"]
    assert (index.folder / "video" / "index.faiss").is_file()
    assert index.items[3]["clip_id"] == "synthvid001_1" and index.items[3]["item_id"] == 3
    assert not list(index.folder.parent.glob(".*tmp*"))     # built in a temp folder, renamed


@pytest.mark.parametrize("arch", ["avlnet", "avlnet_text_tri", "avlnet_text_fused",
                                  "mmv_fac"])
def test_clip_and_text_queries_score_the_models_own_embeddings(project, arch):
    model = "av.pt" if arch == "avlnet" else f"{arch}.pt"
    index = _build(project, f"clips-{arch}", model)
    mf = _model(index)
    refs = [ClipRef(r["clip_id"], r["video_id"], r["start_s"], r["end_s"])
            for r in index.items]
    ac = AnnotatedClips(FeatureStore(project / "features", verify="size"), refs, 512)
    if arch == "avlnet":
        e = embed(mf.model, DataLoader(ac, batch_size=8, collate_fn=collate_clips), "cpu")
        pairs = {"audio_to_video": (e["audio"], e["video"])}
    else:
        words = load_word_vectors(project / "words.bin", project / "wcache", expected_dim=8)
        tc = TextClips(ac, [[r["text"]] for r in index.items], words, train=False)
        e = embed(mf.model, DataLoader(tc, batch_size=8, collate_fn=collate_clips), "cpu")
        pairs = direction_pairs(arch, e)
    a, v = pairs["audio_to_video"]
    i = 5
    res = q.search(index, q.clip_query(index, mf, index.items[i]["clip_id"]), top=6)
    brute = (a[i] @ v.T).numpy()
    order = np.argsort(-brute, kind="stable")[:6]
    assert [r["item_id"] for r in res] == order.tolist()
    assert [r["score"] for r in res] == pytest.approx(brute[order].tolist(), rel=1e-4, abs=1e-5)
    if arch != "avlnet":
        t, v = pairs["text_to_video"]
        res = q.search(index, q.text_query(index, mf, index.items[i]["text"], words), top=6)
        brute = (t[i] @ v.T).numpy()
        assert [r["score"] for r in res] == pytest.approx(
            np.sort(brute)[::-1][:6].tolist(), rel=1e-4, abs=1e-5)


def test_window_index_scores_its_windows(project):
    index = _build(project, "windows", units="windows", window_s=4.0, hop_s=2.0)
    n_win = len(windows(SECONDS, 4.0, 2.0))
    assert index.record["n_items"] == N_VIDEOS * n_win and index.record["units"] == "windows"
    assert index.record["videos_without_features"] == 1
    it = index.items[:n_win]
    # a window takes the clip it overlaps most (1.0-4.5 and 7.0-10.5 s in each video)
    # (at least half the shorter of the two); 4-8 s and 10-14 s overlap too little
    assert [(r["start_s"], r["clip_id"]) for r in it] == [
        (0, "synthvid000_0"), (2, "synthvid000_0"), (4, None), (6, "synthvid000_1"),
        (8, "synthvid000_1"), (10, None)]
    assert it[0]["text"] == "slice the tomato" and it[2]["text"] is None
    mf = _model(index)
    refs = [ClipRef(f"w{r['item_id']}", r["video_id"], r["start_s"], r["end_s"])
            for r in index.items]
    ac = AnnotatedClips(FeatureStore(project / "features", verify="size"), refs, 512)
    e = embed(mf.model, DataLoader(ac, batch_size=16, collate_fn=collate_clips), "cpu")
    query = q.file_query(index, mf, project / "queries" / "q.wav")
    res = q.search(index, query, top=index.record["n_items"])
    brute = e["video"].numpy() @ query.vector
    assert len(res) == len(index.items)
    assert {r["item_id"]: r["score"] for r in res} == pytest.approx(
        dict(enumerate(brute.tolist())), rel=1e-4, abs=1e-5)


def test_audio_file_queries_wav_mp3_stereo_and_video(project, caplog):
    index = _build(project, "clips")
    mf = _model(index)
    qd = project / "queries"
    wav = q.file_query(index, mf, qd / "q.wav")
    wave16, _ = q.read_audio(qd / "q.wav")
    wave16, fitted = q.fit_query(wave16, q.QUERY_MIN_S)
    assert wav.notes == fitted
    x, _ = pad_or_crop(logmel(wave16).numpy(), 512)
    direct = audio_vectors(mf.model, "avlnet", torch.from_numpy(x)[None],
                           torch.tensor([logmel(wave16).shape[1]]))[0].numpy()
    assert wav.vector == pytest.approx(direct, rel=1e-5, abs=1e-6)
    with caplog.at_level("INFO"):
        for name in ("stereo44k.wav", "q.mp3"):
            other = q.file_query(index, mf, qd / name)
            assert other.notes[0] == "resampled from 44100 Hz, 2 channel(s) to 16000 Hz mono"
            assert np.corrcoef(other.vector, wav.vector)[0, 1] > 0.9
    assert "resampled from 44100 Hz" in caplog.text
    video = q.file_query(index, mf, project / "data/videos/demo/synthvid002.mp4")
    assert len(q.search(index, video, 3)) == 3
    table = q.format_table(q.search(index, wav, 4))
    assert table.count("\n") == 5 and "slice the" in table
    json.dumps(q.result_json(index, wav, q.search(index, wav, 4)))


@pytest.mark.parametrize("name, message", [
    ("missing.wav", "query file not found"),
    ("empty.wav", "empty file \\(0 bytes\\)"),
    ("notes.wav", "not a readable audio or video file"),
    ("zero.wav", "length zero"),
    ("silent.wav", "all silence"),
    ("mute.mp4", "has no audio stream"),
])
def test_bad_query_files_are_one_line_errors(project, name, message):
    index = _build(project, "clips")
    with pytest.raises(SearchError, match=message) as e:
        q.file_query(index, _model(index), project / "queries" / name)
    assert "\n" not in str(e.value) and name in str(e.value)


def test_bad_model_index_and_query_kind_errors(project, tmp_path):
    index = _build(project, "clips")
    with pytest.raises(SearchError, match="a avlnet_text_tri model .* was built with a avlnet"):
        q.checked_model(index, project / "models" / "avlnet_text_tri.pt")
    with pytest.raises(SearchError, match=r"^index built with another checkpoint \(sha "
                                          r"[0-9a-f]{12}.*rebuild it with `avl index"):
        q.checked_model(index, project / "models" / "av-other.pt")
    words = load_word_vectors(project / "words.bin", project / "wcache", expected_dim=8)
    with pytest.raises(SearchError, match="an audio-video index .* --text needs an index "
                                          "built with a text model"):
        q.text_query(index, _model(index), "slice the lime", words)
    with pytest.raises(SearchError, match=r"no search index there .* index@nowhere"):
        q.open_index(tmp_path / "nowhere")
    with pytest.raises(SearchError, match="no clip 'nope'"):
        q.clip_query(index, _model(index), "nope")
    with pytest.raises(SearchError, match="has no usable features"):
        q.clip_query(index, _model(index), "lostvideo01_0")
    tri = _build(project, "clips-avlnet_text_tri", "avlnet_text_tri.pt")
    with pytest.raises(SearchError, match="none of its words is in the word vectors"):
        q.text_query(tri, _model(tri), "zucchini", words)


def test_results_page_has_a_frame_and_a_player_per_result(project, monkeypatch):
    index = _build(project, "clips")
    mf = _model(index)
    monkeypatch.chdir(project)
    media = load_media(index, project, [project / "data/videos/demo"])
    assert len(media) == N_VIDEOS
    sections = []
    for query in (q.file_query(index, mf, project / "queries" / "q.wav"),
                  q.clip_query(index, mf, "synthvid003_0")):
        sections.append(section(query, q.search(index, query, 5), media, query.label))
    html = search_page(index, sections)
    # per query: its spectrogram and player, then 5 results with a frame and a player each
    assert html.count("<img") == 2 * 6 and html.count("<audio") == 2 * 6
    assert html.count("data:image/png;base64,") == 12 and "no frame" not in html


def test_spoken_concept_check_writes_its_reports(project, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from pipeline.search.spoken import contains_word, spoken_check
    assert contains_word("slice the Egg", "egg") and not contains_word("an eggplant", "egg")
    _build(project, "clips")
    s = spoken_check(project / "search" / "clips", ["tomato", "lime"], tmp_path, top=5)
    assert s["n_words"] == 2 and 0 <= s["hit_rate"] <= 1 and s["voice"] == "en-gb"
    for w in ("tomato", "lime"):
        v = s["words"][w]
        assert len(v["top5"]) == 5 and v["hit"] == (v["first_hit_rank"] == 1)
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["hits"] == s["hits"]
    assert "| tomato |" in (tmp_path / "demo.md").read_text()
    page = (tmp_path / "demo.html").read_text()
    assert page.count("<audio") == 2 and "no frame" in page     # no media given: placeholders


def test_a_short_query_is_trimmed_and_centred_in_silence():
    sr = q.SAMPLE_RATE
    word = (0.5 * np.sin(np.linspace(0.1, 400, sr // 2))).astype(np.float32)
    wave = np.concatenate([np.zeros(sr // 10, np.float32), word, np.zeros(sr // 5, np.float32)])
    out, notes = q.fit_query(wave, 2.0)
    assert len(out) == 2 * sr
    assert notes == ["query of 0.50 s centred in 2 s of silence (search.query_min_s)"]
    at = (2 * sr - len(word)) // 2
    assert np.array_equal(out[at:at + len(word)], word)          # the sound, centred
    assert not out[:at].any() and not out[at + len(word):].any()
    long = np.ones(3 * sr, np.float32)
    assert np.array_equal(q.fit_query(long, 2.0)[0], long) and q.fit_query(long, 2.0)[1] == []
    same, none = q.fit_query(wave, 0.0)                           # 0: as recorded
    assert np.array_equal(same, wave) and none == []
