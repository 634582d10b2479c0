"""Stand-ins that pruning puts where a whole branch disappeared.

- :class:`Vanished` replaces a layer whose every output channel was removed: it returns a tensor
  with zero channels of the right batch and spatial size, which concat, add and activations accept,
  and which costs nothing.
- :class:`ConstantOutput` replaces a layer whose every *input* channel was removed: what it still
  computed was a constant per output channel (its bias plus the constants the dead channels
  emitted), so it returns that constant, broadcast to the output size the layer would have had.

Both compute their output size from the input's shape with the replaced layer's geometry, so the
pruned model still runs on inputs of other sizes. The channel graph knows them (see
``rules/removed.py``), so a pruned model can be analysed, regularized and pruned again.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _out_size(size: int, k: int, s: int, p, d: int) -> int:
    return math.floor((size + 2 * p - d * (k - 1) - 1) / s + 1)


class _Geometry(nn.Module):
    """Remembers a conv's (or linear layer's) geometry to size outputs from any input."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        if isinstance(layer, _Geometry):                 # a stand-in replaced again
            self.__dict__.update({k: v for k, v in layer.__dict__.items()
                                  if k in ("is_conv", "transposed", "output_padding", "kernel_size", "stride",
                                           "dilation", "padding")})
            return
        self.is_conv = isinstance(layer, nn.modules.conv._ConvNd)
        self.transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
        self.output_padding = tuple(getattr(layer, "output_padding", ()))
        if self.is_conv:
            self.kernel_size, self.stride = tuple(layer.kernel_size), tuple(layer.stride)
            self.dilation = tuple(layer.dilation)
            self.padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)

    def out_shape(self, x: torch.Tensor, channels: int) -> tuple[int, ...]:
        if not self.is_conv:
            return (*x.shape[:-1], channels)
        spatial = x.shape[2:]
        if self.padding == "same":
            return (x.shape[0], channels, *spatial)
        pad = (0,) * len(spatial) if self.padding == "valid" else self.padding
        if self.transposed:
            return (x.shape[0], channels, *((n - 1) * s - 2 * p + d * (k - 1) + o + 1 for n, k, s, p, d, o in zip(
                spatial, self.kernel_size, self.stride, pad, self.dilation, self.output_padding)))
        return (x.shape[0], channels, *(_out_size(n, k, s, p, d) for n, k, s, p, d in
                                       zip(spatial, self.kernel_size, self.stride, pad, self.dilation)))


class Vanished(_Geometry):
    """A layer all of whose output channels were removed: outputs zero channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.out_shape(x, 0))


class ConstantOutput(_Geometry):
    """A layer all of whose inputs were removed: outputs its constant per channel."""

    def __init__(self, layer: nn.Module, value: torch.Tensor):
        super().__init__(layer)
        self.register_buffer("value", value.detach().clone())

    @property
    def out_channels(self) -> int:
        return self.value.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.out_shape(x, self.value.numel())
        view = (1, -1) + (1,) * (len(shape) - 2) if self.is_conv else (-1,)
        return self.value.to(x.dtype).reshape(view).expand(shape)
