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
whose branch died becomes its skip connection plus that constant. A norm layer left with no channel
becomes :class:`~netmorph.graph.removed.RemovedNorm`. When the model's forward passes a removed
branch through an op that rejects empty tensors (an upsample, a pool), the removed layers emit
:class:`~netmorph.graph.removed.Hollow` tensors, which such ops accept. If every input of a concat
dies, the strongest of them keeps one channel (:meth:`~netmorph.graph.ChannelGraph.settle`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from .costs import count_flops
from .graph import ChannelGraph
from .graph.record import flatten_tensors, is_conv1d, unwrap
from .graph.removed import ConstantOutput, Vanished
from .resize import resize


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
    #: dead channels whose removal is approximate (a LayerNorm's group, or not zero at an RMS norm's
    #: input on the example inputs) removed (``approximate=True``) or kept
    approximate_removed: int = 0
    approximate_kept: int = 0
    #: output width of every layer of the graph in the pruned network (what ``netmorph.load`` needs)
    widths: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        text = (f"pruned {self.channels_removed} channels: FLOPs {self.flops_before:,} -> {self.flops_after:,} "
                f"({self.flops_after / max(self.flops_before, 1):.1%}); largest output change "
                f"{self.max_abs_change:.3g} ({self.max_rel_change:.2%} of the largest output)")
        if self.approximate_removed:
            text += (f"; {self.approximate_removed} of them from approximate groups (a LayerNorm's statistics, or "
                     "an RMS norm's input they were not zero in, change): the change above is not zero; fine-tune "
                     "to recover")
        if self.approximate_kept:
            text += (f"; {self.approximate_kept} dead channels of approximate groups kept (removing them would change "
                     "the outputs: pass approximate=True)")
        return text


def prune(model: nn.Module, reg, approximate: bool = False) -> nn.Module:
    """A smaller copy of ``model`` without the dead channels of ``reg`` (a netmorph regularizer).

    ``count_flops(pruned, example_inputs)`` equals ``reg.cost()`` for the FLOPs regularizers (and
    the model size / latency equal theirs) when nothing approximate is dead. The copy carries
    ``netmorph_report`` (:class:`PruneReport`).

    ``approximate``: also remove the dead channels of approximate groups (a transformer's hidden width
    under LayerNorm, whose mean and variance every channel enters: ``explain`` lists them), which
    changes the outputs (the report measures by how much on the example inputs). By default they
    are kept, and so the result is exactly the function of the model.
    """
    model = unwrap(model)
    if reg.model is not model:
        raise ValueError("prune(model, reg): reg was built for a different model object; build the "
                         "regularizer on this model, or pass the model it was built on")
    return prune_channels(model, reg.graph, reg.alive(), approximate)


def prune_channels(model: nn.Module, graph: ChannelGraph, alive: np.ndarray, approximate: bool = False) -> nn.Module:
    """Keep exactly the ``alive`` channels (a bool per channel of ``graph``) of a copy of ``model``;
    dead channels of approximate groups only with ``approximate=True``."""
    if not isinstance(approximate, bool):
        raise TypeError(f"approximate must be True or False, got {approximate!r}")
    frozen_dead = ~alive & ~graph.changeable()
    if frozen_dead.any():
        raise ValueError("cannot remove frozen channels: " + graph.frozen[int(np.flatnonzero(frozen_dead)[0])])
    approx_dead = ~alive & graph.approximate_mask()
    if not approximate and approx_dead.any():
        alive = graph.settle(alive | approx_dead)
    # an RMS norm's rescale is exact for channels that are zero; one that still carries something there
    # (a bias left when its weights were zeroed by hand) changes the others' RMS: approximate too
    carrying = _carried_into_rms(model, graph, alive)
    approx_dead |= carrying
    if not approximate and carrying.any():
        alive = graph.settle(alive | carrying)
    constants = _input_constants(model, graph, alive)
    orders = {g: [c for c in group.channels.tolist() if alive[c]] for g, group in enumerate(graph.groups)}
    new = resize(model, graph, orders, graph.example_inputs)
    vanished, constant = [], []
    with torch.no_grad():
        for name, layer in graph.layers.items():
            out_keep, in_keep = alive[layer.out], alive[layer.inputs]
            old, now = model.get_submodule(name), new.get_submodule(name)
            if isinstance(now, Vanished) and not isinstance(old, Vanished):
                vanished.append(name)
            if in_keep.all() or not out_keep.any() or isinstance(old, ConstantOutput):
                continue
            shift = _shift(old, in_keep, constants[name])[torch.as_tensor(out_keep)]
            if isinstance(now, ConstantOutput):          # every input removed: what is left is a constant
                now.value.copy_(_bias(old)[torch.as_tensor(out_keep)] + shift)
                constant.append(name)
            elif shift.abs().max() > 0:
                _fold(new, graph, name, shift)
    new.netmorph_report = _report(model, new, graph, int((~alive).sum()), vanished, constant)
    new.netmorph_report.approximate_removed = int(approx_dead.sum()) if approximate else 0
    new.netmorph_report.approximate_kept = 0 if approximate else int(approx_dead.sum())
    new.netmorph_report.widths = {n: int(alive[l.out].sum()) for n, l in graph.layers.items()}
    return new


# -- measuring what dead channels emit --------------------------------------------------------
def _run(model, inputs, pre_hooks=None):
    """``model(*inputs)`` in eval mode under ``no_grad`` with ``pre_hooks`` (module name -> forward
    pre-hook) registered for the call; every module's train/eval mode is put back afterwards."""
    handles = [model.get_submodule(n).register_forward_pre_hook(h) for n, h in (pre_hooks or {}).items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t


def _carried_into_rms(model, graph, alive) -> np.ndarray:
    """Per channel: removed, but not zero at the input of an RMS norm on the example inputs."""
    carrying = np.zeros(graph.n_channels, dtype=bool)
    wanted = {n: cls for n, cls in graph.norms.items() if n in graph.rescaled and not alive[cls].all()}
    if not wanted:
        return carrying
    peak: dict[str, torch.Tensor] = {}

    def hook(name):
        def seen(module, args):
            x = args[0].detach()
            m = x.abs().reshape(-1, x.shape[-1]).amax(0)
            peak[name] = torch.maximum(peak[name], m) if name in peak else m
        return seen
    _run(model, graph.example_inputs, {name: hook(name) for name in wanted})
    for name, cls in wanted.items():
        if name in peak and len(peak[name]) == len(cls):
            nonzero = (peak[name] > 0).cpu().numpy()
            carrying[cls[~alive[cls] & nonzero]] = True
    return carrying


def _input_constants(model, graph, alive) -> dict[str, torch.Tensor]:
    """Per layer that loses input channels: the mean value of each input slot on the example inputs."""
    wanted = {n for n, layer in graph.layers.items() if len(layer.inputs) and not alive[layer.inputs].all()}
    found: dict[str, torch.Tensor] = {}
    if not wanted:
        return found

    def hook(name):
        def seen(module, args):
            if name not in found:
                x = args[0].detach()
                found[name] = x.transpose(0, 1).reshape(x.shape[1], -1).mean(1) if x.dim() > 2 and \
                    isinstance(module, nn.modules.conv._ConvNd) else x.reshape(-1, x.shape[-1]).mean(0)
        return seen
    _run(model, graph.example_inputs, {name: hook(name) for name in wanted})
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
    elif is_conv1d(layer):
        w = w.t()                                         # Hugging Face Conv1D: [in, out] -> [out, in]
    return w[:, removed] @ values[removed].to(w)


def _bias(layer: nn.Module) -> torch.Tensor:
    if getattr(layer, "bias", None) is not None:
        return layer.bias.detach().clone()
    n = layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else \
        layer.nf if is_conv1d(layer) else layer.out_features
    return torch.zeros(n, dtype=layer.weight.dtype, device=layer.weight.device)


# -- folding and reporting -------------------------------------------------------------------
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


def _report(model, pruned, graph, removed, vanished, constant) -> PruneReport:
    outs = [[t.detach() for t in flatten_tensors(_run(m, graph.example_inputs))] for m in (model, pruned)]
    diff = max((float((a - b).abs().max()) for a, b in zip(*outs) if a.numel()), default=0.0)
    scale = max((float(a.abs().max()) for a in outs[0] if a.numel()), default=1.0)
    return PruneReport(diff, diff / max(scale, 1e-30), count_flops(model, graph.example_inputs),
                       count_flops(pruned, graph.example_inputs), removed, vanished, constant)
