"""``expand``: a tensor broadcast along axes of size 1 (Hugging Face's ``repeat_kv`` turns key/value
heads ``[B, kv, N, D]`` into ``x[:, :, None].expand(B, kv, rep, N, D)`` before merging ``kv * rep``).

Grouping rule: the channel axis keeps its size (expanding it from 1 would copy one channel into
many: the rule declines) and output channel i is input channel i, with its gates (a copy of a
constant is a constant). The output is marked *repeated*: the reshape that merges its channel axis
with the repeated one may give the merged size as a number (``repeat_kv`` computes it from the
shapes, and a size written into the code would fail loudly on a pruned copy, as it sets every axis).
"""
from __future__ import annotations

NAMES = ("expand",)


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or len(op.outputs) != 1:
        return False
    out = op.outputs[0]
    shift = len(out.shape) - len(x.shape)
    cdim = s.cdim + shift
    if shift < 0 or out.shape[cdim] != x.shape[s.cdim]:
        return False
    b.set(out, s.with_cdim(cdim))
    if any(x.shape[i - shift] == 1 and out.shape[i] > 1 for i in (cdim - 1, cdim + 1)
           if shift <= i < len(out.shape)):
        b.repeated.add(out.id)
    b.memory([x, out])
    return True
