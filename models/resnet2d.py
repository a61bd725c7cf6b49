"""ResNet-152 up to layer4 + spatial mean: the 2D backbone of features.md.

The network is torchvision's resnet152 (ResNet v1.5: the stride in the 3x3 convolution) written
out here with the same module names, so the official resnet152-394f9c45.pth loads strictly, and
with the same order of construction and initialisation, so a seed gives the same random weights
as torchvision's (tests/test_backbones.py checks both against torchvision). Importing torchvision
itself costs about 1.7 s (its detection ops pull in torch._dynamo), in every extraction driver
and worker process; this module needs torch alone.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.resnext3d import load_state_strict

FEATURE_DIM = 2048
MEAN = (0.485, 0.456, 0.406)   # features.md: x/255, then (x - mean) / (std + 1e-8), RGB
STD = (0.229, 0.224, 0.225)
LAYERS = (3, 8, 36, 3)         # bottleneck blocks per stage of ResNet-152
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 convolutions with BatchNorm, plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet152Features(nn.Module):
    """resnet152's modules (conv1, bn1, layer1..4, fc: the official state_dict's keys); forward
    stops at layer4 and averages over H, W. fc stays for strict loading but is never used."""

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, LAYERS[0])
        self.layer2 = self._layer(128, LAYERS[1], stride=2)
        self.layer3 = self._layer(256, LAYERS[2], stride=2)
        self.layer4 = self._layer(512, LAYERS[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * EXPANSION, 1000)
        for m in self.modules():      # torchvision's initialisation, in its order
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        self.eval()

    def _layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * EXPANSION:   # made before the block, as
            downsample = nn.Sequential(                          # torchvision does (RNG order)
                nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised RGB frames (whole frame, e.g. 224x298) -> (B, 2048)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))   # (B, 2048, H/32, W/32)
        return x.mean(dim=(2, 3))                                    # (B, 2048)


def load_resnet_state(model: ResNet152Features, obj: Any) -> None:
    """Loads a torchvision-format resnet152 state_dict (or a checkpoint holding one) strictly;
    raises models.resnext3d.StateDictError on any mismatch."""
    load_state_strict(model, obj, "torchvision ResNet-152")
