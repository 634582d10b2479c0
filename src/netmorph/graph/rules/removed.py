"""Stand-ins left by pruning (``Vanished``, ``ConstantOutput``) read only their input's shape.

Grouping rule: the input's channels are not consumed (nothing ties or freezes them). A Vanished
layer outputs zero channels (on axis 1 for a convolution, on the last axis for a linear layer). A ConstantOutput owns its output channels like a layer, with no FLOPs
and no weights; they are constants, so they count as gated for both regularizer families.
"""
from __future__ import annotations

import numpy as np

from ..builder import Slots


def vanished(b, op) -> bool:
    out = op.outputs[0]
    empty = np.zeros(0, dtype=np.int64)
    b.set(out, Slots(b.channel_axis(out, op), empty, empty.astype(bool), empty.astype(bool)))
    return True


def constant(b, op) -> bool:
    out = op.outputs[0]
    n = op.module.out_channels
    info = b.layer(op, "constant", n)
    info.in_elems = np.zeros(0, dtype=np.int64)
    on = np.ones(n, dtype=bool)
    b.set(out, Slots(1 if op.module.is_conv else len(out.shape) - 1, info.out_elems, on, on.copy(), info.name))
    b.producer[out.id] = info.name
    b.memory([out])
    return True
