"""``prune``: build the physically smaller network that keeps exactly the alive channels.

The result is a deep copy of the user's own model (its class, attributes, methods and ``state_dict``
keys survive) in which every conv, linear and BatchNorm layer is replaced by a narrower one holding
the trained weights of the kept channels. The original is untouched; dtype and device are kept.

Dead channels are not silent: a channel whose BN gamma is zero still emits its beta (through the
activation). Before removing them, ``prune`` measures the value every removed channel carries into
each consumer layer on the example inputs and folds it in: into the consumer's bias, or into the
running mean of the BatchNorm that reads the consumer (exact in both train and eval mode), or, when
neither exists, into a new bias. For linear layers and 1x1 convolutions this is exact; for k x k
convolutions it is exact except where zero padding meets the border. The largest change of the
outputs on the example inputs is reported in ``pruned.netmorph_report``.

Whole branches: a layer that keeps no output channel becomes :class:`~netmorph.graph.removed.Vanished`
(zero channels out, zero cost) and a layer that keeps no input channel becomes
:class:`~netmorph.graph.removed.ConstantOutput` (the constant it still emitted), so a residual block
whose branch died becomes its skip connection plus that constant.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from .costs import count_flops
from .graph import ChannelGraph
from .graph.record import flatten_tensors
from .graph.removed import ConstantOutput, Vanished


@dataclasses.dataclass
class PruneReport:
    """What pruning did, measured on the example inputs."""

    max_abs_change: float            # largest |pruned - original| over every output element
    max_rel_change: float            # the same, divided by the largest |original output|
    flops_before: int
    flops_after: int
    channels_removed: int
    layers_vanished: list[str]
    layers_constant: list[str]

    def __str__(self) -> str:
        return (f"pruned {self.channels_removed} channels: FLOPs {self.flops_before:,} -> {self.flops_after:,} "
                f"({self.flops_after / max(self.flops_before, 1):.1%}); largest output change "
                f"{self.max_abs_change:.3g} ({self.max_rel_change:.2%} of the largest output)")


def prune(model: nn.Module, reg) -> nn.Module:
    """A smaller copy of ``model`` without the dead channels of ``reg`` (a netmorph regularizer).

    ``count_flops(pruned, example_inputs)`` equals ``reg.cost()`` for the FLOPs regularizers (and
    the model size / latency equal theirs). The copy carries ``netmorph_report`` (:class:`PruneReport`).
    """
    if reg.model is not model:
        raise ValueError("prune(model, reg): reg was built for a different model object; build the "
                         "regularizer on this model, or pass the model it was built on")
    return prune_channels(model, reg.graph, reg.alive())


def prune_channels(model: nn.Module, graph: ChannelGraph, alive: np.ndarray) -> nn.Module:
    """Keep exactly the ``alive`` channels (a bool per channel of ``graph``) of a copy of ``model``."""
    frozen_dead = ~alive & ~graph.changeable()
    if frozen_dead.any():
        raise ValueError("cannot remove frozen channels: " + graph.frozen[int(np.flatnonzero(frozen_dead)[0])])
    constants = _input_constants(model, graph, alive)
    new = copy.deepcopy(model)
    shifts: dict[str, tuple[str, torch.Tensor]] = {}
    vanished, constant = [], []
    with torch.no_grad():
        for name, layer in graph.layers.items():
            out_keep, in_keep = alive[layer.out], alive[layer.inputs]
            old = new.get_submodule(name)
            if out_keep.all() and in_keep.all():
                continue
            if not out_keep.any():
                _replace(new, name, Vanished(old))
                vanished.append(name)
            elif isinstance(old, ConstantOutput):
                _replace(new, name, ConstantOutput(old, old.value[torch.as_tensor(out_keep)]))
            elif len(in_keep) and not in_keep.any():
                value = _bias(old) + _shift(old, in_keep, constants[name])
                _replace(new, name, ConstantOutput(old, value[torch.as_tensor(out_keep)]))
                constant.append(name)
            else:
                layer_new, shift = _slice_layer(old, in_keep, out_keep, constants.get(name))
                _replace(new, name, layer_new)
                if shift is not None:
                    shifts[name] = shift
        for name, cls in graph.norms.items():
            keep = alive[cls]
            if not keep.all():
                old = new.get_submodule(name)
                _replace(new, name, _slice_norm(old, keep) if keep.any() else nn.Identity())
        for name, shift in shifts.items():
            _fold(new, graph, name, shift)
    new.netmorph_report = _report(model, new, graph, int((~alive).sum()), vanished, constant)
    return new


# -- measuring what dead channels emit --------------------------------------------------------
def _input_constants(model, graph, alive) -> dict[str, torch.Tensor]:
    """Per layer that loses input channels: the mean value of each input slot on the example inputs."""
    wanted = {n for n, layer in graph.layers.items() if len(layer.inputs) and not alive[layer.inputs].all()}
    found: dict[str, torch.Tensor] = {}
    handles = []
    for name in wanted:
        def hook(module, args, name=name):
            if name not in found:
                x = args[0].detach()
                found[name] = x.transpose(0, 1).reshape(x.shape[1], -1).mean(1) if x.dim() > 2 and \
                    isinstance(module, nn.modules.conv._ConvNd) else x.reshape(-1, x.shape[-1]).mean(0)
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*graph.example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return found


def _shift(layer: nn.Module, in_keep: np.ndarray, values: torch.Tensor) -> torch.Tensor:
    """What the removed inputs (carrying ``values``) added to every output channel."""
    removed = torch.as_tensor(~in_keep)
    w = layer.weight
    if isinstance(layer, nn.modules.conv._ConvNd):
        if layer.groups > 1:
            return torch.zeros(layer.out_channels, dtype=w.dtype, device=w.device)   # whole groups go together
        w = w.sum(dim=tuple(range(2, w.dim())))
        if isinstance(layer, nn.modules.conv._ConvTransposeNd):
            w = w.t()                                     # [in, out] -> [out, in]
    return w[:, removed] @ values[removed].to(w)


def _bias(layer: nn.Module) -> torch.Tensor:
    if getattr(layer, "bias", None) is not None:
        return layer.bias.detach().clone()
    n = layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features
    return torch.zeros(n, dtype=layer.weight.dtype, device=layer.weight.device)


# -- building narrower layers -----------------------------------------------------------------
def _slice_layer(old: nn.Module, in_keep, out_keep, values):
    out_idx = torch.as_tensor(np.flatnonzero(out_keep), device=old.weight.device)
    in_idx = torch.as_tensor(np.flatnonzero(in_keep), device=old.weight.device)
    shift = None
    if values is not None and not in_keep.all():
        s = _shift(old, in_keep, values)[out_idx]
        if s.abs().max() > 0:
            shift = s
    kw = dict(device=old.weight.device, dtype=old.weight.dtype)
    if isinstance(old, nn.Linear):
        new = nn.Linear(len(in_idx), len(out_idx), bias=old.bias is not None, **kw)
        new.weight.copy_(old.weight[out_idx][:, in_idx])
    else:
        g = old.groups
        transposed = isinstance(old, nn.modules.conv._ConvTransposeNd)
        if g > 1:                                         # whole groups: in and out kept alike
            opg = old.out_channels // g
            groups = int(out_keep.reshape(g, opg)[:, 0].sum())
            in_channels = groups * (old.in_channels // g)
            weight = old.weight[in_idx] if transposed else old.weight[out_idx]
        else:
            groups, in_channels = 1, len(in_idx)
            weight = old.weight[in_idx][:, out_idx] if transposed else old.weight[out_idx][:, in_idx]
        extra = dict(output_padding=old.output_padding) if transposed else {}
        new = type(old)(in_channels, len(out_idx), old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, groups=groups, bias=old.bias is not None,
                        padding_mode=old.padding_mode, **extra, **kw)
        new.weight.copy_(weight)
    if old.bias is not None:
        new.bias.copy_(old.bias[out_idx])
    new.train(old.training)
    for p_new, p_old in zip(new.parameters(), old.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    return new, shift


def _slice_norm(old: nn.Module, keep: np.ndarray) -> nn.Module:
    idx = torch.as_tensor(np.flatnonzero(keep))
    if isinstance(old, nn.GroupNorm):                     # kept in whole groups (tied)
        size = old.num_channels // old.num_groups
        new = nn.GroupNorm(len(idx) // size, len(idx), eps=old.eps, affine=old.affine,
                           device=old.weight.device if old.affine else None,
                           dtype=old.weight.dtype if old.affine else None)
        if old.affine:
            new.weight.copy_(old.weight[idx])
            new.bias.copy_(old.bias[idx])
        return new
    ref = old.weight if old.affine else old.running_mean
    new = type(old)(len(idx), eps=old.eps, momentum=old.momentum, affine=old.affine,
                    track_running_stats=old.track_running_stats,
                    device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
    if old.affine:
        new.weight.copy_(old.weight[idx])
        new.bias.copy_(old.bias[idx])
        new.weight.requires_grad_(old.weight.requires_grad)
        new.bias.requires_grad_(old.bias.requires_grad)
    if old.track_running_stats:
        new.running_mean.copy_(old.running_mean[idx])
        new.running_var.copy_(old.running_var[idx])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    new.train(old.training)
    return new


def _fold(root: nn.Module, graph: ChannelGraph, name: str, shift: torch.Tensor) -> None:
    """Add ``shift`` to the outputs of layer ``name``: into its bias, its BN's running mean, or a new bias."""
    layer = root.get_submodule(name)
    bn = graph.follows.get(name)
    if layer.bias is not None:
        layer.bias.add_(shift)
    elif bn is not None and isinstance(root.get_submodule(bn), nn.modules.batchnorm._NormBase) \
            and root.get_submodule(bn).track_running_stats:
        root.get_submodule(bn).running_mean.sub_(shift)          # BN(x + s) with mean - s == BN(x)
    else:
        layer.bias = nn.Parameter(shift.clone())


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at ``name`` and at every other name the same module object is reachable by."""
    target = root.get_submodule(name)
    for alias, m in list(root.named_modules(remove_duplicate=False)):
        if m is target and alias:
            parent, _, leaf = alias.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _report(model, pruned, graph, removed, vanished, constant) -> PruneReport:
    outs = []
    for m in (model, pruned):
        modes = {x: x.training for x in m.modules()}
        m.eval()
        with torch.no_grad():
            outs.append([t.detach() for t in flatten_tensors(m(*graph.example_inputs))])
        for x, t in modes.items():
            x.training = t
    diff = max((float((a - b).abs().max()) for a, b in zip(*outs) if a.numel()), default=0.0)
    scale = max((float(a.abs().max()) for a in outs[0] if a.numel()), default=1.0)
    return PruneReport(diff, diff / max(scale, 1e-30), count_flops(model, graph.example_inputs),
                       count_flops(pruned, graph.example_inputs), removed, vanished, constant)
