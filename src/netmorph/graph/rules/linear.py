"""Linear layers on ``[B, C]`` inputs and token layouts ``[B, N, C]``: each owns its output features.

Grouping rule: the output features are new elements owned by the layer (sourced by its weight
rows); inputs are independent of outputs. A flattened conv map arrives with each channel's element
repeated once per spatial position, so alive counts and regularizer sums count features, as the
FLOPs do. A module called again ties its inputs to those of its first call.

FLOPs: ``2 * rows * alive_in * alive_out`` (rows: every position but the last axis, ``B`` or
``B * N``); weights: ``alive_in * alive_out`` once per module.
"""
from __future__ import annotations

import numpy as np

from ..builder import Piece, Slots
from ..record import Value


def linear(b, op) -> bool:
    return linear_layer(b, op, op.module.out_features)


def conv1d(b, op) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's projections): a linear layer of ``nf`` outputs whose weight is
    laid out ``[in, out]`` (recorded as one layer: its ``view``/``addmm``/``view`` inside is its own)."""
    return linear_layer(b, op, op.module.nf)


def linear_layer(b, op, n_out: int) -> bool:
    """The linear rule for a layer of ``n_out`` output features (``op.module`` is the layer)."""
    x = op.inputs[0] if op.inputs else None
    s = b.along(x, len(x.shape) - 1) if isinstance(x, Value) else None
    if s is None or s.cdim != len(x.shape) - 1 or len(op.outputs) != 1:
        return False
    out = op.outputs[0]
    info = b.layer(op, "linear", n_out)
    if info.in_elems is None:
        info.in_elems = s.elems
    else:
        b.tie(info.in_elems, s.elems)
    b.pieces.append(Piece(b.op_index, info.name, s.elems, info.out_elems, 2.0 * float(np.prod(x.shape[:-1])),
                          1.0 if info.calls == 1 else 0.0, 1.0, False))
    b.consumed.append((info.name, s))
    b.producer[out.id] = info.name
    n = n_out
    b.set(out, Slots(len(out.shape) - 1, info.out_elems, np.zeros(n, dtype=bool), np.ones(n, dtype=bool), info.name))
    b.memory([x, out])
    return True
