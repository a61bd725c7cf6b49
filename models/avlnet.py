"""AVLnet: ResDAVEnet audio tower and a video head over [2D || 3D] features -> D-dim embeddings.

avlnet.md "AVLnet heads": no BatchNorm and no L2 normalisation in the heads; similarity is the
plain dot product A @ V.T. (`video_norm="batchnorm"`, off by default, standardises the video
input for the offline demo's random-backbone features.) State_dict names follow the released
checkpoints (`DAVEnet.*`, `DAVEnet_projection.*`, `GU_audio.*`, `GU_video.*`), so
`AVLnet_release.pth` loads strictly.
The head is configuration (the paper's Table 3): `gating` (default), `linear`, `mlp`."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.resdavenet import WIDTHS, ResDAVEnet

VIDEO_DIM = 4096          # [L2-normalised max-pooled 2D (2048) || 3D (2048)]
AUDIO_DIM = 1024          # ResDAVEnet output channels
TIME_STRIDE = 16          # spectrogram frames per ResDAVEnet output step
Head = Literal["gating", "linear", "mlp"]
VideoNorm = Literal["none", "batchnorm"]


class ContextGating(nn.Module):
    """x * sigmoid(fc(x))."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x))


class GatedEmbeddingUnit(nn.Module):
    """GEU(in, out): y = fc(x); y * sigmoid(cg.fc(y)). No BatchNorm, no L2 norm (AVLnet)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.cg = ContextGating(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cg(self.fc(x))


class MLP(nn.Module):
    """The non-linear head of Table 3: fc -> ReLU -> fc2."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc(x)))


def _head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "gating":
        return GatedEmbeddingUnit(in_dim, out_dim)
    if kind == "mlp":
        return MLP(in_dim, out_dim)
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    raise ValueError(f"unknown head {kind!r}; choose gating, linear or mlp")


class AVLnet(nn.Module):
    """audio (B, 40, T) log-Mel + nframes (B,), video (B, 4096) -> (B, D) embeddings each.

    Audio: ResDAVEnet -> temporal mean pool -> GU_audio (1024 -> 1024) -> DAVEnet_projection
    (1024 -> D); video: GU_video (4096 -> D). With head 'linear' GU_audio is the identity.
    Pooling: in training mode the mean over all T' steps (padding included, as the reference);
    in evaluation mode over the first max(1, nframes // 16) steps. 84,531,202 parameters at
    D = 4096 with the gating head and the paper's audio widths (128, 256, 512, 1024); smaller
    `audio_widths` make the small configurations of tests and the CPU demo."""

    inputs = ("spec", "nframes", "video")      # the batch keys forward takes
    outputs = ("audio", "video")               # the embeddings it returns, in order

    def __init__(self, embed_dim: int = 4096, head: Head = "gating",
                 audio_widths: tuple[int, ...] = WIDTHS, video_norm: VideoNorm = "none"):
        super().__init__()
        self.embed_dim, self.head = embed_dim, head
        self.DAVEnet = ResDAVEnet(widths=tuple(audio_widths))
        a = self.DAVEnet.out_dim                  # 1024 in the paper's configuration
        self.GU_audio = nn.Identity() if head == "linear" else _head(head, a, a)
        self.DAVEnet_projection = nn.Linear(a, embed_dim)
        self.GU_video = _head(head, VIDEO_DIM, embed_dim)
        # "batchnorm": standardise each input dimension (running statistics, no affine) before
        # GU_video; not in the paper, whose pretrained backbones give well-spread features.
        # Seeded random backbones (the offline demo) give features sharing one large common
        # component, which the plain head learns from very slowly. "none" adds no state_dict
        # entries, so the released checkpoints load strictly.
        self.video_norm = (nn.BatchNorm1d(VIDEO_DIM, affine=False) if video_norm == "batchnorm"
                           else nn.Identity())
        # None: masked (true-length) pooling in eval mode, mean over all steps in training;
        # True forces masked pooling while training (the reference's eval-mode fine-tuning)
        self.masked_pooling: bool | None = None

    def pool(self, feats: torch.Tensor, nframes: torch.Tensor | None) -> torch.Tensor:
        """(B, C, T') -> (B, C): mean over all steps (training) or the true ones (eval)."""
        masked = (not self.training) if self.masked_pooling is None else self.masked_pooling
        if not masked or nframes is None:
            return feats.mean(dim=2)
        steps = torch.clamp(torch.div(nframes, TIME_STRIDE, rounding_mode="floor"), min=1)
        steps = torch.clamp(steps, max=feats.shape[2]).to(feats.device)
        mask = torch.arange(feats.shape[2], device=feats.device)[None, :] < steps[:, None]
        return (feats * mask[:, None, :]).sum(dim=2) / steps[:, None].to(feats.dtype)

    def encode_audio(self, spec: torch.Tensor, nframes: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """(B, 40, T) log-Mel, (B,) true lengths in frames -> (B, D)."""
        pooled = self.pool(self.DAVEnet(spec), nframes)          # (B, 1024)
        return self.DAVEnet_projection(self.GU_audio(pooled))

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 4096) [normalised 2D || normalised 3D] -> (B, D)."""
        return self.GU_video(self.video_norm(video))

    def forward(self, spec: torch.Tensor, nframes: torch.Tensor | None,
                video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_audio(spec, nframes), self.encode_video(video)

    def embeddings(self, spec, nframes, video) -> dict[str, torch.Tensor]:
        """Evaluation's named embeddings: {"audio", "video"}."""
        return dict(zip(self.outputs, self(spec, nframes, video)))


def video_input(rows2d: torch.Tensor, rows3d: torch.Tensor) -> torch.Tensor:
    """Max-pooled window features (B, 2048) each -> (B, 4096) [normalize(2D) || normalize(3D)],
    each stream L2-normalised separately (eps 1e-12), so the result has norm sqrt(2)."""
    return torch.cat([F.normalize(rows2d.float(), dim=-1, eps=1e-12),
                      F.normalize(rows3d.float(), dim=-1, eps=1e-12)], dim=-1)
