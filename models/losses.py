"""Contrastive losses over a batch of paired audio / video embeddings (avlnet.md "Loss").

Each module takes embeddings a (B, D) and v (B, D), clip i of each being a pair, forms the
similarity S = a @ v.T (rows audio) and returns a scalar; `from_similarity(S)` exposes the loss of
a given matrix (golden tests). Every other clip in the batch is a negative, other clips of the
same video included, unless a loss takes a positive mask (MIL-NCE)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PairLoss(nn.Module):
    """Base: forward(a, v, pos_mask=None) = from_similarity(a @ v.T, pos_mask)."""

    def forward(self, a: torch.Tensor, v: torch.Tensor,
                pos_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_similarity(a @ v.T, pos_mask)

    def from_similarity(self, s: torch.Tensor, pos_mask: torch.Tensor | None = None
                        ) -> torch.Tensor:
        raise NotImplementedError


def _symmetric_ce(s: torch.Tensor) -> torch.Tensor:
    target = torch.arange(s.shape[0], device=s.device)
    return F.cross_entropy(s, target) + F.cross_entropy(s.T, target)


class MMS(PairLoss):
    """Masked margin softmax (AVLnet's default): S' = S - delta I; CE over the rows of S' plus CE
    over its columns, each the mean over the batch; no temperature."""

    def __init__(self, margin: float = 0.001):
        super().__init__()
        self.margin = margin

    def from_similarity(self, s, pos_mask=None):
        return _symmetric_ce(s - self.margin * torch.eye(s.shape[0], device=s.device,
                                                         dtype=s.dtype))


class InfoNCE(PairLoss):
    """Symmetric InfoNCE on cosine similarities / temperature (Table 3's InfoNCE row): the same
    contrast as MMS, on L2-normalised embeddings, without the margin."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, a, v, pos_mask=None):
        return self.from_similarity(F.normalize(a, dim=-1) @ F.normalize(v, dim=-1).T)

    def from_similarity(self, s, pos_mask=None):
        return _symmetric_ce(s / self.temperature)


class MaxMargin(PairLoss):
    """Max-margin ranking (Miech et al.): mean over all (i, j) of relu(m + S_ij - S_ii) +
    relu(m + S_ij - S_jj), the diagonal's 2m terms included in the mean (as the reference)."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def from_similarity(self, s, pos_mask=None):
        d = s.diagonal()
        return (F.relu(self.margin + s - d[:, None]) + F.relu(self.margin + s - d[None, :])).mean()


class BinaryCE(PairLoss):
    """Binary correspondence (Arandjelovic & Zisserman): sigmoid(S_ij) classifies whether a and v
    come from the same clip; the positive and negative terms are averaged separately and then
    together, so the B positives weigh as much as the B(B-1) negatives."""

    def from_similarity(self, s, pos_mask=None):
        eye = torch.eye(s.shape[0], device=s.device, dtype=torch.bool)
        pos = F.binary_cross_entropy_with_logits(s[eye], torch.ones_like(s[eye]))
        if s.shape[0] == 1:
            return pos
        neg = F.binary_cross_entropy_with_logits(s[~eye], torch.zeros_like(s[~eye]))
        return 0.5 * (pos + neg)


class MILNCE(PairLoss):
    """MIL-NCE (Miech et al. 2020): each row's positives are a set (pos_mask, (B, B) bool, the
    diagonal always included; e.g. `neighbour_mask`), L = -log(sum_pos exp S / sum_all exp S)
    over rows plus the same over columns, each the mean over the batch."""

    def from_similarity(self, s, pos_mask=None):
        eye = torch.eye(s.shape[0], device=s.device, dtype=torch.bool)
        pos = eye if pos_mask is None else (pos_mask.to(s.device) | eye)
        neg_inf = torch.finfo(s.dtype).min
        rows = torch.logsumexp(s.masked_fill(~pos, neg_inf), 1) - torch.logsumexp(s, 1)
        cols = torch.logsumexp(s.masked_fill(~pos, neg_inf), 0) - torch.logsumexp(s, 0)
        return -(rows.mean() + cols.mean())


def neighbour_mask(video: torch.Tensor, start_s: torch.Tensor, window_s: float = 10.0
                   ) -> torch.Tensor:
    """MIL-NCE positives: clips of the same video whose starts differ by at most one window
    (the clip itself and its nearest non-overlapping neighbours). video, start_s: (B,)."""
    same = video[:, None] == video[None, :]
    near = (start_s[:, None] - start_s[None, :]).abs() <= window_s
    return same & near


LOSSES = {"mms": MMS, "infonce": InfoNCE, "max_margin": MaxMargin, "bce": BinaryCE,
          "milnce": MILNCE}
