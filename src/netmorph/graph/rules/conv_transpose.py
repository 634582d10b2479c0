"""Transposed convolutions (1d/2d/3d): like convolutions, with the weight laid out ``[in, out/g, *k]``.

Grouping rule: as for :mod:`conv` (own output channels; grouped ones change in whole groups;
a module called again ties its inputs). FLOPs use the *input* spatial size, as the reference code and
``torch.utils.flop_counter`` do: ``2 * N * prod(in_spatial) * prod(kernel) * sum_k in_k * out_k``.
"""
from __future__ import annotations

from .conv import conv_layer


def conv_transpose(b, op) -> bool:
    return conv_layer(b, op, "conv_transpose", transposed=True)
