"""Concept discovery (extensions.md §3): the numpy core on planted data, step times and word
labels, the unpooled audio path's weights, and the analysis end to end on a synthetic project."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models.avlnet import AVLnet
from pipeline.analysis.concepts import STEP_S, ConceptsError, TopK, _waveform, _words_near, \
    check_audio_video, clip_labels, dimension_table, discover, found, load_words, majority, \
    project_steps, rank_dimensions, step_embeddings, step_features, step_labels, step_times, \
    top_k
from pipeline.config import ModelParams, TrainParams
from pipeline.download.ledger import AVAILABILITY_SCHEMA
from pipeline.features.store import ShardWriter, VideoRecord, recipe_sha256, write_index
from pipeline.learn.runs import pretrain
from tests.test_evaluate import _arrays

NAMES = ("tomato", "carrot", "cheese", "lime")


# ------------------------------------------------------------------ the numpy core


def test_planted_dimension_has_its_exact_purities():
    rng = np.random.default_rng(0)
    acts = rng.random((30, 3)) * 0.1                       # background below 0.1
    acts[:10, 0] = 1 + np.arange(10)                       # dim 0: items 0..9 on top
    labels = [()] * 30
    labels[:10] = [("carrot",)] * 7 + [("tomato", "carrot")] * 1 + [("tomato",)] + [()]
    top = top_k(acts, 10)
    assert top.shape == (10, 3) and list(top[:, 0]) == list(range(9, -1, -1))
    names, purity = majority(top, labels)
    assert names[0] == "carrot" and purity[0] == pytest.approx(0.8)   # 7 + the two-label item
    # a tie is broken alphabetically; a dimension with no labelled item has None and 0
    tie = np.array([[0], [8]])
    assert majority(tie, labels)[0] == ["carrot"]
    n, p = majority(np.array([[20], [21]]), labels)
    assert n == [None] and p[0] == 0


def test_ranking_by_geometric_mean_ties_by_index():
    a, v = np.array([1.0, 0.25, 0.5, 1.0]), np.array([0.25, 1.0, 0.5, 0.0])
    geo, rank = rank_dimensions(a, v)
    assert geo == pytest.approx([0.5, 0.5, 0.5, 0.0])
    assert list(rank) == [1, 2, 3, 4]
    geo, rank = rank_dimensions(np.array([0.1, 0.9]), np.array([0.1, 0.4]))
    assert list(rank) == [2, 1] and geo[1] == pytest.approx(0.6)


def test_streaming_top_k_equals_the_full_sort():
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((500, 12)).astype(np.float32)
    acc, first = TopK(7, 12), 0
    for n in (3, 100, 1, 250, 146):                          # batches smaller and larger than k
        acc.update(acts[first:first + n], first)
        first += n
    assert np.array_equal(acc.indices(), top_k(acts, 7))
    small = TopK(50, 12)                                     # fewer items than k
    small.update(acts[:20], 0)
    assert np.array_equal(small.indices(), top_k(acts[:20], 50))


def test_dimension_table_and_concepts_found():
    a_lab = [("carrot",), ("carrot",), ("lime",), ()]
    v_lab = [("carrot",), ("carrot",), ("lime",)]
    a_top = np.array([[0, 2, 3], [1, 3, 2]])                # dims: carrot 1.0, lime .5, ...
    v_top = np.array([[0, 2, 2], [1, 0, 1]])
    t = dimension_table(a_top, a_lab, v_top, v_lab)
    assert t["audio_label"] == ["carrot", "lime", "lime"]
    assert list(t["audio_purity"]) == [1.0, 0.5, 0.5]
    assert t["visual_label"] == ["carrot", "carrot", "carrot"]
    assert list(t["visual_purity"]) == [1.0, 0.5, 0.5]
    assert list(t["rank"]) == [1, 2, 3]
    f = found(t, 0.5)
    assert f["dims_both_above"] == 1 and f["concepts_found"] == ["carrot"]
    assert found(t, 0.4)["dims_both_above"] == 3
    assert found(t, 0.4)["concepts_found"] == ["carrot"]     # lime/carrot dims disagree


# ------------------------------------------------------------------ times and labels


def test_step_times_and_word_windows(tmp_path):
    assert step_times(10.0, 3) == pytest.approx([10.08, 10.24, 10.40])
    assert STEP_S == pytest.approx(0.16)
    path = tmp_path / "words.parquet"
    pq.write_table(pa.table({"video_id": ["v", "v", "v", "w"],
                             "start_s": [12.0, 5.0, 9.0, 0.0], "end_s": [12.5, 8.0, 9.2, 1.0],
                             "word": ["Carrot", "lime", "the", "egg"]}), path)
    words = load_words(path, ["the"], "hint")
    assert sorted(words) == ["v", "w"] and words["v"][2] == ["carrot", "lime"]  # no "the"
    times = np.array([10.0, 9.99, 10.01, 14.5, 14.51])
    got = step_labels(times, words["v"], 2.0)
    # [t-2, t+2] closed: 10.0 touches carrot's start (12.0) and lime's end (8.0)
    assert got == [("carrot", "lime"), ("lime",), ("carrot",), ("carrot",), ()]
    assert step_labels(times[:2], None, 2.0) == [(), ()]
    with pytest.raises(ConceptsError, match=r"nope.parquet: no word timings; stage demo"):
        load_words(tmp_path / "nope.parquet", [], "stage demo writes it")
    pq.write_table(pa.table({"video_id": ["v"], "word": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConceptsError, match="lacks column.*start_s, end_s"):
        load_words(tmp_path / "bad.parquet", [], "hint")


def test_clip_labels_are_whole_vocabulary_words():
    got = clip_labels(["Slice the carrot", "cut the eggplant in half", "add olive oil", None,
                       "the egg and the lime"], ["carrot", "egg", "Olive oil", "lime"])
    assert got == [("carrot",), (), ("olive oil",), (), ("egg", "lime")]


# ------------------------------------------------------------------ the unpooled audio path


@pytest.mark.parametrize("head", ["gating", "linear", "mlp"])
def test_step_embeddings_reuse_the_pooled_paths_weights(head):
    torch.manual_seed(0)
    m = AVLnet(embed_dim=8, head=head, audio_widths=(8, 16, 16, 32)).eval()
    spec, nframes = torch.randn(3, 40, 320), torch.tensor([320, 70, 5])
    with torch.no_grad():
        feats, steps = step_features(m, spec, nframes)                   # (3, 20, 32)
        assert feats.shape == (3, 20, 32) and steps.tolist() == [20, 4, 1]
        mean = torch.stack([feats[i, :n].mean(0) for i, n in enumerate(steps.tolist())])
        assert torch.allclose(project_steps(m, mean), m.encode_audio(spec, nframes), atol=1e-5)
        emb, _ = step_embeddings(m, spec, nframes)                       # (3, 20, 8)
        assert emb.shape == (3, 20, 8)
        assert torch.allclose(emb[1, 2], project_steps(m, feats[1, 2]), atol=1e-6)


def test_stage_defaults(tmp_path):
    from pipeline.analysis.concepts import demo_vocabulary, setting_checkpoint, words_file
    assert words_file("demo", {}) == Path("data/demo/words.parquet")
    assert words_file("youcook2", {}) == Path("data/speech/youcook2/words.parquet")
    assert words_file("youcook2", {"youcook2": "x.parquet"}) == Path("x.parquet")
    assert demo_vocabulary(3) == ["tomato", "carrot", "cheese"]
    assert setting_checkpoint("demo", tmp_path, "fine_tuned") == \
        tmp_path / "finetune-demo" / "final.pt"
    assert setting_checkpoint("demo", tmp_path, "zero_shot") == tmp_path / "pretrain/final.pt"
    assert setting_checkpoint("demo", tmp_path, "a/b.pt") == Path("a/b.pt")


def test_a_text_model_is_refused(tmp_path):
    from models.avlnet_text import AVLnetTextTri
    tri = AVLnetTextTri(8, (8, 16, 16, 32), "none", 300)
    with pytest.raises(ConceptsError, match="tri.pt: a avlnet_text_tri model; concept discovery "
                                            "needs an audio-video AVLnet"):
        check_audio_video(tri, {"arch": "avlnet_text_tri"}, tmp_path / "tri.pt")
    check_audio_video(AVLnet(8, audio_widths=(8, 16, 16, 32)), {}, tmp_path / "ok.pt")


# ------------------------------------------------------------------ end to end


def _ledger_row(vid: str, path: str) -> dict:
    row = {f.name: None for f in AVAILABILITY_SCHEMA}
    row.update(video_id=vid, url=f"file:{vid}", split="val", status="available", path=path,
               attempts=1)
    return row


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """24 videos of 4 concepts (16 train, 8 val), 2 clips each captioned with the concept, the
    concept's name spoken in each clip, a tiny model pretrained for 2 epochs, and one val
    video's media file in the ledger."""
    d = tmp_path_factory.mktemp("concepts")
    rng = np.random.default_rng(0)
    store, recipe = d / "features", {"dtype": "float16", "note": "synthetic"}
    w = ShardWriter(store / "shard-00000.h5", recipe)
    videos, clips, words = [], [], []
    for i in range(24):
        vid, split, k = f"synthvid{i:03d}", ("train" if i < 16 else "val"), i % len(NAMES)
        w.add(VideoRecord(vid, "ok", {"recipe_sha256": recipe_sha256(recipe)},
                          _arrays(k, 14, rng)))
        videos.append({"video_id": vid, "url": f"file:{vid}", "split": split, "duration_s": 14.})
        for j in range(2):
            a = 1.0 + 6 * j
            clips.append({"clip_id": f"{vid}:{j}", "video_id": vid, "split": split,
                          "start_s": a, "end_s": a + 3.0, "text": f"slice the {NAMES[k]}",
                          "source": "test"})
            words += [(vid, a + 0.25, a + 0.9, NAMES[k]), (vid, a + 0.1, a + 0.2, "the")]
    write_index(w.close(), store / "index.parquet")
    (store / "recipe.json").write_text(json.dumps(recipe))
    m = d / "manifest"
    m.mkdir()
    pq.write_table(pa.Table.from_pylist(videos), m / "videos.parquet")
    pq.write_table(pa.Table.from_pylist(clips), m / "clips.parquet")
    (m / "manifest.json").write_text(json.dumps({"splits": {
        "train": {"clip_checksum": "t" * 64}, "val": {"clip_checksum": "v" * 64}}}))
    pq.write_table(pa.table(dict(zip(("video_id", "start_s", "end_s", "word"), zip(*words)))),
                   d / "words.parquet")
    media = d / "videos" / "synthvid016.mp4"
    media.parent.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=5", "-f", "lavfi", "-i", "sine", "-t", "14",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(media)], check=True,
                   timeout=60)
    pq.write_table(pa.Table.from_pylist([_ledger_row("synthvid016", "videos/synthvid016.mp4")],
                                        schema=AVAILABILITY_SCHEMA), m / "availability.parquet")
    tp = TrainParams(model=ModelParams(embed_dim=32, audio_widths=[8, 16, 16, 32]), epochs=2,
                     videos_per_batch=8, clips_per_video=2, workers=0, seed=0)
    pretrain("demo", store, m, d / "models/pretrain", tp)
    return d


def _discover(d, out, **kw):
    args = dict(words=d / "words.parquet", vocabulary=list(NAMES), top=4, show=3,
                availability=d / "manifest" / "availability.parquet", videos_root=d,
                videos_dir=d / "videos", setting="zero_shot", batch=5)
    return discover("demo", d / "features", d / "manifest", d / "models/pretrain/final.pt", out,
                    **{**args, **kw})


def test_discover_writes_every_report(project):
    d, out = project, project / "reports"
    s = _discover(d, out)
    assert s["n_dims"] == 32 and s["n_clips"] == 16 and s["n_clips_labelled"] == 16
    # 3 s clips of 300 frames: 18 steps each; every step is within 2 s of a spoken name
    assert s["n_steps"] == 16 * 18 and s["n_steps_with_words"] == 16 * 18
    assert s["settings"]["split"] == "val" and s["settings"]["top"] == 4
    assert "the" in s["settings"]["stop_words"]
    t = pq.read_table(out / "demo" / "dimensions.parquet").to_pylist()
    assert len(t) == 32 and sorted(r["rank"] for r in t) == list(range(1, 33))
    assert all(r["audio_label"] in NAMES and r["visual_label"] in NAMES for r in t)
    for r in t:                         # purities are multiples of 1/top
        assert r["audio_purity"] * 4 == pytest.approx(round(r["audio_purity"] * 4))
        assert r["geo_mean"] == pytest.approx((r["audio_purity"] * r["visual_purity"]) ** 0.5)
    best = min(t, key=lambda r: r["rank"])
    assert s["top_dims"][0] == pytest.approx(best)
    saved = json.loads((out / "demo.json").read_text())
    assert saved["n_concepts_found"] == len(saved["concepts_found"]) <= 4
    both = [r for r in t if r["audio_purity"] > 0.5 and r["visual_purity"] > 0.5]
    assert saved["dims_both_above"] == len(both)
    assert set(saved["concepts_found"]) == {r["visual_label"] for r in both
                                            if r["audio_label"] == r["visual_label"]}
    md = (out / "demo.md").read_text()
    assert "| rank | dim | audio label" in md and len(re.findall(r"^\| \d+ \|", md, re.M)) == 20
    page = (out / "demo.html").read_text()
    assert page.count("<h2>#") == 3 and "synthvid" in page and "</html>" in page


def test_page_shows_media_it_has(project, tmp_path):
    media = project / "videos" / "synthvid016.mp4"
    png = _waveform(media, 5.0)
    assert png and len(png) > 500
    assert _waveform(tmp_path / "none.mp4", 5.0) is None
    words = load_words(project / "words.parquet", ["the"], "hint")
    assert _words_near(words, "synthvid016", 2.0, 2.0) == "tomato (1.2 s)"


def test_clear_errors(project, tmp_path):
    d = project
    with pytest.raises(ConceptsError, match=r"nope.parquet: no word timings; stage demo "
                                            r"writes it \(data/demo/words.parquet"):
        _discover(d, tmp_path, words=tmp_path / "nope.parquet")
    with pytest.raises(ConceptsError, match="none of the 16 val clips with features has a "
                                            "label"):
        _discover(d, tmp_path, vocabulary=["zucchini"])
    with pytest.raises(ConceptsError, match="no label vocabulary; set analysis.concepts."
                                            "vocabulary.demo"):
        _discover(d, tmp_path, vocabulary=[])
    with pytest.raises(ConceptsError, match="has no test clips"):
        _discover(d, tmp_path, split="test")
    assert not list(tmp_path.iterdir())                   # nothing written by a failed run
