"""Word vectors (extensions.md §1): tokeniser worked examples, caption encoding, word2vec round
trips through gensim, the memory-mapped cache, one-line errors, use in worker processes.

Measured on a synthetic 200k-word x 300-d binary file (240 MB; 2 shared cores): the first load
(gensim read + cache write) took 4.7 s with a 391 MB peak RSS; a later load in a fresh process
took 1 ms and no extra RSS, and encoding 2000 captions of 50 tokens took 0.35-0.5 s, adding
7 MB of private memory (RssAnon; the touched vector pages, 91 MB, are shared page cache)."""
from __future__ import annotations

import gzip
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from pipeline.safety import UserError
from pipeline.text import words as W
from pipeline.text.words import (MAX_WORDS, WORD_DIM, WordVectorError, default_source,
                                 demo_vectors, load_word_vectors, tokenize, write_word2vec)

DIM = 4
VOCAB = ["the", "onion", "Onion", "chef's", "chef", "s", "stir", "fry", "3", "café", "日本",
         "snake_case"]


def _vectors(n: int, dim: int = DIM) -> np.ndarray:
    """Row i is i + 1 + (0, .25, .5, ...): easy to read in expected arrays."""
    return (np.arange(n, dtype=np.float32)[:, None] + 1
            + np.arange(dim, dtype=np.float32)[None] / 4)


@pytest.fixture
def small(tmp_path):
    """The VOCAB vectors written as a word2vec binary and loaded (DIM-d)."""
    src = tmp_path / "small.bin"
    write_word2vec(src, VOCAB, _vectors(len(VOCAB)))
    return load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)


def _row(word: str) -> np.ndarray:
    return _vectors(len(VOCAB))[VOCAB.index(word)]


# --------------------------------------------------------------------------- tokeniser


@pytest.mark.parametrize("text, tokens", [
    ("Stir-fry the onions.", ["Stir", "fry", "the", "onions"]),             # hyphen, dot split
    ("the chef's knife", ["the", "chef's", "knife"]),                       # ASCII apostrophe kept
    ("the chef\u2019s knife", ["the", "chef", "s", "knife"]),               # typographic splits
    ("e.g. 3.5 cups, 1/2 tsp", ["e", "g", "3", "5", "cups", "1", "2", "tsp"]),
    ("Add SALT, then Salt!", ["Add", "SALT", "then", "Salt"]),              # case kept
    ("snake_case x2 __init__ 42", ["snake_case", "x2", "__init__", "42"]),  # \w: digits, _
    ("crème brûlée über 日本の料理", ["crème", "brûlée", "über", "日本の料理"]),
    ("rock 'n' roll 'quoted'", ["rock", "'n'", "roll", "'quoted'"]),
    ("tab\tand\nnewline  spaces", ["tab", "and", "newline", "spaces"]),
    ("!!! ... -- ??", []),
    ("", []),
    (None, []),
])
def test_tokenize_worked_examples(text, tokens):
    assert tokenize(text) == tokens


def test_constants_and_default_source(tmp_path):
    assert (MAX_WORDS, WORD_DIM) == (20, 300)
    assert W.TOKEN_RE.pattern == r"[\w']+"
    assert default_source(tmp_path) == tmp_path / "GoogleNews-vectors-negative300.bin"
    assert issubclass(WordVectorError, UserError)


# --------------------------------------------------------------------------- encoding


def test_index_is_exact_and_case_sensitive(small):
    assert small.size == len(VOCAB) and small.dim == DIM and len(small) == len(VOCAB)
    for i, w in enumerate(VOCAB):
        assert small.index(w) == i and small.word(i) == w
    assert small.index("ONION") is None and small.index("onions") is None
    assert "Onion" in small and "ONION" not in small and 3 not in small
    assert small.index("") is None and small.index("chef\u2019s") is None


def test_encode_pads_with_zero_rows(small):
    got = small.encode("Stir-fry the Onion!", max_words=5)
    # "Stir" is out of vocabulary (case kept), "fry the Onion" are rows 7, 0, 2
    want = np.zeros((5, DIM), np.float32)
    want[0], want[1], want[2] = _row("fry"), _row("the"), _row("Onion")
    assert got.dtype == np.float32 and got.shape == (5, DIM)
    np.testing.assert_array_equal(got, want)
    # typographic apostrophe: "chef", "s" (both known); ASCII: "chef's"
    np.testing.assert_array_equal(small.encode("chef\u2019s", 2), np.stack([_row("chef"),
                                                                            _row("s")]))
    np.testing.assert_array_equal(small.encode("chef's", 2)[0], _row("chef's"))
    assert small.encode(["the", "onion"]).shape == (MAX_WORDS, DIM)         # token lists too


def test_encode_drops_oov_before_the_cut(small):
    text = " ".join(["zzz"] * 25 + ["onion", "3", "café"])
    got = small.encode(text)
    want = np.zeros((MAX_WORDS, DIM), np.float32)
    want[:3] = [_row("onion"), _row("3"), _row("café")]
    np.testing.assert_array_equal(got, want)
    assert small.coverage(text) == (28, 3)


def test_encode_long_caption_keeps_exactly_the_first_20_known(tmp_path):
    vocab = [f"w{i}" for i in range(40)]
    vecs = demo_vectors(vocab, dim=8, seed=3)
    write_word2vec(tmp_path / "v.txt", vocab, vecs, binary=False)
    wv = load_word_vectors(tmp_path / "v.txt", tmp_path / "cache", expected_dim=8)
    text = " ".join(f"w{i} OOV{i}" for i in range(30))        # 30 known, interleaved with OOV
    np.testing.assert_array_equal(wv.encode(text), vecs[:20])
    assert wv.coverage(text) == (60, 30)


@pytest.mark.parametrize("text", ["", None, "Zebra QUUX... !!", []])
def test_empty_or_all_oov_caption_is_all_zeros(small, text):
    out = small.encode(text)
    assert out.shape == (MAX_WORDS, DIM) and not out.any()


def test_hash_collisions_are_resolved_by_the_stored_words(tmp_path, monkeypatch):
    # every word gets the same hash: lookups must still compare the stored bytes
    monkeypatch.setattr(W, "_key", lambda raw: 7)
    src = tmp_path / "small.bin"
    write_word2vec(src, VOCAB, _vectors(len(VOCAB)))
    wv = load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    assert [wv.index(w) for w in VOCAB] == list(range(len(VOCAB)))
    assert wv.index("absent") is None


# --------------------------------------------------------------------------- files and cache


@pytest.mark.parametrize("name, binary", [("v.bin", True), ("v.bin.gz", True),
                                          ("v.txt", False), ("v.vec", False)])
def test_round_trip_through_gensim_is_exact(tmp_path, name, binary):
    vocab = VOCAB + [f"word{i}" for i in range(50)]
    vecs = demo_vectors(vocab, dim=WORD_DIM, seed=1)
    src = tmp_path / name
    write_word2vec(src, vocab, vecs, binary=binary)
    if name.endswith(".gz"):
        assert src.read_bytes()[:2] == b"\x1f\x8b"          # gensim compressed it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    wv = load_word_vectors(src, tmp_path / "cache")
    assert (wv.size, wv.dim, wv.source) == (len(vocab), WORD_DIM, str(src))
    rows = [wv.index(w) for w in vocab]
    np.testing.assert_array_equal(np.asarray(wv.vectors)[rows], vecs)
    record = (tmp_path / "cache" / f"{name}.cache.json").read_text()
    assert ('"format": "word2vec-binary"' if binary else '"format": "word2vec-text"') in record
    assert '"reader": "gensim ' in record


def test_cache_is_reused_without_reading_the_source(tmp_path):
    src = tmp_path / "v.bin"
    vecs = _vectors(len(VOCAB))
    write_word2vec(src, VOCAB, vecs)
    load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    record = tmp_path / "cache" / "v.bin.cache.json"
    before = record.stat().st_mtime_ns
    # garbage of the same size and mtime: only a load that skips the source can still succeed
    st = src.stat()
    src.write_bytes(b"\0" * st.st_size)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    wv = load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    assert record.stat().st_mtime_ns == before
    np.testing.assert_array_equal(wv.encode("the onion", 2), vecs[:2])


def test_changed_source_rebuilds_the_cache(tmp_path):
    src = tmp_path / "v.bin"
    write_word2vec(src, VOCAB, _vectors(len(VOCAB)))
    load_word_vectors(src, tmp_path / "cache", expected_dim=DIM).encode("the")
    new = -_vectors(3)
    write_word2vec(src, ["the", "new", "words"], new)
    os.utime(src, ns=(1, 10**18))                  # a different mtime even on coarse clocks
    wv = load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    assert wv.size == 3 and wv.index("onion") is None
    np.testing.assert_array_equal(wv.encode("the new words", 3), new)


def test_missing_source_with_a_cache_warns_and_uses_it(tmp_path, caplog):
    src = tmp_path / "v.bin"
    write_word2vec(src, VOCAB, _vectors(len(VOCAB)))
    load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    src.unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.text.words"):
        wv = load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    assert "without checking it against the source" in caplog.text
    np.testing.assert_array_equal(wv.encode("onion", 1)[0], _row("onion"))


def test_incomplete_cache_is_rebuilt(tmp_path):
    src = tmp_path / "v.bin"
    write_word2vec(src, VOCAB, _vectors(len(VOCAB)))
    load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    (tmp_path / "cache" / "v.bin.vectors.npy").write_bytes(b"half")     # killed mid-write
    wv = load_word_vectors(src, tmp_path / "cache", expected_dim=DIM)
    np.testing.assert_array_equal(wv.encode("onion", 1)[0], _row("onion"))


def test_unwritable_cache_folder(tmp_path):
    src = tmp_path / "v.bin"
    write_word2vec(src, VOCAB, _vectors(len(VOCAB)))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(WordVectorError) as e:
        load_word_vectors(src, tmp_path / "a_file" / "cache", expected_dim=DIM)
    assert "cannot write the word-vector cache" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- errors


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_missing_file_names_the_download(tmp_path):
    src = default_source(tmp_path / "weights")
    with pytest.raises(WordVectorError) as e:
        load_word_vectors(src, tmp_path / "cache")
    _one_line(e, str(src), "GoogleNews-vectors-negative300.bin.gz", "gunzip",
              "https://github.com/RaRe-Technologies/gensim-data/releases/download/"
              "word2vec-google-news-300/word2vec-google-news-300.gz")


def test_wrong_dimension(tmp_path):
    src = tmp_path / "v50.bin"
    write_word2vec(src, VOCAB, demo_vectors(VOCAB, dim=50))
    with pytest.raises(WordVectorError) as e:
        load_word_vectors(src, tmp_path / "cache")
    _one_line(e, str(src), "50-d", "300-d")
    # also when the cache (built with expected_dim=None) answers
    assert load_word_vectors(src, tmp_path / "cache", expected_dim=None).dim == 50
    with pytest.raises(WordVectorError) as e:
        load_word_vectors(src, tmp_path / "cache", expected_dim=300)
    _one_line(e, "50-d", "300-d")


def _truncated_bin(tmp_path):
    p = tmp_path / "cut.bin"
    write_word2vec(p, VOCAB, _vectors(len(VOCAB)))
    p.write_bytes(p.read_bytes()[:-30])
    return p


def _truncated_gz(tmp_path):
    p = tmp_path / "cut.bin.gz"
    write_word2vec(p, VOCAB, demo_vectors(VOCAB, dim=DIM))
    p.write_bytes(p.read_bytes()[:-40])
    return p


def _write(name: str, data: bytes):
    def make(tmp_path):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name
    return make


@pytest.mark.parametrize("make, kind", [
    (_write("garbage.bin", bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8))),
     "binary"),
    (_write("html.bin", b"<html><body>Not Found</body></html>\n"), "binary"),
    (_write("bad_header.bin", b"12 4 extra\n"), "binary"),
    (_write("glove.txt", b"the 0.1 0.2 0.3 0.4\nonion 1 2 3 4\n"), "text"),   # no header line
    (_write("ragged.txt", b"2 4\nthe 0.1 0.2 0.3 0.4\nonion 1 2\n"), "text"),
    (_write("short.txt", b"3 4\nthe 0.1 0.2 0.3 0.4\n"), "text"),
    (_write("binary_named.txt", b"1 4\nthe " + np.ones(4, np.float32).tobytes() + b"\xff\xfe"),
     "text"),
    (_write("notgz.bin.gz", b"3000000 300\n" + b"x" * 100), "binary"),
    (_truncated_bin, "binary"),
    (_truncated_gz, "binary"),
])
def test_not_a_word2vec_file(tmp_path, make, kind):
    src = make(tmp_path)
    with pytest.raises(WordVectorError) as e:
        load_word_vectors(src, tmp_path / "cache", expected_dim=None)
    _one_line(e, str(src), f"not a word2vec {kind} file")
    assert not (tmp_path / "cache" / f"{src.name}.cache.json").exists()


def test_write_word2vec_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        write_word2vec(tmp_path / "x.bin", ["a", "a"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="whitespace"):
        write_word2vec(tmp_path / "x.bin", ["a b"], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="match"):
        write_word2vec(tmp_path / "x.bin", ["a"], np.zeros((2, 3)))
    assert not list(tmp_path.iterdir())


def test_demo_vectors_are_seeded_unit_rows():
    v = demo_vectors(["a", "b"], dim=3, seed=0)
    # np.random.default_rng(0) is PCG64: the same numbers on every platform
    np.testing.assert_allclose(v, [[0.18881711, -0.19839032, 0.9617637],
                                   [0.16021416, -0.81812894, 0.55226487]], atol=1e-6)
    big = demo_vectors([str(i) for i in range(10)], seed=5)
    assert big.dtype == np.float32 and big.shape == (10, WORD_DIM)
    np.testing.assert_allclose(np.linalg.norm(big, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(big, demo_vectors([str(i) for i in range(10)], seed=5))
    assert not np.array_equal(big, demo_vectors([str(i) for i in range(10)], seed=6))


# --------------------------------------------------------------------------- worker processes


def _encode_in_child(wv, queue):
    queue.put(wv.encode("the onion café"))


def test_pickles_as_paths_and_works_in_other_processes(small):
    small.encode("the")                         # memory maps opened in this process
    blob = pickle.dumps(small)
    assert len(blob) < 1000                     # paths, not vectors
    want = small.encode("the onion café")
    code = ("import pickle, sys; wv = pickle.load(sys.stdin.buffer); "
            "sys.stdout.buffer.write(pickle.dumps(wv.encode('the onion café')))")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                         check=True, timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    np.testing.assert_array_equal(pickle.loads(out.stdout), want)
    # forked (a DataLoader worker): inherits the open maps
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_encode_in_child, args=(small, queue))
    p.start()
    got = queue.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    np.testing.assert_array_equal(got, want)


def test_gzip_module_agrees_with_gensim_compression(tmp_path):
    # the .bin.gz the loader reads is a plain gzip stream of the binary format
    write_word2vec(tmp_path / "v.bin.gz", VOCAB, _vectors(len(VOCAB)))
    write_word2vec(tmp_path / "v.bin", VOCAB, _vectors(len(VOCAB)))
    assert gzip.decompress((tmp_path / "v.bin.gz").read_bytes()) == \
        (tmp_path / "v.bin").read_bytes()


def test_identity_follows_the_content_not_the_load(tmp_path, small):
    """A run's resume key holds identity(): the same file loaded again keeps it; other vectors
    written at the same path change it (so a resumed training run starts over)."""
    again = load_word_vectors(tmp_path / "small.bin", tmp_path / "cache", expected_dim=DIM)
    assert again.identity() == small.identity()
    assert small.identity()["words"] == len(VOCAB) and small.identity()["dim"] == DIM
    write_word2vec(tmp_path / "small.bin", VOCAB, _vectors(len(VOCAB)) * 2)
    changed = load_word_vectors(tmp_path / "small.bin", tmp_path / "cache", expected_dim=DIM)
    assert changed.identity()["sample_sha256"] != small.identity()["sample_sha256"]
