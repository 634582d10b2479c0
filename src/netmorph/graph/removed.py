"""Stand-ins that pruning puts where a whole branch disappeared.

- :class:`Vanished` replaces a layer whose every output channel was removed: it returns a tensor
  with zero channels of the right batch and spatial size, which concat, add and activations accept,
  and which costs nothing.
- :class:`RemovedNorm` replaces a normalization layer left with no channel (an empty pass-through
  that keeps the old layer's attributes).
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


class Hollow(torch.Tensor):
    """A tensor with zero channels that torch functions rejecting empty inputs still accept.

    Some ops refuse a tensor with no elements (``F.interpolate``, ``F.max_pool2d``, ``F.group_norm``
    ...), yet a removed branch may pass through them before reaching the concat that drops it. Each
    torch function called on a Hollow tensor first runs as it is; if it raises and no other tensor
    takes part, it runs on a stand-in with one zero channel where the Hollow one had none, and keeps
    zero channels of the result. Results with no elements stay Hollow, others are plain tensors, so
    nothing hollow leaves the dead branch.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            try:
                out = func(*args, **kwargs)
            except RuntimeError:
                from .record import flatten_tensors          # (record imports this module)
                tensors = list(flatten_tensors((args, kwargs)))
                if not all(isinstance(t, Hollow) for t in tensors):
                    raise           # another tensor takes part (it could broadcast against the stand-in)
                axis = _empty_axis(tensors[0])
                out = func(*_map(args, _stand_in), **_map(kwargs, _stand_in))
                if hasattr(out, "_fields") or any(t.dim() <= axis for t in flatten_tensors(out)):
                    raise           # a reduction over the channels: what the stand-in gave means nothing
                out = _map(out, lambda t: t.narrow(axis, 0, 0))
        return _map(out, lambda t: t.as_subclass(Hollow) if t.numel() == 0 and t.dim() else t)


def _empty_axis(t: torch.Tensor) -> int:
    return next(i for i, n in enumerate(t.shape) if n == 0)


def _map(obj, fn):
    """``obj`` with ``fn`` applied to every tensor inside its lists, tuples and dicts (named tuples kept)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A Hollow tensor replaced by zeros holding one channel where it had none; other tensors as they are."""
    if not isinstance(t, Hollow):
        return t
    shape = list(t.shape)
    shape[_empty_axis(t)] = 1
    return torch.zeros(shape, dtype=t.dtype, device=t.device)


class Vanished(_Geometry):
    """A layer all of whose output channels were removed: outputs zero channels.

    With ``hollow`` set (pruning sets it when the model's forward rejects an empty tensor further
    down the removed branch), the output is a :class:`Hollow` tensor.
    """

    hollow = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(self.out_shape(x, 0))
        return out.as_subclass(Hollow) if self.hollow else out


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
        # a real tensor, not an expanded view: the model may add to it in place (out += skip)
        return self.value.to(x.dtype).reshape(view).expand(shape).clone()


class RemovedNorm(nn.Module):
    """A normalization layer of a removed branch: passes its (empty) input through.

    It keeps the replaced layer's settings as attributes, with its width at 0 (``num_features`` or
    ``num_channels``), so a forward that reads them (``self.bn.num_features``) still runs; torch's own
    norm layers cannot be built with no channels.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        for key in ("eps", "momentum", "affine", "track_running_stats", "num_groups"):
            if hasattr(layer, key):
                setattr(self, key, getattr(layer, key))
        for key in ("num_features", "num_channels"):
            if hasattr(layer, key):
                setattr(self, key, 0)
        self.replaced = type(layer).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"was {self.replaced}"
