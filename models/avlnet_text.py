"""AVLnet-Text (extensions.md §1) and MMV's fine-and-coarse heads (§2): audio, video and text
towers -> named embeddings.

Every model here (and models.avlnet.AVLnet) declares `inputs` (the batch keys its forward takes)
and `outputs` (the names of the embeddings forward returns, in order); `embeddings(**inputs)`
adds the evaluation-only combinations. Text input is (B, 20, 300) word vectors (zero rows pad a
caption; pipeline/text/words.py). State_dict names of Tri and Fused are the reference's module
names, so `AVLnet_Text_Tri_release.pth` (D = 6144, 193,353,730 parameters) and
`AVLnet_Text_Fused_release.pth` (D = 4096, 116,615,170) load strictly."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.avlnet import AVLnet, ContextGating, GatedEmbeddingUnit, VideoNorm, Visual, video_dim
from models.resdavenet import WIDTHS, ResDAVEnet

WORD_DIM = 300            # GoogleNews word2vec
TEXT_INPUTS = ("spec", "nframes", "video", "text")


class SentenceMaxpool(nn.Module):
    """(B, W, 300) word vectors -> (B, out): fc, ReLU, max over the W word slots. Zero-padded
    slots take part in the max (they give relu(bias)), as the reference's Sentence_Maxpool."""

    def __init__(self, word_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(word_dim, out_dim)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(words)).max(dim=1).values


class FusedGatedUnit(nn.Module):
    """Fused's audio+text unit: cg(fc_audio(a) + fc_text(t)). Either input may be None (that
    modality absent at evaluation): its whole term, bias included, is left out."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc_audio = nn.Linear(in_dim, out_dim)
        self.fc_text = nn.Linear(in_dim, out_dim)
        self.cg = ContextGating(out_dim)

    def forward(self, audio: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        terms = [f(x) for f, x in ((self.fc_audio, audio), (self.fc_text, text)) if x is not None]
        return self.cg(sum(terms))


class AVLnetTextTri(AVLnet):
    """Tri (`tri_modal`): AVLnet plus text = GU_text_captions(Sentence_Maxpool(300 -> D)), all
    three in one D-dim space. forward -> (audio, video, text), each (B, D)."""

    inputs = TEXT_INPUTS
    outputs = ("audio", "video", "text")

    def __init__(self, embed_dim: int = 6144, audio_widths: tuple[int, ...] = WIDTHS,
                 video_norm: VideoNorm = "none", word_dim: int = WORD_DIM,
                 visual: Visual = "2d3d"):
        super().__init__(embed_dim, "gating", audio_widths, video_norm, visual)
        self.text_pooling_caption = SentenceMaxpool(word_dim, embed_dim)
        self.GU_text_captions = GatedEmbeddingUnit(embed_dim, embed_dim)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.GU_text_captions(self.text_pooling_caption(text))

    def forward(self, spec, nframes, video, text):
        return self.encode_audio(spec, nframes), self.encode_video(video), self.encode_text(text)

    def embeddings(self, spec, nframes, video, text) -> dict[str, torch.Tensor]:
        return dict(zip(self.outputs, self(spec, nframes, video, text)))


class AVLnetTextFused(nn.Module):
    """Fused (`tri_modal_fuse`): audio = DAVEnet_projection (1024 -> D/2) of the pooled
    ResDAVEnet output, text = Sentence_Maxpool (300 -> D/2), fused = GU_audio_text: context
    gating (D) of fc_audio(a) + fc_text(t); video = GU_video (video_dim(visual) -> D). GU_audio is the
    reference's, unused by Fused; it stays (frozen) so the released state_dict loads strictly.
    forward -> (audio_text, video)."""

    inputs = TEXT_INPUTS
    outputs = ("audio_text", "video")

    def __init__(self, embed_dim: int = 4096, audio_widths: tuple[int, ...] = WIDTHS,
                 video_norm: VideoNorm = "none", word_dim: int = WORD_DIM,
                 visual: Visual = "2d3d"):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"Fused needs an even embed_dim (audio and text get half), got "
                             f"{embed_dim}")
        self.embed_dim, self.head, self.visual = embed_dim, "gating", visual
        v = video_dim(visual)
        self.DAVEnet = ResDAVEnet(widths=tuple(audio_widths))
        a = self.DAVEnet.out_dim
        self.DAVEnet_projection = nn.Linear(a, embed_dim // 2)
        self.GU_audio = GatedEmbeddingUnit(a, a)
        self.GU_audio.requires_grad_(False)       # never applied: no gradient (DDP agrees)
        self.GU_video = GatedEmbeddingUnit(v, embed_dim)
        self.video_norm = (nn.BatchNorm1d(v, affine=False) if video_norm == "batchnorm"
                           else nn.Identity())
        self.text_pooling_caption = SentenceMaxpool(word_dim, embed_dim // 2)
        self.GU_audio_text = FusedGatedUnit(embed_dim // 2, embed_dim)
        self.masked_pooling: bool | None = None

    pool = AVLnet.pool
    encode_video = AVLnet.encode_video

    def audio_half(self, spec: torch.Tensor, nframes: torch.Tensor | None) -> torch.Tensor:
        """(B, 40, T) -> (B, D/2): the audio input of the fused unit."""
        return self.DAVEnet_projection(self.pool(self.DAVEnet(spec), nframes))

    def forward(self, spec, nframes, video, text):
        a, t = self.audio_half(spec, nframes), self.text_pooling_caption(text)
        return self.GU_audio_text(a, t), self.encode_video(video)

    def embeddings(self, spec, nframes, video, text) -> dict[str, torch.Tensor]:
        """audio_text (T+A), audio (text term left out), text (audio term left out), video."""
        a, t = self.audio_half(spec, nframes), self.text_pooling_caption(text)
        return {"audio_text": self.GU_audio_text(a, t), "audio": self.GU_audio_text(a, None),
                "text": self.GU_audio_text(None, t), "video": self.encode_video(video)}


class MMVFac(nn.Module):
    """MMV's fine-and-coarse design (Alayrac et al. 2020): video and audio meet in a fine space
    S_va (va_dim, 512), text meets them in a coarse space S_vat (vat_dim, 256) reached from S_va
    by one more linear map (va_to_vat). Linear heads for audio and text, a 2-layer MLP with
    BatchNorm for video; text = Sentence_Maxpool (300 -> D) then linear to S_vat.
    forward -> (audio_va, video_va, video_vat, text_vat)."""

    inputs = TEXT_INPUTS
    outputs = ("audio_va", "video_va", "video_vat", "text_vat")

    def __init__(self, embed_dim: int = 2048, audio_widths: tuple[int, ...] = WIDTHS,
                 video_norm: VideoNorm = "none", word_dim: int = WORD_DIM, va_dim: int = 512,
                 vat_dim: int = 256, visual: Visual = "2d3d"):
        super().__init__()
        self.embed_dim, self.head, self.visual = embed_dim, "mmv", visual
        v = video_dim(visual)
        self.DAVEnet = ResDAVEnet(widths=tuple(audio_widths))
        self.audio_head = nn.Linear(self.DAVEnet.out_dim, va_dim)
        self.video_norm = (nn.BatchNorm1d(v, affine=False) if video_norm == "batchnorm"
                           else nn.Identity())
        self.video_head = nn.Sequential(nn.Linear(v, va_dim), nn.BatchNorm1d(va_dim),
                                        nn.ReLU(inplace=True), nn.Linear(va_dim, va_dim))
        self.va_to_vat = nn.Linear(va_dim, vat_dim)
        self.text_pooling = SentenceMaxpool(word_dim, embed_dim)
        self.text_head = nn.Linear(embed_dim, vat_dim)
        self.masked_pooling: bool | None = None

    pool = AVLnet.pool

    def forward(self, spec, nframes, video, text):
        a = self.audio_head(self.pool(self.DAVEnet(spec), nframes))
        v = self.video_head(self.video_norm(video))
        return a, v, self.va_to_vat(v), self.text_head(self.text_pooling(text))

    def embeddings(self, spec, nframes, video, text) -> dict[str, torch.Tensor]:
        """The four of forward plus audio_vat (audio mapped on to the coarse space)."""
        out = dict(zip(self.outputs, self(spec, nframes, video, text)))
        return {**out, "audio_vat": self.va_to_vat(out["audio_va"])}
