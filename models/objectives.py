"""Training objectives: a model's named embeddings -> named loss terms (the loop sums them and
logs each). One per architecture and phase (extensions.md §1-2):

- AVLnet: one pair loss on (audio, video) (models/losses.py: MMS by default);
- Tri pretraining: MMS(A V) + MMS(A T) + MMS(T V); Tri fine-tuning: MMS(T (A+V)), audio fused
  additively with video;
- Fused: MMS(AT V), the same in both phases;
- MMV FAC: lambda_va NCE(V, A) in the fine space + lambda_vt MIL-NCE(V, T) in the coarse space,
  L2-normalised, temperature 0.07, weights 1 : 10; no audio-text term.

`meta` carries the batch's video_index and start_s (pretraining batches: several clips per
video) for losses whose positives are the temporally close clips of the same video (MIL-NCE);
without them (annotated clips) each clip is its own only positive."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.losses import MILNCE, MMS, InfoNCE, PairLoss, neighbour_mask

Terms = dict[str, torch.Tensor]


def _positives(meta: dict | None, window_s: float) -> torch.Tensor | None:
    if not meta or "video_index" not in meta or "start_s" not in meta:
        return None
    return neighbour_mask(meta["video_index"], meta["start_s"], window_s)


class PairObjective(nn.Module):
    """AVLnet: {"audio_video": loss(audio, video)}; a MIL-NCE loss gets the batch's positives
    (clips of one video starting within window_s of each other)."""

    def __init__(self, loss: PairLoss, window_s: float = 10.0):
        super().__init__()
        self.loss, self.window_s = loss, window_s
        self.uses_meta = isinstance(loss, MILNCE)

    def forward(self, e: dict, meta: dict | None = None) -> Terms:
        pos = _positives(meta, self.window_s) if self.uses_meta else None
        return {"audio_video": self.loss(e["audio"], e["video"], pos)}


class TriPretrain(nn.Module):
    """MMS(A Vt) + MMS(A Tt) + MMS(T Vt) (rows first)."""

    uses_meta = False

    def __init__(self, margin: float = 0.001):
        super().__init__()
        self.mms = MMS(margin)

    def forward(self, e: dict, meta: dict | None = None) -> Terms:
        a, v, t = e["audio"], e["video"], e["text"]
        return {"audio_video": self.mms(a, v), "audio_text": self.mms(a, t),
                "text_video": self.mms(t, v)}


class TriFinetune(nn.Module):
    """MMS(T (A+V)t): text against the sum of audio and video (the thesis's fine-tuning)."""

    uses_meta = False

    def __init__(self, margin: float = 0.001):
        super().__init__()
        self.mms = MMS(margin)

    def forward(self, e: dict, meta: dict | None = None) -> Terms:
        return {"text_audiovideo": self.mms(e["text"], e["audio"] + e["video"])}


class FusedObjective(nn.Module):
    """MMS(AT Vt): the fused audio+text embedding against video."""

    uses_meta = False

    def __init__(self, margin: float = 0.001):
        super().__init__()
        self.mms = MMS(margin)

    def forward(self, e: dict, meta: dict | None = None) -> Terms:
        return {"audiotext_video": self.mms(e["audio_text"], e["video"])}


class MMVObjective(nn.Module):
    """lambda_va NCE(V, A) (fine space) + lambda_vt MIL-NCE(V, T) (coarse space), each on
    L2-normalised embeddings / temperature; MIL-NCE's positives are the text of the clip and of
    the same video's clips starting within window_s (the temporally close narrations)."""

    uses_meta = True

    def __init__(self, temperature: float = 0.07, lambda_va: float = 1.0,
                 lambda_vt: float = 10.0, window_s: float = 10.0):
        super().__init__()
        self.nce, self.milnce = InfoNCE(temperature), MILNCE()
        self.temperature, self.window_s = temperature, window_s
        self.lambda_va, self.lambda_vt = lambda_va, lambda_vt

    def forward(self, e: dict, meta: dict | None = None) -> Terms:
        v, t = F.normalize(e["video_vat"], dim=-1), F.normalize(e["text_vat"], dim=-1)
        s = v @ t.T / self.temperature
        return {"video_audio_nce": self.lambda_va * self.nce(e["video_va"], e["audio_va"]),
                "video_text_milnce": self.lambda_vt * self.milnce.from_similarity(
                    s, _positives(meta, self.window_s))}
