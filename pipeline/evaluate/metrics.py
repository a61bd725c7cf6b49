"""Retrieval metrics: similarity (rows = queries, column i = query i's true match) -> a flat dict.

avlnet.md "Evaluation". Rank = 0-based position of the true match; ties are broken
PESSIMISTICALLY: every other candidate scoring higher than or equal to the true match ranks
ahead of it (the reference counted only strictly higher ones, so a constant matrix gave R@1 = 1
and R@5 = 5; here it gives rank n-1 for every query). R@K = fraction of queries with rank < K,
median rank = median(rank) + 1, mean rank = mean(rank) + 1.

Missing clips (no video, no audio, failed extraction) under the `paper` protocol count as
failures over the official clip count: rank = n_official (worse than any present candidate);
under `available` only the present clips are scored. The reference's paper protocol took the
median rank over the present clips only (2.5 on avlnet.md's Y, 968 of 1000 present; ours 3.0):
the paper protocol also reports it as `<direction>_median_rank_present`, labelled "reference
convention". Chunked: a 100,000 x 100,000 retrieval is
computed a block of rows at a time and never held whole."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

KS = (1, 5, 10)
DIRECTIONS = {"audio_to_video": "A->V", "video_to_audio": "V->A"}


def ranks_of(block: torch.Tensor, true_cols: torch.Tensor) -> torch.Tensor:
    """(b, n) similarities, (b,) true column per row -> (b,) 0-based pessimistic ranks."""
    true = block.gather(1, true_cols[:, None])                        # (b, 1)
    ahead = (block >= true).sum(1) - 1                                # minus the match itself
    return ahead


def ranks_from_embeddings(queries: torch.Tensor, candidates: torch.Tensor,
                          chunk: int = 2048) -> torch.Tensor:
    """Query i's true match is candidate i. (n, D) x (n, D) -> (n,) ranks, `chunk` rows of the
    (n, n) similarity at a time (memory: chunk x n scores)."""
    n = queries.shape[0]
    out = torch.empty(n, dtype=torch.int64)
    for s in range(0, n, chunk):
        block = queries[s:s + chunk] @ candidates.T                   # (b, n)
        out[s:s + chunk] = ranks_of(block, torch.arange(s, s + block.shape[0])).cpu()
    return out


def ranks_from_blocks(blocks: Iterator[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Row blocks (first row, (b, n) similarities) in order -> ranks; for similarities made
    block by block (benchmarks, or scores from elsewhere)."""
    parts = [ranks_of(b, torch.arange(s, s + b.shape[0])) for s, b in blocks]
    return torch.cat(parts)


def summarize(ranks: np.ndarray | torch.Tensor, prefix: str, n_total: int | None = None
              ) -> dict[str, float]:
    """Ranks of the present queries -> {prefix_R@1, _R@5, _R@10, _median_rank, _mean_rank}.
    With n_total (the paper protocol): the missing queries count as failures with rank n_total,
    and _median_rank_present is the median over the present queries only + 1 (the
    reference code's convention; NaN when none is present)."""
    present = np.asarray(ranks, dtype=np.float64)
    r = present
    if n_total is not None and n_total > len(r):
        r = np.concatenate([r, np.full(n_total - len(r), float(n_total))])
    nan = float("nan")
    if not len(r):
        out = {f"{prefix}_R@{k}": 0.0 for k in KS} | {f"{prefix}_median_rank": nan,
                                                       f"{prefix}_mean_rank": nan}
    else:
        out = {f"{prefix}_R@{k}": float((r < k).mean()) for k in KS}
        out[f"{prefix}_median_rank"] = float(np.median(r) + 1)
        out[f"{prefix}_mean_rank"] = float(r.mean() + 1)
    if n_total is not None:
        out[f"{prefix}_median_rank_present"] = (float(np.median(present) + 1) if len(present)
                                                else nan)
    return out


def retrieval_metrics(audio: torch.Tensor, video: torch.Tensor, n_official: int | None = None,
                      chunk: int = 2048) -> dict[str, dict[str, float]]:
    """Embeddings of the present clips (row i of both = clip i) -> {'available': {...},
    'paper': {...}}, each with audio_to_video_* and video_to_audio_* keys plus n_queries,
    n_candidates, n_missing. n_official: the official clip count (default: the present ones)."""
    return metrics_from_ranks(ranks_from_embeddings(audio, video, chunk).numpy(),
                              ranks_from_embeddings(video, audio, chunk).numpy(), n_official)


def metrics_from_ranks(r_av: np.ndarray, r_va: np.ndarray, n_official: int | None = None
                       ) -> dict[str, dict[str, float]]:
    """A->V and V->A ranks of the present clips -> the dict of retrieval_metrics."""
    return metrics_of({"audio_to_video": r_av, "video_to_audio": r_va}, n_official)


def metrics_of(ranks: dict[str, np.ndarray], n_official: int | None = None
               ) -> dict[str, dict[str, float]]:
    """Ranks of the present clips per direction (name -> (n,)) -> {'available': {...},
    'paper': {...}}: <direction>_R@1/5/10, _median_rank, _mean_rank for each (paper also
    _median_rank_present, the reference's convention), plus n_queries, n_candidates,
    n_missing."""
    n = len(next(iter(ranks.values())))
    n_official = n if n_official is None else n_official
    if n_official < n:
        raise ValueError(f"n_official ({n_official}) is below the {n} clips present")
    out = {}
    for protocol, total in (("available", n), ("paper", n_official)):
        m: dict[str, float] = {}
        for name, r in ranks.items():
            m |= summarize(r, name, total if protocol == "paper" else None)
        m.update(n_queries=float(total), n_candidates=float(n), n_missing=float(total - n))
        out[protocol] = m
    return out


def chance(n: int) -> dict[str, float]:
    """Expected R@K of random scores over n candidates: min(K, n) / n; median rank (n + 1) / 2."""
    return {f"R@{k}": min(k, n) / n if n else 0.0 for k in KS} | {"median_rank": (n + 1) / 2}
