"""Retrieval metrics (pipeline/evaluate/metrics.py): golden values of avlnet.md, a brute-force oracle,
ties, chunking and the two missing-clip protocols."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluate.metrics import (chance, metrics_of, ranks_from_blocks,
                                       ranks_from_embeddings, retrieval_metrics, summarize)

X6 = torch.tensor([[.9, .1, .3, .2, 0, .5], [.2, .5, .6, .1, 0, .3], [.4, 0, .8, .9, .7, .1],
                   [.1, .2, .3, 0, .4, .5], [.3, .3, .3, .3, .6, .3],
                   [.5, .4, .3, .2, .1, .05]], dtype=torch.float64)


def ranks(s: torch.Tensor, chunk: int | None = None) -> np.ndarray:
    step = chunk or s.shape[0]
    return ranks_from_blocks((i, s[i:i + step]) for i in range(0, s.shape[0], step)).numpy()


def oracle(s: np.ndarray) -> np.ndarray:
    """Brute force: sort each row (stable, true match placed after its ties) and find it."""
    out = []
    for i, row in enumerate(s):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == i))
        out.append(order.index(i))
    return np.array(out)


def test_x6_golden_values():
    r = ranks(X6)
    assert r.tolist() == [0, 1, 1, 5, 0, 5]
    m = summarize(r, "audio_to_video")
    assert m["audio_to_video_R@1"] == pytest.approx(0.3333, abs=1e-4)
    assert m["audio_to_video_R@5"] == pytest.approx(0.6667, abs=1e-4)
    assert m["audio_to_video_R@10"] == 1.0 and m["audio_to_video_median_rank"] == 2.0
    t = summarize(ranks(X6.T.contiguous()), "video_to_audio")
    assert t["video_to_audio_R@1"] == 0.5 and t["video_to_audio_median_rank"] == 1.5
    assert t["video_to_audio_R@5"] == pytest.approx(0.6667, abs=1e-4)
    assert t["video_to_audio_R@10"] == 1.0


def test_968_of_1000_golden_values():
    y = torch.from_numpy(np.random.RandomState(0).randn(968, 968) + 3 * np.eye(968))
    r = ranks(y, chunk=100)
    a = summarize(r, "audio_to_video")
    assert a["audio_to_video_R@1"] == pytest.approx(0.393595, abs=1e-6)
    assert a["audio_to_video_R@5"] == pytest.approx(0.639463, abs=1e-6)
    assert a["audio_to_video_R@10"] == pytest.approx(0.729339, abs=1e-6)
    assert a["audio_to_video_median_rank"] == 2.5
    p = summarize(r, "audio_to_video", n_total=1000)
    assert (p["audio_to_video_R@1"], p["audio_to_video_R@5"], p["audio_to_video_R@10"]) == \
        pytest.approx((0.381, 0.619, 0.706), abs=1e-9)
    # median rank: ours counts the 32 missing clips as failures (3.0); the reference's paper
    # protocol took it over the 968 present ones (2.5), reported beside ours
    assert p["audio_to_video_median_rank"] == 3.0
    assert p["audio_to_video_median_rank_present"] == 2.5
    assert "audio_to_video_median_rank_present" not in a


def test_metrics_of_reports_the_reference_median_in_the_paper_protocol_only():
    y = torch.from_numpy(np.random.RandomState(0).randn(968, 968) + 3 * np.eye(968))
    r = ranks(y, chunk=300)
    m = metrics_of({"audio_to_video": r, "video_to_audio": ranks(y.T.contiguous())}, 1000)
    assert m["paper"]["audio_to_video_median_rank"] == 3.0
    assert m["paper"]["audio_to_video_median_rank_present"] == 2.5
    assert m["paper"]["video_to_audio_median_rank_present"] == \
        m["available"]["video_to_audio_median_rank"]
    assert not any(k.endswith("_present") for k in m["available"])
    empty = summarize(np.array([]), "audio_to_video", n_total=3)
    assert np.isnan(empty["audio_to_video_median_rank_present"])
    assert empty["audio_to_video_median_rank"] == 4.0


def test_ties_are_pessimistic_never_above_one():
    const = torch.ones(7, 7)
    r = ranks(const)
    assert r.tolist() == [6] * 7
    m = summarize(r, "audio_to_video")
    assert m["audio_to_video_R@1"] == 0.0 and m["audio_to_video_R@5"] == 0.0
    assert all(0 <= m[f"audio_to_video_R@{k}"] <= 1 for k in (1, 5, 10))
    ties = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.5, 0.0, 0.5]])
    assert ranks(ties).tolist() == oracle(ties.numpy()).tolist() == [1, 1, 1]


@pytest.mark.parametrize("seed", range(5))
def test_random_matrices_match_the_oracle_and_chunking_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    s = torch.from_numpy(np.round(rng.standard_normal((57, 57)), 1))   # rounding makes ties
    want = oracle(s.numpy())
    for chunk in (None, 1, 8, 56):
        assert ranks(s, chunk).tolist() == want.tolist()
    a, v = torch.randn(57, 16), torch.randn(57, 16)
    dense = ranks(a @ v.T)
    assert ranks_from_embeddings(a, v, chunk=5).tolist() == dense.tolist()


def test_retrieval_metrics_protocols():
    torch.manual_seed(0)
    a = torch.randn(40, 8)
    v = a + 0.3 * torch.randn(40, 8)
    m = retrieval_metrics(a, v, n_official=50, chunk=7)
    av, pp = m["available"], m["paper"]
    assert av["n_queries"] == 40 and pp["n_queries"] == 50 and pp["n_missing"] == 10
    assert pp["n_candidates"] == av["n_candidates"] == 40
    for k in (1, 5, 10):
        assert pp[f"audio_to_video_R@{k}"] == pytest.approx(av[f"audio_to_video_R@{k}"] * 0.8)
        assert pp[f"video_to_audio_R@{k}"] == pytest.approx(av[f"video_to_audio_R@{k}"] * 0.8)
    assert av["audio_to_video_R@10"] > chance(40)["R@10"]
    with pytest.raises(ValueError, match="n_official"):
        retrieval_metrics(a, v, n_official=10)


def test_chance():
    assert chance(1000) == {"R@1": 0.001, "R@5": 0.005, "R@10": 0.01, "median_rank": 500.5}
    assert chance(5)["R@10"] == 1.0
