"""Batched ``matmul`` / ``bmm`` with the channels on a batch axis: eager attention's two products,
``q @ k.transpose(-2, -1)`` and ``softmax(scores) @ v``, per head.

Grouping rule: both operands are tracked tensors of the same rank, with their channel axis on the
same batch axis (not one of the two matrix axes): product i is ``a[i] @ b[i]``, so channel i of
``a``, of ``b`` and of the result is one channel; an operand of width 1 on that axis broadcasts and
ties nothing. Like :mod:`.attention`'s, these channels are *heads*: their aliveness is read from the
columns of the linear layers that read them, never from the rows that make them (a product of
constants need not be constant). Any other matrix product (a tensor times a weight, a product over
the channel axis) declines and is frozen.

FLOPs: torch's count for the product, split evenly over the channels of the wider operand.
"""
from __future__ import annotations

import numpy as np

from ..builder import Piece, Slots
from ..record import Value

NAMES = ("matmul", "bmm")


def rule(b, op) -> bool:
    operands = list(op.inputs[:2]) + [op.kwargs[k] for k in ("other", "mat2") if k in op.kwargs]
    if len(operands) != 2 or len(op.outputs) != 1 or not all(isinstance(t, Value) for t in operands):
        return False
    x, y = operands
    sx, sy = b.get(x), b.get(y)
    out = op.outputs[0]
    if sx is None or sy is None or not len(x.shape) == len(y.shape) == len(out.shape) >= 3:
        return False
    axis = sx.cdim
    if sy.cdim != axis or axis >= len(x.shape) - 2:
        return False
    wide = [s for s in (sx, sy) if len(s.elems) == out.shape[axis]]
    if not wide or any(len(s.elems) not in (1, out.shape[axis]) for s in (sx, sy)):
        return False
    if len(wide) == 2:
        b.tie(sx.elems, sy.elems)
    elems = wide[0].elems
    off = np.zeros(len(elems), dtype=bool)
    b.set(out, Slots(axis, elems, off, off.copy()))
    b.heads.append(elems)
    b.head_set.update(elems.tolist())
    b.pieces.append(Piece(b.op_index, op.scope, elems, b.unit(), float(op.measured_flops) / max(1, len(elems)),
                          0.0, 0.0, False))
    b.memory([x, y, out])
    return True
