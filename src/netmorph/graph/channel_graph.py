"""The channel graph: prunable channels, their groups, and the cost terms that read them.

After the builder has tied elements, every union-find class is one **channel**: the set of tensor
positions that are kept or removed together. A **group** is a connected set of layers whose channels
are tied (a residual stage, a depthwise conv and the conv feeding it, a single plain conv); its width
is its number of channels. Everything else in the library reads this object: costs sum the pieces
over alive channels, regularizers put ``|gamma|`` or weight norms in place of alive counts, pruning
and expansion change the widths of groups.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from torch import nn

from .builder import Builder
from .record import Recording, as_input_tuple, inputs_on_device_of, is_conv1d, record, unwrap
from .rules import apply


@dataclasses.dataclass
class Group:
    """Layers whose channels are tied index by index, and what decides whether they may change."""

    id: int
    channels: np.ndarray            # class ids, in the order of the first producing layer
    producers: list[str]            # layers (or inputs / ops) that create these channels
    batchnorms: list[str]
    consumers: list[str]            # layers that read them as input
    frozen: str | None              # why the group may not change (None: it may)
    #: why removing its channels changes the function (a LayerNorm's statistics); None: exact
    approximate: str | None = None

    @property
    def width(self) -> int:
        return len(self.channels)


@dataclasses.dataclass
class Layer:
    """A width-carrying module (conv or linear) and its output channels as class ids."""

    name: str
    kind: str
    module: nn.Module
    out: np.ndarray
    calls: int
    inputs: np.ndarray              # class ids of its (first call's) input slots

    @property
    def width(self) -> int:
        return len(self.out)


@dataclasses.dataclass
class Pieces:
    """Every FLOPs term ``coef * alive(in) * alive(out)``, as flat arrays (one row per piece)."""

    op: np.ndarray
    flops: np.ndarray
    size: np.ndarray
    weight: np.ndarray
    fixed: np.ndarray               # grouped conv: regularizer uses full counts
    in_idx: np.ndarray              # class ids of input slots, all pieces concatenated
    in_seg: np.ndarray              # piece index of each of them
    out_idx: np.ndarray
    out_seg: np.ndarray
    layer: list[str]

    @property
    def n_in(self) -> np.ndarray:
        return np.bincount(self.in_seg, minlength=len(self.op)).astype(float)

    @property
    def n_out(self) -> np.ndarray:
        return np.bincount(self.out_seg, minlength=len(self.op)).astype(float)


@dataclasses.dataclass
class ChannelGraph:
    n_channels: int
    frozen: list[str | None]                # per channel: why it may not change
    ungated: dict[str, dict[int, str]]      # family -> channel -> why its source cannot prove it dead
    group_of: np.ndarray
    groups: list[Group]
    layers: dict[str, Layer]
    bn_sources: dict[str, tuple[np.ndarray, np.ndarray]]   # bn name -> (channel index, class id)
    norms: dict[str, np.ndarray]            # BatchNorm name -> class id of each of its channels
    follows: dict[str, str]                 # layer -> the BatchNorm that reads exactly its output
    summed: set[str]                        # layers whose output is added to another tensor
    pieces: Pieces
    mem_op: np.ndarray
    mem_scale: np.ndarray
    mem_idx: np.ndarray
    mem_seg: np.ndarray
    const_flops: np.ndarray                 # per op
    const_elements: np.ndarray              # per op
    const_size: float                       # weights of layers no rule understood
    op_names: list[str]
    recording: Recording
    example_inputs: tuple = ()
    capped: set[int] = dataclasses.field(default_factory=set)   # groups read through x[:, :n]: may shrink, not grow
    #: per channel: an attention head, whose aliveness is read from the columns of the (linear) layers
    #: reading it, never from the query / key / value rows that make it
    heads: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: (module, int attribute, channel list): the attribute is the new length of that list after a
    #: width change (an attention module's ``num_heads``, ``attn_dim``)
    attrs: list = dataclasses.field(default_factory=list)
    #: per channel: why removing it changes what the others compute (None: exact)
    approximate: list = dataclasses.field(default_factory=list)
    #: RMS norm module -> its epsilon attribute: rescaled by ``resize`` when its width changes
    rescaled: dict = dataclasses.field(default_factory=dict)
    #: (parameter name, axis, channel list): parameters read in forward, sliced along ``axis``
    params: list = dataclasses.field(default_factory=list)

    def approximate_mask(self) -> np.ndarray:
        """Per channel: whether removing it is approximate (:attr:`Group.approximate`)."""
        return np.array([a is not None for a in self.approximate], dtype=bool) if self.approximate else \
            np.zeros(self.n_channels, dtype=bool)

    @property
    def n_ops(self) -> int:
        return len(self.op_names)

    def changeable(self) -> np.ndarray:
        return np.array([f is None for f in self.frozen], dtype=bool)

    def settle(self, alive: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """The channels a network built from ``alive`` really keeps.

        1. A group whose every channel is dead disappears if it is :meth:`removable`; otherwise it
           keeps its strongest channel (by ``values``; the first one without), so no layer is left
           without channels.
        2. A layer that would lose every input although it is no residual branch (every input of a
           concat died) would compute a constant, and what fed it nothing: the dead input group with
           the strongest channel keeps that channel, as a plain chain would.
        3. Dead towers: a group all of whose readers disappeared is unused, so it disappears too
           (repeated until nothing changes: a branch of a concat dies back to where it forked).
        """
        alive = alive.copy()
        strongest = (lambda ch: ch[np.argmax(values[ch])]) if values is not None else (lambda ch: ch[0])
        for group in self.groups:
            ch = group.channels
            if len(ch) and not alive[ch].any() and not self.removable(group):
                alive[strongest(ch)] = True
        gone = {g.id for g in self.groups if not alive[g.channels].any()}
        changed = True
        while changed:                 # a group kept may leave its own producer without inputs: repeat
            changed = False
            for name, layer in reversed(list(self.layers.items())):
                if not len(layer.inputs) or name in self.summed:
                    continue
                fed = set(self.group_of[layer.inputs].tolist()) - {int(self.group_of[layer.out[0]])}
                if fed and fed <= gone and set(self.group_of[layer.out].tolist()) - gone:
                    keep = strongest(np.concatenate([self.groups[g].channels for g in sorted(fed)]))
                    alive[keep] = True
                    gone.discard(int(self.group_of[keep]))
                    changed = True
        for gid in self.dead_towers(gone) - gone:
            alive[self.groups[gid].channels] = False
        return alive

    def dead_towers(self, gone) -> set[int]:
        """``gone`` (group ids that disappear) and every group that is then unused.

        A changeable group made only by layers, all of whose readers keep no output channel (their
        outputs lie in disappearing groups), computes nothing anyone reads: it disappears too,
        repeated until nothing changes. A bottleneck's first 1x1 conv goes with its removed 3x3; a
        concat branch dies back to where it forked. A group no layer reads (the network output) stays.
        """
        gone = set(gone)
        changed = True
        while changed:
            changed = False
            for group in self.groups:
                if group.id in gone or group.frozen is not None or not group.consumers or \
                        not all(p in self.layers for p in group.producers):
                    continue
                readers = [n for n in group.consumers if n not in group.producers]
                if all(set(self.group_of[self.layers[n].out].tolist()) <= gone for n in readers):
                    gone.add(group.id)
                    changed = True
        return gone

    def uneven(self) -> dict[int, str]:
        """Groups whose channels some layer covers unevenly, each with its first such layer.

        A layer covers its group unevenly when its outputs are not every channel of the group, or not
        each the same number of times (two concat inputs each feeding one half of a grouped conv's
        input). A width says how many channels a layer keeps, not which, so such a group can lose
        channels only one by one (:func:`netmorph.prune`), never by a width
        (:func:`netmorph.apply_structure`, :func:`netmorph.expand`).
        """
        found: dict[int, str] = {}
        for name, layer in self.layers.items():
            gid = int(self.group_of[layer.out[0]])
            if self.covers_unevenly(layer.out, gid):
                found.setdefault(gid, name)
        return found

    def covers_unevenly(self, cls: np.ndarray, g: int) -> bool:
        """Whether the channel list ``cls`` (its members in group ``g``) covers that group's channels
        unevenly: not every channel of the group, or not each the same number of times."""
        ids, counts = np.unique(np.asarray(cls)[self.group_of[cls] == g], return_counts=True)
        return len(ids) != self.groups[g].width or len(set(counts.tolist())) > 1

    @staticmethod
    def interleaves(cls: np.ndarray) -> bool:
        """Whether the channel list ``cls`` repeats its channels interleaved (``[a, b, a, b]``, as a
        chunk of tied pieces reads them) rather than in runs: new channels could not be placed in it."""
        return 1 + int((cls[1:] != cls[:-1]).sum()) != len(np.unique(cls))

    def removable(self, group: Group) -> bool:
        """Can every channel of ``group`` go at once, the network still computing the same function?

        Yes when every producer is a layer and every layer reading the group either reads other
        channels too (one input of a concat: the consumer is narrowed) or has its output added to
        another tensor (a residual branch: the block becomes its skip connection plus the constant
        the branch emitted). A plain chain is not removable: it keeps one channel.
        """
        if group.frozen is not None or not all(p in self.layers for p in group.producers):
            return False
        mine = set(group.channels.tolist())
        for name in group.consumers:
            if name in group.producers:
                continue                                  # grouped conv inside the group
            layer = self.layers[name]
            if not mine.issuperset(layer.inputs.tolist()):
                continue
            if name not in self.summed:
                return False
        return True


def reads_columns(module) -> bool:
    """Whether a layer's weight has one column per input feature that a regularizer can read and zero:
    ``nn.Linear`` (and subclasses) and Hugging Face's ``Conv1D``."""
    return (isinstance(module, nn.Linear) or is_conv1d(module)) and getattr(module, "weight", None) is not None \
        and module.weight.dim() == 2


def build_graph(model: nn.Module, example_inputs, exclude=()) -> ChannelGraph:
    """Record ``model`` on ``example_inputs`` and return its channel graph.

    ``exclude``: patterns matched in full (``re.fullmatch``) against ``named_modules()`` names; the
    output channels of every matched module are frozen. A pattern matching nothing is an error.
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    rec = record(model, example_inputs)
    inputs = inputs_on_device_of(unwrap(model), as_input_tuple(example_inputs))   # what prune runs the model on
    b = Builder(rec)
    for i, v in enumerate(rec.inputs):
        b.fresh(v, f"input {i}", f"reaches model input {i}")
    for op in rec.ops:
        b.op_names.append(op.module_name or op.name)
        apply(b, op)
        b.op_index += 1
    for v in rec.outputs:
        s = b.get(v)
        if s is not None:
            b.freeze(s.elems, "reaches the model output")
    names = [n for n, _ in model.named_modules()]
    for pattern in exclude:
        matched = [n for n in names if re.fullmatch(pattern, n)]
        if not matched:
            raise ValueError(f"exclude pattern {pattern!r} matches no module of {type(model).__name__}; "
                             f"module names look like: {', '.join(n for n in names[1:6] if n)}")
        for name in matched:
            for v in rec.module_outputs.get(name, []):
                s = b.get(v)
                if s is not None:
                    b.freeze(s.elems, f"excluded by the user ('{name}' matches {pattern!r})")
    graph = _finalize(b)
    graph.example_inputs = inputs
    return graph


def _finalize(b: Builder) -> ChannelGraph:
    n_elem = len(b.parent)
    roots = np.array([b.find(e) for e in range(n_elem)], dtype=np.int64)
    uniq, cls = np.unique(roots, return_inverse=True)
    n = len(uniq)
    frozen: list[str | None] = [None] * n
    for e, reason in sorted(b.frozen.items()):
        if frozen[cls[e]] is None:
            frozen[cls[e]] = reason
    approximate: list[str | None] = [None] * n
    for e, reason in sorted(b.approx.items()):
        if approximate[cls[e]] is None:
            approximate[cls[e]] = reason

    heads = np.zeros(n, dtype=bool)
    for e in b.heads:
        heads[cls[e]] = True
    ungated: dict[str, dict[int, str]] = {"gamma": {}, "weight": {}}
    for layer, s in b.consumed:
        c = cls[s.elems]
        for family, gate in (("gamma", s.gate_bn), ("weight", s.gate_w)):
            # a head's weight-family source is the columns of the layers reading it, not a gate
            for k in np.unique(c[~gate & ~heads[c]] if family == "weight" else c[~gate]).tolist():
                what = "a BatchNorm" if family == "gamma" else "a layer whose weights could zero it"
                ungated[family].setdefault(k, f"reaches '{layer}' without passing {what}")
        if heads[c].any() and not reads_columns(b.layers[layer].module):
            for k in np.unique(c[heads[c]]).tolist():
                ungated["weight"].setdefault(k, f"an attention head read by '{layer}', whose weights cannot show it "
                                                "is dead (only the columns of a linear output projection can)")

    # groups: connect the spaces (producers) whose channels share a class
    spaces = sorted(set(b.elem_space), key=b.elem_space.index)
    sid = {s: i for i, s in enumerate(spaces)}
    parent = list(range(len(spaces)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    first_space_of_class = {}
    for e in range(n_elem):
        k, sp = cls[e], sid[b.elem_space[e]]
        if k in first_space_of_class:
            ra, rb = find(first_space_of_class[k]), find(sp)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        else:
            first_space_of_class[k] = sp
    comp = {}
    group_of = np.zeros(n, dtype=np.int64)
    order: list[list[int]] = []
    seen: set[int] = set()
    for e in range(n_elem):
        root = find(sid[b.elem_space[e]])
        if root not in comp:
            comp[root] = len(order)
            order.append([])
        g = comp[root]
        k = cls[e]
        if k not in seen:
            seen.add(k)
            order[g].append(k)
        group_of[k] = g
    groups = []
    for g, chans in enumerate(order):
        chans_arr = np.array(chans, dtype=np.int64)
        producers = [s for s in spaces if comp[find(sid[s])] == g]
        reason = next((frozen[k] for k in chans if frozen[k] is not None), None)
        approx = next((approximate[k] for k in chans if approximate[k] is not None), None)
        groups.append(Group(g, chans_arr, producers, [], [], reason, approx))
    bn_sources = {}
    by_bn: dict[str, list[tuple[int, int]]] = {}
    for name, ch, e in b.bn_sources:
        by_bn.setdefault(name, []).append((ch, cls[e]))
    for name, pairs in by_bn.items():
        arr = np.array(pairs, dtype=np.int64)
        bn_sources[name] = (arr[:, 0], arr[:, 1])
        for g in np.unique(group_of[arr[:, 1]]).tolist():
            groups[g].batchnorms.append(name)
    for layer, s in b.consumed:
        for g in np.unique(group_of[cls[s.elems]]).tolist():
            if layer not in groups[g].consumers:
                groups[g].consumers.append(layer)

    layers = {name: Layer(name, info.kind, info.module, cls[info.out_elems], info.calls,
                          cls[info.in_elems] if info.in_elems is not None else np.zeros(0, np.int64))
              for name, info in b.layers.items()}
    p = b.pieces
    pieces = Pieces(
        op=np.array([x.op for x in p], dtype=np.int64),
        flops=np.array([x.flops_coef for x in p]), size=np.array([x.size_coef for x in p]),
        weight=np.array([x.weight_coef for x in p]), fixed=np.array([x.fixed_counts for x in p], dtype=bool),
        in_idx=cls[np.concatenate([x.in_elems for x in p])] if p else np.zeros(0, np.int64),
        in_seg=np.repeat(np.arange(len(p)), [len(x.in_elems) for x in p]),
        out_idx=cls[np.concatenate([x.out_elems for x in p])] if p else np.zeros(0, np.int64),
        out_seg=np.repeat(np.arange(len(p)), [len(x.out_elems) for x in p]),
        layer=[x.layer for x in p])
    m = b.mem
    n_ops = len(b.op_names)
    return ChannelGraph(
        n_channels=n, frozen=frozen, ungated=ungated, group_of=group_of, groups=groups, layers=layers,
        bn_sources=bn_sources, pieces=pieces, norms={k: cls[v] for k, v in b.bns.items()}, follows=b.follows,
        summed=b.summed,
        mem_op=np.array([t.op for t in m], dtype=np.int64), mem_scale=np.array([t.per_channel for t in m]),
        mem_idx=cls[np.concatenate([t.elems for t in m])] if m else np.zeros(0, np.int64),
        mem_seg=np.repeat(np.arange(len(m)), [len(t.elems) for t in m]),
        const_flops=np.bincount(np.array(list(b.const_flops), dtype=np.int64),
                                weights=np.array(list(b.const_flops.values())), minlength=n_ops)
        if b.const_flops else np.zeros(n_ops),
        const_elements=np.bincount(np.array(list(b.const_elements), dtype=np.int64),
                                   weights=np.array(list(b.const_elements.values())), minlength=n_ops)
        if b.const_elements else np.zeros(n_ops),
        const_size=b.const_size, op_names=b.op_names, recording=b.rec, heads=heads,
        attrs=[(module, attr, cls[e]) for module, attr, e in b.attrs],
        approximate=approximate, rescaled=dict(b.rescaled), params=[(name, axis, cls[e]) for name, axis, e in b.params],
        capped={int(g) for e in b.capped for g in np.unique(group_of[cls[e]])})
