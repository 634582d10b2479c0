"""Small helpers shared by the reference networks."""

from __future__ import annotations

import torch.nn as nn


def scale_channels(channels: int, width: float) -> int:
    """Scale a channel count by ``width``, rounding to the nearest integer (at least 1)."""
    return max(1, int(round(channels * width)))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``.

    The result is never smaller than ``min_value`` (defaults to ``divisor``) and
    never more than 10% below ``value``; if rounding down would lose more than
    that, one extra ``divisor`` is added.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def init_weights(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Standard initialisation used by all reference networks.

    * Convolutions: Kaiming normal (``fan_out``, ReLU gain), zero bias.
    * Batch norm: weight 1, bias 0.
    * Linear: normal(0, ``linear_std``) weights and zero bias; left at
      PyTorch's default initialisation when ``linear_std`` is None.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
