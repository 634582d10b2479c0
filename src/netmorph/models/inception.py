"""A small Inception-style network for 32x32 inputs.

Graph pattern exercised: multi-branch blocks whose outputs are concatenated
along the channel axis (``torch.cat(..., dim=1)``), so the output channels of
several independent convolutions share one downstream consumer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._utils import init_weights, scale_channels


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Stride-1 "same" convolution (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    )


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels.

    * ``branch1``: 1x1
    * ``branch3``: 1x1 reduce -> 3x3
    * ``branch5``: 1x1 reduce -> 3x3 -> 3x3 (a factorised 5x5)
    * ``branch_pool``: 3x3 max-pool (stride 1, pad 1) -> 1x1

    Output channels: ``c1 + c3 + c5 + cp``; spatial size is preserved.
    """

    def __init__(self, in_channels: int, c1: int, c3_reduce: int, c3: int,
                 c5_reduce: int, c5: int, cp: int) -> None:
        super().__init__()
        self.branch1 = conv_bn_relu(in_channels, c1, 1)
        self.branch3 = nn.Sequential(
            conv_bn_relu(in_channels, c3_reduce, 1),
            conv_bn_relu(c3_reduce, c3, 3),
        )
        self.branch5 = nn.Sequential(
            conv_bn_relu(in_channels, c5_reduce, 1),
            conv_bn_relu(c5_reduce, c5, 3),
            conv_bn_relu(c5, c5, 3),
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),
            conv_bn_relu(in_channels, cp, 1),
        )
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
        return torch.cat(branches, dim=1)


class InceptionNet(nn.Module):
    """Stem (3x3 conv) -> Inception block -> 2x2 max-pool -> Inception block -> pool -> linear.

    Expects 3x32x32 inputs. At ``width=1`` the blocks output 64 and 88 channels.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()

        def w(c: int) -> int:
            return scale_channels(c, width)

        self.stem = conv_bn_relu(3, w(32), 3)
        self.block1 = InceptionBlock(w(32), w(16), w(16), w(24), w(8), w(12), w(12))
        self.pool = nn.MaxPool2d(2, 2)
        self.block2 = InceptionBlock(self.block1.out_channels, w(24), w(16), w(32), w(8), w(16), w(16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.block2.out_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block1(x)
        x = self.pool(x)
        x = self.block2(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def inception_net(num_classes: int = 10, width: float = 1.0) -> InceptionNet:
    """Small two-block Inception network. Input: 3x32x32."""
    return InceptionNet(num_classes=num_classes, width=width)
