"""Element-wise add, sub, mul and div, with broadcasting.

Grouping rule: operands whose channel axis lands on the same output axis with the full width are
tied channel by channel (residual adds, squeeze-and-excitation scales ``x * s`` with
``s: [B, C, 1, 1]``); an operand of width 1 on that axis broadcasts and ties nothing. An operand
whose channels are all frozen (RoPE's ``cos`` made from positions) is read along that axis too.
Constants (numbers, untracked tensors) are fine when they do not vary along the channel axis; a per-channel
constant or parameter (``x * self.scale``) would have to be sliced, so the rule declines. Division
by a tracked tensor declines too (a dead divisor is a zero).

Gates: a sum is constant only if every operand is; a product is zero if any full-width operand is.
"""
from __future__ import annotations

import numpy as np

from ..builder import Slots
from ..record import Value

NAMES = ("add", "sub", "rsub", "mul", "div")


def rule(b, op) -> bool:
    if len(op.outputs) != 1:
        return False
    out = op.outputs[0]
    nd = len(out.shape)
    if nd == 0:
        return False
    operands = [a for a in op.inputs[:2]] + [op.kwargs[k] for k in ("other",) if k in op.kwargs]
    slots = {i: b.get(a) for i, a in enumerate(operands) if isinstance(a, Value)}
    if any(s is None for s in slots.values()):
        return False
    lead = next((i for i, s in slots.items() if not b.all_frozen(s)), None)
    for i, s in slots.items():                   # RoPE's cos [1, 1, N, D] times heads [B, H, N, D]
        off = nd - len(operands[i].shape)
        want = slots[lead].cdim + nd - len(operands[lead].shape) - off if lead is not None else s.cdim
        if want != s.cdim and 0 <= want and b.all_frozen(s):
            slots[i] = b.along(operands[i], want)
    axis, full, broadcast = None, [], []
    for i, a in enumerate(operands):
        if isinstance(a, Value):
            s = slots[i]
            ax = s.cdim + nd - len(a.shape)
            if axis is not None and ax != axis:
                return False
            axis = ax
            (full if a.shape[s.cdim] == out.shape[ax] else broadcast).append((i, s))
    if axis is None or not full:
        return False
    for a in operands:
        if not isinstance(a, Value) and hasattr(a, "shape"):      # constant or parameter tensor
            offset = axis - (nd - len(a.shape))
            if 0 <= offset < len(a.shape) and a.shape[offset] != 1:
                return False
    if op.name == "div" and any(i == 1 for i, _ in full + broadcast):
        return False
    first = full[0][1]
    for _, s in full[1:]:
        b.tie(first.elems, s.elems)
    n = len(first.elems)
    if op.name == "mul":
        gate_bn = np.logical_or.reduce([s.gate_bn for _, s in full])
        gate_w = np.logical_or.reduce([s.gate_w for _, s in full])
    else:
        gate_bn = np.logical_and.reduce([s.gate_bn for _, s in full] + [np.full(n, s.gate_bn.all()) for _, s in broadcast])
        gate_w = np.logical_and.reduce([s.gate_w for _, s in full] + [np.full(n, s.gate_w.all()) for _, s in broadcast])
    source = first.source
    if op.name != "mul" and len(full) > 1:
        for i, s in full:            # a branch: added to something that does not depend on it
            if s.source and not any(b.depends(operands[j], s.source) for j, _ in full if j != i):
                b.summed.add(s.source)
        source = None
    b.set(out, Slots(axis, first.elems, gate_bn, gate_w, source))
    b.memory([a for a in operands if isinstance(a, Value)] + [out])
    return True
