"""Element-wise activations, dropout and dtype/layout copies pass channels through unchanged.

Grouping rule: output channel i *is* input channel i (same element, same gates). Each maps a
constant to a (finite) constant, so a dead channel stays dead through them (sigmoid(0) = 0.5 is a
constant, which pruning folds into the consumers). That includes the element-wise math transformer
activations are written with (GPT-2's ``0.5 * x * (1 + tanh(c * (x + 0.044715 * pow(x, 3))))``, BERT's
``erf``): ``pow`` with a positive scalar exponent (a negative one would turn 0 into inf), ``square``,
``abs``, ``neg``, ``exp``, ``erf``, ``sin``, ``cos``.
"""
from __future__ import annotations

NAMES = (
    "relu", "relu6", "leaky_relu", "gelu", "silu", "hardswish", "sigmoid", "hardsigmoid", "tanh",
    "hardtanh", "elu", "selu", "celu", "mish", "softplus",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as",
    "pow", "square", "abs", "neg", "exp", "erf", "sin", "cos",
)


def rule(b, op) -> bool:
    if not op.inputs:
        return False
    s = b.get(op.inputs[0])
    if s is None or len(op.outputs) != 1 or op.outputs[0].shape != op.inputs[0].shape:
        return False
    if any(b.get(v) is not None for v in b.tensors(op)[1:]):
        return False          # e.g. x.to(other) or type_as(other) with another tracked tensor
    if op.name == "pow":
        exponent = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("exponent")
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not exponent > 0:
            return False      # x ** y with a tensor, or 0 ** negative = inf
    b.set(op.outputs[0], s)
    b.memory([op.inputs[0], op.outputs[0]])
    return True
