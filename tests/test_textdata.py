"""AVLnet-Text data (pipeline/learn/textdata.py): the reference's caption merging worked by hand,
the frame arithmetic of caption clips, caption clips read from a small feature store, and the
caption text of annotated clips."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.features.store import FeatureStore, ShardWriter, VideoRecord, write_index
from pipeline.learn.avdata import AnnotatedClips, ClipRef, collate_videos
from pipeline.learn.textdata import (CaptionClips, TextClips, caption_window, merge_captions,
                                     text_coverage, time_to_frame, usable_captions)

# ----------------------------------------------------------------------------- stand-ins


class DictCaptions:
    """CaptionStore's interface over a dict video_id -> (starts, ends, texts)."""

    def __init__(self, d: dict):
        self.d = d

    def get(self, vid):
        s, e, t = self.d[vid]
        return np.asarray(s, np.float64), np.asarray(e, np.float64), list(t)

    def __contains__(self, vid):
        return vid in self.d

    def ids(self):
        return sorted(self.d)


class DictWords:
    """WordVectors' interface over a dict word -> vector: [\\w']+ tokens, OOV dropped, the
    first max_words kept, zero padded."""

    def __init__(self, vecs: dict):
        self.vecs = {w: np.asarray(v, np.float32) for w, v in vecs.items()}
        self.dim = len(next(iter(self.vecs.values())))

    def encode(self, text_or_tokens, max_words=20):
        toks = (re.findall(r"[\w']+", text_or_tokens) if isinstance(text_or_tokens, str)
                else list(text_or_tokens))
        known = [self.vecs[w] for w in toks if w in self.vecs][:max_words]
        out = np.zeros((max_words, self.dim), np.float32)
        if known:
            out[:len(known)] = np.stack(known)
        return out


VOCAB = ["zero", "one", "three", "four", "ten", "twelve", "twenty", "thirty", "two", "seven",
         "nine", "a", "b", "c", "d"]
WORDS = DictWords({w: np.full(4, k + 1) for k, w in enumerate(VOCAB)})   # word k -> all k+1


def decode(text: torch.Tensor) -> list[str]:
    """The words of an encoded (max_words, 4) text (DictWords' vectors), padding dropped."""
    return [VOCAB[int(r[0]) - 1] for r in text if r[0] != 0]


# ----------------------------------------------------------------------------- merge_captions
# Every expected result below was worked out by hand from the reference's loop: span =
# ends[last] - starts[first]; while span < min_time take the neighbour whose resulting span is
# smaller (forward ends[last+1] - starts[first], backward ends[last] - starts[first-1]),
# backward on a tie; one side only when the other is exhausted; stop when none is left.


@pytest.mark.parametrize("starts, ends, i, min_time, want", [
    # gaps: i=1 span 2; fwd 11-3=8, bwd 5-0=5 -> back (span 5); only fwd left -> 11-0=11
    ([0, 3, 10, 12], [2, 5, 11, 20], 1, 8, (0, 11, [1, 0, 2])),
    # closer neighbour forward: span 1; fwd 9.5-6=3.5 < bwd 7-0=7 -> fwd (3.5); then back -> 9.5
    # (merge order [1, 2, 0], not time order)
    ([0, 6, 7], [1, 7, 9.5], 1, 8, (0, 9.5, [1, 2, 0])),
    # tie: span 2; fwd 10-4=6 == bwd 6-0=6 -> backward (6); then fwd -> 10
    ([0, 4, 6], [4, 6, 10], 1, 8, (0, 10, [1, 0, 2])),
    # the same with min_time 6: after the tie the span is exactly 6 -> stops
    ([0, 4, 6], [4, 6, 10], 1, 6, (0, 6, [1, 0])),
    # exact equality on the drawn caption itself: 10-2 = 8 -> nothing merged
    ([0, 2], [1, 10], 1, 8, (2, 10, [1])),
    # just below: 9.999-2 < 8 -> merges caption 0: 9.999-0
    ([0, 2], [1, 9.999], 1, 8, (0, 9.999, [1, 0])),
    # overlaps, drawn caption at the video's start (forward only): 2 -> 4 -> 12
    ([0, 1.5, 3], [2, 4, 12], 0, 8, (0, 12, [0, 1, 2])),
    # drawn caption at the video's end (backward only): 10-9=1 -> 10-5=5 -> 10-0=10
    ([0, 5, 9], [5, 9, 10], 2, 8, (0, 10, [2, 1, 0])),
    # nested caption shrinks the span: 6 -> caption 1 ends at 3, span 3-0=3 -> 20-0=20
    ([0, 1, 2], [6, 3, 20], 0, 8, (0, 20, [0, 1, 2])),
    # nested: caption 0 runs to 10 but the clip ends at the LAST caption's end: span 2; fwd
    # 4-1=3 == bwd 3-0=3 -> back, span 3-0=3; fwd 4-0=4; nothing left -> stays short at 4
    ([0, 1, 2], [10, 3, 4], 1, 8, (0, 4, [1, 0, 2])),
    # 1-caption video stays short
    ([2], [3], 0, 8, (2, 3, [0])),
    # everything merged and still short
    ([0, 2], [1, 3], 0, 8, (0, 3, [0, 1])),
    # min_time 0: never merges
    ([0, 2], [1, 3], 1, 0, (2, 3, [1])),
])
def test_merge_captions_worked_examples(starts, ends, i, min_time, want):
    s, e, order = merge_captions(np.array(starts, float), np.array(ends, float), i, min_time)
    assert (s, e, order) == (float(want[0]), float(want[1]), want[2])


def test_merge_captions_tie_and_closer_side_on_a_long_list():
    # 10 back-to-back 1 s captions [k, k+1): from i=5 every step is a tie (either side adds
    # 1 s), so it always goes back: 5 4 3 2 1 0 (span 6-0=6), then forward only: 6 (7), 7 (8)
    starts = np.arange(10.0)
    s, e, order = merge_captions(starts, starts + 1, 5, 8.0)
    assert (s, e, order) == (0.0, 8.0, [5, 4, 3, 2, 1, 0, 6, 7])
    # captions [2k, 2k+1] (1 s gaps) but caption 4 = [7, 9]: from i=5 ([10, 11], span 1) the
    # backward span is always 1 s longer (ends[5] - 7 vs ends[last+1] - 10): fwd 13-10=3 <
    # bwd 11-7=4; 15-10=5 < 13-7=6; 17-10=7 < 15-7=8; 19-10=9 -> stop at 9 with no step back
    starts, ends = 2 * np.arange(10.0), 2 * np.arange(10.0) + 1
    starts[4], ends[4] = 7.0, 9.0
    s, e, order = merge_captions(starts, ends, 5, 8.0)
    assert (s, e, order) == (10.0, 19.0, [5, 6, 7, 8, 9])


# ----------------------------------------------------------------------------- frame arithmetic


def test_time_to_frame_is_librosas_with_the_n_fft_offset():
    # (int(t * 16000) - 200) // 160: truncated samples, floor division
    assert time_to_frame(3.0) == 298 and time_to_frame(13.0) == 1298
    assert time_to_frame(0.5) == 48 and time_to_frame(1.23) == 121
    assert time_to_frame(0.0) == -2 and time_to_frame(0.01) == -1       # negative below 12.5 ms
    assert time_to_frame(0.0125) == 0
    assert 2.01 * 16000 < 32160 and time_to_frame(2.01) == 199   # 32159.99.. truncated


def test_caption_window_frames_and_rows():
    w = caption_window(3.0, 13.0, 6250, 1000)
    assert (w.audio_start, w.audio_len, w.nframes) == (298, 1000, 1000)
    assert w.rows2d == (3, 13) and w.rows3d == (4, 19)          # int(4.5), int(19.5)
    w = caption_window(1.23, 9.87, 6250, 1000)                  # frames 121 .. 985
    assert (w.audio_start, w.nframes) == (121, 864)
    assert w.rows2d == (1, 9) and w.rows3d == (1, 14)           # int(1.845), int(14.805)


def test_caption_window_clamps_a_start_at_0_s():
    # Deliberate fix: the reference slices mel[:, -2:498] for a clip starting at 0.0 s, an
    # empty slice; here the start is clamped to frame 0 and the clip has 498 real frames.
    assert time_to_frame(0.0) == -2
    w = caption_window(0.0, 5.0, 6250, 800)
    assert (w.audio_start, w.nframes) == (0, 498)
    assert w.rows2d == (0, 5) and w.rows3d == (0, 7)


def test_caption_window_crops_caps_nframes_and_clips_the_end():
    w = caption_window(3.0, 20.0, 6250, 800)         # 1700 frames cropped to 800
    assert (w.audio_start, w.nframes) == (298, 800)  # nframes capped (reference _zero_pad_audio)
    w = caption_window(5.0, 12.0, 730, 1000)         # ends past the 730 frames of features
    assert (w.audio_start, w.nframes) == (498, 232)
    assert w.rows2d == (5, 12)                       # rows are clipped by pooled_rows on reading
    w = caption_window(0.0, 0.005, 730, 800)         # end before frame 0: no frames, no wrap
    assert w.nframes == 0


def test_usable_captions_start_before_the_end_of_the_features():
    # 500 frames: 5.01 s -> frame 499 (usable), 5.02 s -> frame 500 (at the end: not usable)
    assert usable_captions(np.array([0.0, 5.01, 5.02, 9.0]), 500).tolist() == \
        [True, True, False, False]


# ----------------------------------------------------------------------------- caption clips


def _video(t: int, n2: int, n3: int) -> dict:
    """Arrays whose values say where a window read: logmel frame f holds -(f + 1); feature row
    r holds r + 1 in column 0, 100 - r in column 1 and 1 elsewhere, so a max-pooled, normalised
    vector v has v[0]/v[2] = last row + 1 and v[1]/v[2] = 100 - first row."""
    def rows(n):
        a = np.ones((n, 2048), np.float32)
        a[:, 0] = np.arange(n) + 1
        a[:, 1] = 100 - np.arange(n)
        return a
    return {"resnet152": rows(n2), "resnext101": rows(n3),
            "logmel": np.tile(-(np.arange(t, dtype=np.float32) + 1), (40, 1))}


CAPTIONS = {
    # 25 s: the 30 s caption starts past the features (dropped). With min_time 8:
    # i=0 -> (0, 11, [0, 1, 2]); i=1 -> (0, 11, [1, 0, 2]); i=2: span 1, fwd 20-10=10,
    # bwd 11-3=8 -> back, span 8 stops -> (3, 11, [2, 1]); i=3 -> (12, 20, [3]) (exactly 8)
    "capvideo001": ([0.0, 3.0, 10.0, 12.0, 30.0], [2.0, 5.0, 11.0, 20.0, 31.0],
                    ["zero one", "three four", "ten", "twelve twenty", "thirty"]),
    # 7.3 s: the 9 s caption is dropped; i=0: 2 -> (0, 9.5, [0, 1]); i=1: 7.5 -> (0, 9.5,
    # [1, 0]); audio from frame 0 (clamped), end clipped to the 730 frames
    "capvideo002": ([0.0, 2.0, 9.0], [2.0, 9.5, 12.0], ["two", "seven nine", "nine"]),
    "capvideo003": ([5.02, 8.0], [7.0, 9.0], ["a", "b"]),     # 5 s: all past the end
    "emptycapts1": ([], [], []),
    "noaudiovid1": ([0.0], [5.0], ["a"]),                     # no spectrogram frames
    "notextract1": ([0.0], [5.0], ["a"]),
}
EXPECTED = {  # video -> drawn index -> (start, end, words in merge order)
    "capvideo001": {0: (0, 11, "zero one three four ten"), 1: (0, 11, "three four zero one ten"),
                    2: (3, 11, "ten three four"), 3: (12, 20, "twelve twenty")},
    "capvideo002": {0: (0, 9.5, "two seven nine"), 1: (0, 9.5, "seven nine two")},
}
IDS = ["capvideo001", "capvideo002", "capvideo003", "nocaptions1", "emptycapts1",
       "notextract1", "unknownvid1", "noaudiovid1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    w = ShardWriter(d / "shard-00000.h5", {"dtype": "float32"})
    for vid, t, n2, n3 in (("capvideo001", 2500, 25, 38), ("capvideo002", 730, 8, 11),
                           ("capvideo003", 500, 5, 8), ("nocaptions1", 500, 5, 8),
                           ("emptycapts1", 500, 5, 8), ("noaudiovid1", 0, 5, 8)):
        w.add(VideoRecord(vid, "ok", {}, _video(t, n2, n3)))
    rows = w.close()
    rows.append({"video_id": "notextract1", "status": "not_downloaded"})
    write_index(rows, d / "index.parquet")
    return FeatureStore(d)


def _dataset(store, m=12, seed=5, frames=1000, max_words=20, words=WORDS):
    return CaptionClips(store, DictCaptions(CAPTIONS), words, IDS, clips_per_video=m,
                        min_time=8.0, frames=frames, seed=seed, max_words=max_words)


def test_videos_without_usable_captions_are_skipped_and_counted(store, caplog):
    with caplog.at_level(logging.INFO, "pipeline.learn.textdata"):
        ds = _dataset(store)
    assert ds.ids == ["capvideo001", "capvideo002"] and len(ds) == 2
    assert ds.skipped == {"no_features": 2, "no_captions": 2, "captions_outside_features": 1,
                          "no_audio": 1}
    assert ds.dropped_captions == 2
    assert "6 of 8 videos left out" in caplog.text and "2 captions start past" in caplog.text


def test_caption_clips_read_the_merged_span(store):
    ds = _dataset(store, m=12, seed=5, frames=1000)
    for i, vid in enumerate(ds.ids):
        item = ds[i]
        assert item["spec"].shape == (12, 40, 1000) and item["spec"].dtype == torch.float32
        assert item["video"].shape == (12, 4096) and item["text"].shape == (12, 20, 4)
        assert item["nframes"].dtype == torch.int64 and item["video_index"].tolist() == [i] * 12
        # the draws: uniform with replacement over the usable captions, seeded (5, epoch 0, i)
        draws = np.random.default_rng([5, 0, i]).integers(0, len(EXPECTED[vid]), size=12)
        total = store.info(vid)["n_logmel"]
        n2, n3 = store.info(vid)["n_resnet152"], store.info(vid)["n_resnext101"]
        for j, k in enumerate(draws):
            s, e, words = EXPECTED[vid][int(k)]
            assert (item["start_s"][j].item(), item["end_s"][j].item()) == (s, e)
            assert decode(item["text"][j]) == words.split()
            a0 = max(0, (int(s * 16000) - 200) // 160)
            a1 = min((int(e * 16000) - 200) // 160, total)
            n = min(a1 - a0, 1000)
            assert item["nframes"][j].item() == n
            spec = item["spec"][j, 7].numpy()
            assert np.array_equal(spec[:n], -(np.arange(a0, a0 + n) + 1.0))
            assert (spec[n:] == 0).all()
            v = item["video"][j].numpy()
            v2, v3 = v[:2048] / v[2], v[2048:] / v[2050]
            assert round(v2[0]) == min(int(e), n2 - 1) + 1 and round(v2[1]) == 100 - int(s)
            assert round(v3[0]) == min(int(1.5 * e), n3 - 1) + 1
            assert round(v3[1]) == 100 - int(1.5 * s)
            assert np.isclose(np.linalg.norm(v), np.sqrt(2), atol=1e-5)


def test_caption_clips_worked_values(store):
    """Spot checks of the example spans against numbers worked out by hand."""
    ds = _dataset(store, m=40, seed=1, frames=1000)
    a, b = ds[0], ds[1]
    at = {(round(x, 2), round(y, 2)): j for j, (x, y) in
          enumerate(zip(a["start_s"].tolist(), a["end_s"].tolist()))}
    j = at[(0.0, 11.0)]              # frames 0 (clamped from -2) .. 1098: cropped, capped
    assert a["nframes"][j] == 1000 and a["spec"][j, 0, 0] == -1.0
    j = at[(3.0, 11.0)]              # frames 298 .. 1098: 800 real + 200 zeros
    assert a["nframes"][j] == 800 and a["spec"][j, 0, 0] == -299.0
    assert a["spec"][j, 0, 799] == -1098.0 and (a["spec"][j, :, 800:] == 0).all()
    j = at[(12.0, 20.0)]             # frames 1198 .. 1998
    assert a["nframes"][j] == 800 and a["spec"][j, 0, 0] == -1199.0
    # the 7.3 s video: [0, 9.5] -> frames 0 .. 948 clipped to 730; rows 2D 0..9 -> 0..7
    assert (b["nframes"] == 730).all() and (b["spec"][:, :, 730:] == 0).all()
    assert torch.equal(b["spec"][0, 0, :730], -(torch.arange(730.0) + 1))
    assert round((b["video"][0, 0] / b["video"][0, 2]).item()) == 8


def test_caption_clips_words_follow_merge_order_and_are_cut(store):
    ds = _dataset(store, m=40, seed=2, max_words=4)
    item = ds[0]
    got = {(s, tuple(decode(t))) for s, t in zip(item["start_s"].tolist(), item["text"])}
    # the drawn caption's words first, so they survive the cut to 4 words
    assert (0.0, ("three", "four", "zero", "one")) in got
    assert (0.0, ("zero", "one", "three", "four")) in got


def test_caption_clips_depend_only_on_seed_epoch_index(store):
    ds = _dataset(store, m=8, seed=3)
    first = [ds[i] for i in range(len(ds))]
    again = _dataset(store, m=8, seed=3)
    for i in range(len(ds)):
        for k in first[i]:
            assert torch.equal(first[i][k], again[i][k]), k
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["text"], first[0]["text"])      # new draws in a new epoch
    ds.set_epoch(0)
    assert torch.equal(ds[0]["spec"], first[0]["spec"])
    other = _dataset(store, m=8, seed=4)
    assert not torch.equal(other[0]["text"], first[0]["text"])
    # the same batches whatever the number of loader workers
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers,
                            collate_fn=collate_videos)
        batches[workers] = list(loader)
    (b0,), (b2,) = batches[0], batches[2]
    assert b0["spec"].shape == (16, 40, 1000) and b0["video_index"].tolist() == [0] * 8 + [1] * 8
    for k in b0:
        assert torch.equal(b0[k], b2[k]), k


# ----------------------------------------------------------------------------- text of clips


def _clips(store):
    refs = [ClipRef("c1", "capvideo001", 3.0, 13.5), ClipRef("gone", "notextract1", 0.0, 5.0),
            ClipRef("c2", "capvideo002", 0.0, 7.3), ClipRef("c3", "capvideo003", 1.0, 4.0)]
    return AnnotatedClips(store, refs, frames=512)


def test_text_clips_eval_takes_the_first_caption_train_draws(store, caplog):
    clips = _clips(store)
    assert [c.clip_id for c in clips.clips] == ["c1", "c2", "c3"]
    cands = [["a b", "c", "d", "ten", "nine"], ["two seven"], []]
    with caplog.at_level(logging.INFO, "pipeline.learn.textdata"):
        ev = TextClips(clips, cands, WORDS, train=False)
    assert ev.no_text == 1 and "1 of 3 clips have no caption text" in caplog.text
    item = ev[0]
    base = clips[0]
    for k in base:                                    # the same audio and video as the clip
        assert torch.equal(item[k], base[k]), k
    assert item["text"].shape == (20, 4) and decode(item["text"]) == ["a", "b"]
    assert decode(ev[1]["text"]) == ["two", "seven"]
    assert not ev[2]["text"].any()                    # no caption: all-zero text
    ev.set_epoch(3)
    assert decode(ev[0]["text"]) == ["a", "b"]        # evaluation ignores the epoch

    tr = TextClips(clips, cands, WORDS, train=True, seed=7)
    picks = []
    for epoch in range(12):
        tr.set_epoch(epoch)
        k = np.random.default_rng([7, epoch, 0]).integers(0, 5)
        assert tr.caption(0) == cands[0][k]
        assert decode(tr[0]["text"]) == cands[0][k].split()
        assert tr.caption(1) == "two seven" and tr.caption(2) is None
        picks.append(tr.caption(0))
    assert len(set(picks)) > 1


def test_text_clips_by_clip_id_and_misaligned_lists(store):
    clips = _clips(store)
    by_id = TextClips(clips, {"c2": ["nine"], "c1": ["ten"], "gone": ["x"]}, WORDS, train=False)
    assert [by_id.caption(i) for i in range(3)] == ["ten", "nine", None] and by_id.no_text == 1
    with pytest.raises(ValueError, match="aligned"):
        TextClips(clips, [["a"], ["b"], ["c"], ["d"]], WORDS, train=False)


def test_text_coverage_counts_known_tokens_and_all_oov_captions():
    pytest.importorskip("pipeline.text.words")
    cov = text_coverage(WORDS, ["zero one unknownword", "xx yy", ["ten", "Ten"]])
    assert cov["captions"] == 4 and cov["tokens"] == 7 and cov["known_tokens"] == 3
    assert cov["all_oov_captions"] == 2 and cov["known_fraction"] == pytest.approx(3 / 7)


def test_end_to_end_with_the_real_word_vectors_and_caption_store(store, tmp_path):
    words_mod = pytest.importorskip("pipeline.text.words")
    captions_mod = pytest.importorskip("pipeline.text.captions")
    vocab = ["zero", "one", "three", "four", "ten", "twelve", "twenty", "two", "seven", "nine"]
    vecs = words_mod.demo_vectors(vocab, dim=6, seed=0)
    words_mod.write_word2vec(tmp_path / "w.bin", vocab, vecs)
    wv = words_mod.load_word_vectors(tmp_path / "w.bin", tmp_path / "cache", expected_dim=None)
    src = tmp_path / "caption.json"
    src.write_text(json.dumps({v: dict(zip(("start", "end", "text"), CAPTIONS[v]))
                               for v in ("capvideo001", "capvideo002")}))
    captions_mod.ingest_captions(src, tmp_path / "captions", progress=False)
    cs = captions_mod.CaptionStore(tmp_path / "captions")
    ds = CaptionClips(store, cs, wv, IDS, clips_per_video=6, min_time=8.0, frames=800, seed=9)
    assert ds.ids == ["capvideo001", "capvideo002"]
    assert ds.skipped == {"no_features": 2, "no_captions": 4}   # only 2 videos in the json
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_videos)))
    assert batch["text"].shape == (12, 20, 6) and batch["spec"].shape == (12, 40, 800)
    row = {w: vecs[k] for k, w in enumerate(vocab)}
    for j in range(12):
        s, e = batch["start_s"][j].item(), batch["end_s"][j].item()
        vid = ds.ids[batch["video_index"][j]]
        want = [w for k, (a, b, w) in EXPECTED[vid].items() if (a, b) == (s, e)]
        got = batch["text"][j].numpy()
        assert any(np.array_equal(got[:len(w.split())], np.stack([row[t] for t in w.split()]))
                   for w in want)
        assert not got[5:].any()
    cov = text_coverage(wv, ["zero one Zero", "xx"])
    assert (cov["tokens"], cov["known_tokens"], cov["all_oov_captions"]) == (4, 2, 1)
