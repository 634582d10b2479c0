"""GroupNorm normalizes groups of ``C / G`` channels together, so they change in whole groups.

Grouping rule: the channels of each GroupNorm group are tied into one channel (removing part of a
group would change the statistics of the rest); the GroupNorm's per-channel gamma is a source of
aliveness like a BatchNorm's. Output channel i is input channel i.
"""
from __future__ import annotations

from .batchnorm import batchnorm


def groupnorm(b, op) -> bool:
    m = op.module
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or s.cdim != 1 or x.shape[1] != m.num_channels:
        return False
    size = m.num_channels // m.num_groups
    for g in range(m.num_groups):
        b.tie_all(s.elems[g * size:(g + 1) * size])
    return batchnorm(b, op)
