"""Convolutions (1d/2d/3d, any ``groups``): each owns its output channels.

Grouping rule:
- plain (``groups == 1``): the output channels are new elements owned by the layer, sourced by the
  layer's weight rows; input and output channels are independent.
- grouped (``groups = g > 1``): PyTorch needs equal groups, so channels change in whole groups: the
  ``in/g`` input and ``out/g`` output channels of conv group k are all tied into one channel.
  A depthwise conv with multiplier m is the case ``in/g = 1``: input channel i is tied to outputs
  ``[i*m, (i+1)*m)``.
- a module called again: its input channels are tied to those of its first call.

FLOPs: ``2 * N * prod(out_spatial) * prod(kernel) * sum_k alive_in_k * alive_out_k``.
Weights (model size): ``prod(kernel) * sum_k alive_in_k * alive_out_k``, counted once per module.
"""
from __future__ import annotations

import numpy as np

from ..builder import Piece, Slots
from ..record import Value


def conv(b, op) -> bool:
    """FLOPs per output position: rows are the output's batch x spatial positions."""
    return conv_layer(b, op, "conv", transposed=False)


def conv_layer(b, op, kind: str, transposed: bool) -> bool:
    """The rule shared by convolutions and transposed convolutions (they differ in which spatial
    size their FLOPs count: the output's, or for transposed ones the input's)."""
    m = op.module
    x = op.inputs[0] if op.inputs else None
    # a frozen input (a model input, an unknown op's output: Wav2Vec2's waveform) is re-read along axis 1
    s = b.along(x, 1) if isinstance(x, Value) and len(x.shape) >= 2 else b.get(x)
    nd = len(m.kernel_size)
    if s is None or s.cdim != 1 or len(x.shape) != nd + 2 or len(op.outputs) != 1 or len(op.inputs) > 1:
        return False
    out = op.outputs[0]
    g = m.groups
    info = b.layer(op, kind, m.out_channels)
    if info.in_elems is None:
        info.in_elems = s.elems
    else:
        b.tie(info.in_elems, s.elems)
    ipg, opg = m.in_channels // g, m.out_channels // g
    if g > 1:
        for k in range(g):
            b.tie_all(np.concatenate([s.elems[k * ipg:(k + 1) * ipg], info.out_elems[k * opg:(k + 1) * opg]]))
    kernel = float(np.prod(m.kernel_size))
    positions = x if transposed else out
    rows = float(positions.shape[0]) * float(np.prod(positions.shape[2:]))
    first = info.calls == 1
    for k in range(g):
        b.pieces.append(Piece(b.op_index, info.name, s.elems[k * ipg:(k + 1) * ipg],
                              info.out_elems[k * opg:(k + 1) * opg], 2.0 * rows * kernel,
                              kernel if first else 0.0, kernel, g > 1))
    b.consumed.append((info.name, s))
    b.producer[out.id] = info.name
    on = np.ones(m.out_channels, dtype=bool)
    b.set(out, Slots(1, info.out_elems, np.zeros(m.out_channels, dtype=bool), on, info.name))
    b.memory([x, out])
    return True
