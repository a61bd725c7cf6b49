"""Backbones (features.md 2D/3D) and weights resolution, offline on CPU with synthetic weights."""
from __future__ import annotations

import dataclasses
import socket

import pytest
import torch
import torchvision

from models.resnet2d import ResNet152Features, load_resnet_state
from models.resnext3d import StateDictError, load_resnext_state, resnext101
from pipeline.features import weights as W

torch.set_num_threads(2)
CLIP = (1, 3, 16, 112, 112)


@pytest.fixture(autouse=True)
def no_torch_cache(tmp_path, monkeypatch):
    """Keep torch.hub's checkpoints folder ($TORCH_HOME/hub/checkpoints) empty and private."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def resnext_sd() -> dict:
    torch.manual_seed(0)
    return resnext101().state_dict()


def _refused_url(name: str) -> str:
    with socket.socket() as s:   # a port nobody listens on: connecting is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def test_resnext_state_dict_names_and_counts(resnext_sd):
    model = resnext101()
    assert len(resnext_sd) == 626
    assert sum(p.numel() for p in model.parameters()) == 48_340_816
    for k, shape in {"conv1.weight": (64, 3, 7, 7, 7), "bn1.running_var": (64,),
                     "layer1.0.conv1.weight": (128, 64, 1, 1, 1),
                     "layer1.0.conv2.weight": (128, 4, 3, 3, 3),   # groups 32
                     "layer1.0.conv3.weight": (256, 128, 1, 1, 1),
                     "layer1.0.downsample.0.weight": (256, 64, 1, 1, 1),
                     "layer1.0.downsample.1.running_mean": (256,),
                     "layer3.22.bn3.num_batches_tracked": (),
                     "layer4.2.conv2.weight": (1024, 32, 3, 3, 3),
                     "layer4.0.downsample.0.weight": (2048, 1024, 1, 1, 1),
                     "fc.weight": (400, 2048), "fc.bias": (400,)}.items():
        assert tuple(resnext_sd[k].shape) == shape, k
    assert sorted({k.split(".")[0] for k in resnext_sd}) == [
        "bn1", "conv1", "fc", "layer1", "layer2", "layer3", "layer4"]
    assert {k.rsplit(".", 2)[0] for k in resnext_sd if "downsample" in k} == {
        f"layer{i}.0.downsample" for i in range(1, 5)}
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]


def test_resnext_forward_shape():
    model = resnext101()
    with torch.inference_mode():
        assert model(torch.randn(CLIP)).shape == (1, 2048)
        with pytest.raises(ValueError, match="16, 112, 112"):
            model(torch.randn(1, 3, 8, 112, 112))


def test_resnet152_matches_torchvision_and_shape():
    torch.manual_seed(0)
    tv = torchvision.models.resnet152(weights=None).eval()
    torch.manual_seed(0)
    ours = ResNet152Features()
    assert not ours.training
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in tv.state_dict().items()]
    # same construction and initialisation order: a seed gives torchvision's random weights
    # (the demo's seeded backbones stay what they were when this subclassed torchvision's)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(),
                                                 tv.state_dict().values()))
    load_resnet_state(ours, tv.state_dict())
    tv.fc = torch.nn.Identity()   # torchvision's avgpool + flatten = our mean over H, W
    x = torch.randn(1, 3, 224, 298)
    with torch.inference_mode():
        y = ours(x)
        assert y.shape == (1, 2048)
        torch.testing.assert_close(y, tv(x))


def test_hara_and_plain_checkpoints_load_identically(tmp_path, resnext_sd):
    # Hara's file predates num_batches_tracked (PyTorch 0.3); Miech's is the plain state_dict
    hara = {"module." + k: v for k, v in resnext_sd.items() if "num_batches" not in k}
    torch.save({"epoch": 1, "arch": "resnext-101", "state_dict": hara, "optimizer": {}},
               tmp_path / "hara.pth")
    torch.save(resnext_sd, tmp_path / "plain.pth")
    x = torch.randn(CLIP)
    outs = []
    for name in ("hara.pth", "plain.pth"):
        model, recipe = W.load_backbone("resnext101", str(tmp_path / name))
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        assert recipe["weights_sha256"] == W.sha256_file(tmp_path / name)
        assert recipe["backbone"] == "resnext101" and recipe["weights"] == str(tmp_path / name)
        with torch.inference_mode():
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(model.state_dict()["layer2.1.conv2.weight"],
                               resnext_sd["layer2.1.conv2.weight"])


def test_checkpoint_mismatch_is_a_clear_error(tmp_path, resnext_sd):
    broken = {k: v for k, v in resnext_sd.items() if k != "layer3.7.conv2.weight"}
    broken["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(StateDictError, match=r"1 missing \(layer3\.7\.conv2\.weight\).*"
                                             r"1 unexpected \(layer5\.0\.conv1\.weight\)"):
        load_resnext_state(resnext101(), {"state_dict": {"module." + k: v for k, v in broken.items()}})
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(W.WeightsError, match=r"broken\.pth.*layer3\.7\.conv2\.weight"):
        W.load_backbone("resnext101", str(tmp_path / "broken.pth"))
    with pytest.raises(StateDictError, match="not a state_dict"):
        load_resnext_state(resnext101(), {"epoch": 1})


def test_official_name_with_wrong_hash_fails_but_a_path_loads(tmp_path):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    path = wdir / "resnet152-394f9c45.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet152(weights=None).state_dict(), path)
    digest = W.sha256_file(path)
    with pytest.raises(W.WeightsError, match=rf"sha256 {digest} does not start with 394f9c45"):
        W.load_backbone("resnet152", "imagenet", weights_dir=wdir, download=False)
    model, recipe = W.load_backbone("resnet152", str(path))   # explicit path: no official hash
    assert recipe == {"backbone": "resnet152", "weights": str(path), "weights_sha256": digest,
                      "weights_source": str(path.resolve())}
    assert isinstance(model, ResNet152Features) and not model.training


def test_imagenet_offline_names_file_folder_and_source(tmp_path, monkeypatch):
    wdir = tmp_path / "weights"
    with pytest.raises(W.WeightsError, match="download it from https://download.pytorch.org"):
        W.load_backbone("resnet152", "imagenet", weights_dir=wdir, download=False)
    key = ("resnet152", "imagenet")
    url = _refused_url("resnet152-394f9c45.pth")
    monkeypatch.setitem(W.OFFICIAL, key, dataclasses.replace(W.OFFICIAL[key], url=url))
    with pytest.raises(W.WeightsError) as e:
        W.load_backbone("resnet152", "imagenet", weights_dir=wdir)
    msg = str(e.value)
    assert "resnet152-394f9c45.pth" in msg and str(wdir) in msg and url in msg
    assert "failed" in msg and not (wdir / "resnet152-394f9c45.pth").exists()


def test_imagenet_download_is_hash_checked(tmp_path, monkeypatch, http_server):
    base, routes = http_server
    routes["/resnet152-394f9c45.pth"] = (200, b"not the official weights", {})
    key = ("resnet152", "imagenet")
    monkeypatch.setitem(W.OFFICIAL, key, dataclasses.replace(
        W.OFFICIAL[key], url=base + "/resnet152-394f9c45.pth"))
    with pytest.raises(W.WeightsError, match="does not start with 394f9c45"):
        W.load_backbone("resnet152", "imagenet", weights_dir=tmp_path)
    assert (tmp_path / "resnet152-394f9c45.pth").read_bytes() == b"not the official weights"


def test_kinetics_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(W.WeightsError) as e:
        W.load_backbone("resnext101", "kinetics", weights_dir=tmp_path / "w")
    msg = str(e.value)
    assert "resnext-101-kinetics.pth" in msg and str(tmp_path / "w") in msg
    assert W.HARA_PAGE in msg and "Google Drive" in msg


def test_kinetics_found_in_weights_folder(tmp_path, resnext_sd):
    hara = {"module." + k: v for k, v in resnext_sd.items()}
    torch.save({"epoch": 200, "arch": "resnext-101", "state_dict": hara, "optimizer": {}},
               tmp_path / "resnext-101-kinetics.pth")
    _, recipe = W.load_backbone("resnext101", "kinetics", weights_dir=tmp_path)
    assert recipe["weights"] == "kinetics"
    assert recipe["weights_sha256"] == W.sha256_file(tmp_path / "resnext-101-kinetics.pth")
    assert recipe["weights_source"].startswith("resnext-101-kinetics.pth: Hara")


def test_random_is_seeded_calibrated_and_input_sensitive():
    m0, recipe = W.load_backbone("resnext101", "random")
    m0b, _ = W.load_backbone("resnext101", "random:0")
    assert recipe["weights_sha256"] == "random-seed-0" and "synthetic" in recipe["weights_source"]
    sd0, sd0b = m0.state_dict(), m0b.state_dict()
    assert all(torch.equal(sd0[k], sd0b[k]) for k in sd0)
    assert not torch.equal(sd0["conv1.weight"], W.random_backbone("resnext101", 1).conv1.weight)
    # calibration moved the running stats away from BatchNorm's (0, 1) defaults
    assert sd0["layer4.2.bn3.running_var"].sub(1).abs().mean() > 0.1
    assert sd0["bn1.running_mean"].abs().mean() > 0.1
    assert not m0.training and not any(p.requires_grad for p in m0.parameters())
    g = torch.Generator().manual_seed(99)
    x = torch.cat([W.synthetic_clips(1, g), W.synthetic_clips(1, g)])
    with torch.inference_mode():
        f = m0(x)
    assert torch.nn.functional.cosine_similarity(f[0], f[1], dim=0) < 0.99


def test_random_resnet152_calibration_removes_degeneracy():
    g = torch.Generator().manual_seed(99)
    x = torch.cat([W.synthetic_images(1, g), W.synthetic_images(1, g)])
    cal, recipe = W.load_backbone("resnet152", "random:3")
    assert recipe["weights_sha256"] == "random-seed-3"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        raw = ResNet152Features()    # same init, BatchNorm stats left at (0, 1)
    cos = torch.nn.functional.cosine_similarity
    with torch.inference_mode():
        fc, fr = cal(x), raw(x)
    assert cos(fr[0], fr[1], dim=0) > 0.999        # uncalibrated: the input barely matters
    assert cos(fc[0], fc[1], dim=0) < 0.99
    assert torch.equal(cal.conv1.weight, raw.conv1.weight)


@pytest.mark.parametrize("backbone, weights, match", [
    ("resnet50", "imagenet", "unknown backbone"),
    ("resnext101", "imagenet", "for resnet152, not resnext101"),
    ("resnet152", "kinetics", "for resnext101, not resnet152"),
    ("resnet152", "no/such/file.pth", "neither a name"),
    ("resnet152", "random:x", "must be an integer"),
])
def test_bad_weights_params(backbone, weights, match, tmp_path):
    with pytest.raises(W.WeightsError, match=match):
        W.load_backbone(backbone, weights, weights_dir=tmp_path)
