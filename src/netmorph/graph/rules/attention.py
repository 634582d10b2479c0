"""``F.scaled_dot_product_attention``: attention heads are channels.

Query, key and value arrive split into heads, ``[..., heads, tokens, head_dim]`` (the reshape rule
splits a projection's features into heads, tying each head's ``head_dim`` rows into one channel).

Grouping rule: query head i, key head i and value head i are one channel, and output head i carries
it. With grouped-query attention (``enable_gqa=True``, ``rep`` query heads per key/value head) the
``rep`` query heads of key/value group g are tied to key and value head g: a whole key/value group is
one channel, so every group keeps the same number of query heads (one key/value head broadcast
over the query heads is the case of a single group). A mask that differs per head (a position bias:
T5's relative attention bias, ALiBi) is sliced with the heads: its head axis is tied to the query
heads. Such a bias is usually computed once and shared by every layer of a stack (T5 computes it in
the first layer and passes it on), so the heads of all those layers become one set of channels: head
h goes in every layer at once, or in none. A bias no rule can slice (made by ops netmorph does not
know, such as T5's ``nn.Embedding`` lookup before embeddings have a rule, or a constant tensor) freezes
the heads, saying so; a bias that is no tracked tensor (a constant built in Python) declines.

Aliveness: a head's query and key rows prove nothing (with biases, zero rows still attend), and a
head whose value rows are zero still emits its value bias. So the head's elements are marked as
*heads*: their source of aliveness is not the rows of the projections that make them but the columns
of the layers that read the attention's output (the output projection). When those columns are zero
the head contributes exactly nothing, whatever its query, key, value or mask; removing it with its
query, key and value rows is exact. (A reader that is no linear layer cannot show that: see
:func:`netmorph.graph.channel_graph.build_graph`.)

FLOPs: the two products cost ``2 * tokens_q * tokens_k * (head_dim + head_dim_v)`` per query head and
batch; counted as torch counts them, split evenly over the query heads (alive heads times the cost of one).
"""
from __future__ import annotations

import numpy as np

from ..builder import Piece, Slots
from ..record import Value

NAMES = ("scaled_dot_product_attention",)
_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def rule(b, op) -> bool:
    args = dict(zip(_ARGS, op.inputs))
    args.update({k: v for k, v in op.kwargs.items() if k in _ARGS})
    q, k, v = args.get("query"), args.get("key"), args.get("value")
    if len(op.outputs) != 1 or not all(isinstance(t, Value) for t in (q, k, v)):
        return False
    sq, sk, sv = b.get(q), b.get(k), b.get(v)
    out = op.outputs[0]
    if sq is None or sk is None or sv is None or len(q.shape) < 3:
        return False
    if any(s.cdim != len(t.shape) - 3 for s, t in ((sq, q), (sk, k), (sv, v))) or len(out.shape) != len(q.shape):
        return False
    axis = sq.cdim
    hq, hk = q.shape[axis], k.shape[sk.cdim]
    rep = tied_heads(hq, hk, v.shape[sv.cdim], bool(args.get("enable_gqa", False)))
    if rep is None or out.shape[axis] != hq:
        return False
    per_head = not mask_is_shared(args.get("attn_mask"), axis - len(q.shape))
    if per_head and not tie_mask(b, op, args["attn_mask"], sq, axis - len(q.shape)):
        return False
    mask = b.get(args.get("attn_mask"))
    if mask is not None and not per_head:
        b.freeze(mask.elems, "used as an attention mask")
    tie_heads(b, op, sq, sk, sv, rep, out, axis)
    b.memory([q, k, v, out])
    return True


def tied_heads(hq: int, hk: int, hv: int, gqa: bool) -> int | None:
    """Query heads per key/value head, or None if the counts do not pair up."""
    if hk != hv or hk == 0:
        return None
    if hq == hk or hk == 1:                    # one key/value head broadcasts over the query heads
        return hq // hk
    return hq // hk if gqa and hq % hk == 0 else None


def mask_is_shared(mask, head_axis: int) -> bool:
    """Whether a mask (None, a number, a tensor) is the same for every head (size 1 on the head axis,
    counted from the end, or fewer dimensions)."""
    shape = getattr(mask, "shape", None)
    return shape is None or len(shape) < -head_axis or shape[head_axis] == 1


def tie_mask(b, op, mask, sq: Slots, head_axis: int) -> bool:
    """Tie the head axis of a per-head mask (``head_axis`` counted from the end) to the query heads.
    A mask whose channels are all frozen freezes the heads, naming why; False if the mask is no
    tracked tensor with one entry per query head on that axis."""
    s = b.get(mask)
    axis = len(mask.shape) + head_axis if isinstance(mask, Value) else -1
    if s is None or axis < 0 or mask.shape[axis] != len(sq.elems):
        return False
    frozen = b.all_frozen(s)
    if s.cdim != axis:
        if not frozen:
            return False
        s = b.along(mask, axis)
    if frozen:                                   # (not tied: the reason stays the heads' own)
        origin = b.frozen.get(int(s.elems[0]), "frozen") if len(s.elems) else "frozen"
        where = f" in '{op.scope}'" if op.scope else ""
        b.freeze(sq.elems, f"attention heads{where} read a mask that differs per head (a position bias such as T5's "
                           f"relative attention bias or ALiBi) and that no rule can slice with the heads: {origin}")
    else:
        b.tie(sq.elems, s.elems)
    return True


def tie_heads(b, op, sq: Slots, sk: Slots, sv: Slots, rep: int, out, axis: int) -> None:
    """Tie query head i to key and value head ``i // rep``, give ``out`` the heads (the value's gates:
    a constant value makes a constant output), mark them as heads and count the products per head."""
    kv = np.repeat(np.arange(len(sk.elems)), rep)
    b.tie(sq.elems, sk.elems[kv])
    b.tie(sq.elems, sv.elems[kv])
    b.set(out, Slots(axis, sq.elems, sv.gate_bn[kv], sv.gate_w[kv]))
    b.heads.append(sq.elems)
    b.head_set.update(sq.elems.tolist())
    per_head = float(op.measured_flops) / max(1, len(sq.elems))
    b.pieces.append(Piece(b.op_index, op.scope, sq.elems, b.unit(), per_head, 0.0, 0.0, False))
