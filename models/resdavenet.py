"""ResDAVEnet: the AVLnet audio encoder, log-Mel (B, 40, T) -> (B, 1024, ceil(T/16)) (avlnet.md)."""
from __future__ import annotations

import math

import torch
from torch import nn

WIDTHS = (128, 256, 512, 1024)   # channels of the four stages
KERNEL = 9                       # time taps of every block conv (1 x 9, padding 4)
N_MELS = 40


class BasicBlock(nn.Module):
    """conv(1x9) -> BN -> ReLU -> conv(1x9) -> BN, + shortcut, ReLU; `stride` along time only."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        pad = (0, KERNEL // 2)
        self.conv1 = nn.Conv2d(inplanes, planes, (1, KERNEL), stride=(1, stride), padding=pad,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, (1, KERNEL), padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResDAVEnet(nn.Module):
    """Stem Conv2d(1, 128, (40, 1)) collapses frequency; four stages of two blocks, the first
    block of each with stride 2 in time and a 1x1 conv + BN shortcut. 44,670,978 parameters.

    `batchnorm1` is the original's input BatchNorm2d(1), defined there and never applied: kept
    (unused) only so released checkpoints load strictly."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), widths=WIDTHS):
        super().__init__()
        self.batchnorm1 = nn.BatchNorm2d(1)
        self.batchnorm1.requires_grad_(False)     # never applied: no gradient (and DDP agrees)
        self.conv1 = nn.Conv2d(1, widths[0], (N_MELS, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks), start=1):
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=(1, 2), bias=False),
                                 nn.BatchNorm2d(planes))
            layer = [BasicBlock(inplanes, planes, 2, down)]
            layer += [BasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            inplanes = planes
        self.out_dim = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):      # N(0, sqrt(2 / (kh * kw * out_channels)))
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 40, T) log-Mel -> (B, 1024, ceil(T/16))."""
        x = self.relu(self.bn1(self.conv1(spec.unsqueeze(1))))      # (B, 128, 1, T)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))    # (B, 1024, 1, T')
        return x.squeeze(2)


def output_frames(t: int) -> int:
    """T' for T input frames: ceil(T / 16) (four stride-2 stages)."""
    for _ in range(4):
        t = (t - 1) // 2 + 1
    return t
