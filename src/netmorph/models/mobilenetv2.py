"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 inputs.

Graph patterns exercised: depthwise convolutions (groups == channels),
ReLU6, inverted residual blocks with conditional residual additions, dropout.
Compared with the ImageNet model, the stem convolution and the second stage
use stride 1 so that a 32x32 image ends at 4x4 before pooling.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._utils import init_weights, make_divisible

# (expansion t, output channels c, repeats n, first stride s)
CIFAR_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> BatchNorm -> ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=False),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), plus optional skip.

    The expansion layer is omitted when ``expansion == 1``. The residual is
    added only when ``stride == 1`` and input/output channel counts match.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, 1))
        layers.append(conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden))
        layers += [
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = x + out
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 3x32x32 inputs.

    Channel counts are multiplied by ``width`` and rounded to multiples of 8.
    The final 1x1 convolution has 1280 channels (scaled up, never down, when
    ``width > 1``).
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        in_channels = make_divisible(32 * width)
        last_channels = make_divisible(1280 * max(1.0, width))

        layers: list[nn.Module] = [conv_bn_relu6(3, in_channels, 3, stride=1)]
        for t, c, n, s in CIFAR_SETTINGS:
            out_channels = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
        layers.append(conv_bn_relu6(in_channels, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.classifier(x)


def mobilenetv2(num_classes: int = 10, width: float = 1.0) -> MobileNetV2:
    """CIFAR MobileNetV2 (~2.2M params at width 1). Input: 3x32x32."""
    return MobileNetV2(num_classes=num_classes, width=width)
