"""RMS norms over the channel axis: ``nn.RMSNorm``, ``F.rms_norm`` with a module's own weight, and
the Python-written ones (Llama's ``LlamaRMSNorm``, T5's ``T5LayerNorm``), recognised whole.

``y = weight * x / sqrt(mean(x**2) + eps)`` over the last axis. A channel that is zero for every
token adds nothing to ``sum(x**2)``; removing k of N such channels divides the mean by ``(N-k)/N``
instead of N, which is undone exactly by scaling ``eps`` by ``N/(N-k)`` and the weight by
``sqrt(N/(N-k))``: ``resize`` does so whenever the norm's width changes (in general, with width M
from N: ``eps * N/M``, ``weight * sqrt(N/M)``, exact for removed or added channels that are zero).

Grouping rule: output channel i is input channel i (the weight entry i is a member of channel i,
resized with it), the channels stay **exact**, and the weight gate passes (zero in, zero out; a
channel a BatchNorm gates is a constant, not zero, so no BatchNorm gate). The rule applies only when
the rescale provably reaches the computation: the module's epsilon is an attribute netmorph can set
(``eps``, ``variance_epsilon``: :data:`netmorph.graph.record.EPS_ATTRS`), it has its own 1-d weight,
the norm is over the last axis only, and -- for a Python-written module -- its output on the example
inputs is ``weight * x / sqrt(mean(x**2) + eps)`` (checked by the recorder; an offset gain such as
Gemma's ``(1 + weight)`` fails the check and freezes, saying so). Otherwise the channels are frozen.
"""
from __future__ import annotations

from torch import nn

from ..record import rms_eps_attr
from .layernorm import normalize_channels

NAMES = ("rms_norm",)


def module_rule(b, op) -> bool:
    """``nn.RMSNorm`` or a Python-written RMS norm recorded as one op."""
    m = op.module
    if op.note is not None or getattr(m, "weight", None) is None:
        return False
    if isinstance(m, nn.RMSNorm):
        if len(m.normalized_shape) != 1:
            return False
        eps_attr = "eps"
    else:
        eps_attr = rms_eps_attr(m)
    return _norm(b, op.inputs[0] if op.inputs else None, op.outputs, op.module_name, m, eps_attr)


def rule(b, op) -> bool:
    """``F.rms_norm(x, normalized_shape, weight, eps)`` called with a module's own weight and epsilon."""
    args = dict(zip(("input", "normalized_shape", "weight", "eps"), op.inputs))
    args.update(op.kwargs)
    shape, weight = args.get("normalized_shape"), args.get("weight")
    if not isinstance(weight, nn.Parameter):
        return False
    name, module = b.weight_owner(weight)
    if module is None or shape is None or len((shape,) if isinstance(shape, int) else shape) != 1:
        return False
    eps_attr = next((a for a in ("eps", "variance_epsilon", "epsilon") if hasattr(module, a)
                     and getattr(module, a) == args.get("eps")), None)
    return eps_attr is not None and _norm(b, args.get("input"), op.outputs, name, module, eps_attr)


def _norm(b, x, outputs, name, module, eps_attr) -> bool:
    s = b.get(x)
    if s is None or len(outputs) != 1 or s.cdim != len(x.shape) - 1 or module.weight.dim() != 1 or \
            module.weight.numel() != x.shape[-1] or eps_attr is None:
        return False
    normalize_channels(b, name, x, outputs[0], s)
    b.rescaled[name] = eps_attr
    return True
