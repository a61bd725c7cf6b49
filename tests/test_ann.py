"""The vector index (pipeline/search/ann.py) against a numpy oracle: exact top-k by inner product,
ties and short results, the IVF kind's recall, deterministic builds, and the on-disk folder
(round trip, atomic save, clear errors for missing and corrupt files)."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from pipeline.safety import UserError
from pipeline.search import ann
from pipeline.search.ann import AnnError, VectorIndex


def clustered(n: int, dim: int, seed: int, clusters: int = 100) -> np.ndarray:
    """n float32 vectors around `clusters` directions, varied norms (a structure like embeddings)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, dim))
    return (x * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)


def oracle(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product in float64, ties broken by increasing id (a stable sort)."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def test_exact_equals_numpy_argsort():
    x, q = clustered(3000, 24, 0), clustered(50, 24, 1)
    index = VectorIndex.build(x)
    assert (index.kind, index.n, index.dim) == ("exact", 3000, 24)
    scores, ids = index.search(q, 15)
    want_s, want_i = oracle(x, q, 15)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (50, 15)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-4, atol=1e-3)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_ties_come_in_id_order():
    # integer vectors: many exact ties, including across the k boundary
    rng = np.random.default_rng(3)
    x = rng.integers(-1, 2, (400, 4)).astype(np.float32)
    q = rng.integers(-1, 2, (30, 4)).astype(np.float32)
    index = VectorIndex.build(x)
    for k in (1, 7, 50):
        for queries in (q, q[:3]):           # faiss takes different paths for few and many queries
            scores, ids = index.search(queries, k)
            want_s, want_i = oracle(x, queries, k)
            np.testing.assert_array_equal(ids, want_i)
            np.testing.assert_array_equal(scores, want_s.astype(np.float32))


def test_k_beyond_n_pads_with_minus_one():
    x = clustered(5, 8, 0)
    index = VectorIndex.build(x)
    scores, ids = index.search(clustered(2, 8, 1), 9)
    assert ids.shape == (2, 9)
    assert (ids[:, 5:] == -1).all() and (ids[:, :5] >= 0).all()
    assert np.isneginf(scores[:, 5:]).all() and np.isfinite(scores[:, :5]).all()
    assert sorted(ids[0, :5].tolist()) == list(range(5))
    one = VectorIndex.build(x[:1])
    s, i = one.search(x[:1], 3)
    assert i.tolist() == [[0, -1, -1]]


def test_bad_inputs_are_user_errors():
    index = VectorIndex.build(clustered(10, 8, 0))
    with pytest.raises(AnnError, match="dim 5"):
        index.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(AnnError, match="at least 1"):
        index.search(np.zeros((1, 8), np.float32), 0)
    with pytest.raises(AnnError, match="2-D"):
        VectorIndex.build(np.zeros(8, np.float32))
    with pytest.raises(AnnError, match="no rows"):
        VectorIndex.build(np.zeros((0, 8), np.float32))
    with pytest.raises(AnnError, match="int64"):
        VectorIndex.build(np.zeros((3, 8), np.int64))
    with pytest.raises(AnnError, match="row 2 holds NaN"):
        VectorIndex.build(np.array([[1.0], [2.0], [np.nan]], np.float32))
    with pytest.raises(AnnError, match="kind"):
        VectorIndex.build(clustered(10, 8, 0), kind="hnsw")
    assert issubclass(AnnError, UserError)


def test_float16_input_works():
    x = clustered(2000, 16, 0)
    x16 = x.astype(np.float16)
    q = clustered(20, 16, 1)
    scores, ids = VectorIndex.build(x16).search(q.astype(np.float16), 10)
    want_s, want_i = oracle(x16.astype(np.float32), q.astype(np.float16).astype(np.float32), 10)
    np.testing.assert_array_equal(ids, want_i)
    ivf = VectorIndex.build(x16, kind="ivf", nlist=16)
    assert ivf.kind == "ivf" and ivf.n == 2000


def test_ivf_recall_at_20k():
    x, q = clustered(20_000, 64, 0, clusters=400), clustered(300, 64, 1, clusters=400)
    index = VectorIndex.build(x, kind="ivf", seed=0)
    assert index.kind == "ivf" and index.params["nlist"] == ann.default_nlist(20_000)
    assert 1 <= index.nprobe < index.params["nlist"]      # calibration chose fewer than all lists
    assert index.params["calibration"]["recall"] >= ann.TARGET_RECALL
    _, ids = index.search(q, 10)
    _, truth = oracle(x, q, 10)
    assert ann.recall_at_k(ids, truth) >= 0.95
    # "auto" stays exact up to exact_max and turns to ivf above it
    assert VectorIndex.build(x, exact_max=20_000).kind == "exact"
    assert VectorIndex.build(x[:5000], exact_max=4999).kind == "ivf"


def test_ivf_build_is_deterministic(tmp_path):
    x = clustered(5000, 32, 0)
    a = VectorIndex.build(x, kind="ivf", seed=7, threads=2)
    b = VectorIndex.build(x, kind="ivf", seed=7, threads=1)
    c = VectorIndex.build(x, kind="ivf", seed=8)
    blob = [faiss.serialize_index(i.index).tobytes() for i in (a, b, c)]
    assert blob[0] == blob[1] != blob[2]
    assert a.params == b.params


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    x, q = clustered(3000, 16, 0), clustered(40, 16, 1)
    index = VectorIndex.build(x, kind=kind, nlist=32 if kind == "ivf" else None)
    folder = tmp_path / "idx"
    index.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]        # no temporary left
    assert sorted(p.name for p in folder.iterdir()) == ["ann.json", "index.faiss"]
    meta = json.loads((folder / "ann.json").read_text())
    assert (meta["kind"], meta["n"], meta["dim"]) == (kind, 3000, 16)
    assert meta["faiss"] == faiss.__version__ and meta["build_s"] > 0
    assert meta["index_bytes"] == (folder / "index.faiss").stat().st_size
    back = VectorIndex.load(folder)
    assert (back.kind, back.n, back.dim, back.nprobe) == (kind, 3000, 16, index.nprobe)
    for got, want in zip(back.search(q, 10), index.search(q, 10)):
        np.testing.assert_array_equal(got, want)
    # saving again replaces the folder whole
    VectorIndex.build(x[:100]).save(folder)
    assert VectorIndex.load(folder).n == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_failed_save_leaves_no_partial_folder(tmp_path, monkeypatch):
    index = VectorIndex.build(clustered(100, 8, 0))
    folder = tmp_path / "idx"
    real_dumps = json.dumps

    def broken(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ann.json, "dumps", broken)
    with pytest.raises(OSError):
        index.save(folder)
    assert list(tmp_path.iterdir()) == []
    # a failure while replacing an older index keeps the older one
    monkeypatch.setattr(ann.json, "dumps", real_dumps)
    index.save(folder)
    monkeypatch.setattr(ann.json, "dumps", broken)
    with pytest.raises(OSError):
        VectorIndex.build(clustered(50, 8, 0)).save(folder)
    monkeypatch.setattr(ann.json, "dumps", real_dumps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert VectorIndex.load(folder).n == 100


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    folder = tmp_path / "idx"
    with pytest.raises(AnnError, match=f"{folder}: no index folder"):
        VectorIndex.load(folder)
    VectorIndex.build(clustered(200, 8, 0)).save(folder)
    meta_path, index_path = folder / "ann.json", folder / "index.faiss"
    meta = json.loads(meta_path.read_text())
    blob = index_path.read_bytes()

    index_path.unlink()
    with pytest.raises(AnnError, match=f"{index_path}: missing"):
        VectorIndex.load(folder)
    index_path.write_bytes(blob[: len(blob) // 2])                       # truncated
    with pytest.raises(AnnError, match=f"{index_path}: .*truncated"):
        VectorIndex.load(folder)
    index_path.write_bytes(b"\0" * len(blob))                            # garbage, right size
    with pytest.raises(AnnError, match=f"{index_path}: corrupt"):
        VectorIndex.load(folder)
    index_path.write_bytes(blob)
    meta_path.write_text(json.dumps({**meta, "dim": 9}))
    with pytest.raises(AnnError, match=f"{index_path}: 200 x 8 .* 200 x 9"):
        VectorIndex.load(folder)
    meta_path.write_text(json.dumps({**meta, "kind": "ivf"}))
    with pytest.raises(AnnError, match=f"{index_path}: holds a IndexFlatIP"):
        VectorIndex.load(folder)
    meta_path.write_text("{not json")
    with pytest.raises(AnnError, match=f"{meta_path}: unreadable"):
        VectorIndex.load(folder)
    meta_path.unlink()
    with pytest.raises(AnnError, match=f"{meta_path}: missing"):
        VectorIndex.load(folder)
