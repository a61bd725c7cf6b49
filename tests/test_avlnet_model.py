"""AVLnet model, losses and window arithmetic against avlnet.md (issue 5 groundwork)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.avlnet import AVLnet, video_input
from models.losses import LOSSES, MILNCE, MMS, BinaryCE, InfoNCE, MaxMargin, neighbour_mask
from models.resdavenet import ResDAVEnet, output_frames
from pipeline.learn.sampling import (draw_starts, pad_or_crop, start_range, whole_seconds, window)

S3 = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.6], [0.4, 0.0, 0.8]], dtype=torch.float64)
S4 = 3 * torch.sin(torch.arange(16, dtype=torch.float64).reshape(4, 4))


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def model() -> AVLnet:
    torch.manual_seed(0)
    return AVLnet(4096)


def test_parameter_counts(model):
    assert n_params(model) == 84_531_202
    assert n_params(model.DAVEnet) == 44_670_978
    assert n_params(model.GU_video) == 33_562_624
    assert n_params(model.GU_audio) == 2_099_200
    assert n_params(model.DAVEnet_projection) == 4_198_400


def test_released_state_dict_names(model):
    keys = list(model.state_dict())
    assert len(keys) == 141                        # with the 22 BatchNorms' num_batches_tracked
    prefixes = {"DAVEnet.batchnorm1.", "DAVEnet.conv1.", "DAVEnet.bn1.", "DAVEnet_projection.",
                "GU_audio.fc.", "GU_audio.cg.fc.", "GU_video.fc.", "GU_video.cg.fc."}
    for k in keys:
        assert any(k.startswith(p) for p in prefixes) or k.startswith("DAVEnet.layer"), k
    for i in range(1, 5):
        assert f"DAVEnet.layer{i}.0.downsample.0.weight" in keys
        assert f"DAVEnet.layer{i}.1.conv2.weight" in keys
    # a checkpoint with exactly these names (as released) loads strictly
    fresh = AVLnet(4096)
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("t, want", [(1000, 63), (1024, 64), (800, 50), (3072, 192),
                                     (5120, 320), (17, 2)])
def test_time_downsampling(t, want):
    assert output_frames(t) == want == math.ceil(t / 16)


def test_resdavenet_output_shape_and_init():
    torch.manual_seed(0)
    net = ResDAVEnet().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 40, 17)).shape == (2, 1024, 2)
        assert net(torch.randn(1, 40, 1000)).shape == (1, 1024, 63)
    w = net.layer2[0].conv1.weight
    assert abs(w.std().item() - math.sqrt(2 / (1 * 9 * 256))) < 0.002
    assert torch.equal(net.bn1.weight, torch.ones(128)) and torch.equal(net.bn1.bias,
                                                                         torch.zeros(128))


def test_training_vs_evaluation_pooling():
    torch.manual_seed(0)
    m = AVLnet(64)
    spec = torch.randn(2, 40, 320)
    spec[:, :, 160:] = 0.0                          # the second half is padding
    nframes = torch.tensor([160, 320])
    feats = m.DAVEnet.eval()(spec)                  # (2, 1024, 20)
    m.eval()
    pooled = m.pool(feats, nframes)
    assert torch.allclose(pooled[0], feats[0, :, :10].mean(1), atol=1e-6)   # 160 // 16 = 10
    assert torch.allclose(pooled[1], feats[1].mean(1), atol=1e-6)
    m.train()
    assert torch.allclose(m.pool(feats, nframes)[0], feats[0].mean(1), atol=1e-6)
    m.eval()                                       # nframes < 16 still uses one step
    assert torch.allclose(m.pool(feats, torch.tensor([3, 3]))[0], feats[0, :, 0], atol=1e-6)
    with torch.no_grad():
        a_eval = m.encode_audio(spec, nframes)
        m.train()
        a_train = m.encode_audio(spec, nframes)
    assert not torch.allclose(a_eval[0], a_train[0])


def test_video_input_is_two_unit_streams():
    x = video_input(torch.randn(3, 2048) * 7, torch.randn(3, 2048) * 0.01)
    assert x.shape == (3, 4096)
    assert torch.allclose(x.norm(dim=1), torch.full((3,), math.sqrt(2)), atol=1e-5)


def test_video_norm_standardises_and_is_opt_in():
    """'batchnorm' (the demo's random-backbone features) learns per-dimension statistics in
    training and applies them frozen in evaluation; 'none' (the paper) adds no state."""
    plain = AVLnet(32, audio_widths=(8, 8, 16, 16))
    assert not any(k.startswith("video_norm") for k in plain.state_dict())
    torch.manual_seed(0)
    m = AVLnet(32, audio_widths=(8, 8, 16, 16), video_norm="batchnorm")
    assert {k for k in m.state_dict() if k.startswith("video_norm")} == {
        "video_norm.running_mean", "video_norm.running_var", "video_norm.num_batches_tracked"}
    # features like a random backbone's: a large shared component, small differences
    x = video_input(1 + 0.01 * torch.randn(64, 2048), 1 + 0.01 * torch.randn(64, 2048))
    m.video_norm.momentum = None                 # cumulative average: exact after one batch
    m.train()(torch.randn(64, 40, 64), None, x)
    z = m.video_norm.eval()(x)
    assert torch.allclose(z, (x - x.mean(0)) / torch.sqrt(x.var(0) + 1e-5), atol=1e-4)
    assert z.mean(0).abs().max() < 1e-4 and z.std(0).min() > 10 * x.std(0).max()
    m.eval()
    with torch.no_grad():                        # evaluation: no statistics change
        before = m.video_norm.running_mean.clone()
        m(torch.randn(4, 40, 64), None, x[:4] + 5)
    assert torch.equal(before, m.video_norm.running_mean)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        plain.load_state_dict(m.state_dict())


@pytest.mark.parametrize("head", ["gating", "linear", "mlp"])
def test_heads_give_embeddings(head):
    m = AVLnet(32, head=head).eval()
    with torch.no_grad():
        a, v = m(torch.randn(2, 40, 100), torch.tensor([100, 50]), torch.randn(2, 4096))
    assert a.shape == v.shape == (2, 32)
    with pytest.raises(ValueError, match="unknown head"):
        AVLnet(32, head="transformer")


def test_mms_golden_values():
    assert MMS().from_similarity(S3).item() == pytest.approx(1.6482936, abs=1e-6)
    assert MMS(0.0).from_similarity(S3).item() == pytest.approx(1.6471770, abs=1e-6)
    assert MMS(0.1).from_similarity(S3).item() == pytest.approx(1.7612543, abs=1e-6)
    assert MMS().from_similarity(S4).item() == pytest.approx(7.3672123, abs=1e-5)
    a, v = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    assert MMS()(a, v).item() == pytest.approx(MMS().from_similarity(a @ v.T).item())


def test_max_margin_golden_value():
    assert MaxMargin(0.1).from_similarity(S3).item() == pytest.approx(0.0888889, abs=1e-6)


def test_other_losses_rank_the_right_pairs_lower():
    """Each loss is lower when the diagonal pairs match than when they are shuffled."""
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    good, bad = a + 0.05 * torch.randn(8, 16), a[torch.randperm(8)]
    for name, cls in LOSSES.items():
        loss = cls()
        assert loss(a, good) < loss(a, bad), name
    assert BinaryCE().from_similarity(torch.tensor([[3.0]])).item() == pytest.approx(
        math.log1p(math.exp(-3.0)))
    # InfoNCE is scale-free in the embeddings (cosine similarity)
    assert InfoNCE()(a, good).item() == pytest.approx(InfoNCE()(10 * a, good).item(), rel=1e-5)


def test_milnce_positive_sets():
    s = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    video = torch.tensor([0, 0, 1])
    mask = neighbour_mask(video, torch.tensor([0.0, 10.0, 0.0]))
    assert mask.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    with_bag = MILNCE().from_similarity(s, mask)
    alone = MILNCE().from_similarity(s)
    assert with_bag < alone                      # the neighbour counts as a positive
    assert neighbour_mask(video, torch.tensor([0.0, 20.0, 0.0]))[0, 1].item() is False


def test_window_arithmetic_worked_examples():
    """avlnet.md: 6250 frames (63 2D rows, 94 3D rows): D = 62, starts 0..50, s = 3 -> audio
    frame 298; a 7.3 s video always starts at 0 with nframes 730."""
    assert whole_seconds(6250) == 62 and whole_seconds(1000) == 10
    assert start_range(6250) == 51
    rng = np.random.default_rng(0)
    starts = draw_starts(6250, 10_000, rng)
    assert starts.min() == 0 and starts.max() == 50
    w = window(3, 6250)
    assert (w.audio_start, w.audio_len, w.nframes) == (298, 1000, 1000)
    assert w.rows2d == (3, 13) and w.rows3d == (4, 19)
    last = window(50, 6250)
    assert last.rows2d[1] <= 62 and last.rows3d[1] <= 93
    assert start_range(730) == 1 and set(draw_starts(730, 50, rng)) == {0}
    w = window(0, 730)
    assert (w.audio_start, w.nframes) == (0, 730)


def test_pad_or_crop_keeps_the_true_length():
    spec = np.full((40, 3000), -50.0, np.float32)
    out, n = pad_or_crop(spec, 5120)
    assert out.shape == (40, 5120) and n == 3000 and (out[:, 3000:] == 0).all()
    out, n = pad_or_crop(np.ones((40, 6000), np.float32), 3072)
    assert out.shape == (40, 3072) and n == 6000
