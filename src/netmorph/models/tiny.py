"""A tiny CNN for 8x8 images such as scikit-learn's ``load_digits``.

Used for fast end-to-end CPU training in tests and examples. It contains a
plain conv chain, a max-pool and one residual block (identity shortcut).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._utils import init_weights, scale_channels
from .resnet import BasicBlock


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    )


class TinyCNN(nn.Module):
    """conv(32) -> conv(64) -> maxpool -> conv(64) -> BasicBlock(64) -> pool -> linear.

    Expects ``in_channels`` x 8 x 8 inputs (spatial size 8 -> 4 after the pool;
    any size >= 2 works thanks to the adaptive pooling).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2 = scale_channels(32, width), scale_channels(64, width)
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, c1),
            _conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),
            _conv_bn_relu(c2, c2),
            BasicBlock(c2, c2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, num_classes)
        init_weights(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> TinyCNN:
    """Tiny CNN for sklearn digits. Input: ``in_channels`` x 8 x 8."""
    return TinyCNN(num_classes=num_classes, in_channels=in_channels, width=width)
