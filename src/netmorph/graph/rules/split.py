"""``chunk``, ``split``, ``unbind`` and indexing (``x[...]``).

Grouping rules:
- Along another axis than the channel axis, every piece carries the input's channels unchanged
  (``x[:, 0]`` takes a ViT class token; ``x[..., ::2]`` subsamples space).
- ``chunk(n)`` along the channel axis: piece k holds channels ``[k*C/n, (k+1)*C/n)``, and channel i of
  every piece is tied to channel i of the others, so after pruning the pieces still have equal
  widths and ``chunk`` still cuts them apart where they belong (GLU, grouped heads).
- ``split(size)`` along the channel axis into equal pieces, with ``size`` an int attribute of the
  module calling it (``split_size``, ``embed_dim``, ... :data:`SPLIT_ATTRS`: GPT-2's
  ``c_attn(x).split(self.split_size, dim=2)``), is ``chunk``: pieces tied channel by channel, and
  netmorph sets that attribute to the pieces' new width. A size given as a bare number (or a list of
  sizes) is hard-coded: it would cut in the wrong place once channels are removed, so the op is
  frozen, saying so. Indexing along the channel axis (``x[:, 4:16]``) takes hard-coded positions:
  the rule declines and the channels are frozen.
- Except a slice that keeps every channel (``x[:, :n]`` with ``n`` at least the width: GhostNet's
  ``cat([x1, x2])[:, :out]`` when the concat is exactly ``out`` wide): it is the identity, and stays
  the identity while the channels only narrow. Its channels are *capped*: ``apply_structure``
  refuses to widen them and ``expand`` grows them at most back to their width.
"""
from __future__ import annotations

NAMES = ("chunk", "split", "unbind", "getitem")

#: Int attributes of the calling module that may hold the size of the equal pieces a channel axis is
#: split into (netmorph updates them with the widths).
SPLIT_ATTRS = ("split_size", "embed_dim", "attn_dim", "all_head_size", "inner_dim")


def _index_rule(b, op, s, x) -> bool:
    index = op.inputs[1]
    index = index if isinstance(index, tuple) else (index,)
    if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in index):
        return False
    nd = len(x.shape)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded, axis = [], 0
    for i in index:
        if i is Ellipsis:
            expanded += [slice(None)] * (nd - n_real)
            axis += nd - n_real
        else:
            expanded.append(i)
            axis += i is not None
    expanded += [slice(None)] * (nd - axis)
    out_axis, in_axis = 0, 0
    for i in expanded:
        if i is None:
            out_axis += 1
            continue
        if in_axis == s.cdim:
            if i != slice(None):
                if not (isinstance(i, slice) and i.start in (None, 0) and i.step in (None, 1)
                        and isinstance(i.stop, int) and i.stop >= x.shape[s.cdim]):
                    return False
                b.capped.append(s.elems)           # identity now; a wider tensor would be cut at i.stop
            b.set(op.outputs[0], s.with_cdim(out_axis))
            return True
        out_axis += not isinstance(i, int)
        in_axis += 1
    return False


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or not op.outputs:
        return False
    if op.name == "getitem":
        return len(op.outputs) == 1 and _index_rule(b, op, s, x)
    nd = len(x.shape)
    if op.name == "unbind":
        dim = (op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("dim", 0)) % nd
    else:
        dim = (op.inputs[2] if len(op.inputs) > 2 else op.kwargs.get("dim", 0)) % nd
    if dim != s.cdim:
        cdim = s.cdim - (1 if op.name == "unbind" and dim < s.cdim else 0)
        for out in op.outputs:
            b.set(out, s.with_cdim(cdim))
        return True
    if op.name == "unbind" or len({o.shape[dim] for o in op.outputs}) != 1:
        return False
    width = op.outputs[0].shape[dim]
    names = []
    if op.name == "split":
        size = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("split_size", op.kwargs.get("split_size_or_sections"))
        from .reshape import _attributes
        names = _attributes(b, op, size, SPLIT_ATTRS) if type(size) is int else []
        if not names:
            from .unknown import freeze_op
            where = f"'{op.scope}'" if op.scope else "the model"
            freeze_op(b, op, f"it splits channels into pieces of {size} written as numbers, and {where} has no "
                             f"attribute ({', '.join(SPLIT_ATTRS[:2])}, ...) holding the size that netmorph could "
                             "update; use chunk, or pass the size as such an attribute")
            return True
    pieces = [s.elems[k * width:(k + 1) * width] for k in range(len(op.outputs))]
    for piece in pieces[1:]:
        b.tie(pieces[0], piece)
    b.attrs.extend((op.scope, n, pieces[0]) for n in names)
    for k, out in enumerate(op.outputs):
        b.set(out, s.take(slice(k * width, (k + 1) * width)))
    return True
