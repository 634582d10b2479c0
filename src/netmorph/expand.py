"""``expand``: MorphNet's uniform width multiplier, searched to fill a budget (METHODS.md 1.6, step 3).

Given a learned structure O' (the widths a regularized network kept), find the largest omega such
that the network with every changeable group at ``omega * O'_g`` (rounded) costs at most the budget.
The cost of any widths is read off the channel graph without building the network: each channel
counts as its group's new width over its old one, which scales every FLOPs, weight and memory term
exactly as the rebuilt network would (``tests/test_expand.py`` checks it against the built network).
"""
from __future__ import annotations

import math

import numpy as np

from .costs import Hardware, check_resource, evaluate, get_hardware
from .graph import ChannelGraph, build_graph
from .graph.record import input_shapes
from .resize import group_targets
from .structure import Structure, input_dtypes


def widths_cost(graph: ChannelGraph, group_widths: dict[int, int], resource="flops", hardware=None) -> float:
    """Cost of the network whose group g has ``group_widths[g]`` channels (others unchanged). FLOPs
    and weights are whole numbers: the fractional channel scales' rounding error (29719.999999999996
    for 29720) is rounded away, so the prediction equals the count of the network built."""
    scale = np.ones(graph.n_channels)
    for g, w in group_widths.items():
        scale[graph.groups[g].channels] = w / graph.groups[g].width
    cost = evaluate(graph, scale, resource, hardware)
    return cost if resource == "latency" else float(round(cost))


def _scaled(learned: dict[int, int], omega: float, round_to: int) -> dict[int, int]:
    return {g: 0 if w == 0 else max(round_to, int(round(omega * w / round_to)) * round_to)
            for g, w in learned.items()}


def cost_floor(graph: ChannelGraph, resource="flops", hardware=None, round_to: int = 1,
               widths: dict[int, int] | None = None) -> tuple[float, float]:
    """``(frozen, smallest)``: the cost of the part no width change touches (every changeable group
    at 0), and of the smallest structure (every changeable group of ``widths`` -- all of them by
    default -- at ``round_to``; removed ones stay at 0). No budget below ``smallest`` can be met."""
    if widths is None:
        widths = {g: grp.width for g, grp in enumerate(graph.groups) if grp.frozen is None}
    frozen = widths_cost(graph, {g: 0 for g in widths}, resource, hardware)
    return frozen, widths_cost(graph, _pin(graph, set(graph.uneven()), _scaled(widths, 0.0, round_to)),
                               resource, hardware)


def _pin(graph: ChannelGraph, pinned: set[int], widths: dict[int, int]) -> dict[int, int]:
    """``widths`` with every group of ``pinned`` (those a layer covers unevenly, :meth:`ChannelGraph.uneven`)
    back at its own width unless removed: a width cannot say which of its channels stay."""
    return {g: graph.groups[g].width if g in pinned and w else w for g, w in widths.items()}


def expand(model, example_inputs, structure, budget: float, resource: str = "flops", hardware=None,
           round_to: int | None = None) -> Structure:
    """``omega * O'`` for the largest ``omega`` whose cost is at most ``budget`` (absolute units).

    Every changeable group's width becomes ``max(round_to, omega * O'_g rounded to a multiple of
    round_to)``; groups at 0 (removed branches) stay removed; frozen groups keep their width; omega
    may exceed 1. A budget below what the frozen part alone costs, or below the smallest structure
    (every changeable group at ``round_to``), is a ``ValueError`` saying which.

    ``round_to=None`` is 1, except with a measured device profile (``hardware`` a
    :class:`~netmorph.latency.DeviceProfile`): then the multiple the device is fast at
    (:meth:`~netmorph.latency.DeviceProfile.rounding`); the result's ``round_to`` and
    ``rounding_note`` say which and why. Measured time is not monotone in width (24 channels can run
    slower than 32), so with a profile omega is found by evaluating every omega at which some width
    changes, not by bisection.
    """
    check_resource(resource)
    hw = get_hardware(hardware if hardware is not None else "V100") if resource == "latency" else None
    measured = hw is not None and not isinstance(hw, Hardware)
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a positive number in the resource's unit, got {budget!r}")
    if round_to is not None and not (isinstance(round_to, int) and round_to >= 1):
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    graph = build_graph(model, example_inputs)
    named = group_targets(graph, structure)
    learned = {g: named.get(g, grp.width) for g, grp in enumerate(graph.groups) if grp.frozen is None}
    note = None
    if round_to is None and measured:
        round_to, relative = hw.rounding(graph)
        note = (f"widths rounded to multiples of {round_to}, the multiple the device ({hw.name}) is fast at: predicted "
                "layer time of uniformly narrowed networks over its straight-line fit, relative to the best multiple: "
                + ", ".join(f"{r}: {v:.2f}" for r, v in relative.items()))
        # a budget the chosen multiple cannot reach (every group at least that wide) takes the largest
        # smaller multiple that can
        chosen = round_to
        while round_to > 1 and cost_floor(graph, resource, hw, round_to, learned)[1] > budget:
            round_to //= 2
        if round_to != chosen:
            note += (f"; the budget is below the smallest structure at multiples of {chosen}, so multiples of "
                     f"{round_to} are used")
            note = note.replace(f"widths rounded to multiples of {chosen},", f"widths rounded to multiples of {round_to} "
                                f"(not {chosen}),", 1)
    elif round_to is None:
        round_to = 1
    frozen_cost, smallest = cost_floor(graph, resource, hw, round_to, learned)
    if budget < frozen_cost:
        raise ValueError(f"budget {budget:,.6g} is below the cost of the part of the network that cannot change "
                         f"({frozen_cost:,.6g} {resource}); raise the budget or unfreeze channels (see explain)")
    if budget < smallest:
        raise ValueError(f"budget {budget:,.6g} is below the smallest structure ({smallest:,.6g} {resource} with "
                         f"every changeable group at {round_to} channel(s)); raise the budget")
    # groups whose channels a layer interleaves across tied pieces (a chunk reads them) cannot widen
    # (resize refuses: new channels would land in the wrong piece): they grow at most back to their width
    # and neither can groups read through a constant-bound slice x[:, :n] (it would cut new channels off)
    fixed = {int(graph.group_of[l.out[0]]) for l in graph.layers.values() if graph.interleaves(l.out)} | graph.capped

    # a group a layer covers unevenly keeps its width exactly, or stays removed
    pinned = set(graph.uneven())

    def scaled(omega):
        return _pin(graph, pinned, {g: min(w, graph.groups[g].width) if g in fixed else w
                                    for g, w in _scaled(learned, omega, round_to).items()})
    cost = lambda w: widths_cost(graph, scaled(w), resource, hw)  # noqa: E731
    lo = _scan(learned, round_to, cost, budget) if measured else _bisect(cost, budget)
    widths = scaled(lo)
    result = {}
    for name, layer in graph.layers.items():
        g = int(graph.group_of[layer.out[0]])
        # a frozen layer keeps its width (its group may also hold channels no layer produces), and
        # so does a layer of a pinned group (it may cover part of the group only)
        if g in pinned and g in widths:
            result[name] = layer.width if widths[g] else 0
        else:
            result[name] = layer.width // graph.groups[g].width * widths[g] if g in widths else layer.width
    out = Structure(result, original={n: l.width for n, l in graph.layers.items()},
                    input_shapes=input_shapes(graph.example_inputs), input_dtypes=input_dtypes(graph.example_inputs))
    out.omega = lo
    out.cost = cost(lo)
    out.round_to = round_to
    out.rounding_note = note
    return out


def _bisect(cost, budget: float) -> float:
    """The largest omega with ``cost(omega) <= budget``, for a cost that grows with omega."""
    lo, hi = 0.0, 1.0
    while cost(hi) <= budget:                     # omega may exceed 1
        lo, hi = hi, hi * 2
        if hi > 1e4:
            break
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _scan(learned: dict[int, int], round_to: int, cost, budget: float, limit: int = 4000) -> float:
    """The largest omega with ``cost(omega) <= budget`` when the cost is not monotone in omega: the
    widths only change where ``omega * w / round_to`` crosses a half, so every such point (just past
    it) is evaluated, up to where the cost is well past the budget (at most ``limit`` points,
    evenly thinned beyond that)."""
    hi = 1.0
    while cost(hi) <= 1.5 * budget and hi < 1e4:
        hi *= 2
    points = {0.0}
    for w in learned.values():
        if w:
            k = np.arange(1, int(hi * w / round_to) + 2)
            points.update(((k - 0.5) * round_to / w * (1 + 1e-9)).tolist())
    points = np.array(sorted(p for p in points if p <= hi))
    if len(points) > limit:
        points = points[np.linspace(0, len(points) - 1, limit).astype(int)]
    feasible = [p for p in points if cost(p) <= budget]
    return float(max(feasible)) if feasible else 0.0
