"""``explain``: what the channel graph saw, in words a user can act on."""
from __future__ import annotations

import numpy as np
from torch import nn

from .costs import count_params, piece_products
from .graph import ChannelGraph, build_graph
from .graph.builder import UNIT_SPACE
from .graph.record import unwrap


def _source(graph: ChannelGraph, group) -> str:
    ch = group.channels
    if group.batchnorms:
        gated = [k for k in ch.tolist() if k in graph.ungated["gamma"]]
        note = "" if not gated else f"; {len(gated)} channel(s) not provable by gamma: {graph.ungated['gamma'][gated[0]]}"
        weights = [getattr(graph.recording.modules.get(n), "weight", None) for n in group.batchnorms]
        if weights and all(w is not None and not w.requires_grad for w in weights):
            note += "; its gammas have requires_grad=False (frozen by you), so no regularizer pulls on them: they stay"
        return f"BatchNorm gamma of {', '.join(group.batchnorms)}{note}"
    layers = [n for n in group.producers if n in graph.layers]
    if len(graph.heads) and graph.heads[ch].any():
        readers = [n for n in group.consumers if n not in group.producers]
        gated = [k for k in ch.tolist() if k in graph.ungated["weight"]]
        note = "" if not gated else f"; not provable: {graph.ungated['weight'][gated[0]]}"
        return (f"attention heads: weight norms of the columns of {', '.join(readers) or 'no layer'} that read them "
                f"(use a GroupLasso regularizer; the query, key and value rows of {', '.join(layers)} prove nothing: "
                f"a head is dead when its output columns are zero){note}")
    if layers:
        return f"weight norms of {', '.join(layers)} (no BatchNorm: use a GroupLasso regularizer)"
    return "none (always alive)"


def _removal(graph: ChannelGraph, group) -> str:
    """Whether removing a dead channel of ``group`` keeps the function exactly, and why."""
    if group.approximate is not None:
        return (f"APPROXIMATE: {group.approximate}; regularized, resized by apply_structure and expand, removed by "
                "prune only with approximate=True (which reports the output change)")
    rms = [n for n in graph.rescaled if group.id in graph.group_of[graph.norms[n]].tolist()]
    if rms:
        return (f"exact (RMS norm {', '.join(rms[:3])}{' ...' if len(rms) > 3 else ''}: a channel zero for every "
                "token leaves the others' RMS unchanged once eps and the gain are rescaled, which resize does)")
    if len(graph.heads) and graph.heads[group.channels].any():
        return "exact (a dead head adds nothing: the output-projection columns reading it are zero)"
    return "exact (a dead channel's constant is folded into the layers reading it)"


def explain(model: nn.Module, example_inputs, exclude=()) -> str:
    """Text listing every channel group (members, width, source of aliveness, frozen or not and
    why) and every layer's share of the FLOPs and parameters, for ``model(*example_inputs)``."""
    model = unwrap(model)
    graph = build_graph(model, example_inputs, exclude)
    alive = np.ones(graph.n_channels, dtype=bool)
    p = graph.pieces
    flops = p.flops * piece_products(graph, alive)
    flops_by_layer: dict[str, float] = {}
    for name, f in zip(p.layer, flops):
        flops_by_layer[name] = flops_by_layer.get(name, 0.0) + f
    total_flops = float(flops.sum() + graph.const_flops.sum())
    total_params = count_params(model)
    approx = graph.approximate_mask() & graph.changeable()
    lines = [f"{type(model).__name__}: {total_flops:,.0f} FLOPs, {total_params:,} parameters, "
             f"{len(graph.groups)} channel groups, "
             f"{int(graph.changeable().sum())} of {graph.n_channels} channels changeable"
             + (f" ({int(approx.sum())} of them approximate)" if approx.any() else ""), ""]
    lines.append("Groups")
    uneven = graph.uneven()
    for g in graph.groups:
        if g.producers == [UNIT_SPACE]:
            continue                                  # the always-alive side of per-head cost terms
        status = "changeable" if g.frozen is None else f"FROZEN: {g.frozen}"
        if g.frozen is None and g.id in uneven:
            status = (f"changeable channel by channel only (netmorph.prune): '{uneven[g.id]}' covers it unevenly, "
                      "so no width can say which channels stay; morph, expand and apply_structure keep it whole")
        lines.append(f"  [{g.id}] width {g.width}  {status}")
        lines.append(f"      produced by: {', '.join(g.producers)}")
        if g.batchnorms:
            lines.append(f"      batchnorms:  {', '.join(g.batchnorms)}")
        if g.consumers:
            lines.append(f"      read by:     {', '.join(g.consumers)}")
        if g.frozen is None:
            lines.append(f"      alive by:    {_source(graph, g)}")
            lines.append(f"      removal:     {_removal(graph, g)}")
        if g.frozen is None and g.id in graph.capped:
            lines.append("      capped:      read through a constant-bound slice x[:, :n]: it can narrow, never widen")
    lines += ["", "Layers"]
    rows = [("layer", "kind", "width", "FLOPs", "FLOPs %", "params", "params %")]
    for name, layer in graph.layers.items():
        n_params = sum(q.numel() for q in layer.module.parameters(recurse=False))
        f = flops_by_layer.get(name, 0.0)
        rows.append((name, layer.kind, str(layer.width), f"{f:,.0f}", f"{100 * f / max(total_flops, 1):.1f}",
                     f"{n_params:,}", f"{100 * n_params / max(total_params, 1):.1f}"))
    products = sum(f for name, f in flops_by_layer.items() if name not in graph.layers)
    if products:                                      # per-head terms (attention's products), by the module running them
        rows.append(("(attention products)", "heads", "-", f"{products:,.0f}", f"{100 * products / total_flops:.1f}",
                     "-", "-"))
    const = float(graph.const_flops.sum())
    if const:
        rows.append(("(ops without a rule)", "-", "-", f"{const:,.0f}", f"{100 * const / total_flops:.1f}", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    frozen_by: dict[str, list] = {}
    for g in graph.groups:
        if g.frozen and g.producers != [UNIT_SPACE]:
            frozen_by.setdefault(g.frozen, []).append(g)
    if frozen_by:
        lines += ["", "Why channels are frozen (each reason, then the tensors it froze: group, width, what made it)"]
        for reason in sorted(frozen_by):
            groups = frozen_by[reason]
            named = "; ".join(f"[{g.id}] {g.width} ch of {', '.join(g.producers[:2]) or 'a constant'}"
                              + (f" (+{len(g.producers) - 2} more)" if len(g.producers) > 2 else "") for g in groups[:6])
            more = f"; and {len(groups) - 6} more groups" if len(groups) > 6 else ""
            lines.append(f"  - {reason}: {named}{more}")
    return "\n".join(lines)
