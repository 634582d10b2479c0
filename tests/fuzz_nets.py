"""Random small networks from the ops the channel graph supports, for the property-based tests
(``tests/test_fuzz_graphs.py``) and the longer soak (``benchmarks/fuzz_soak.py``).

A network is a list of block specs applied in order to a ``[B, C, H, W]`` tensor, then global
pooling, flatten and a linear classifier. :func:`networks` is the hypothesis strategy; :class:`Net`
builds and runs a spec, so a failing example prints as a short, readable list of blocks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

#: every block kind, and what it needs of its input (channels, spatial size)
KINDS = ("conv", "conv_gn", "grouped", "depthwise", "residual", "concat", "chunk_add", "split_cat", "se",
         "maxpool", "avgpool", "upsample", "pixel_shuffle")


def conv_bn(c_in: int, c_out: int, k: int = 3, groups: int = 1, norm: str = "bn") -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False)]
    layers.append(nn.BatchNorm2d(c_out) if norm == "bn" else nn.GroupNorm(1, c_out))
    return nn.Sequential(*layers, nn.ReLU())


class Block(nn.Module):
    """One block of kind ``kind`` on ``c`` input channels; ``.out`` is its output channel count and
    ``.scale`` what it does to the spatial size (0.5, 1 or 2)."""

    def __init__(self, kind: str, c: int, width: int, k: int):
        super().__init__()
        self.kind, self.out, self.scale = kind, c, 1.0
        if kind in ("conv", "conv_gn"):
            self.f = conv_bn(c, width, k, norm="bn" if kind == "conv" else "gn")
            self.out = width
        elif kind == "grouped":              # needs even c; width rounded up to even
            self.out = width + width % 2
            self.f = conv_bn(c, self.out, k, groups=2)
        elif kind == "depthwise":
            self.f = nn.Sequential(conv_bn(c, c, k, groups=c), conv_bn(c, width, 1))
            self.out = width
        elif kind == "residual":
            self.f = nn.Sequential(conv_bn(c, width, k), nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c))
        elif kind == "concat":
            self.a, self.b = conv_bn(c, width, k), conv_bn(c, max(1, width // 2 + 1), 1)
            self.out = width + max(1, width // 2 + 1)
        elif kind in ("chunk_add", "split_cat"):   # needs even c
            self.f = conv_bn(c, c, k)
            self.out = c // 2 if kind == "chunk_add" else c
        elif kind == "se":
            self.f = conv_bn(c, c, k)
            self.squeeze, self.excite = nn.Conv2d(c, max(1, width // 2), 1), nn.Conv2d(max(1, width // 2), c, 1)
        elif kind in ("maxpool", "avgpool"):
            self.scale = 0.5
        elif kind == "upsample":
            self.scale = 2.0
        elif kind == "pixel_shuffle":        # needs c divisible by 4
            self.out, self.scale = c // 4, 2.0

    def forward(self, x):
        k = self.kind
        if k in ("conv", "conv_gn", "grouped", "depthwise"):
            return self.f(x)
        if k == "residual":
            return torch.relu(x + self.f(x))
        if k == "concat":
            return torch.cat([self.a(x), self.b(x)], dim=1)
        if k == "chunk_add":
            a, b = self.f(x).chunk(2, dim=1)
            return a + b
        if k == "split_cat":
            y = self.f(x)
            a, b = torch.split(y, [y.shape[1] // 2, y.shape[1] - y.shape[1] // 2], dim=1)
            return torch.cat([b, a], dim=1)
        if k == "se":
            y = self.f(x)
            return y * torch.sigmoid(self.excite(torch.relu(self.squeeze(F.adaptive_avg_pool2d(y, 1)))))
        if k == "maxpool":
            return F.max_pool2d(x, 2)
        if k == "avgpool":
            return F.avg_pool2d(x, 2)
        if k == "upsample":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.pixel_shuffle(x, 2)


def fits(kind: str, c: int, size: int) -> bool:
    """Whether block ``kind`` can follow a tensor of ``c`` channels and spatial size ``size``."""
    if kind in ("grouped", "chunk_add", "split_cat"):
        return c % 2 == 0
    if kind == "pixel_shuffle":
        return c % 4 == 0 and size <= 8
    if kind in ("maxpool", "avgpool"):
        return size >= 2
    if kind == "upsample":
        return size <= 8
    return True


class Net(nn.Module):
    """A stem conv, the blocks of ``spec`` (a list of ``(kind, width, kernel)``; blocks that do not
    fit the tensor they would get are skipped), global pooling, flatten, a linear classifier."""

    def __init__(self, spec, stem: int = 4, size: int = 8, classes: int = 3):
        super().__init__()
        self.stem = conv_bn(3, stem, 3)
        blocks, c = [], stem
        for kind, width, k in spec:
            if not fits(kind, c, size):
                continue
            block = Block(kind, c, width, k)
            blocks.append(block)
            c, size = block.out, int(size * block.scale)
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)
        self.spec = [(b.kind, b.out) for b in blocks]

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def randomize_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm / GroupNorm parameters and running statistics (eval mode then differs
    from the identity), so a pruning mistake shows in the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


blocks = st.tuples(st.sampled_from(KINDS), st.integers(1, 8), st.sampled_from([1, 3]))
#: (spec, stem width, seed)
networks = st.tuples(st.lists(blocks, min_size=1, max_size=5), st.integers(2, 8), st.integers(0, 2 ** 16))
