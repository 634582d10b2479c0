"""Element-wise activations, dropout and dtype/layout copies pass channels through unchanged.

Grouping rule: output channel i *is* input channel i (same element, same gates). Zero- and
constant-preserving, so a dead channel stays dead through them (sigmoid(0) = 0.5 is a constant,
which pruning folds into the consumers).
"""
from __future__ import annotations

NAMES = (
    "relu", "relu6", "leaky_relu", "gelu", "silu", "hardswish", "sigmoid", "hardsigmoid", "tanh",
    "hardtanh", "elu", "selu", "celu", "mish", "softplus",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as",
)


def rule(b, op) -> bool:
    if not op.inputs:
        return False
    s = b.get(op.inputs[0])
    if s is None or len(op.outputs) != 1 or op.outputs[0].shape != op.inputs[0].shape:
        return False
    if any(b.get(v) is not None for v in b.tensors(op)[1:]):
        return False          # e.g. x.to(other) or type_as(other) with another tracked tensor
    b.set(op.outputs[0], s)
    b.memory([op.inputs[0], op.outputs[0]])
    return True
