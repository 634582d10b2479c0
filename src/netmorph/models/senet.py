"""A small residual network with squeeze-and-excitation (Hu et al., 2018).

Graph patterns exercised: a global-mean "squeeze" computed with
``x.mean((2, 3), keepdim=True)``, 1x1 convolutions with bias, a sigmoid gate
broadcast-multiplied into the feature map, then a residual addition.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._utils import init_weights, scale_channels


class SqueezeExcite(nn.Module):
    """Channel gate: mean-pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the per-channel gate of shape ``[B, C, 1, 1]`` (not the gated input)."""
        s = x.mean((2, 3), keepdim=True)
        return self.gate(self.expand(self.relu(self.reduce(s))))


class SEBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, scaled by an SE gate, plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 reduction: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels, reduction)
        self.relu2 = nn.ReLU(inplace=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        s = self.se(out)
        out = out * s
        out = out + self.shortcut(x)
        return self.relu2(out)


class SENet(nn.Module):
    """Stem conv -> three stages of SE residual blocks (16, 32, 64 channels) -> pool -> linear.

    Expects 3x32x32 inputs; stages 2 and 3 downsample by 2.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, blocks_per_stage: int = 1,
                 reduction: int = 4) -> None:
        super().__init__()
        widths = [scale_channels(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=False),
        )
        blocks: list[nn.Module] = []
        in_channels = widths[0]
        for i, c in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(SEBlock(in_channels, c, stride, reduction))
                in_channels = c
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.blocks(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def se_net(num_classes: int = 10, width: float = 1.0) -> SENet:
    """Small three-stage SE-ResNet (one block per stage). Input: 3x32x32."""
    return SENet(num_classes=num_classes, width=width)
