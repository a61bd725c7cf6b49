"""AVLnet-Text models and objectives (issue 13, item 4): the released Tri and Fused state_dicts'
names, shapes and parameter counts; forward passes and losses on fixed inputs against values
derived here from the recipe (extensions.md §1-2) with plain tensor arithmetic; checkpoints of
every text arch found by shape; an audio-video checkpoint under a Fused model (Table 4.2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.avlnet import AVLnet
from models.avlnet_text import AVLnetTextFused, AVLnetTextTri, MMVFac, SentenceMaxpool
from models.objectives import FusedObjective, MMVObjective, PairObjective, TriFinetune, \
    TriPretrain
from models.losses import MILNCE, MMS
from pipeline.config import ModelParams
from pipeline.learn.runs import infer_config, load_model_file
from pipeline.learn.train import build_model, build_objective, load_matching

SMALL = (8, 16, 16, 32)


def released_keys(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_released_tri_layout_parameter_count_and_strict_load():
    tri = AVLnetTextTri(6144)
    assert sum(p.numel() for p in tri.parameters()) == 193_353_730          # 193.35 M
    keys = released_keys(tri)
    # the reference's module names: AVLnet's 141 entries + the text branch's 6
    assert len(keys) == 147
    assert keys["text_pooling_caption.fc.weight"] == (6144, 300)
    assert keys["GU_text_captions.fc.weight"] == (6144, 6144)
    assert keys["GU_text_captions.cg.fc.weight"] == (6144, 6144)
    assert keys["DAVEnet_projection.weight"] == (6144, 1024)
    assert keys["GU_video.fc.weight"] == (6144, 4096)
    av = set(released_keys(AVLnet()))
    assert av < set(keys)
    # a file of those names (our weights saved bare, as the release is) loads strictly
    sd = {k: torch.randn(s) if len(s) else torch.tensor(3) for k, s in keys.items()}
    AVLnetTextTri(6144).load_state_dict(sd, strict=True)


def test_released_fused_layout_parameter_count_and_strict_load():
    fused = AVLnetTextFused(4096)
    assert sum(p.numel() for p in fused.parameters()) == 116_615_170        # 116.6 M
    keys = released_keys(fused)
    assert keys["DAVEnet_projection.weight"] == (2048, 1024)                 # 1024 -> D/2
    assert keys["text_pooling_caption.fc.weight"] == (2048, 300)             # 300 -> D/2
    assert keys["GU_audio_text.fc_audio.weight"] == (4096, 2048)
    assert keys["GU_audio_text.fc_text.weight"] == (4096, 2048)
    assert keys["GU_audio_text.cg.fc.weight"] == (4096, 4096)
    assert keys["GU_audio.fc.weight"] == (1024, 1024)       # unused by Fused, kept for loading
    assert not any(p.requires_grad for p in fused.GU_audio.parameters())
    sd = {k: torch.randn(s) if len(s) else torch.tensor(3) for k, s in keys.items()}
    AVLnetTextFused(4096).load_state_dict(sd, strict=True)


@pytest.mark.parametrize("model, arch", [
    (lambda: AVLnetTextTri(48, SMALL), "avlnet_text_tri"),
    (lambda: AVLnetTextFused(48, SMALL), "avlnet_text_fused"),
    (lambda: MMVFac(40, SMALL, va_dim=24, vat_dim=12), "mmv_fac")])
def test_bare_state_dicts_of_every_text_arch_are_recognised_and_load(tmp_path, model, arch):
    torch.manual_seed(0)
    m = model().eval()
    torch.save(m.state_dict(), tmp_path / "release.pth")
    cfg = infer_config(m.state_dict(), "release.pth")
    assert cfg["arch"] == arch and cfg["audio_widths"] == list(SMALL)
    mf = load_model_file(tmp_path / "release.pth")
    assert type(mf.model) is type(m)
    x = fixed_inputs(3)
    with torch.no_grad():
        for k, v in m.embeddings(**x).items():
            assert torch.equal(v, mf.model.eval().embeddings(**x)[k])


def fixed_inputs(b: int, t: int = 96, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, 20, 300, generator=g)
    text[:, 5:] = 0                                        # zero-padded word slots
    return {"spec": torch.randn(b, 40, t, generator=g), "nframes": torch.tensor([t, 40, 17][:b]),
            "video": torch.randn(b, 4096, generator=g), "text": text}


def geu(unit, x):
    """Gated embedding unit by hand: y = W x + b; y * sigmoid(W' y + b')."""
    y = x @ unit.fc.weight.T + unit.fc.bias
    return y * torch.sigmoid(y @ unit.cg.fc.weight.T + unit.cg.fc.bias)


def sentence_maxpool(fc, words):
    """relu(W w + b) per word slot, max over the 20 slots (padding included)."""
    return torch.relu(words @ fc.weight.T + fc.bias).max(dim=1).values


def test_sentence_maxpool_padding_takes_part_in_the_max():
    torch.manual_seed(0)
    sp = SentenceMaxpool(4, 3)
    with torch.no_grad():
        sp.fc.weight.zero_()
        sp.fc.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    out = sp(torch.zeros(2, 20, 4))                         # all-OOV captions
    assert torch.equal(out, torch.tensor([[0.5, 0.0, 0.0]] * 2))   # relu(bias)


def test_tri_forward_matches_the_recipe_by_hand():
    torch.manual_seed(2)
    m = AVLnetTextTri(24, SMALL).eval()
    x = fixed_inputs(3)
    with torch.no_grad():
        a, v, t = m(**x)
        pooled = m.pool(m.DAVEnet(x["spec"]), x["nframes"])
        a_ref = geu(m.GU_audio, pooled) @ m.DAVEnet_projection.weight.T \
            + m.DAVEnet_projection.bias
        v_ref = geu(m.GU_video, m.video_norm(x["video"]))
        t_ref = geu(m.GU_text_captions, sentence_maxpool(m.text_pooling_caption.fc, x["text"]))
    for got, ref in ((a, a_ref), (v, v_ref), (t, t_ref)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_fused_forward_matches_the_recipe_by_hand():
    torch.manual_seed(3)
    m = AVLnetTextFused(24, SMALL).eval()
    x = fixed_inputs(3)
    with torch.no_grad():
        e = m.embeddings(**x)
        at, v = m(**x)
        a = m.DAVEnet_projection(m.pool(m.DAVEnet(x["spec"]), x["nframes"]))   # no GU_audio
        t = sentence_maxpool(m.text_pooling_caption.fc, x["text"])
        u = m.GU_audio_text
        s = a @ u.fc_audio.weight.T + u.fc_audio.bias + t @ u.fc_text.weight.T + u.fc_text.bias
        at_ref = s * torch.sigmoid(s @ u.cg.fc.weight.T + u.cg.fc.bias)
        only_t = t @ u.fc_text.weight.T + u.fc_text.bias      # audio term (bias too) left out
        t_ref = only_t * torch.sigmoid(only_t @ u.cg.fc.weight.T + u.cg.fc.bias)
    torch.testing.assert_close(at, at_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e["audio_text"], at_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e["text"], t_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, geu(m.GU_video, x["video"]), rtol=1e-5, atol=1e-6)


def mms_np(s: np.ndarray, delta: float = 0.001) -> float:
    """MMS by hand: S - delta I, mean CE over rows plus over columns (avlnet.md)."""
    s = s - delta * np.eye(len(s))

    def ce(m):
        m = m - m.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(m).sum(1)) - np.diag(m)))
    return ce(s) + ce(s.T)


def test_tri_and_fused_objectives_equal_the_recipe():
    g = torch.Generator().manual_seed(4)
    a, v, t = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    A, V, T = a.numpy(), v.numpy(), t.numpy()
    terms = TriPretrain()({"audio": a, "video": v, "text": t})
    assert terms.keys() == {"audio_video", "audio_text", "text_video"}
    assert float(terms["audio_video"]) == pytest.approx(mms_np(A @ V.T), abs=1e-12)
    assert float(terms["audio_text"]) == pytest.approx(mms_np(A @ T.T), abs=1e-12)
    assert float(terms["text_video"]) == pytest.approx(mms_np(T @ V.T), abs=1e-12)
    ft = TriFinetune()({"audio": a, "video": v, "text": t})
    assert float(ft["text_audiovideo"]) == pytest.approx(mms_np(T @ (A + V).T), abs=1e-12)
    fu = FusedObjective()({"audio_text": a, "video": v})
    assert float(fu["audiotext_video"]) == pytest.approx(mms_np(A @ V.T), abs=1e-12)
    # the golden value of avlnet.md through the same module
    s3 = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.6], [0.4, 0.0, 0.8]], dtype=torch.float64)
    assert float(MMS()(s3, torch.eye(3, dtype=torch.float64))) == pytest.approx(1.6482936)


def nce_np(x: np.ndarray, y: np.ndarray, tau: float) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return mms_np(x @ y.T / tau, 0.0)


def milnce_np(s: np.ndarray, pos: np.ndarray) -> float:
    """-log(sum over positives exp / sum over all exp), rows and columns, means summed."""
    def side(m, p):
        return float(np.mean(np.log(np.exp(m).sum(1)) - np.log((np.exp(m) * p).sum(1))))
    return side(s, pos) + side(s.T, pos.T)


def test_mmv_objective_nce_and_milnce_with_close_narrations_as_positives():
    g = torch.Generator().manual_seed(5)
    e = {k: torch.randn(4, 6, generator=g, dtype=torch.float64)
         for k in ("audio_va", "video_va", "video_vat", "text_vat")}
    meta = {"video_index": torch.tensor([0, 0, 0, 1]),
            "start_s": torch.tensor([0.0, 5.0, 30.0, 0.0], dtype=torch.float64)}
    terms = MMVObjective(0.07, 1.0, 10.0, window_s=10.0)(e, meta)
    n = {k: x.numpy() for k, x in e.items()}
    assert float(terms["video_audio_nce"]) == pytest.approx(
        nce_np(n["video_va"], n["audio_va"], 0.07), rel=1e-10)
    vt = n["video_vat"] / np.linalg.norm(n["video_vat"], axis=1, keepdims=True)
    tt = n["text_vat"] / np.linalg.norm(n["text_vat"], axis=1, keepdims=True)
    pos = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
    assert float(terms["video_text_milnce"]) == pytest.approx(
        10.0 * milnce_np(vt @ tt.T / 0.07, pos), rel=1e-10)
    # without the batch's video layout (annotated clips) each clip is its own only positive
    alone = MMVObjective(0.07, 1.0, 10.0)(e)["video_text_milnce"]
    assert float(alone) == pytest.approx(10.0 * milnce_np(vt @ tt.T / 0.07, np.eye(4, dtype=bool)),
                                         rel=1e-10)


def test_avlnet_milnce_uses_the_batch_positives_and_mms_ignores_them():
    g = torch.Generator().manual_seed(6)
    a, v = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    meta = {"video_index": torch.tensor([0, 0, 1]), "start_s": torch.tensor([0.0, 4.0, 0.0])}
    mil = PairObjective(MILNCE(), window_s=10.0)
    assert mil.uses_meta
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mil({"audio": a, "video": v}, meta)["audio_video"],
                       MILNCE()(a, v, pos))
    mms = PairObjective(MMS())
    assert not mms.uses_meta
    assert torch.equal(mms({"audio": a, "video": v}, meta)["audio_video"], MMS()(a, v))


@pytest.mark.parametrize("arch, cls", [("avlnet_text_tri", AVLnetTextTri),
                                       ("avlnet_text_fused", AVLnetTextFused),
                                       ("mmv_fac", MMVFac), ("avlnet", AVLnet)])
def test_build_model_and_objective_by_arch(arch, cls):
    m = ModelParams(arch=arch, embed_dim=32, audio_widths=list(SMALL))
    model = build_model(m)
    assert type(model) is cls
    obj = build_objective(m, finetuning=True)
    x = fixed_inputs(3)
    model.train()
    out = model(**{k: x[k] for k in model.inputs})
    terms = obj(dict(zip(model.outputs, out)), None)
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert type(build_objective(ModelParams(arch="avlnet_text_tri"), finetuning=True)) \
        is TriFinetune
    assert type(build_objective(ModelParams(arch="avlnet_text_tri"))) is TriPretrain


def test_audio_video_checkpoint_under_a_fused_model_copies_what_fits():
    """The thesis's low-resource setting (Table 4.2): AVLnet pretrained without text, the Fused
    text branch added at fine-tuning. DAVEnet, GU_audio and GU_video come from the AVLnet; the
    audio projection (another shape) and the text branch start fresh."""
    torch.manual_seed(7)
    av = AVLnet(32, "gating", SMALL)
    fused = AVLnetTextFused(32, SMALL)
    got = load_matching(fused, {"model": av.state_dict()}, "av.pt")
    mine, theirs = fused.state_dict(), av.state_dict()
    for k in ("DAVEnet.conv1.weight", "GU_video.fc.weight", "GU_audio.cg.fc.bias"):
        assert torch.equal(mine[k], theirs[k])
    assert "DAVEnet_projection.weight" in got["fresh"]
    assert "DAVEnet_projection.weight" in got["ignored"]
    assert {k.split(".")[0] for k in got["fresh"]} == {
        "DAVEnet_projection", "text_pooling_caption", "GU_audio_text"}
    assert got["copied"] == len(mine) - len(got["fresh"])


def test_an_avlnet_runs_resume_key_is_what_it_was_before_the_text_archs():
    """Runs started before `arch` and the text fields existed still resume: an AVLnet's key
    holds exactly the eight model settings it held then; a text arch's holds its own too."""
    from pipeline.learn.train import model_key
    assert set(model_key(ModelParams())) == {
        "embed_dim", "head", "audio_widths", "loss", "mms_margin", "ranking_margin",
        "temperature", "video_norm"}
    assert {"arch", "word_dim", "mmv_va_dim"} <= set(model_key(ModelParams(arch="mmv_fac")))
