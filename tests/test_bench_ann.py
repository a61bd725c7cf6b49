"""The vector index benchmark (benchmarks/ann.py) at a tiny size: the generator is seeded and
clustered, and the driver's results files hold every field the report needs."""
from __future__ import annotations

import json

import numpy as np

from benchmarks import ann as bench


def test_mixture_is_seeded_and_clustered():
    x, q = bench.data(3000, 32, 20, 50, seed=3)
    assert x.dtype == q.dtype == np.float32 and x.shape == (3000, 32) and q.shape == (50, 32)
    x2, q2 = bench.data(3000, 32, 20, 50, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(q, q2)
    assert not np.array_equal(x, bench.data(3000, 32, 20, 50, seed=4)[0])
    assert not (q[:, None, :] == x[None, :, :]).all(axis=2).any()      # queries not in the set
    norms = np.linalg.norm(x, axis=1)
    assert norms.std() / norms.mean() > 0.1                            # varied norms
    # neighbour structure: a vector's best match is far closer than a random one
    u = x / norms[:, None]
    cos = u[:200] @ u.T
    np.fill_diagonal(cos[:, :200], -1)
    assert np.median(cos.max(axis=1)) > 0.5 > np.median(np.abs(cos))


def test_driver_at_tiny_size(tmp_path):
    out = tmp_path / "results"
    rc = bench.main(["--n", "20000", "--dim", "32", "--clusters", "200", "--queries", "200",
                     "--single", "20", "--out", str(out)])
    res = json.loads((out / "ann.json").read_text())
    acc = res["acceptance"]
    assert rc == (0 if acc["pass"] else 1) and acc["pass"] is True
    assert res["settings"]["n"] == 20000 and res["settings"]["dim"] == 32
    exact, ivf = res["runs"]["exact"], res["runs"]["ivf"]
    assert exact["kind"] == "exact" and ivf["kind"] == "ivf"
    assert exact["recall_at_10"] == 1.0 and ivf["recall_at_10"] == acc["recall"] >= 0.95
    for r in (exact, ivf):
        assert (r["n"], r["dim"]) == (20000, 32)
        assert r["build_s"] > 0 and r["load_s"] > 0 and r["batch_ms_per_query"] > 0
        assert r["single_queries"] == 20 and 0 < r["single_ms_p50"] <= r["single_ms_p90"]
        assert r["vectors_bytes"] == 20000 * 32 * 4
        assert r["index_bytes"] >= r["vectors_bytes"]                  # flat codes + metadata
        assert r["peak_mib"] >= r["after_data_mib"] > r["baseline_mib"] > 0
    p = ivf["params"]
    assert 1 <= p["nprobe"] <= p["nlist"] and str(p["nprobe"]) in ivf["sweep"]
    recalls = [ivf["sweep"][k]["recall_at_10"] for k in sorted(ivf["sweep"], key=int)]
    assert recalls == sorted(recalls) and recalls[-1] >= recalls[0]
    assert ivf["sweep"][str(p["nprobe"])]["recall_at_10"] == ivf["recall_at_10"]
    md = (out / "ann.md").read_text()
    assert "20,000 vectors" in md and "**pass**" in md and "dimension 32" in md
    assert "peak RSS" in md and "recall@10" in md
