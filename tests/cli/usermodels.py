"""User networks for the command-line tests, imported by ``--model tests.cli.usermodels:NAME``."""
import torch
from torch import nn


class NaNNet(nn.Module):
    """Records and evaluates fine; its training-mode output is NaN (a diverging user model)."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        y = self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))
        return y * float("nan") if self.training else y


def nan_net(num_classes=10, in_channels=1):
    return NaNNet(num_classes, in_channels)


class MostlyFrozen(nn.Module):
    """A wide conv whose output is flattened with a hard-coded size (frozen), then a small
    prunable block: almost all FLOPs sit in frozen channels."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.wide = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.small = nn.Conv2d(64, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64 * 8 * 8 + 4, num_classes)

    def forward(self, x):
        h = self.bn(self.wide(x)).relu()
        s = self.bn2(self.small(h)).relu().mean((2, 3))
        return self.fc(torch.cat([h.view(x.shape[0], 64 * 8 * 8), s], 1))


def mostly_frozen(num_classes=10, in_channels=1):
    return MostlyFrozen(num_classes, in_channels)


def not_a_module():
    return "a string"


class TinyViT(nn.Module):
    """Patches -> position embedding -> one pre-LayerNorm MLP block -> mean over tokens -> head: its hidden
    width (16) is an approximate group (LayerNorm), its MLP width (32) an exact one."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.patch = nn.Conv2d(in_channels, 16, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 4, 16) * 0.1)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        x = x + self.fc2(self.fc1(self.norm(x)).relu())
        return self.head(x.mean(1))


def tiny_vit(num_classes=10, in_channels=1):
    return TinyViT(num_classes, in_channels)
