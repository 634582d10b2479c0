"""VGG-11 with batch norm for 32x32 inputs.

Graph pattern exercised: a ``x.view(x.size(0), -1)`` flatten of a 2x2 spatial
map feeding a Linear layer, so each input channel owns 4 consecutive
classifier input features.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._utils import init_weights, scale_channels

# VGG-11 ("A") configuration without the final max-pool: 32 -> 2x2 spatial.
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)


class VGG(nn.Module):
    """Plain conv-BN-ReLU stack followed by a two-layer MLP classifier.

    Expects 3x32x32 inputs; the feature map entering the classifier is
    ``[B, C, 2, 2]`` where ``C`` is the last conv width.
    """

    def __init__(self, config=VGG11_CONFIG, num_classes: int = 10, width: float = 1.0,
                 hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out_channels = scale_channels(item, width)
                layers += [
                    nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=False),
                ]
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        hidden = scale_channels(hidden, width)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 2 * 2, hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def vgg11(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-11-BN for CIFAR (last pool dropped, 2x2 flatten). Input: 3x32x32."""
    return VGG(VGG11_CONFIG, num_classes=num_classes, width=width)
