"""``matched_init``: fresh weights for a resized network, drawn the way its model initializes them.

A resized layer has new fans, and most initializers scale with a fan (Kaiming, Xavier, LeCun, and
PyTorch's own default). Calling each layer's ``reset_parameters()`` would give PyTorch's default law
instead of the model's (a ResNet's Kaiming-normal fan-out conv came out at std 0.034 instead of
0.083), and copying a freshly built model's values would keep the old fans. So the laws are read off
a freshly built *reference* model and replayed at the new shapes:

- a parameter that is constant in the reference (BatchNorm's 1 and 0, a zero bias, the zero gamma
  of ``zero_init_residual``, a layer-scale of 1e-6) is filled with that constant;
- otherwise the law is fitted per *family* (module type and parameter name, e.g. every
  ``Conv2d.weight``): its standard deviation is modelled as ``gain / sqrt(fan)`` with fan one of
  ``fan_in``, ``fan_out``, their mean, or no fan at all (a fixed std such as 0.01). The fan mode is
  the one under which the family's members agree on one gain, ties going to gains that usual
  initializers use (1/sqrt(3) for PyTorch's default, 1 for LeCun/Xavier, sqrt(2) for Kaiming-ReLU)
  or stds they use (0.01, 0.02, ...). The shape (uniform or normal) is read from the family's pooled
  values (kurtosis), and the mean is kept;
- a bias takes its layer's weight fans (as PyTorch's default bias law does); a 1-D parameter of a
  layer without a 2-D weight (a norm) has no fan;
- BatchNorm running statistics are reset.

A model whose init this cannot express (orthogonal, data-dependent, per-layer schemes) can pass its
own function instead (``apply_structure(..., init=my_init)``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["matched_init", "fitted_laws"]

_GAINS = (1 / math.sqrt(3), 1.0, math.sqrt(2))           # PyTorch default, LeCun / Xavier, Kaiming-ReLU
_STDS = (1e-3, 1e-2, 2e-2, 0.05, 0.1, 1.0)
_MODES = ("fan_in", "fan_out", "fan_avg", "none")


def _owner_and_leaf(model: nn.Module, name: str):
    owner_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(owner_name) if owner_name else model), leaf


def _fans(owner: nn.Module, leaf: str, t: torch.Tensor) -> tuple[float, float]:
    """``(fan_in, fan_out)`` of a parameter: its own for 2-D and more, its layer's weight's for a bias."""
    src = t
    if t.dim() < 2:
        w = getattr(owner, "weight", None)
        src = w if isinstance(w, torch.Tensor) and w.dim() >= 2 and leaf != "weight" else None
    if src is None:
        return 1.0, 1.0
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(src)
    return float(max(fan_in, 1)), float(max(fan_out, 1))


def _fan(mode: str, fans: tuple[float, float]) -> float:
    return {"fan_in": fans[0], "fan_out": fans[1], "fan_avg": (fans[0] + fans[1]) / 2, "none": 1.0}[mode]


def _constant(t: torch.Tensor):
    flat = t.detach().flatten()
    if flat.numel() and bool((flat == flat[0]).all()):
        return flat[0].item()
    return None


class Law:
    """One family's law: ``std = gain / sqrt(fan(mode))``, values ``uniform`` or ``normal`` around ``mean``."""

    def __init__(self, mode: str, gain: float, shape: str, mean: float):
        self.mode, self.gain, self.shape, self.mean = mode, gain, shape, mean

    def std(self, fans) -> float:
        return self.gain / math.sqrt(_fan(self.mode, fans))

    def draw(self, like: torch.Tensor, fans) -> torch.Tensor:
        std = self.std(fans)
        if self.shape == "uniform":
            bound = std * math.sqrt(3)
            out = torch.rand(like.shape, dtype=torch.float64) * (2 * bound) - bound
        else:
            out = torch.randn(like.shape, dtype=torch.float64) * std
        return (out + self.mean).to(dtype=like.dtype, device=like.device)

    def __repr__(self):
        return f"Law({self.mode}, gain={self.gain:.4g}, {self.shape}, mean={self.mean:.3g})"


def fitted_laws(reference: nn.Module) -> dict[tuple[type, str], Law]:
    """The law of every family of non-constant parameters of a freshly built ``reference``."""
    members: dict[tuple[type, str], list] = {}
    for name, p in reference.named_parameters():
        if p.numel() < 2 or _constant(p) is not None:
            continue
        owner, leaf = _owner_and_leaf(reference, name)
        members.setdefault((type(owner), leaf), []).append((p.detach().double().flatten(), _fans(owner, leaf, p)))
    return {family: _fit(items) for family, items in members.items()}


def _fit(items) -> Law:
    z = torch.cat([(v - v.mean()) / v.std().clamp_min(1e-30) for v, _ in items])    # each member standardized
    shape = "uniform" if float((z ** 4).mean()) - 3 < -0.6 else "normal"
    pooled = torch.cat([v for v, _ in items])
    mean = float(pooled.mean())
    if abs(mean) < 4 * float(pooled.std()) / math.sqrt(len(pooled)):
        mean = 0.0                                           # a sample mean within noise of zero is zero
    stds = [float(v.std()) for v, _ in items]
    weights = [math.sqrt(len(v)) for v, _ in items]           # a large tensor's std is the better estimate
    best = None
    for k, mode in enumerate(_MODES):
        logs = [math.log(max(s, 1e-30)) + 0.5 * math.log(_fan(mode, f)) for s, (_, f) in zip(stds, items)]
        centre = sum(w * x for w, x in zip(weights, logs)) / sum(weights)
        spread = math.sqrt(sum(w * (x - centre) ** 2 for w, x in zip(weights, logs)) / sum(weights))
        known = _STDS if mode == "none" else _GAINS
        near = min(abs(centre - math.log(g)) for g in known)
        score = (spread + 0.5 * min(near, 0.5), k)               # ties: fan_in first (PyTorch's convention)
        if best is None or score < best[0]:
            best = (score, mode, math.exp(centre))
    _, mode, gain = best
    return Law(mode, gain, shape, mean)


@torch.no_grad()
def matched_init(new: nn.Module, reference: nn.Module, laws: dict | None = None, only=None) -> nn.Module:
    """Re-initialize every parameter of ``new`` with the law of its counterpart in ``reference`` (a
    freshly built model of the same architecture, at any widths), drawn at ``new``'s shapes; reset
    every norm's running statistics. Parameters with no counterpart keep their constructor's init.
    ``only``: the names of the modules to initialize (default: all). Uses the global torch RNG (seed
    it for reproducible weights). Returns ``new``."""
    laws = fitted_laws(reference) if laws is None else laws
    ref_params = dict(reference.named_parameters())
    for name, p in new.named_parameters():
        ref = ref_params.get(name)
        if ref is None or (only is not None and name.rpartition(".")[0] not in only):
            continue
        owner, leaf = _owner_and_leaf(new, name)
        const = _constant(ref)                  # a single element counts as a constant: its value is kept
        if const is not None:
            p.fill_(const)
            continue
        law = laws.get((type(_owner_and_leaf(reference, name)[0]), leaf))
        if law is not None:
            p.copy_(law.draw(p, _fans(owner, leaf, p)))
    for name, m in new.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and (only is None or name in only):
            m.reset_running_stats()
    return new
