"""Word vectors for the text branch (extensions.md §1): the reference's tokeniser, a word2vec
reader (gensim) with a memory-mapped cache, and 20-slot caption encoding."""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import mmap
import os
import re
import time
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.safety import UserError

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"[\w']+")
MAX_WORDS = 20                 # word slots per caption (the reference's max_words)
WORD_DIM = 300                 # GoogleNews word2vec dimension
GOOGLE_NEWS = "GoogleNews-vectors-negative300.bin"
DOWNLOAD_HINT = (
    "download GoogleNews-vectors-negative300.bin.gz (word2vec, 3M words, 300-d; e.g. from the "
    "gensim-data release https://github.com/RaRe-Technologies/gensim-data/releases/download/"
    "word2vec-google-news-300/word2vec-google-news-300.gz, or the original word2vec archive)")
CACHE_VERSION = 1              # layout of the cache files below; a change rebuilds old caches
_LOOKUP_MEMO = 100_000         # per-process memo of token -> row (captions reuse few words)


class WordVectorError(UserError):
    """A word-vector file is missing, unreadable or of the wrong dimension (one line)."""


def tokenize(text: str | None) -> list[str]:
    """The reference's tokens: runs of word characters and ASCII apostrophes, case kept.
    "Stir-fry the chef's 2 eggs." -> [Stir, fry, the, chef's, 2, eggs]; None or "" -> []."""
    return TOKEN_RE.findall(text) if text else []


def default_source(weights_dir: Path) -> Path:
    """Where the GoogleNews word2vec binary is expected: weights_dir/GoogleNews-...-300.bin."""
    return Path(weights_dir) / GOOGLE_NEWS


def _key(word: bytes) -> int:
    """A 64-bit hash of a word's UTF-8 bytes, the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(word, digest_size=8).digest(), "little")


class WordVectors:
    """Read-only word vectors backed by the cache files of load_word_vectors.

    `dim` floats per word, `size` words, `source` the word2vec file they came from. The vectors
    (size, dim) float32 and the vocabulary are memory-mapped on first use, in whichever process
    uses them: pickling sends only paths, so DataLoader workers (spawned or forked) share the
    page cache instead of copying gigabytes. A word is found by its 64-bit hash (np.searchsorted
    over sorted hashes) and confirmed against its stored bytes, so no 3M-entry dict is built."""

    def __init__(self, stem: Path, dim: int, size: int, source: str):
        self.stem = Path(stem)       # cache files are <stem>.vectors.npy, .vocab.txt, ...
        self.dim = int(dim)
        self.size = int(size)
        self.source = str(source)
        self._reset()

    def _reset(self) -> None:
        self._vectors: np.ndarray | None = None
        self._hashes: np.ndarray | None = None
        self._rows: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        self._words: mmap.mmap | None = None
        self._memo: dict[str, int | None] = {}

    def __getstate__(self) -> dict:
        return {"stem": self.stem, "dim": self.dim, "size": self.size, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"WordVectors({self.size} words x {self.dim}, source={self.source!r})"

    def _open(self) -> None:
        paths = _cache_paths(self.stem)
        self._vectors = np.load(paths["vectors"], mmap_mode="r")
        index = np.load(paths["index"], mmap_mode="r")          # (3, size + 1) uint64
        self._hashes, self._rows = index[0, :self.size], index[1, :self.size]
        self._offsets = index[2]
        with open(paths["vocab"], "rb") as f:
            self._words = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    @property
    def vectors(self) -> np.ndarray:
        """All vectors, (size, dim) float32, memory-mapped read-only."""
        if self._vectors is None:
            self._open()
        return self._vectors

    def identity(self) -> dict:
        """What these vectors are, for a run's provenance and resume key: the source path, the
        size, and a sha256 over up to 1024 evenly spaced rows' words and vectors (a file
        replaced at the same path changes it; cheap even for GoogleNews)."""
        rows = np.unique(np.linspace(0, self.size - 1, min(self.size, 1024)).astype(np.int64))
        h = hashlib.sha256()
        for r in rows.tolist():
            h.update(self.word(r).encode("utf-8") + b"\n")
        h.update(np.ascontiguousarray(self.vectors[rows]).tobytes())
        return {"source": self.source, "words": self.size, "dim": self.dim,
                "sample_sha256": h.hexdigest()}

    def word(self, row: int) -> str:
        """The word stored at `row`."""
        if self._words is None:
            self._open()
        a, b = int(self._offsets[row]), int(self._offsets[row + 1]) - 1   # drop the newline
        return self._words[a:b].decode("utf-8")

    def _lookup(self, token: str) -> int | None:
        if self._hashes is None:
            self._open()
        raw = token.encode("utf-8", "surrogatepass")
        h = np.uint64(_key(raw))
        i = int(np.searchsorted(self._hashes, h))
        while i < self.size and self._hashes[i] == h:      # hash collisions: compare the bytes
            row = int(self._rows[i])
            a, b = int(self._offsets[row]), int(self._offsets[row + 1]) - 1
            if self._words[a:b] == raw:
                return row
            i += 1
        return None

    def index(self, token: str) -> int | None:
        """The row of `token` (exact, case-sensitive), or None when it is not in the vocabulary."""
        try:
            return self._memo[token]
        except KeyError:
            pass
        row = self._lookup(token)
        if len(self._memo) >= _LOOKUP_MEMO:
            self._memo.clear()
        self._memo[token] = row
        return row

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and self.index(token) is not None

    def _tokens(self, text_or_tokens: str | Sequence[str] | None) -> list[str]:
        if text_or_tokens is None or isinstance(text_or_tokens, str):
            return tokenize(text_or_tokens)
        return list(text_or_tokens)

    def encode(self, text_or_tokens: str | Sequence[str] | None,
               max_words: int = MAX_WORDS) -> np.ndarray:
        """A caption as (max_words, dim) float32: its tokens (tokenize() for a str) missing from
        the vocabulary are dropped first, the first max_words kept, the rest zero rows; an
        empty or all-out-of-vocabulary caption is all zeros (extensions.md §1)."""
        rows = [r for r in map(self.index, self._tokens(text_or_tokens)) if r is not None]
        rows = rows[:max_words]
        out = np.zeros((max_words, self.dim), dtype=np.float32)
        if rows:
            out[:len(rows)] = self.vectors[rows]
        return out

    def coverage(self, text_or_tokens: str | Sequence[str] | None) -> tuple[int, int]:
        """(tokens, tokens in the vocabulary) of a caption, for reports."""
        tokens = self._tokens(text_or_tokens)
        return len(tokens), sum(self.index(t) is not None for t in tokens)


# --------------------------------------------------------------------------- cache


def _cache_paths(stem: Path) -> dict[str, Path]:
    stem = Path(stem)
    return {name: stem.with_name(f"{stem.name}.{suffix}") for name, suffix in
            (("vectors", "vectors.npy"), ("vocab", "vocab.txt"), ("index", "vocab-index.npy"),
             ("record", "cache.json"))}


def _tmp(path: Path) -> Path:
    # same folder and same suffix (gensim / smart_open pick compression from the suffix)
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def _replace_from_tmp(path: Path, write) -> None:
    """Calls write(tmp) and renames tmp to `path`; removes tmp when writing fails."""
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
    _replace_from_tmp(path, write)


def _write_cache(stem: Path, words: Sequence[str], vectors: np.ndarray, record: dict) -> None:
    """Writes vectors, vocabulary, hash index, then the record last (the completion marker)."""
    paths = _cache_paths(stem)
    paths["record"].unlink(missing_ok=True)     # an interrupted rewrite must not look complete
    raw = [w.encode("utf-8", "surrogatepass") for w in words]
    n = len(raw)
    index = np.zeros((3, n + 1), dtype=np.uint64)
    hashes = np.fromiter((_key(b) for b in raw), dtype=np.uint64, count=n)
    order = np.argsort(hashes, kind="stable")
    index[0, :n] = hashes[order]
    index[1, :n] = order
    index[2, 1:] = np.cumsum(np.fromiter((len(b) + 1 for b in raw), dtype=np.uint64, count=n))
    _save_npy(paths["vectors"], np.ascontiguousarray(vectors, dtype=np.float32))

    def write_vocab(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for b in raw:
                f.write(b + b"\n")
    _replace_from_tmp(paths["vocab"], write_vocab)
    _save_npy(paths["index"], index)
    _replace_from_tmp(paths["record"], lambda tmp: tmp.write_text(
        json.dumps(record, indent=2, sort_keys=True) + "\n"))


def _read_record(stem: Path) -> dict | None:
    """The cache record when it and every cache file are present and consistent, else None."""
    paths = _cache_paths(stem)
    try:
        record = json.loads(paths["record"].read_text())
        if record.get("cache_version") != CACHE_VERSION:
            return None
        shape = np.load(paths["vectors"], mmap_mode="r").shape
        index_shape = np.load(paths["index"], mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    if shape != (record["count"], record["dim"]) or index_shape != (3, record["count"] + 1):
        return None
    return record


# --------------------------------------------------------------------------- word2vec files


def _is_binary(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".bin") or name.endswith(".bin.gz")


def _format_error(source: Path, binary: bool, why: object) -> WordVectorError:
    kind = "binary" if binary else "text"
    why = " ".join(str(why).split())[:200] or type(why).__name__
    return WordVectorError(
        f"{source}: not a word2vec {kind} file ({why}); download it again if it is a truncated "
        f"or corrupt download (.bin / .bin.gz are read as word2vec binary, other names as text)")


# what gensim and the decompressors raise on a file that is not (a whole) word2vec file
_READ_ERRORS = (ValueError, EOFError, UnicodeDecodeError, AssertionError, IndexError,
                KeyError, gzip.BadGzipFile, zlib.error)


def _read_header(source: Path, binary: bool) -> tuple[int, int]:
    """(words, dim) from the first line of a word2vec file, without reading the rest."""
    from gensim import utils

    try:
        with utils.open(str(source), "rb") as f:
            line = f.readline(1024)
        count, dim = (int(x) for x in line.decode("utf-8").split())
    except _READ_ERRORS as e:
        raise _format_error(source, binary, f"first line is not '<words> <dim>': {e}") from e
    except OSError as e:
        raise WordVectorError(f"{source}: cannot read it ({e})") from e
    if count <= 0 or dim <= 0:
        raise _format_error(source, binary, f"header says {count} words of dimension {dim}")
    return count, dim


def _dim_error(source: Path, dim: int, expected: int) -> WordVectorError:
    return WordVectorError(
        f"{source}: word vectors are {dim}-d but the model expects {expected}-d; use the 300-d "
        f"GoogleNews word2vec vectors ({GOOGLE_NEWS}) or set the text branch's input size")


def _missing_error(source: Path) -> WordVectorError:
    gz = source.with_name(source.name + ".gz")
    found = f" (found {gz}: gunzip it)" if gz.is_file() else ""
    return WordVectorError(f"{source}: word vectors not found{found}; {DOWNLOAD_HINT}, gunzip "
                           f"it and put it at {source}")


def load_word_vectors(source: str | Path, cache_dir: str | Path,
                      expected_dim: int | None = WORD_DIM) -> WordVectors:
    """The word vectors of a word2vec file (binary for .bin / .bin.gz, else text format).

    The first load reads `source` with gensim's KeyedVectors.load_word2vec_format (GoogleNews:
    minutes and ~4 GB of RAM) and writes cache_dir/<source name>.{vectors.npy, vocab.txt,
    vocab-index.npy, cache.json}, each atomically, the JSON record last. Later loads take the
    cache when its record matches the source's size and mtime (a missing source is trusted with
    a warning), in well under a second and with little RAM. Raises WordVectorError (one line)
    for a missing file, a file that is not word2vec, or dim != expected_dim (None: any)."""
    source = Path(source)
    cache_dir = Path(cache_dir)
    stem = cache_dir / source.name
    record = _read_record(stem)
    try:
        st = source.stat()
    except FileNotFoundError:
        if record is None:
            raise _missing_error(source) from None
        log.warning("%s is gone; using its cache %s without checking it against the source",
                    source, stem.parent)
        st = None
    if st is not None and record is not None and (
            record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns):
        log.info("%s changed since its cache was written; rebuilding the cache", source)
        record = None
    if record is not None:
        if expected_dim is not None and record["dim"] != expected_dim:
            raise _dim_error(source, record["dim"], expected_dim)
        log.info("word vectors: %d x %d from cache %s", record["count"], record["dim"], stem)
        return WordVectors(stem, record["dim"], record["count"], str(source))
    if not source.is_file():
        raise WordVectorError(f"{source}: not a file; {DOWNLOAD_HINT}, gunzip it and put it "
                              f"at {source}")
    return _build_cache(source, st, stem, expected_dim)


def _build_cache(source: Path, st: os.stat_result, stem: Path,
                 expected_dim: int | None) -> WordVectors:
    """Reads `source` with gensim and writes the cache of load_word_vectors."""
    import gensim
    from gensim.models import KeyedVectors

    binary = _is_binary(source)
    _, dim = _read_header(source, binary)
    if expected_dim is not None and dim != expected_dim:       # before reading gigabytes
        raise _dim_error(source, dim, expected_dim)
    log.info("reading word vectors %s (first load; GoogleNews takes minutes)", source)
    t0 = time.monotonic()
    try:
        kv = KeyedVectors.load_word2vec_format(str(source), binary=binary)
    except _READ_ERRORS as e:
        raise _format_error(source, binary, e) from e
    except OSError as e:
        raise WordVectorError(f"{source}: cannot read it ({e})") from e
    if len(kv.index_to_key) == 0:
        raise _format_error(source, binary, "no words")
    record = {"cache_version": CACHE_VERSION, "source": str(source.resolve()),
              "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dim": int(kv.vector_size),
              "count": len(kv.index_to_key),
              "format": "word2vec-binary" if binary else "word2vec-text",
              "reader": f"gensim {gensim.__version__} KeyedVectors.load_word2vec_format"}
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        _write_cache(stem, kv.index_to_key, kv.vectors, record)
    except OSError as e:      # GoogleNews needs 3.7 GB of cache
        raise WordVectorError(f"{stem.parent}: cannot write the word-vector cache ({e}); "
                              f"free space there or choose another cache folder") from e
    log.info("word vectors: %d x %d read in %.1f s, cached in %s", record["count"],
             record["dim"], time.monotonic() - t0, stem.parent)
    return WordVectors(stem, record["dim"], record["count"], str(source))


def write_word2vec(path: Path, words: Sequence[str], vectors: np.ndarray,
                   binary: bool = True) -> None:
    """Writes `words` with their (len(words), dim) `vectors` as a word2vec file through gensim,
    atomically; a .gz suffix compresses it. Words must be unique and free of whitespace."""
    from gensim.models import KeyedVectors

    path = Path(path)
    words = list(words)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(f"vectors {vectors.shape} do not match {len(words)} words")
    if len(set(words)) != len(words):
        raise ValueError("words are not unique")
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"word2vec words cannot be empty or hold whitespace: {bad[:3]}")
    kv = KeyedVectors(vectors.shape[1], count=0, dtype=np.float32)
    kv.add_vectors(words, vectors)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_from_tmp(path, lambda tmp: kv.save_word2vec_format(str(tmp), binary=binary))


def demo_vectors(words: Iterable[str], dim: int = WORD_DIM, seed: int = 0) -> np.ndarray:
    """Seeded random word vectors, (len(words), dim) float32 unit-norm rows drawn standard
    normal (np.random.default_rng(seed)), the same on every machine; row i belongs to words[i]."""
    n = len(list(words))
    v = np.random.default_rng(seed).standard_normal((n, dim))
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v.astype(np.float32)
