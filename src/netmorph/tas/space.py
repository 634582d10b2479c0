"""The TAS search space read off the channel graph (METHODS.md 2.1).

Rules:
- **Width**: every changeable channel group gets one distribution over ``int(C * r)`` for the
  width ratios ``r`` (zeros dropped, deduplicated, ascending, the full width ``C`` last). Groups
  tied by residual adds or depthwise convs share one. The group's channels are changed where they
  are made: at the BatchNorm that reads exactly a producing layer's output (``graph.follows``),
  else at the producing layer itself. Every producer must be a layer emitting each channel of the
  group exactly once; otherwise the model is outside the supported scope (``ValueError``). Any
  other BatchNorm reading all the group's channels (pre-activation nets: a BN after a concat)
  zeroes its outputs beyond the widest sampled candidate, as its narrowed copy would not have them.
- **Depth**: a *block* is a removable group (``graph.removable``) all of whose pure readers have
  their outputs added to another tensor (a residual branch: ``apply_structure`` removes it at
  width 0). Blocks whose branches add into the same group form a *stage*, ordered as recorded.
  Depth candidates of a stage of ``n`` blocks: ``1..n`` if ``n <= 3``, else ``1, 3, 5, ...`` plus
  ``n``; depth ``d`` keeps the first ``d`` blocks. A stage of one block has nothing to choose and
  gets no distribution. A dropped block takes with it the groups that only feed its removable
  group (``graph.dead_towers``: a bottleneck's first 1x1 conv), as ``apply_structure`` does.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from torch import nn

from ..graph import ChannelGraph

DEFAULT_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

SCOPE = ("TAS supports convolutional networks with BatchNorm whose changeable channels are made by "
         "conv or linear layers (plain chains, residual adds, depthwise convs, concatenations): "
         "torchvision ResNets and MobileNets, and the reference nets in netmorph.models")


@dataclasses.dataclass
class Site:
    """Where a tensor carrying a group's channels is rewritten: a module's output, the positions
    (along ``dim``) of the group's channels in group order."""

    module: str
    positions: np.ndarray
    dim: int


@dataclasses.dataclass
class WidthSpace:
    group: int
    width: int
    candidates: list[int]
    sites: list[Site]
    masks: list[Site] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Block:
    groups: list[int]           # the branch's removable group and the groups that only feed it
    outputs: list[str]          # modules whose output is the branch's contribution to the add


@dataclasses.dataclass
class Stage:
    residual: int               # the group the branches add into
    blocks: list[Block]
    candidates: list[int]       # depths, ascending


def width_candidates(width: int, ratios) -> list[int]:
    found = sorted({int(width * r) for r in ratios} - {0})
    found = [c for c in found if c < width] + [width]
    return found


def depth_candidates(n: int) -> list[int]:
    if n <= 3:
        return list(range(1, n + 1))
    return sorted(set(range(1, n + 1, 2)) | {n})


def _out_site(graph: ChannelGraph, model: nn.Module, layer: str) -> tuple[str, int]:
    """The module whose output carries ``layer``'s channels, and the channel axis of that output."""
    bn = graph.follows.get(layer)
    if bn is not None:
        return bn, 1
    return layer, -1 if isinstance(model.get_submodule(layer), nn.Linear) else 1


def check_scope(model: nn.Module) -> None:
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer. {SCOPE}.")


def width_spaces(graph: ChannelGraph, model: nn.Module, ratios) -> list[WidthSpace]:
    spaces = []
    for group in graph.groups:
        # TAS masks layer outputs: a group a parameter read in forward makes (a layer scale, a class token)
        # or a LayerNorm's approximate group keeps its width, as a frozen one does
        if group.frozen is not None or group.approximate is not None or \
                any(p.startswith("parameter '") for p in group.producers):
            continue
        sites = []
        for producer in group.producers:
            layer = graph.layers.get(producer)
            if layer is None:
                raise ValueError(f"channel group {group.id} ({group.width} channels) is made by '{producer}', which "
                                 f"is not a conv or linear layer. {SCOPE}.")
            where = {int(c): i for i, c in enumerate(layer.out.tolist()) if graph.group_of[c] == group.id}
            if len(where) != group.width or int(np.isin(layer.out, group.channels).sum()) != group.width:
                raise ValueError(f"'{producer}' does not emit every channel of its group exactly once (grouped or "
                                 f"sliced channels). {SCOPE}.")
            name, dim = _out_site(graph, model, producer)
            sites.append(Site(name, np.array([where[int(c)] for c in group.channels], dtype=np.int64), dim))
        masks = []
        for bn, cls in graph.norms.items():
            if bn in graph.rescaled or isinstance(model.get_submodule(bn), nn.LayerNorm):
                continue                              # channels-last norms over the channels: not a BN to mask
            where = {int(c): i for i, c in enumerate(cls.tolist()) if graph.group_of[c] == group.id}
            if bn not in {s.module for s in sites} and len(where) == group.width == int(np.isin(cls, group.channels).sum()):
                masks.append(Site(bn, np.array([where[int(c)] for c in group.channels], dtype=np.int64), 1))
        spaces.append(WidthSpace(group.id, group.width, width_candidates(group.width, ratios), sites, masks))
    if not spaces:
        raise ValueError(f"{type(model).__name__} has no channels TAS may change (all are frozen; see "
                         f"netmorph.explain). {SCOPE}.")
    return spaces


def stages(graph: ChannelGraph, model: nn.Module) -> list[Stage]:
    found: dict[int, list[Block]] = {}
    for group in graph.groups:
        if not graph.removable(group):
            continue
        mine = set(group.channels.tolist())
        readers = [c for c in group.consumers
                   if c not in group.producers and mine.issuperset(graph.layers[c].inputs.tolist())]
        if not readers or not all(c in graph.summed for c in readers):
            continue
        into = {int(graph.group_of[graph.layers[c].out[0]]) for c in readers}
        if len(into) != 1:
            continue
        block = Block(sorted(graph.dead_towers({group.id})), [_out_site(graph, model, c)[0] for c in readers])
        found.setdefault(into.pop(), []).append(block)
    return [Stage(res, blocks, depth_candidates(len(blocks))) for res, blocks in found.items() if len(blocks) > 1]
