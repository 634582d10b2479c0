"""A small DenseNet-BC style network for 32x32 inputs (Huang et al., 2017).

Graph pattern exercised: dense connectivity, i.e. repeated
``torch.cat([x, new], 1)`` so a layer's input channels include the outputs of
every earlier layer of the block, plus pre-activation (BN-ReLU-conv) ordering.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._utils import init_weights, scale_channels


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (bottleneck) -> BN-ReLU-conv3x3; output appended to the input.

    Returns a tensor with ``in_channels + growth`` channels.
    """

    def __init__(self, in_channels: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        inner = bottleneck * growth
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(F.relu(self.bn1(x)))
        new = self.conv2(F.relu(self.bn2(new)))
        return torch.cat([x, new], 1)


class DenseBlock(nn.Sequential):
    """``num_layers`` dense layers; output has ``in_channels + num_layers * growth`` channels."""

    def __init__(self, in_channels: int, num_layers: int, growth: int) -> None:
        layers = [DenseLayer(in_channels + i * growth, growth) for i in range(num_layers)]
        super().__init__(*layers)
        self.out_channels = in_channels + num_layers * growth


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (channel compression) followed by 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    """Stem conv -> dense block -> transition -> dense block -> BN-ReLU -> pool -> linear.

    Expects 3x32x32 inputs. At ``width=1`` (growth 12, 4 layers per block) the
    blocks output 72 and 84 channels.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, growth: int = 12,
                 layers_per_block: int = 4, compression: float = 0.5) -> None:
        super().__init__()
        growth = scale_channels(growth, width)
        stem_channels = 2 * growth
        self.stem = nn.Conv2d(3, stem_channels, 3, padding=1, bias=False)
        self.block1 = DenseBlock(stem_channels, layers_per_block, growth)
        mid = max(1, int(self.block1.out_channels * compression))
        self.transition = Transition(self.block1.out_channels, mid)
        self.block2 = DenseBlock(mid, layers_per_block, growth)
        self.bn = nn.BatchNorm2d(self.block2.out_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.block2.out_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block1(x)
        x = self.transition(x)
        x = self.block2(x)
        x = F.relu(self.bn(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def densenet_net(num_classes: int = 10, width: float = 1.0) -> DenseNet:
    """Small two-block DenseNet-BC (growth 12 x ``width``). Input: 3x32x32."""
    return DenseNet(num_classes=num_classes, width=width)
