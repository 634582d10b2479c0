"""``torch.zeros`` / ``ones`` / ``full`` made from sizes alone with one axis per attention head (T5's
cross-attention position bias ``torch.zeros((1, self.n_heads, q, k))``).

Grouping rule: every entry of such a tensor is the same constant, so removing any of its positions
leaves the others as they were. When exactly one of its axes longer than 1 has the size an int
head-count attribute of the calling module holds (``n_heads``, ``num_heads``, ...:
:data:`~.reshape.HEAD_ATTRS`), that axis carries new, changeable elements; what the tensor is added
to (the attention scores) ties them to its heads, and netmorph sets the attribute to the new count,
so the pruned model makes the tensor at its new size. Any other factory call (sizes written as
numbers, or no such attribute) is declined: what it touches is frozen.
"""
from __future__ import annotations

import numpy as np

from ..builder import Slots
from .reshape import HEAD_ATTRS, _attributes

NAMES = ("zeros", "ones", "full")


def rule(b, op) -> bool:
    if len(op.outputs) != 1 or b.tensors(op):
        return False
    out = op.outputs[0]
    axes = [(a, names) for a, n in enumerate(out.shape) if n > 1 and (names := _attributes(b, op, n, HEAD_ATTRS))]
    if len(axes) != 1:
        return False
    axis, names = axes[0]
    n = out.shape[axis]
    elems = b.new_elements(n, f"output of '{op.name}'")
    off = np.zeros(n, dtype=bool)                  # a constant: nothing here proves a head dead
    b.set(out, Slots(axis, elems, off, off.copy()))
    b.attrs.extend((op.scope, name, elems) for name in names)
    b.blank[out.id] = op.name                      # still a blank for setitem's rows
    b.memory([out])
    return True
