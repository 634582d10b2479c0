"""``flatten``, ``view``/``reshape`` that merge or split dims, ``squeeze`` and ``unsqueeze``.

Grouping rule for merges: no tying. When the channel axis is merged with neighbouring axes (a conv map
flattened into a linear layer's features), the merged axis carries each channel's element once per
position it covers, in memory order, so a linear layer downstream sees exactly which of its inputs
belong to which channel. ``view``/``reshape`` must leave the merged size to PyTorch (``-1``, as in
``x.view(x.size(0), -1)``): a hard-coded size (``view(-1, 4096)``) would break once channels are
removed, so the rule declines and the channels are frozen. Two exceptions: the size is an attribute
of the module calling it that netmorph updates (``attn_dim``, ``all_head_size``: see below), or the
tensor was repeated by ``expand`` (``repeat_kv``: every axis is then given, so a wrong size could
only fail loudly).

Grouping rule for splits into heads: a channel axis of ``C`` split into ``(..., heads, head_dim)``
(an attention projection's features into heads; timm's fused ``qkv`` into ``(3, heads, head_dim)``)
ties every position of head h -- its ``head_dim`` rows, in every leading block -- into one channel,
and the head axis becomes the channel axis: heads change whole, never inside (``head_dim`` sets the
softmax scale and RoPE's pairs). Pruned, the split must still cut heads of ``head_dim``: either the
head count is ``-1`` and ``head_dim`` an int attribute of the module calling it (``head_dim``,
``attention_head_size``, ... :data:`HEAD_DIM_ATTRS`: a number recorded in the call could have been
computed from the width), or the head count is such an attribute (``num_heads``,
``num_attention_heads``, ... :data:`HEAD_ATTRS`), which netmorph sets to the new count (a wrong
count then fails loudly). Otherwise the op is frozen, saying so. Attributes of that module that hold the head
count or the heads' total width (:data:`WIDTH_ATTRS`) are recorded and updated with the widths.
Any other reshape declines.
"""
from __future__ import annotations

import numpy as np

from ..builder import Slots

NAMES = ("flatten", "view", "reshape", "squeeze", "unsqueeze")

#: Int attributes of an attention module that hold its number of (query or key/value) heads.
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "num_kv_heads",
              "n_kv_heads")
#: Int attributes that hold the width of one head (a head count of -1 needs one: the size is then no
#: function of the width).
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_head", "dim_head", "d_k", "key_value_proj_dim")
#: Int attributes that hold the total width of its heads (heads x head_dim).
WIDTH_ATTRS = ("attn_dim", "all_head_size", "inner_dim")


def _merge(s: Slots, shape: tuple, start: int, end: int) -> Slots:
    """Slots after merging axes ``start..end`` (inclusive) of ``shape``."""
    if s.cdim < start:
        return s
    if s.cdim > end:
        return s.with_cdim(s.cdim - (end - start))
    inner = int(np.prod(shape[s.cdim + 1:end + 1]))
    size = int(np.prod(shape[start:end + 1]))
    index = (np.arange(size) // inner) % shape[s.cdim]
    return s.take(index).with_cdim(start)


def _merged_span(src: tuple, dst: tuple):
    """(start, end) if ``dst`` is ``src`` with the axes start..end merged into one, else None."""
    if len(dst) > len(src):
        return None
    start = 0
    while start < len(dst) and src[start] == dst[start]:
        start += 1
    k = len(src) - len(dst)
    if start == len(dst):
        start = len(dst) - 1 if dst else 0
    if src[start + k + 1:] != dst[start + 1:] or int(np.prod(src[start:start + k + 1])) != dst[start]:
        return None
    return start, start + k


def _requested_sizes(op) -> list:
    """The sizes passed to ``view``/``reshape``: ``x.view(a, b)``, ``x.view((a, b))`` or ``shape=``."""
    args = list(op.inputs[1:]) or [op.kwargs.get("shape", op.kwargs.get("size", ()))]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    return args


def _moved_cdim(op, src: tuple, dst: tuple, cdim: int):
    """Channel axis after ``squeeze``/``unsqueeze``, or None if the channel axis itself is size 1."""
    if src[cdim] == 1:
        return None
    dims = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("dim")
    if op.name == "unsqueeze":
        d = dims % len(dst)
        return cdim + (1 if d <= cdim else 0)
    if dims is None:
        dims = range(len(src))
    dims = [d % len(src) for d in ((dims,) if isinstance(dims, int) else dims)]
    return cdim - sum(1 for d in dims if d < cdim and src[d] == 1)


def _attributes(b, op, value: int, names) -> list[str]:
    """Names among ``names`` of int attributes equal to ``value`` on the module that called ``op``."""
    held = vars(b.rec.modules[op.scope]) if op.scope in b.rec.modules else {}    # plain attributes, no properties
    return [n for n in names if type(held.get(n)) is int and held[n] == value]


def _split_heads(b, op, x, s: Slots, dst: tuple, k: int) -> bool:
    """The channel axis split into ``k + 1`` axes, the last two being ``(heads, head_dim)``."""
    sizes = _requested_sizes(op)
    if op.name not in ("view", "reshape") or len(sizes) != len(dst):
        return False
    head_axis, dim_axis = s.cdim + k - 1, s.cdim + k
    heads, head_dim = dst[head_axis], dst[dim_axis]
    names = _attributes(b, op, heads, HEAD_ATTRS)
    where = f"'{op.scope}'" if op.scope else "the model"
    why = None
    if sizes[head_axis] != -1 and not names:
        why = (f"it splits channels into {heads} blocks (heads) of {head_dim} with the count written as a number, and "
               f"{where} has no attribute ({', '.join(HEAD_ATTRS[:3])}, ...) holding it that netmorph could update; "
               "write the head count as -1 to make the heads prunable")
    elif sizes[head_axis] == -1 and not _attributes(b, op, head_dim, HEAD_DIM_ATTRS):
        why = (f"it splits channels into blocks (heads) of {head_dim}, and {where} has no attribute "
               f"({', '.join(HEAD_DIM_ATTRS[:3])}, ...) holding {head_dim}: a size computed from the width would "
               "change with it")
    if why is not None:
        from .unknown import freeze_op
        freeze_op(b, op, why)
        return True
    head_of = (np.arange(len(s.elems)) // head_dim) % heads
    for h in range(heads):
        b.tie_all(s.elems[head_of == h])
    reps = s.elems[:heads * head_dim:head_dim]
    gate_bn = np.array([s.gate_bn[head_of == h].all() for h in range(heads)], dtype=bool)
    gate_w = np.array([s.gate_w[head_of == h].all() for h in range(heads)], dtype=bool)
    b.set(op.outputs[0], Slots(head_axis, reps, gate_bn, gate_w, s.source))
    b.attrs.extend((op.scope, n, reps) for n in names)
    b.memory([x, op.outputs[0]])
    return True


def _split_span(src: tuple, dst: tuple, cdim: int) -> int | None:
    """k if ``dst`` is ``src`` with axis ``cdim`` split into k + 1 axes (k >= 1), else None."""
    k = len(dst) - len(src)
    if k < 1 or dst[:cdim] != src[:cdim] or dst[cdim + 1 + k:] != src[cdim + 1:] or \
            int(np.prod(dst[cdim:cdim + 1 + k])) != src[cdim]:
        return None
    return k


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or len(op.outputs) != 1:
        return False
    src, dst = tuple(x.shape), tuple(op.outputs[0].shape)
    if op.name in ("squeeze", "unsqueeze"):
        cdim = _moved_cdim(op, src, dst, s.cdim)
        if cdim is None or dst[cdim] != src[s.cdim]:
            return False
        b.set(op.outputs[0], s.with_cdim(cdim))
        return True
    if src == dst:
        b.set(op.outputs[0], s)
        return True
    span = _merged_span(src, dst)
    if span is None:
        k = _split_span(src, dst, s.cdim)
        return k is not None and _split_heads(b, op, x, s, dst, k)
    start, end = span
    names = []
    if start <= s.cdim <= end:
        heads = b.head_set.intersection(s.elems.tolist())
        names = _attributes(b, op, dst[start], WIDTH_ATTRS) if heads else []
        if op.name in ("view", "reshape"):
            sizes = _requested_sizes(op)
            if len(sizes) != len(dst):
                return False
            repeated = x.id in b.repeated and -1 not in sizes
            if sizes[start] != -1 and not repeated and not (heads and names):
                return False
    merged = _merge(s, src, start, end)
    b.set(op.outputs[0], merged)
    b.attrs.extend((op.scope, n, merged.elems) for n in names)
    return True
