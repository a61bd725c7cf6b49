"""Which embeddings a search compares, per model family: the candidates' (video-side) vectors
an index stores and the query's (audio or text) vector scored against them by inner product.

The pairs are evaluation's (pipeline/evaluate/text.py direction_pairs): AVLnet and Tri compare
audio / text with video in their one space; Fused leaves the absent modality's term out of its
fused unit (A->V: GU_audio_text(a, None), T->V: GU_audio_text(None, t)); MMV compares audio
with video in its fine space (S_va) and text with video in its coarse space (S_vat), each
L2-normalised (cosine, as it was trained). An index stores one vector set per candidate space
(SPACES) and says which space each query kind searches (QUERY_SPACE)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.learn.runs import ModelFile, load_model_file
from pipeline.safety import UserError

log = logging.getLogger(__name__)

TEXT_ARCHS = ("avlnet_text_tri", "avlnet_text_fused", "mmv_fac")
# arch -> the candidate spaces its index stores
SPACES = {"avlnet": ("video",), "avlnet_text_tri": ("video",),
          "avlnet_text_fused": ("video",), "mmv_fac": ("video_va", "video_vat")}
# arch -> query kind -> the candidate space it searches
QUERY_SPACE = {"avlnet": {"audio": "video"},
               "avlnet_text_tri": {"audio": "video", "text": "video"},
               "avlnet_text_fused": {"audio": "video", "text": "video"},
               "mmv_fac": {"audio": "video_va", "text": "video_vat"}}


class SearchError(UserError):
    """A search input that cannot be used: a missing index, a checkpoint that does not match
    it, an unreadable or empty query. One line naming the file and the fix."""


def arch_of(mf: ModelFile) -> str:
    return mf.config.get("arch", "avlnet")


def load_search_model(path: Path, device: torch.device) -> ModelFile:
    """A checkpoint (ours or a bare state_dict, runs.load_model_file) -> ModelFile with the
    model in eval mode on `device`; SearchError in one line naming the file otherwise."""
    mf = load_model_file(Path(path), SearchError)
    if arch_of(mf) not in SPACES:
        raise SearchError(f"{path}: a {arch_of(mf)} model; search knows "
                          f"{', '.join(SPACES)}")
    mf.model = mf.model.to(device).eval()
    mf.model.masked_pooling = None      # eval mode: true-length pooling, as evaluation
    return mf


@torch.inference_mode()
def candidate_vectors(model: torch.nn.Module, arch: str, video: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
    """(B, V) video inputs (models.avlnet.video_input of the model's visual streams) -> space
    -> (B, D) float32 on the CPU, the vectors evaluation compares queries against
    (SPACES[arch])."""
    if arch == "mmv_fac":
        v = model.video_head(model.video_norm(video))                 # (B, va_dim)
        return {"video_va": F.normalize(v, dim=-1).float().cpu(),
                "video_vat": F.normalize(model.va_to_vat(v), dim=-1).float().cpu()}
    return {"video": model.encode_video(video).float().cpu()}


@torch.inference_mode()
def audio_vectors(model: torch.nn.Module, arch: str, spec: torch.Tensor,
                  nframes: torch.Tensor) -> torch.Tensor:
    """(B, 40, T) log-Mel, (B,) true lengths in frames -> (B, D) float32 CPU query vectors of
    QUERY_SPACE[arch]["audio"] (eval mode: pooled over the true length)."""
    if arch == "avlnet_text_fused":
        return model.GU_audio_text(model.audio_half(spec, nframes), None).float().cpu()
    if arch == "mmv_fac":
        a = model.audio_head(model.pool(model.DAVEnet(spec), nframes))
        return F.normalize(a, dim=-1).float().cpu()
    return model.encode_audio(spec, nframes).float().cpu()


@torch.inference_mode()
def text_vectors(model: torch.nn.Module, arch: str, text: torch.Tensor) -> torch.Tensor:
    """(B, max_words, word_dim) word vectors -> (B, D) float32 CPU query vectors of
    QUERY_SPACE[arch]["text"]; SearchError for the audio-video AVLnet (no text tower)."""
    if arch == "avlnet_text_tri":
        return model.encode_text(text).float().cpu()
    if arch == "avlnet_text_fused":
        return model.GU_audio_text(None, model.text_pooling_caption(text)).float().cpu()
    if arch == "mmv_fac":
        return F.normalize(model.text_head(model.text_pooling(text)), dim=-1).float().cpu()
    raise SearchError(f"a {arch} model has no text tower; build the index with a text model "
                      "(data/text-models/...) to search by text")
