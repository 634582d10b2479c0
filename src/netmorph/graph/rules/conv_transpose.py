"""Transposed convolutions (1d/2d/3d): like convolutions, with the weight laid out ``[in, out/g, *k]``.

Grouping rule: as for :mod:`conv` (own output channels; grouped ones change in whole groups;
a module called again ties its inputs). FLOPs use the *input* spatial size, as the reference code and
``torch.utils.flop_counter`` do: ``2 * N * prod(in_spatial) * prod(kernel) * sum_k in_k * out_k``.
"""
from __future__ import annotations

import numpy as np

from ..builder import Piece, Slots


def conv_transpose(b, op) -> bool:
    m = op.module
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    nd = len(m.kernel_size)
    if s is None or s.cdim != 1 or len(x.shape) != nd + 2 or len(op.outputs) != 1 or len(op.inputs) > 1:
        return False
    out = op.outputs[0]
    g = m.groups
    info = b.layer(op, "conv_transpose", m.out_channels)
    if info.in_elems is None:
        info.in_elems = s.elems
    else:
        b.tie(info.in_elems, s.elems)
    ipg, opg = m.in_channels // g, m.out_channels // g
    if g > 1:
        for k in range(g):
            b.tie_all(np.concatenate([s.elems[k * ipg:(k + 1) * ipg], info.out_elems[k * opg:(k + 1) * opg]]))
    kernel = float(np.prod(m.kernel_size))
    rows = float(x.shape[0]) * float(np.prod(x.shape[2:]))
    for k in range(g):
        b.pieces.append(Piece(b.op_index, info.name, s.elems[k * ipg:(k + 1) * ipg],
                              info.out_elems[k * opg:(k + 1) * opg], 2.0 * rows * kernel,
                              kernel if info.calls == 1 else 0.0, kernel, g > 1))
    b.consumed.append((info.name, s))
    b.producer[out.id] = info.name
    n = m.out_channels
    b.set(out, Slots(1, info.out_elems, np.zeros(n, dtype=bool), np.ones(n, dtype=bool), info.name))
    b.memory([x, out])
    return True
