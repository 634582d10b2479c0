"""``x[index] = v``: writing a tensor into rows of another (torchvision's multi-scale RoI pooling
fills ``torch.zeros((boxes, C, h, w))`` level by level).

Grouping rule, when ``index`` selects along axis 0 only (an int, a slice or an index tensor) and
the channel axis of ``v`` is the matching axis of ``x``:
- into a *blank* ``x`` (made by a factory op from sizes alone, such as ``torch.zeros``): channel i of
  the result is channel i of ``v`` in the written rows and the factory's value elsewhere, so the
  result carries ``v``'s channels; but a channel dead in ``v`` is a constant (a BatchNorm's beta), not
  necessarily the factory's value, so the result does not prove it dead (no gate): what reads the
  result keeps its channels unless another path proves them dead;
- into an ``x`` that carries channels already (an earlier write): channel i of ``x`` and of ``v``
  are tied, and the result carries them.
Otherwise (writing along the channel axis, ``x[:, :3] = v``) the rule declines and what it touches
is frozen. The recording cannot tell a factory's size read from a tensor's shape (torchvision's
``x.shape[1]``) from one written as a number in the code; in the latter case the pruned copy fails
to run, and ``prune`` says that netmorph's copy failed. The recorder records the write as an op whose output is the new value of ``x``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..record import Value

NAMES = ("setitem",)
_FACTORIES = {"zeros", "new_zeros", "zeros_like", "empty", "new_empty", "full", "new_full", "ones", "new_ones"}


def _rows_only(index, ndim: int) -> bool:
    """Whether ``index`` selects along axis 0 only (keeping every other axis whole)."""
    if isinstance(index, tuple):
        if not index or any(i is not None and i != slice(None) for i in index[1:]):
            return False
        index = index[0]
    return isinstance(index, (int, slice, Value, torch.Tensor))


def rule(b, op) -> bool:
    if len(op.inputs) != 3 or len(op.outputs) != 1:
        return False
    x, index, v = op.inputs
    sv = b.get(v)
    if not isinstance(x, Value) or sv is None or not _rows_only(index, len(x.shape)):
        return False
    dropped = 1 if isinstance(index if not isinstance(index, tuple) else index[0], int) else 0
    cdim = sv.cdim + dropped                        # v's channel axis, counted in x
    if cdim == 0 or cdim >= len(x.shape) or x.shape[cdim] != v.shape[sv.cdim]:
        return False
    out = op.outputs[0]
    if b.blank.get(x.id) in _FACTORIES:
        # a dead channel of v is a constant, not always 0 (a BatchNorm's beta): with rows left at the
        # factory's value the result's channel is not one constant, so nothing here proves it dead
        off = np.zeros(len(sv.elems), dtype=bool)
        b.set(out, type(sv)(cdim, sv.elems, off, off.copy(), sv.source))
        b.memory([v, out])
        return True
    sx = b.get(x)
    if sx is None or sx.cdim != cdim:
        return False
    b.tie(sx.elems, sv.elems)
    b.set(out, type(sv)(cdim, sx.elems, sx.gate_bn & sv.gate_bn, sx.gate_w & sv.gate_w, None))
    b.memory([v, out])
    return True
