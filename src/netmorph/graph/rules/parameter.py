"""Parameters read inside ``forward`` (a class token, position embeddings, a layer scale) are sources.

A parameter that a function op reads directly (``self.cls_token.expand(B, -1, -1)``,
``x + self.pos_embed``, ``x * self.gamma``) rather than as a layer's weight is given channels of its
own before the op's rule runs, as a layer's output would be: new elements along one axis, owned by
the parameter (its slices along that axis are the members of their channels, and the group-lasso
source reads their norms), gated (a slice set to zero is zero). The op's rule then ties them like
any other tensor's: added to or multiplied with the residual stream, the parameter's slices join its
channels, and ``resize`` slices the parameter along that axis with them.

Grouping rule (which axis): when the op has a tracked tensor whose channels are not all frozen, the
axis of the parameter that broadcasting aligns with that tensor's channel axis, if the parameter
is as wide there (a parameter of size 1 there does not vary along the channels: it stays a constant
and the op's rule decides); when the parameter is the op's only tensor (``expand``, ``view``,
``to``), its last axis wider than 1 (``[1, 1, C]``, ``[C]``, ``[1, N, C]``), which the rules of the ops
reading it go on to check like any tensor's. Only the ops in :data:`OPS` are treated so, and never a
layer's own weight or bias (a tied embedding table read as ``x @ wte.weight.transpose(0, 1)``: the layer
rule owns it); elsewhere a parameter stays a constant. If the op's rule declines, the parameter's channels are frozen and
``explain`` names it. A parameter read along two different axes is frozen, saying so.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from torch import nn

from ..builder import Slots
from ..record import Value, _is_layer, flatten_tensors

_OWNERS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.modules.batchnorm._NormBase, nn.LayerNorm,
           nn.GroupNorm, nn.RMSNorm)

#: Function ops whose parameter arguments are tracked as tensors (not read as a layer's weight).
OPS = frozenset({"add", "sub", "rsub", "mul", "div", "cat", "expand", "view", "reshape", "flatten", "squeeze",
                 "unsqueeze", "permute", "transpose", "to", "type", "type_as", "float", "double", "half", "bfloat16",
                 "contiguous", "clone", "detach", "getitem"})


def track_parameters(b, op):
    """``op`` with every parameter argument it reads as a tensor replaced by the Value standing for it
    (the op itself when there is none)."""
    if op.module is not None or op.name not in OPS:
        return op
    found = [a for a in flatten_tensors(op.inputs) if isinstance(a, nn.Parameter) and a.dim() > 0 and not _layer_owned(b, a)]
    if not found:
        return op
    lead = next((v for v in b.tensors(op) if b.get(v) is not None and not b.all_frozen(b.get(v))), None)
    mapping = {}
    for p in found:
        if id(p) in mapping:
            continue
        axis = _axis(b, p, lead)
        if axis is not None:
            mapping[id(p)] = _value(b, p, axis)
    if not mapping:
        return op
    return dataclasses.replace(op, inputs=_swap(op.inputs, mapping), kwargs=_swap(op.kwargs, mapping))


def _layer_owned(b, p) -> bool:
    """Whether ``p`` is the weight or bias of a module the graph treats as a layer or a norm."""
    name, _, attr = b.rec.param_owner.get(id(p), "").rpartition(".")
    module = b.rec.modules.get(name)
    return attr in ("weight", "bias") and module is not None and (_is_layer(module) or isinstance(module, _OWNERS))


def _axis(b, p, lead: Value | None) -> int | None:
    if lead is None:
        wide = [i for i, n in enumerate(p.shape) if n > 1]
        return wide[-1] if wide else None
    s = b.get(lead)
    axis = p.dim() - (len(lead.shape) - s.cdim)
    return axis if 0 <= axis < p.dim() and p.shape[axis] == lead.shape[s.cdim] and p.shape[axis] > 1 else None


def _value(b, p, axis: int) -> Value:
    name = b.rec.param_owner.get(id(p), "a parameter")
    v = b.param_values.get(id(p))
    if v is not None:
        s = b.get(v)
        if s.cdim != axis:
            b.freeze(s.elems, f"parameter '{name}' is read along two different axes ({s.cdim} and {axis})")
        return v
    v = Value(-1 - len(b.param_values), tuple(p.shape))
    b.param_values[id(p)] = v
    elems = b.new_elements(p.shape[axis], f"parameter '{name}'")
    b.set(v, Slots(axis, elems, np.zeros(len(elems), dtype=bool), np.ones(len(elems), dtype=bool), None))
    b.params.append((name, axis, elems))
    return v


def _swap(x, mapping):
    if isinstance(x, nn.Parameter):
        return mapping.get(id(x), x)
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_swap(y, mapping) for y in x)
    if isinstance(x, dict):
        return {k: _swap(y, mapping) for k, y in x.items()}
    return x
