"""``torch.cat`` along the channel axis stacks channels; along any other axis it ties them.

Grouping rule: along the channel axis, the output's channels are the inputs' channels side by side
(no tying between inputs: an Inception or DenseNet branch keeps its own group). Along another axis
(batch, space, tokens), output channel i holds channel i of every input, so those are tied.
An untracked constant tensor among the inputs brings new frozen channels.
"""
from __future__ import annotations

import numpy as np

from ..builder import Slots
from ..record import Value

NAMES = ("cat",)


def rule(b, op) -> bool:
    tensors = op.inputs[0] if op.inputs else op.kwargs.get("tensors")
    dim = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or len(op.outputs) != 1 or not isinstance(dim, int):
        return False
    out = op.outputs[0]
    nd = len(out.shape)
    dim = dim % nd
    parts = [b.get(t) if isinstance(t, Value) else None for t in tensors]
    tracked = [p for p in parts if p is not None]
    if not tracked:
        return False
    cdim = next((p.cdim for p in tracked if not b.all_frozen(p)), tracked[0].cdim)
    parts = [b.along(t, cdim) if isinstance(t, Value) else None for t in tensors]
    tracked = [p for p in parts if p is not None]
    if any(p.cdim != cdim for p in tracked):
        return False
    if any(len(t.shape) != nd for t in tensors if hasattr(t, "shape")):
        return False
    if dim == cdim:
        full = []
        for t, p in zip(tensors, parts):
            if p is None:
                elems = b.new_elements(t.shape[cdim], "constant in cat", "constant tensor concatenated")
                off = np.zeros(len(elems), dtype=bool)
                p = Slots(cdim, elems, off, off)
            full.append(p)
        b.set(out, Slots(cdim, *(np.concatenate([getattr(p, f) for p in full]) for f in ("elems", "gate_bn", "gate_w"))))
    else:
        if len(tracked) != len(tensors):
            return False
        for p in tracked[1:]:
            b.tie(tracked[0].elems, p.elems)
        b.set(out, Slots(cdim, tracked[0].elems, np.logical_and.reduce([p.gate_bn for p in tracked]),
                         np.logical_and.reduce([p.gate_w for p in tracked])))
    b.memory([t for t in tensors if isinstance(t, Value)] + [out])
    return True
