"""Resource costs of a network, read from its channel graph for any set of alive channels.

Three resources (METHODS.md 1.2 and 1.5), each a sum over ops:

- ``"flops"``: ``2 x MACs`` of every convolution and matrix product, for the example inputs as given
  (batch included). Terms a rule understands are ``coef * alive_in * alive_out``; attention products
  cost the same per head (``coef * alive_heads``); everything else (frozen layers and ops) is a constant
  measured by ``torch.utils.flop_counter`` (plus :data:`netmorph.graph.record.FLOP_FORMULAS`).
- ``"size"``: weights of convolutions and linear layers, ``kernel * alive_in * alive_out``.
- ``"latency"``: nanoseconds. With a :class:`Hardware` a roofline, per op ``max(flops / peak,
  bytes / bandwidth)``, where bytes are the op's input and output activations (alive channels only)
  plus its weights; with a measured :class:`netmorph.latency.DeviceProfile` the sum of its measured
  per-op times (``latency:cpu`` on the command line).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .graph import ChannelGraph, build_graph
from .graph.record import unwrap

RESOURCES = ("flops", "size", "latency")


@dataclasses.dataclass(frozen=True)
class Hardware:
    """A roofline profile: peak compute in GFLOP/s and memory bandwidth in GB/s."""

    peak_gflops: float
    bandwidth_gbs: float
    bytes_per_element: int = 4
    name: str = "custom"

    def __post_init__(self):
        for field in ("peak_gflops", "bandwidth_gbs", "bytes_per_element"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Hardware {field} must be a positive number, got {value!r}")


#: The reference table of MorphNet's latency regularizer (peak GFLOP/s, GB/s).
HARDWARE = {
    "K80": Hardware(8740, 480, name="K80"),
    "P4": Hardware(5500, 192, name="P4"),
    "T4": Hardware(8100, 300, name="T4"),
    "P100": Hardware(9300, 732, name="P100"),
    "V100": Hardware(125000, 900, name="V100"),
    "TPUv2": Hardware(22500, 300, name="TPUv2"),
    "FLOP_LATENCY": Hardware(1, 1e20, name="FLOP_LATENCY"),       # latency (ns) = FLOPs
    "MEMORY_LATENCY": Hardware(1e20, 1, name="MEMORY_LATENCY"),   # latency (ns) = bytes
}


def get_hardware(hardware):
    """A :class:`Hardware` from a name in :data:`HARDWARE` (case-insensitive), a Hardware itself, or a
    measured :class:`netmorph.latency.DeviceProfile` (returned as it is)."""
    from .latency import DeviceProfile
    if isinstance(hardware, (Hardware, DeviceProfile)):
        return hardware
    if isinstance(hardware, str):
        for name, hw in HARDWARE.items():
            if name.lower() == hardware.lower():
                return hw
    raise ValueError(f"unknown hardware {hardware!r}; known: {', '.join(HARDWARE)}, "
                     "or pass netmorph.Hardware(peak_gflops=..., bandwidth_gbs=...)")


def check_resource(resource: str) -> str:
    if resource not in RESOURCES:
        raise ValueError(f"unknown resource {resource!r}; choose one of {', '.join(RESOURCES)}")
    return resource


def piece_counts(graph: ChannelGraph, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alive input and output slots of every FLOPs piece."""
    p = graph.pieces
    a = alive.astype(float)
    n = len(p.op)
    return (np.bincount(p.in_seg, weights=a[p.in_idx], minlength=n),
            np.bincount(p.out_seg, weights=a[p.out_idx], minlength=n))


def piece_products(graph: ChannelGraph, alive: np.ndarray) -> np.ndarray:
    """``alive_in * alive_out`` of every piece.

    ``alive`` may also hold a fraction per channel (its group's new width over its old one, as
    :func:`netmorph.expand` uses): a conv group of a grouped conv is one channel, present or not, so
    its piece scales with that fraction once, not squared.
    """
    a_in, a_out = piece_counts(graph, alive)
    p = graph.pieces
    return np.where(p.fixed, a_in * p.n_out, a_in * a_out)


def op_flops(graph: ChannelGraph, alive: np.ndarray) -> np.ndarray:
    """FLOPs of every recorded op for the given alive channels."""
    p = graph.pieces
    return np.bincount(p.op, weights=p.flops * piece_products(graph, alive), minlength=graph.n_ops) + graph.const_flops


def op_bytes(graph: ChannelGraph, alive: np.ndarray, bytes_per_element: float) -> np.ndarray:
    """Bytes every op moves (activations in and out, weights) for the given alive channels."""
    p = graph.pieces
    alive_slots = np.bincount(graph.mem_seg, weights=alive.astype(float)[graph.mem_idx],
                              minlength=len(graph.mem_op))
    elements = (np.bincount(graph.mem_op, weights=graph.mem_scale * alive_slots, minlength=graph.n_ops)
                + np.bincount(p.op, weights=p.weight * piece_products(graph, alive), minlength=graph.n_ops)
                + graph.const_elements)
    return elements * bytes_per_element


def evaluate(graph: ChannelGraph, alive: np.ndarray, resource: str = "flops", hardware=None) -> float:
    """The cost of the network that keeps exactly the ``alive`` channels (a bool per channel, or a
    per-channel scale of its group's width, see :func:`piece_products`)."""
    check_resource(resource)
    if resource == "flops":
        return float(op_flops(graph, alive).sum())
    if resource == "size":
        return float((graph.pieces.size * piece_products(graph, alive)).sum() + graph.const_size)
    hw = get_hardware(hardware if hardware is not None else "V100")
    if not isinstance(hw, Hardware):
        return hw.cost(graph, alive)                  # a measured device profile
    compute = op_flops(graph, alive) / hw.peak_gflops
    memory = op_bytes(graph, alive, hw.bytes_per_element) / hw.bandwidth_gbs
    return float(np.maximum(compute, memory).sum())


def count_cost(model: torch.nn.Module, example_inputs, resource: str = "flops", hardware=None) -> float:
    """The ``resource`` of ``model`` as it is (every channel alive), read off its channel graph."""
    graph = build_graph(model, example_inputs)
    return evaluate(graph, np.ones(graph.n_channels, dtype=bool), resource, hardware)


def count_flops(model: torch.nn.Module, example_inputs) -> int:
    """``2 x MACs`` of every convolution and matrix product of ``model(*example_inputs)``.

    Computed from the channel graph (with every channel alive), so it is also a check of the graph;
    it agrees with ``torch.utils.flop_counter.FlopCounterMode`` run with gradients enabled.
    """
    return int(round(count_cost(model, example_inputs, "flops")))


def count_params(model: torch.nn.Module) -> int:
    """Every parameter of ``model`` (shared parameters once)."""
    return sum(p.numel() for p in unwrap(model).parameters())
