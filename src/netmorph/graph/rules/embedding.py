"""``nn.Embedding`` (and ``F.embedding`` with a module's own weight): a lookup table is a layer whose
output features are the columns of its weight ``[num_embeddings, dim]``.

Grouping rule: the output features (the last axis) are new elements owned by the layer, sourced by
the weight's columns (a zero column is a zero feature for every index); the indices carry no
channels (they are read whole). A module called again (token and position ids through one table)
gives its outputs the same elements, and so does another module holding the same weight parameter
(T5's encoder and decoder tables are two ``nn.Embedding``s of one weight): its columns are one set of
channels, whichever module reads them. Weights: ``num_embeddings * alive_out`` once per module; no
FLOPs (a lookup is not a product, and torch counts none).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from torch import nn

from ..builder import Piece, Slots

NAMES = ("embedding",)


def module_rule(b, op) -> bool:
    """``nn.Embedding`` recorded as one op."""
    return _embedding(b, op.module, op.module_name, op)


def rule(b, op) -> bool:
    """``F.embedding(ids, weight, ...)`` inside a module that overrides ``forward`` (a scaled
    embedding), read as that module when ``weight`` is an ``nn.Embedding``'s own."""
    weight = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("weight")
    if not isinstance(weight, nn.Parameter):
        return False
    name, module = b.weight_owner(weight)
    if not isinstance(module, nn.Embedding):
        return False
    return _embedding(b, module, name, op)


def _embedding(b, module, name, op) -> bool:
    if len(op.outputs) != 1 or module.weight.dim() != 2:
        return False
    out = op.outputs[0]
    n = module.weight.shape[1]
    if not out.shape or out.shape[-1] != n:
        return False
    info = b.layer(SimpleNamespace(module_name=name, module=module), "embedding", n)
    shared = False
    for other in b.layers.values():        # another table of the same weight: the same columns
        if other is not info and other.kind == "embedding" and getattr(other.module, "weight", None) is module.weight:
            b.tie(info.out_elems, other.out_elems)
            shared = True
    b.pieces.append(Piece(b.op_index, name, b.unit(), info.out_elems, 0.0,
                          float(module.weight.shape[0]) if info.calls == 1 and not shared else 0.0,
                          float(module.weight.shape[0]), False))
    b.producer[out.id] = name
    b.set(out, Slots(len(out.shape) - 1, info.out_elems, np.zeros(n, dtype=bool), np.ones(n, dtype=bool), name))
    b.memory([out])
    return True
