"""torchvision ResNet-152 up to layer4 + spatial mean: the 2D backbone of features.md."""
from __future__ import annotations

from typing import Any

import torch
from torchvision.models.resnet import Bottleneck, ResNet

from models.resnext3d import load_state_strict

FEATURE_DIM = 2048
MEAN = (0.485, 0.456, 0.406)   # features.md: x/255, then (x - mean) / (std + 1e-8), RGB
STD = (0.229, 0.224, 0.225)


class ResNet152Features(ResNet):
    """torchvision's resnet152 (same modules, so the same state_dict keys: the official
    resnet152-394f9c45.pth loads strictly); forward stops at layer4 and averages over H, W.
    fc stays in the state_dict for strict loading but is never used."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 8, 36, 3])   # = torchvision.models.resnet152(weights=None)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised RGB frames (whole frame, e.g. 224x298) -> (B, 2048)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))   # (B, 2048, H/32, W/32)
        return x.mean(dim=(2, 3))                                    # (B, 2048)


def load_resnet_state(model: ResNet152Features, obj: Any) -> None:
    """Loads a torchvision-format resnet152 state_dict (or a checkpoint holding one) strictly;
    raises models.resnext3d.StateDictError on any mismatch."""
    load_state_strict(model, obj, "torchvision ResNet-152")
