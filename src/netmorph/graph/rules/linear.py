"""Linear layers on ``[B, C]`` inputs: each owns its output features.

Grouping rule: the output features are new elements owned by the layer (sourced by its weight
rows); inputs are independent of outputs. A flattened conv map arrives with each channel's element
repeated once per spatial position, so alive counts and regularizer sums count features, as the
FLOPs do. A module called again ties its inputs to those of its first call.

FLOPs: ``2 * B * alive_in * alive_out``; weights: ``alive_in * alive_out`` once per module.
Inputs with more than two dims (token layouts) are left to the unknown-op rule for now.
"""
from __future__ import annotations

import numpy as np

from ..builder import Piece, Slots


def linear(b, op) -> bool:
    m = op.module
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or len(x.shape) != 2 or s.cdim != 1 or len(op.outputs) != 1:
        return False
    out = op.outputs[0]
    info = b.layer(op, "linear", m.out_features)
    if info.in_elems is None:
        info.in_elems = s.elems
    else:
        b.tie(info.in_elems, s.elems)
    b.pieces.append(Piece(b.op_index, info.name, s.elems, info.out_elems, 2.0 * x.shape[0],
                          1.0 if info.calls == 1 else 0.0, 1.0, False))
    b.consumed.append((info.name, s))
    b.producer[out.id] = info.name
    n = m.out_features
    b.set(out, Slots(1, info.out_elems, np.zeros(n, dtype=bool), np.ones(n, dtype=bool), info.name))
    b.memory([x, out])
    return True
