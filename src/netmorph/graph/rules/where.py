"""``torch.where(cond, x, y)`` where one value carries the channels and the rest is broadcast along them
(a causal mask ``[B, 1, q, k]`` merged into per-head position biases ``[1, H, q, k]``: T5 under sdpa).

Grouping rule: when exactly one of ``x``, ``y`` is a tensor whose channel axis is full in the output,
and ``cond`` and the other value are scalars or have size 1 along that axis, output channel i is
channel i of that value where ``cond`` picks it and the same broadcast value elsewhere, so the output
carries its channels. A dead channel of it comes out as the other value where ``cond`` says so, not
zero, so nothing here proves a channel dead (no gate). Anything else is declined.
"""
from __future__ import annotations

import numpy as np

from ..record import Value

NAMES = ("where",)


def rule(b, op) -> bool:
    if len(op.inputs) != 3 or len(op.outputs) != 1:
        return False
    cond, *values = op.inputs
    out = op.outputs[0]
    nd = len(out.shape)
    carriers = []
    for v in values:
        s = b.get(v) if isinstance(v, Value) else None
        if s is not None and not b.all_frozen(s):
            axis = s.cdim + nd - len(v.shape)
            if v.shape[s.cdim] == out.shape[axis] > 1:
                carriers.append((v, s, axis))
    if len(carriers) != 1:
        return False
    value, s, axis = carriers[0]

    def broadcast(t) -> bool:        # a scalar, or size 1 along the channel axis
        if not hasattr(t, "shape"):
            return isinstance(t, (int, float, bool))
        offset = axis - (nd - len(t.shape))
        return offset < 0 or t.shape[offset] == 1
    if not all(broadcast(t) for t in (cond, *[v for v in values if v is not value])):
        return False
    off = np.zeros(len(s.elems), dtype=bool)
    b.set(out, type(s)(axis, s.elems, off, off.copy(), None))
    b.memory([t for t in (cond, *values) if isinstance(t, Value)] + [out])
    return True
