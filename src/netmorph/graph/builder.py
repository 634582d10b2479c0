"""Walk a recording op by op and tie channels together: the state the op rules work on.

Every channel that some op *creates* (a layer's output channel, a model input channel, the output
of an op the library does not understand) is an **element**. Every recorded tensor carries, along
its channel axis, one element id per position (its *slots*: a flattened tensor repeats a channel's
element once per spatial position). Rules tie elements that must be kept or removed together
(union-find); the resulting equivalence classes are the prunable channels, and the connected sets
of layers they join are the **groups** the rest of the library works with.

Alongside, each slot carries two *gate* flags: whether it becomes constant when its channel's
BatchNorm gamma is zero (``bn``) or when its producing layer's weight row is zero (``w``). A
channel whose slots reach a layer ungated cannot be proven dead by that kind of source.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from torch import nn

from .record import Op, Recording, Value

#: The element space of :meth:`Builder.unit` (not a layer, not a tensor: never shown as a group).
UNIT_SPACE = "(per-head products)"


@dataclasses.dataclass
class Slots:
    """The channel axis of one tensor: elements per position and their gate flags."""

    cdim: int
    elems: np.ndarray
    gate_bn: np.ndarray
    gate_w: np.ndarray
    source: str | None = None       # the layer this tensor is (a channel-wise function of) the output of

    def take(self, index: np.ndarray) -> "Slots":
        return Slots(self.cdim, self.elems[index], self.gate_bn[index], self.gate_w[index], self.source)

    def with_cdim(self, cdim: int) -> "Slots":
        return Slots(cdim, self.elems, self.gate_bn, self.gate_w, self.source)


@dataclasses.dataclass
class Piece:
    """``coef * alive(in) * alive(out)`` FLOPs of one layer call (one piece per conv group)."""

    op: int                 # index of the op (for latency: one roofline term per op)
    layer: str
    in_elems: np.ndarray
    out_elems: np.ndarray
    flops_coef: float       # 2 * rows * spatial_out * kernel
    size_coef: float        # kernel volume on the first call of the module, 0 on later calls
    weight_coef: float      # kernel volume (weights are read on every call)
    fixed_counts: bool      # grouped conv: the regularizer uses the full group counts


@dataclasses.dataclass
class MemTerm:
    """Activation memory of one op: ``per_channel`` elements for every alive slot."""

    op: int
    elems: np.ndarray
    per_channel: float


@dataclasses.dataclass
class LayerInfo:
    """A width-carrying module (conv, linear): its output channels are elements it owns."""

    name: str
    kind: str
    module: nn.Module
    out_elems: np.ndarray
    in_elems: np.ndarray | None = None     # slots of its first call's input (later calls are tied to it)
    calls: int = 0


class Builder:
    """Holds the union-find over elements and everything the rules record."""

    def __init__(self, recording: Recording):
        self.rec = recording
        self.parent: list[int] = []
        self.elem_space: list[str] = []
        self.frozen: dict[int, str] = {}              # element -> reason (first one wins per class)
        self.frozen_roots: set[int] = set()
        self.bn_sources: list[tuple[str, int, int]] = []   # (bn module, channel, element)
        self.slots: dict[int, Slots] = {}             # value id -> channel axis
        self.pieces: list[Piece] = []
        self.mem: list[MemTerm] = []
        self.const_flops: dict[int, float] = {}       # op index -> FLOPs nothing can change
        self.const_elements: dict[int, float] = {}    # op index -> activation elements nothing can change
        self.const_size: float = 0.0                  # conv/linear weights no rule understood
        self.counted_params: set[int] = set()
        self.consumed: list[tuple[str, Slots]] = []   # (layer, its input) for the gate check
        self.layers: dict[str, LayerInfo] = {}
        self.bns: dict[str, np.ndarray] = {}          # bn module -> slots of its first call
        self.producer: dict[int, str] = {}            # value id -> layer that computed it
        self.follows: dict[str, str] = {}             # layer -> the BatchNorm reading its output
        self.summed: set[str] = set()                 # layers ending a branch added to an independent tensor
        self.capped: list[np.ndarray] = []            # elements read through x[:, :n] (n constant): may not grow
        self.blank: dict[int, str] = {}               # values made by factory ops from sizes alone -> the op
        self.ancestors: dict[int, int] = {}           # value id -> bitmask of the layers it depends on
        self.layer_bit: dict[str, int] = {}
        self.op_index = 0
        self.op_names: list[str] = []
        self.heads: list[np.ndarray] = []             # elements of attention heads (aliveness read by their readers)
        self.head_set: set[int] = set()
        self.attrs: list[tuple[str, str, np.ndarray]] = []   # (module, int attribute, slots it counts)
        self.repeated: set[int] = set()               # values made by expand along a new axis (repeat_kv)
        self.approx: dict[int, str] = {}              # element -> why removing it changes the others (LayerNorm)
        self.rescaled: dict[str, str] = {}            # RMS norm module -> its epsilon attribute (rescaled on resize)
        self.params: list[tuple[str, int, np.ndarray]] = []   # (parameter, axis, slots): read in forward, resized
        self.param_values: dict[int, "Value"] = {}    # id(parameter) -> the Value standing for it
        self._unit: np.ndarray | None = None

    # -- elements ----------------------------------------------------------------------------
    def new_elements(self, n: int, space: str, frozen: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.elem_space.extend([space] * n)
        if frozen:
            for e in range(start, start + n):
                self.frozen[e] = frozen
                self.frozen_roots.add(e)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, e: int) -> int:
        parent = self.parent
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie ``a[i]`` to ``b[i]`` for every i (both must be as long)."""
        if len(a) != len(b):
            raise AssertionError(f"cannot tie {len(a)} channels to {len(b)}")
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)
                if rx in self.frozen_roots or ry in self.frozen_roots:
                    self.frozen_roots.add(min(rx, ry))

    def tie_all(self, elems: np.ndarray) -> None:
        """Tie every element of ``elems`` to every other."""
        if len(elems) > 1:
            self.tie(elems[:-1], elems[1:])

    def approximate(self, elems: np.ndarray, reason: str) -> None:
        """Mark ``elems`` as channels whose removal changes the function (a LayerNorm's statistics):
        changeable, but removed by ``prune`` only when asked (``approximate=True``)."""
        for e in elems.tolist():
            self.approx.setdefault(e, reason)

    def freeze(self, elems: np.ndarray, reason: str) -> None:
        for e in elems.tolist():
            self.frozen.setdefault(e, reason)
            self.frozen_roots.add(self.find(e))

    def all_frozen(self, s: Slots) -> bool:
        return all(self.find(e) in self.frozen_roots for e in s.elems.tolist())

    def along(self, value: Value, axis: int) -> Slots | None:
        """The value's channels along ``axis``. A tensor whose channels are all frozen (a model input,
        the output of an unknown op) may be read along any axis: it gets frozen channels there."""
        s = self.get(value)
        if s is None or s.cdim == axis or not self.all_frozen(s):
            return s
        reason = self.frozen.get(int(s.elems[0]), "frozen") if len(s.elems) else "frozen"
        elems = self.new_elements(value.shape[axis], f"{self.elem_space[s.elems[0]] if len(s.elems) else 'constant'}",
                                  reason)
        off = np.zeros(len(elems), dtype=bool)
        slots = Slots(axis, elems, off, off.copy())
        self.slots[value.id] = slots
        return slots

    def unit(self) -> np.ndarray:
        """One frozen element that is always alive: the other side of a FLOPs piece linear in one set of
        channels (an attention product costs the same per head)."""
        if self._unit is None:
            self._unit = self.new_elements(1, UNIT_SPACE, "counts per-head products (not a channel)")
        return self._unit

    # -- values ------------------------------------------------------------------------------
    def get(self, obj) -> Slots | None:
        """The channel axis of an op argument, or None for constants and untracked tensors."""
        return self.slots.get(obj.id) if isinstance(obj, Value) else None

    def set(self, value: Value, slots: Slots) -> None:
        assert len(slots.elems) == value.shape[slots.cdim], (value.shape, slots.cdim, len(slots.elems))
        self.slots[value.id] = slots

    def channel_axis(self, value: Value, op: Op | None = None) -> int:
        """The axis of ``value`` (an output of ``op``, if given) that holds its channels.

        A layer's output has them where the layer puts them: axis 1 after a convolution, the last axis
        after a linear layer (stand-ins say which they replace). Otherwise an output shaped like one
        of the op's inputs keeps that input's channel axis (a norm over a channels-last tensor, an
        unknown element-wise op). Otherwise axis 1 (axis 0 for 1-d values).
        """
        if len(value.shape) < 2:
            return 0
        module = op.module if op is not None else None
        if isinstance(module, nn.modules.conv._ConvNd) or getattr(module, "is_conv", None) is True:
            return 1
        if isinstance(module, nn.Linear) or getattr(module, "is_conv", None) is False:
            return len(value.shape) - 1
        for v in (self.tensors(op) if op is not None else []):
            s = self.get(v)
            if s is not None and tuple(v.shape) == tuple(value.shape):
                return s.cdim
        return 1

    def fresh(self, value: Value, space: str, frozen: str | None, op: Op | None = None) -> None:
        """Give ``value`` new elements along its channel axis (:meth:`channel_axis`)."""
        if len(value.shape) == 0:
            return
        cdim = self.channel_axis(value, op)
        n = value.shape[cdim]
        elems = self.new_elements(n, space, frozen)
        off = np.zeros(n, dtype=bool)
        self.set(value, Slots(cdim, elems, off, off.copy()))

    def memory(self, values: list[Value]) -> None:
        """Charge the activation memory of ``values`` to the current op."""
        for v in values:
            s = self.get(v)
            numel = float(np.prod(v.shape)) if v.shape else 1.0
            if s is None or len(s.elems) == 0:
                self.const_elements[self.op_index] = self.const_elements.get(self.op_index, 0.0) + numel
            else:
                self.mem.append(MemTerm(self.op_index, s.elems, numel / len(s.elems)))

    def tensors(self, op: Op) -> list[Value]:
        """Every tracked Value among an op's arguments (nested lists included)."""
        found: list[Value] = []

        def walk(x):
            if isinstance(x, Value):
                found.append(x)
            elif isinstance(x, (list, tuple)):
                for y in x:
                    walk(y)
            elif isinstance(x, dict):
                for y in x.values():
                    walk(y)
        walk(op.inputs)
        walk(op.kwargs)
        return found

    def depends(self, obj, layer: str) -> bool:
        """Does the value ``obj`` depend on the output of ``layer``?"""
        bit = self.layer_bit.get(layer)
        return isinstance(obj, Value) and bit is not None and bool(self.ancestors.get(obj.id, 0) >> bit & 1)

    def track_ancestors(self, op: Op) -> None:
        mask = 0
        for v in self.tensors(op):
            mask |= self.ancestors.get(v.id, 0)
        # a layer op, or a function op its rule read as a layer (F.linear on a module's own weight)
        layer = op.module_name if op.module_name is not None else \
            next((self.producer[o.id] for o in op.outputs if o.id in self.producer), None)
        if layer is not None:
            mask |= 1 << self.layer_bit.setdefault(layer, len(self.layer_bit))
        for out in op.outputs:
            self.ancestors[out.id] = mask

    # -- layers ------------------------------------------------------------------------------
    def weight_owner(self, weight) -> tuple[str | None, nn.Module | None]:
        """The module whose own ``weight`` parameter this is (its name and itself), else ``(None, None)``."""
        name, _, attr = self.rec.param_owner.get(id(weight), "").rpartition(".")
        module = self.rec.modules.get(name)
        if attr != "weight" or module is None or getattr(module, "weight", None) is not weight:
            return None, None
        return name, module

    def layer(self, op: Op, kind: str, out_channels: int) -> LayerInfo:
        """The LayerInfo of a conv/linear op's module, created with its output elements on first call."""
        name = op.module_name
        info = self.layers.get(name)
        if info is None:
            info = LayerInfo(name, kind, op.module, self.new_elements(out_channels, name))
            self.layers[name] = info
        info.calls += 1
        return info
