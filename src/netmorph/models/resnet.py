"""CIFAR-style ResNets (He et al., "Deep Residual Learning", 2016, Sec. 4.2).

Graph patterns exercised: residual additions with identity and 1x1-projection
shortcuts, and a ReLU module instance that is called twice per block.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._utils import init_weights, scale_channels


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. The shortcut
    is the identity when the shape is unchanged, otherwise a strided 1x1
    convolution followed by batch norm. The single ``self.relu`` module is used
    for both activations on purpose.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu(out)


class CifarResNet(nn.Module):
    """ResNet for 3x32x32 inputs: stem, three stages of ``n`` blocks, pool, linear.

    Stage widths are 16, 32 and 64 channels times ``width``; stages 2 and 3
    start with a stride-2 block.
    """

    def __init__(self, depth: int, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        c1, c2, c3 = (scale_channels(c, width) for c in (16, 32, 64))
        self.depth = depth

        self.conv1 = conv3x3(3, c1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_stage(c1, c1, n, stride=1)
        self.layer2 = self._make_stage(c1, c2, n, stride=2)
        self.layer3 = self._make_stage(c2, c3, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)
        init_weights(self, linear_std=None)  # classifier keeps PyTorch's default init

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def cifar_resnet(depth: int, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """Build a CIFAR ResNet of the given ``depth`` (6n+2). Input: 3x32x32."""
    return CifarResNet(depth, num_classes=num_classes, width=width)


def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 (3 blocks per stage, ~0.27M params, ~81.6 MFLOPs). Input: 3x32x32."""
    return cifar_resnet(20, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 (9 blocks per stage, ~0.85M params). Input: 3x32x32."""
    return cifar_resnet(56, **kwargs)
