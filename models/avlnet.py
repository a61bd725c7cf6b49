"""AVLnet: ResDAVEnet audio tower and a video head over [2D || 3D] features (or one stream:
`visual`) -> D-dim embeddings.

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

VIDEO_DIM = 4096          # [L2-normalised max-pooled 2D (2048) || 3D (2048)] (visual 2d3d)
STREAM_DIM = 2048         # one stream: max-pooled ResNet-152 (2D) or ResNeXt-101 (3D) rows
AUDIO_DIM = 1024          # ResDAVEnet output channels
TIME_STRIDE = 16          # spectrogram frames per ResDAVEnet output step
Head = Literal["gating", "linear", "mlp"]
VideoNorm = Literal["none", "batchnorm"]
Visual = Literal["2d3d", "2d", "3d"]
# visual -> the streams of the video input, in order (Table 3's "2D only" row is visual 2d;
# extensions.md §4: the 2D-only model is the start for images with spoken captions)
STREAMS: dict[str, tuple[str, ...]] = {"2d3d": ("2d", "3d"), "2d": ("2d",), "3d": ("3d",)}


def video_dim(visual: str) -> int:
    """The video input size of `visual`: 4096 for 2d3d, 2048 for 2d or 3d."""
    if visual not in STREAMS:
        raise ValueError(f"unknown visual {visual!r}; choose {', '.join(STREAMS)}")
    return STREAM_DIM * len(STREAMS[visual])


def visual_of(model: nn.Module) -> str:
    """The streams `model`'s video branch takes ('2d3d' for a model built before the setting
    existed)."""
    return getattr(model, "visual", "2d3d")


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
    """audio (B, 40, T) log-Mel + nframes (B,), video (B, V) -> (B, D) embeddings each, V =
    video_dim(visual): 4096 [2D || 3D] (the paper), 2048 with visual 2d or 3d (one stream).

    Audio: ResDAVEnet -> temporal mean pool -> GU_audio (1024 -> 1024) -> DAVEnet_projection
    (1024 -> D); video: GU_video (V -> D). With head 'linear' GU_audio is the identity.
    Pooling: in training mode the mean over all T' steps (padding included, as the reference);
    in evaluation mode over the first max(1, nframes // 16) steps. 84,531,202 parameters at
    D = 4096 with the gating head and the paper's audio widths (128, 256, 512, 1024); smaller
    `audio_widths` make the small configurations of tests and the CPU demo."""

    inputs = ("spec", "nframes", "video")      # the batch keys forward takes
    outputs = ("audio", "video")               # the embeddings it returns, in order

    def __init__(self, embed_dim: int = 4096, head: Head = "gating",
                 audio_widths: tuple[int, ...] = WIDTHS, video_norm: VideoNorm = "none",
                 visual: Visual = "2d3d"):
        super().__init__()
        self.embed_dim, self.head, self.visual = embed_dim, head, visual
        v = video_dim(visual)
        self.DAVEnet = ResDAVEnet(widths=tuple(audio_widths))
        a = self.DAVEnet.out_dim                  # 1024 in the paper's configuration
        self.GU_audio = nn.Identity() if head == "linear" else _head(head, a, a)
        self.DAVEnet_projection = nn.Linear(a, embed_dim)
        self.GU_video = _head(head, v, embed_dim)
        # "batchnorm": standardise each input dimension (running statistics, no affine) before
        # GU_video; not in the paper, whose pretrained backbones give well-spread features.
        # Seeded random backbones (the offline demo) give features sharing one large common
        # component, which the plain head learns from very slowly. "none" adds no state_dict
        # entries, so the released checkpoints load strictly.
        self.video_norm = (nn.BatchNorm1d(v, affine=False) if video_norm == "batchnorm"
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
        """(B, V) video_input of the model's streams (V = 4096 for 2d3d, else 2048) -> (B, D)."""
        return self.GU_video(self.video_norm(video))

    def forward(self, spec: torch.Tensor, nframes: torch.Tensor | None,
                video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_audio(spec, nframes), self.encode_video(video)

    def embeddings(self, spec, nframes, video) -> dict[str, torch.Tensor]:
        """Evaluation's named embeddings: {"audio", "video"}."""
        return dict(zip(self.outputs, self(spec, nframes, video)))


def video_input(rows2d: torch.Tensor | None, rows3d: torch.Tensor | None) -> torch.Tensor:
    """Max-pooled window features (B, 2048) each, None for a stream the model does not take ->
    the given streams L2-normalised separately (eps 1e-12) and concatenated, 2D first: (B, 4096)
    [normalize(2D) || normalize(3D)] of norm sqrt(2), or (B, 2048) of one stream."""
    parts = [F.normalize(r.float(), dim=-1, eps=1e-12) for r in (rows2d, rows3d) if r is not None]
    if not parts:
        raise ValueError("video_input needs the 2D or the 3D rows (or both)")
    return torch.cat(parts, dim=-1)
