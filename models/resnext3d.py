"""3D ResNeXt-101 of Hara et al. (CVPR 2018, Kinetics-400), the 3D backbone of features.md."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

CLIP_SHAPE = (3, 16, 112, 112)       # (C, T, H, W) the net and its AvgPool3d (1, 4, 4) are built for
FEATURE_DIM = 2048


class StateDictError(ValueError):
    """A checkpoint whose keys or shapes do not match the model; the message lists them."""


class ResNeXtBottleneck(nn.Module):
    """Hara's ResNeXt block: 1x1x1 -> grouped 3x3x3 (stride s) -> 1x1x1 to 2*planes, + shortcut."""

    expansion = 2

    def __init__(self, inplanes: int, planes: int, cardinality: int = 32, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        mid = cardinality * int(planes / 32)   # features.md: mid = 32*int(planes/32)
        self.conv1 = nn.Conv3d(inplanes, mid, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, kernel_size=3, stride=stride, padding=1,
                               groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXt3D(nn.Module):
    """ResNeXt-101 3D, shortcut type B, cardinality 32; forward gives the pooled 2048-d feature.

    Module names reproduce Hara's state_dict keys (626 entries with num_batches_tracked,
    48,340,816 parameters); fc (2048 -> 400) is kept so checkpoints load strictly, but unused."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 23, 3), cardinality: int = 32,
                 num_classes: int = 400):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)   # strides time too
        self.layer1 = self._make_layer(128, layers[0], cardinality, stride=1)
        self.layer2 = self._make_layer(256, layers[1], cardinality, stride=2)
        self.layer3 = self._make_layer(512, layers[2], cardinality, stride=2)
        self.layer4 = self._make_layer(1024, layers[3], cardinality, stride=2)
        # Hara: (ceil(16/16), ceil(112/32), ceil(112/32)) for 16x112x112 clips
        self.avgpool = nn.AvgPool3d((1, 4, 4), stride=1)
        self.fc = nn.Linear(cardinality * 32 * ResNeXtBottleneck.expansion, num_classes)
        for m in self.modules():   # Hara's init
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.eval()

    def _make_layer(self, planes: int, blocks: int, cardinality: int, stride: int) -> nn.Sequential:
        out = planes * ResNeXtBottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:   # shortcut type B
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(out))
        layers = [ResNeXtBottleneck(self.inplanes, planes, cardinality, stride, downsample)]
        self.inplanes = out
        layers += [ResNeXtBottleneck(out, planes, cardinality) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 16, 112, 112) mean-subtracted 0..255 clips -> (B, 2048) pooled features."""
        if x.dim() != 5 or tuple(x.shape[1:]) != CLIP_SHAPE:
            raise ValueError(f"ResNeXt3D expects clips (B, {', '.join(map(str, CLIP_SHAPE))}), "
                             f"got {tuple(x.shape)}: its AvgPool3d (1, 4, 4) needs a 1x4x4 layer4 map")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))   # (B, 2048, 1, 4, 4)
        return self.avgpool(x).flatten(1)                            # (B, 2048)


def resnext101(num_classes: int = 400) -> ResNeXt3D:
    """Hara's resnext-101 (layers 3, 4, 23, 3), randomly initialised, in eval mode."""
    return ResNeXt3D((3, 4, 23, 3), cardinality=32, num_classes=num_classes)


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """A checkpoint object -> plain state_dict: takes obj['state_dict'] when present (Hara's
    {'epoch', 'arch', 'state_dict', 'optimizer'}) and strips DataParallel's `module.` prefix."""
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise StateDictError(f"not a state_dict or a checkpoint holding one: {type(obj).__name__}"
                             + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else ""))
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _listing(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_strict(model: nn.Module, obj: Any, what: str) -> None:
    """Loads a checkpoint object into `model` strictly; a mismatch raises StateDictError naming
    the missing, unexpected and wrongly shaped keys. BatchNorm num_batches_tracked may be absent
    (files saved before PyTorch 0.4, e.g. Hara's and torchvision's): it is set to 0."""
    sd = unwrap_state_dict(obj)
    expected = model.state_dict()
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing ({_listing(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({_listing(unexpected)})" if unexpected else "",
                 f"{len(shapes)} with wrong shape ({_listing(shapes)})" if shapes else ""]
        raise StateDictError(f"checkpoint does not match {what}: "
                             + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=True)


def load_resnext_state(model: ResNeXt3D, obj: Any) -> None:
    """Loads Hara's checkpoint dict (`module.`-prefixed keys) or a plain state_dict (Miech's
    resnext101.pth) into `model` strictly; raises StateDictError on any mismatch."""
    load_state_strict(model, obj, "ResNeXt-101 3D (Hara et al.)")
