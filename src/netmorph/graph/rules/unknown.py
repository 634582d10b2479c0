"""Ops without a rule freeze every channel they touch.

Grouping rule: none. Every tracked input channel of the op is frozen (kept, never regularized),
its outputs get new frozen channels, and the FLOPs torch counted for it (and the weights of
matrices it uses, for model size) stay in every cost as constants. This is what keeps an unfamiliar model correct: a channel the library cannot prove safe
to remove is never removed, and ``explain`` names the op that froze it.
"""
from __future__ import annotations

from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase,)
#: What to do about some ops without a rule.
HINTS = {"multi_head_attention_forward": "netmorph.split_attention(model) makes nn.MultiheadAttention's heads prunable"}


def freeze_op(b, op, why: str) -> None:
    where = f" in '{op.scope}'" if op.scope else ""
    label = f"{op.module_name} ({op.name})" if op.module_name else f"'{op.name}'"
    hint = HINTS.get(op.name)
    reason = f"touched by op {label}{where}: {why}" + (f" ({hint})" if hint and why == "no rule for this op" else "") + \
        (f" ({op.note})" if op.note else "")
    read = sorted({b.rec.param_owner[id(p)] for p in _parameters(op.inputs) + _parameters(list(op.kwargs.values()))
                   if id(p) in b.rec.param_owner and getattr(op.module, "weight", None) is not p})
    read += [name for name, _, e in b.params for v in b.tensors(op) if v.id < 0 and b.get(v) is not None
             and b.get(v).elems is e and name not in read]
    if read:                                      # a class token or position embedding read by an op without a rule
        reason += f" (it reads parameter {', '.join(repr(n) for n in read[:3])})"
    inputs = b.tensors(op)
    for v in inputs:
        s = b.get(v)
        if s is not None:
            b.freeze(s.elems, reason)
    for out in op.outputs:
        b.fresh(out, f"output of {label}", reason, op)
        if not any(b.get(v) is not None for v in inputs):
            b.blank[out.id] = op.name             # made from sizes alone (torch.zeros(...)): nothing of the input
    b.const_flops[b.op_index] = b.const_flops.get(b.op_index, 0.0) + float(op.measured_flops)
    b.memory(inputs + op.outputs)
    weights = [op.module.weight] if op.module is not None and hasattr(op.module, "weight") else []
    weights += [p for p in _parameters(op.inputs) + _parameters(list(op.kwargs.values())) if p.dim() >= 2]
    for w in weights:
        if w is not None and w.dim() >= 2 and not isinstance(op.module, _NORMS):
            b.const_elements[b.op_index] = b.const_elements.get(b.op_index, 0.0) + w.numel()
            if id(w) not in b.counted_params:
                b.counted_params.add(id(w))
                b.const_size += float(w.numel())


def _parameters(args) -> list:
    found = []
    for a in args:
        if isinstance(a, nn.Parameter):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found += _parameters(a)
    return found
