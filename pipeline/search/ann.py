"""The on-disk vector index: exact or approximate (IVF-Flat) top-k by inner product, in faiss.

AVLnet compares plain dot products of unnormalised embeddings, so the metric is the inner product
throughout. Up to `exact_max` vectors the index is exact (faiss IndexFlatIP); above it, IVF-Flat
with METRIC_INNER_PRODUCT: k-means (seeded) on a seeded sample cuts the vectors into ~4 sqrt(n)
lists and a query scans the `nprobe` lists whose centroids score highest. nprobe is calibrated at
build time: the smallest value on a ladder whose recall@10 against exact search, on a seeded
sample of the vectors used as queries, reaches `target_recall`.

A saved index is a folder holding index.faiss and ann.json (kind, n, dim, params, faiss version,
build seconds, file size), written into a temporary sibling folder and renamed into place.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from pipeline.safety import UserError

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
META_FILE = "ann.json"
KINDS = ("exact", "ivf")
ADD_CHUNK = 65_536            # rows converted to float32 and added at a time (bounds the copies)
TRAIN_PER_LIST = 50           # k-means training points per inverted list (faiss warns below 39)
KMEANS_ITER = 10              # k-means iterations (faiss's default 25 costs 2.5x the build time;
                              # the nprobe calibration absorbs the slightly rougher lists)
CALIB_QUERIES = 256           # database vectors used as queries to pick nprobe
CALIB_K = 10
TARGET_RECALL = 0.97          # calibration target; margin over the 0.95 acceptance for new queries
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


class AnnError(UserError):
    """A vector index that cannot be built, saved or loaded as asked."""


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """faiss's OpenMP thread count set to `n` inside the block (None: leave it)."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _check_vectors(vectors: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.shape[1] < 1:
        raise AnnError(f"{what}: expected a 2-D array (n, dim), got "
                       f"{getattr(vectors, 'shape', type(vectors).__name__)}; pass one row per item")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise AnnError(f"{what}: expected float32 or float16 values, got {vectors.dtype}; "
                       "cast the embeddings to float32")
    return vectors


def _chunk32(vectors: np.ndarray, start: int, stop: int, what: str) -> np.ndarray:
    """Rows start:stop as C-contiguous float32 (a view when they already are), checked finite."""
    chunk = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
    if not np.isfinite(chunk).all():
        bad = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
        raise AnnError(f"{what}: row {bad} holds NaN or inf; fix the embeddings that produced it")
    return chunk


def default_nlist(n: int) -> int:
    """Inverted lists for n vectors: ~4 sqrt(n), at least 39 training points each, 1..65536."""
    return int(max(1, min(65_536, round(4 * math.sqrt(n)), n // 39)))


def _exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids (q, k) of the k largest inner products of each query over all vectors, chunked so
    only one float32 chunk of `vectors` exists at a time."""
    q = queries.shape[0]
    best_s = np.full((q, 0), -np.inf, np.float32)
    best_i = np.zeros((q, 0), np.int64)
    for start in range(0, vectors.shape[0], ADD_CHUNK):
        chunk = np.ascontiguousarray(vectors[start:start + ADD_CHUNK], dtype=np.float32)
        s = queries @ chunk.T                                         # (q, chunk)
        take = min(k, s.shape[1])
        part = np.argpartition(-s, take - 1, axis=1)[:, :take]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(best_s, keep, 1)
            best_i = np.take_along_axis(best_i, keep, 1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth|: ids (q, k) each, -1 ignored in found."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


class VectorIndex:
    """A faiss index of n vectors of `dim` floats searched by inner product.

    kind: "exact" (IndexFlatIP) or "ivf" (IndexIVFFlat, METRIC_INNER_PRODUCT); params: what built
    it (nlist, nprobe, calibration); build_s: seconds to build. `nprobe` can be changed after
    loading (more lists scanned: higher recall, slower queries)."""

    def __init__(self, index: faiss.Index, kind: str, params: dict, build_s: float) -> None:
        self.index, self.kind, self.params, self.build_s = index, kind, dict(params), build_s
        self.n, self.dim = int(index.ntotal), int(index.d)

    # ---------------------------------------------------------------- knobs

    @property
    def nprobe(self) -> int | None:
        """Lists scanned per query (ivf only; None for exact)."""
        return int(self.index.nprobe) if self.kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise AnnError("nprobe: only an ivf index has lists to probe; this one is exact")
        self.index.nprobe = int(min(max(1, value), self.index.nlist))
        self.params["nprobe"] = int(self.index.nprobe)

    # ---------------------------------------------------------------- build

    @classmethod
    def build(cls, vectors: np.ndarray, *, kind: str = "auto", exact_max: int = 50_000,
              seed: int = 0, threads: int | None = None, nlist: int | None = None,
              target_recall: float = TARGET_RECALL) -> "VectorIndex":
        """Index `vectors` (n, dim) float32/float16 (n >= 1; not copied whole: rows are converted
        and added ADD_CHUNK at a time). kind "auto": exact when n <= exact_max else "ivf".
        Deterministic given `seed`; `threads` caps faiss's OpenMP threads during the build."""
        vectors = _check_vectors(vectors, "vectors")
        n, dim = vectors.shape
        if n < 1:
            raise AnnError("vectors: no rows to index; embed at least one item first")
        if kind == "auto":
            kind = "exact" if n <= exact_max else "ivf"
        if kind not in KINDS:
            raise AnnError(f"kind: {kind!r} is not one of auto, {', '.join(KINDS)}; pick one")
        t0 = time.perf_counter()
        with _threads(threads):
            if kind == "exact":
                index, params = faiss.IndexFlatIP(dim), {}
                cls._add(index, vectors)
            else:
                index, params = cls._build_ivf(vectors, seed, nlist, target_recall)
        build_s = time.perf_counter() - t0
        log.info("built %s index of %d x %d in %.1f s %s", kind, n, dim, build_s, params)
        return cls(index, kind, {**params, "seed": seed}, build_s)

    @staticmethod
    def _add(index: faiss.Index, vectors: np.ndarray) -> None:
        for start in range(0, vectors.shape[0], ADD_CHUNK):
            index.add(_chunk32(vectors, start, start + ADD_CHUNK, "vectors"))

    @classmethod
    def _build_ivf(cls, vectors: np.ndarray, seed: int, nlist: int | None,
                   target_recall: float) -> tuple[faiss.Index, dict]:
        n, dim = vectors.shape
        nlist = int(nlist or default_nlist(n))
        if not 1 <= nlist <= n:
            raise AnnError(f"nlist: {nlist} lists for {n} vectors; use 1..{n}")
        rng = np.random.default_rng(seed)
        n_train = min(n, TRAIN_PER_LIST * nlist)
        rows = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
        train = _chunk32(vectors[rows] if n_train < n else vectors, 0, n_train, "vectors")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.cp.niter = KMEANS_ITER
        index.cp.max_points_per_centroid = TRAIN_PER_LIST    # train on exactly our sample
        index.train(train)
        del train
        cls._add(index, vectors)
        # calibrate nprobe: database rows as queries, their exact top-10 as truth
        q_rows = np.sort(rng.choice(n, min(n, CALIB_QUERIES), replace=False))
        queries = _chunk32(vectors[q_rows], 0, len(q_rows), "vectors")
        k = min(CALIB_K, n)
        truth = _exact_topk(vectors, queries, k)
        nprobe, recall = nlist, 1.0
        for p in [p for p in NPROBE_LADDER if p < nlist] + [nlist]:
            index.nprobe = p
            recall = recall_at_k(index.search(queries, k)[1], truth)
            if recall >= target_recall:
                nprobe = p
                break
        index.nprobe = nprobe
        return index, {"nlist": nlist, "nprobe": nprobe, "train_points": int(n_train),
                       "kmeans_iter": KMEANS_ITER,
                       "calibration": {"queries": int(len(q_rows)), "k": k,
                                       "target_recall": target_recall, "recall": recall}}

    # ---------------------------------------------------------------- search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: queries (q, dim) -> scores (q, k) float32 descending, ids
        (q, k) int64 row numbers of the built vectors; -1 ids (score -inf) where fewer than k
        items were found. Equal scores come in increasing id order."""
        queries = _check_vectors(queries, "queries")
        if queries.shape[1] != self.dim:
            raise AnnError(f"queries: dim {queries.shape[1]} but the index holds dim {self.dim}; "
                           "embed the queries with the model that built the index")
        if int(k) < 1:
            raise AnnError(f"k: {k} results asked; ask for at least 1")
        k, q = int(k), queries.shape[0]
        scores = np.full((q, k), -np.inf, np.float32)
        ids = np.full((q, k), -1, np.int64)
        kk = min(k, self.n)
        if not q:
            return scores, ids
        q32 = _chunk32(queries, 0, q, "queries")
        # exact: one extra result shows a tie across the k-th place, where faiss's pick among
        # the tied ids depends on its code path; those rows are ranked again in numpy
        extra = int(self.kind == "exact" and kk < self.n)
        s, i = self.index.search(q32, kk + extra)
        s[i < 0] = -np.inf
        order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s), axis=1)
        s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        if extra:
            tied = np.flatnonzero(s[:, kk - 1] == s[:, kk])
            if len(tied):
                xb = faiss.rev_swig_ptr(self.index.get_xb(), self.n * self.dim)
                xb = xb.reshape(self.n, self.dim)                    # a view of the index's rows
                for r in tied.tolist():
                    row = xb @ q32[r]                                # (n,)
                    top = np.argsort(-row, kind="stable")[:kk]
                    s[r, :kk], i[r, :kk] = row[top], top
        scores[:, :kk], ids[:, :kk] = s[:, :kk], i[:, :kk]
        return scores, ids

    # ---------------------------------------------------------------- disk

    def save(self, folder: Path) -> None:
        """Writes index.faiss + ann.json into `folder` atomically: a temporary sibling folder is
        written and fsynced, then renamed into place (an older folder is replaced)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            try:
                faiss.write_index(self.index, str(tmp / INDEX_FILE))
            except RuntimeError as e:
                raise AnnError(f"{folder}: cannot write {INDEX_FILE} "
                               f"({str(e).strip().splitlines()[-1]}); check free space") from e
            meta = {"kind": self.kind, "n": self.n, "dim": self.dim,
                    "metric": "inner_product", "params": self.params,
                    "faiss": faiss.__version__, "build_s": self.build_s,
                    "index_bytes": (tmp / INDEX_FILE).stat().st_size,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            for name in (INDEX_FILE, META_FILE):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not folder.exists():
                os.replace(old, folder)         # put the previous index back
            raise
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> "VectorIndex":
        """The index saved in `folder` by save(); AnnError naming the file for a missing folder
        or file, a corrupt file, or an index that disagrees with its ann.json."""
        folder = Path(folder)
        fix = "build the index again (VectorIndex.build + save) or point at the right folder"
        if not folder.is_dir():
            raise AnnError(f"{folder}: no index folder there; {fix}")
        meta_path, index_path = folder / META_FILE, folder / INDEX_FILE
        if not meta_path.is_file():
            raise AnnError(f"{meta_path}: missing; the index was not saved completely; {fix}")
        try:
            meta = json.loads(meta_path.read_text())
            kind, n, dim = meta["kind"], int(meta["n"]), int(meta["dim"])
            params, build_s = dict(meta.get("params", {})), float(meta.get("build_s", 0.0))
        except (ValueError, KeyError, TypeError) as e:
            raise AnnError(f"{meta_path}: unreadable ({type(e).__name__}: {e}); {fix}") from e
        if kind not in KINDS:
            raise AnnError(f"{meta_path}: kind {kind!r} is not one of {', '.join(KINDS)}; {fix}")
        if not index_path.is_file():
            raise AnnError(f"{index_path}: missing; {fix}")
        size = index_path.stat().st_size
        if "index_bytes" in meta and size != meta["index_bytes"]:
            raise AnnError(f"{index_path}: {size} bytes but ann.json says "
                           f"{meta['index_bytes']} (truncated or replaced); {fix}")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            raise AnnError(f"{index_path}: corrupt ({str(e).strip().splitlines()[-1]}); "
                           f"{fix}") from e
        want = faiss.IndexFlatIP if kind == "exact" else faiss.IndexIVFFlat
        if not isinstance(index, want) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise AnnError(f"{index_path}: holds a {type(index).__name__} but ann.json says "
                           f"{kind} (inner product); {fix}")
        if index.d != dim or index.ntotal != n:
            raise AnnError(f"{index_path}: {index.ntotal} x {index.d} vectors but ann.json says "
                           f"{n} x {dim}; {fix}")
        if kind == "ivf" and "nprobe" in params:
            index.nprobe = int(params["nprobe"])
        return cls(index, kind, params, build_s)
