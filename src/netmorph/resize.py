"""``apply_structure``: any width, up or down, for every changeable group of a model.

The user's model is deep-copied and every conv / linear / norm layer whose channels change is
replaced by a freshly constructed one of the new width (so new channels are initialized the way
that layer type normally is), into which the weights of the channels that stay are copied. Which
channel lands where is read off the channel graphs of the old and the new model: channel position
p of a group keeps the p-th chosen old channel, and every layer's rows, columns, BN entries and
flattened features follow their channel, so the copy is right for concatenations, flattening,
depthwise and grouped convolutions alike.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .graph import ChannelGraph, GraphRecordError, build_graph
from .graph.channel_graph import reads_columns
from .graph.record import is_conv1d, unwrap
from .graph.removed import ConstantOutput, RemovedNorm, Vanished
from .init import matched_init
from .regularizers import ParamSlices, out_rows
from .structure import Structure

_CONV = nn.modules.conv._ConvNd
_TCONV = nn.modules.conv._ConvTransposeNd
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TCONV_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _example(structure, example_inputs):
    if example_inputs is not None:
        return example_inputs
    shapes = getattr(structure, "input_shapes", None)
    if not shapes:
        raise ValueError("apply_structure needs example_inputs (the structure does not record its input shapes)")
    dtypes = getattr(structure, "input_dtypes", None) or ["float32"] * len(shapes)
    return tuple(torch.zeros(s, dtype=getattr(torch, d)) for s, d in zip(shapes, dtypes))   # only shapes matter here


def group_targets(graph: ChannelGraph, widths: Mapping[str, int]) -> dict[int, int]:
    """Target width (in channels of the group) of every group a named layer belongs to.

    A removed branch takes with it every group that only feeds it (:meth:`ChannelGraph.dead_towers`):
    those get 0 whether named or not, as they would compute nothing anyone reads.
    """
    widths = dict(widths.items())
    unknown = [n for n in widths if n not in graph.layers]
    if unknown:
        raise ValueError(f"structure names layers the model does not have (or whose width the channel graph "
                         f"does not control): {', '.join(unknown[:5])}; layers are: {', '.join(list(graph.layers)[:8])}, ...")
    targets: dict[int, tuple[int, str]] = {}
    uneven = graph.uneven()                          # group -> its first layer covering it unevenly
    kept: set[int] = set()                           # uneven groups a layer keeps at its width
    zeroed: dict[int, str] = {}                      # uneven groups a layer gives width 0
    for name, width in widths.items():
        layer = graph.layers[name]
        gid = int(graph.group_of[layer.out[0]])
        group = graph.groups[gid]
        if group.frozen is not None:           # (its group may also hold channels of no layer: compare the layer's)
            if width != layer.width:
                raise ValueError(f"'{name}' cannot change width: {group.frozen}")
            continue
        if graph.covers_unevenly(layer.out, gid):
            if width == layer.width:           # unchanged: the whole group must then stay (checked below)
                kept.add(gid)
                continue
            if width == 0:                     # the whole group removed, if no other layer of it stays
                zeroed.setdefault(gid, name)
                continue
            raise _uneven_refusal(name, f"set it ({layer.width} -> {width})")
        mult = layer.width // group.width
        if width % mult:
            unit = "attention head (or key/value group)" if len(graph.heads) and graph.heads[layer.out[0]] else \
                "channel of its group"
            raise ValueError(f"width {width} of '{name}' must be a multiple of {mult} (it has {mult} output "
                             f"channels per {unit})")
        target = width // mult
        if gid in targets and targets[gid][0] != target:
            other = targets[gid][1]
            raise ValueError(f"'{name}' and '{other}' are tied (their channels change together) but were given "
                             f"widths {width} and {widths[other]}")
        targets[gid] = (target, name)
    for gid, name in zeroed.items():
        if gid in kept or (gid in targets and targets[gid][0]):
            raise _uneven_refusal(name, f"set it ({graph.layers[name].width} -> 0) while other layers of its group stay")
        targets[gid] = (0, name)
    for gid, name in uneven.items():
        if gid in targets and targets[gid][0] not in (0, graph.groups[gid].width):
            raise _uneven_refusal(name, f"change its group's width ('{targets[gid][1]}' asks for "
                                        f"{widths[targets[gid][1]]})")
    gone = graph.dead_towers({g for g, (t, _) in targets.items() if t == 0 and graph.removable(graph.groups[g])})
    for reader, layer in graph.layers.items():
        fed = set(graph.group_of[layer.inputs].tolist()) - {int(graph.group_of[layer.out[0]])}
        if reader not in graph.summed and fed and fed <= gone and set(graph.group_of[layer.out].tolist()) - gone:
            named = sorted({n for g, (t, n) in targets.items() if g in fed and t == 0})
            raise ValueError(f"width 0 for {', '.join(repr(n) for n in named)} leaves '{reader}' without any input "
                             "(every input of its concat removed): keep at least one channel of one of them")
    for gid, (target, name) in targets.items():
        if target == 0 and gid not in gone:
            raise ValueError(f"'{name}' cannot have width 0: only a removable branch (a residual branch, or one "
                             "input of a concat) may disappear, with the layers that only feed it")
    return {**{g: t for g, (t, _) in targets.items()}, **{g: 0 for g in gone}}


def _uneven_refusal(name: str, change: str) -> ValueError:
    return ValueError(f"'{name}' covers its group's channels unevenly (it feeds only some groups of a grouped conv, "
                      f"or some of a concat's inputs feeding one): a width says how many channels stay, not which, "
                      f"so apply_structure and expand cannot {change}; remove dead channels channel by channel "
                      "with netmorph.prune instead")


def _without_removed(model: nn.Module, graph: ChannelGraph, widths: Mapping[str, int]) -> dict[str, int]:
    """``widths`` less the layers ``model`` no longer has because a branch was removed (``prune`` or a
    width of 0 left a stand-in there): width 0 for them is what they already have; more is refused."""
    out = {}
    for name, width in widths.items():
        if name not in graph.layers:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                module = None
            if isinstance(module, (Vanished, ConstantOutput)) or (module is not None and not _has_weight(module)):
                if width == 0:
                    continue
                raise ValueError(f"'{name}' was removed from this model (its branch was pruned away), so it cannot "
                                 f"get width {width}: give it width 0, or apply the structure to the unpruned model")
        out[name] = width
    return out


def _has_weight(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor)


def importance(model: nn.Module, graph: ChannelGraph) -> np.ndarray:
    """Per channel: max over its members of |gamma| (BN-like) or, lacking any, the weight-row RMS (for an
    attention head, the RMS of the output projection's columns reading it, as the group-lasso source)."""
    value = np.zeros(graph.n_channels)
    has_bn = np.zeros(graph.n_channels, dtype=bool)
    with torch.no_grad():
        for name, (ch, cls) in graph.bn_sources.items():
            g = model.get_submodule(name).weight.detach().abs().double().cpu().numpy()
            np.maximum.at(value, cls, g[ch])
            has_bn[cls] = True
        heads = graph.heads if len(graph.heads) == graph.n_channels else np.zeros(graph.n_channels, dtype=bool)
        for layer in graph.layers.values():
            if getattr(layer.module, "weight", None) is None:
                continue
            w = out_rows(layer.module).detach().double()
            rms = w.pow(2).mean(1).sqrt().cpu().numpy()
            cls = layer.out
            keep = ~has_bn[cls] & ~heads[cls]
            np.maximum.at(value, cls[keep], rms[keep])
            cols = heads[layer.inputs] if reads_columns(layer.module) else np.zeros(len(layer.inputs), dtype=bool)
            if cols.any():                            # a head: the output projection's columns reading it
                np.maximum.at(value, layer.inputs[cols], w.t().pow(2).mean(1).sqrt().cpu().numpy()[cols])
        for name, axis, cls in graph.params:          # a class token, position embeddings, a layer scale
            w = out_rows(ParamSlices(model.get_parameter(name), axis)).detach().double()
            keep = ~has_bn[cls] & ~heads[cls]
            np.maximum.at(value, cls[keep], w.pow(2).mean(1).sqrt().cpu().numpy()[keep])
    return value


def apply_structure(model: nn.Module, structure, init="keep", keep: str = "importance",
                    example_inputs=None, init_reference: nn.Module | None = None) -> nn.Module:
    """A copy of ``model`` with the widths of ``structure`` (a Structure or a mapping layer -> width).

    Layers not named keep their width; tied layers must agree; a width of 0 removes a removable
    branch, and with it the layers that only fed it (a bottleneck's first 1x1 conv). Narrowing
    keeps the most important channels (``keep="importance"``: |gamma| or weight norm) or the first
    ones (``keep="first"``); widening adds channels initialized the way the layer type normally is.

    ``init``: ``"keep"`` (the kept channels keep their weights; new channels are drawn the model's way
    when ``init_reference`` is given, else the way the layer type's constructor draws them), ``"fresh"`` (every parameter
    drawn anew, for training from scratch, the way the model initializes itself: the laws are read
    off ``init_reference``, default ``model``, which must then be freshly built, and replayed at the
    new fans; see :func:`netmorph.init.matched_init`), or a function ``init(new_model)`` that
    initializes the resized network the user's way (e.g. ``lambda m: m.apply(my_init)``).
    ``example_inputs`` defaults to zeros of the shapes the structure recorded.
    """
    model = unwrap(model)
    if not (init in ("keep", "fresh") or callable(init)):
        raise ValueError(f"init must be 'keep', 'fresh' or a function of the new model, got {init!r}")
    if keep not in ("importance", "first"):
        raise ValueError(f"keep must be 'importance' or 'first', got {keep!r}")
    if not isinstance(structure, Mapping):
        raise TypeError(f"structure must be a Structure or a mapping of layer name to width, got {type(structure).__name__}")
    widths = structure if isinstance(structure, Structure) else Structure(dict(structure))
    example = _example(structure, example_inputs)
    graph = build_graph(model, example)
    targets = group_targets(graph, _without_removed(model, graph, widths))
    values = importance(model, graph) if keep == "importance" else None
    orders = {}
    for gid, group in enumerate(graph.groups):
        target = targets.get(gid, group.width)
        chans = group.channels
        if values is not None and target < len(chans):
            chans = chans[np.sort(np.argsort(-values[chans], kind="stable")[:target])]
        orders[gid] = list(chans[:target]) + [None] * max(0, target - len(chans))
    if init == "keep" and init_reference is not None:     # new channels drawn the model's way, read by nothing yet
        new = resize(model, graph, orders, example, lambda m, names: matched_init(m, init_reference, only=names),
                     silent_new=True)
    else:
        new = resize(model, graph, orders, example)
    if callable(init):
        init(new)
    elif init == "fresh":
        matched_init(new, init_reference if init_reference is not None else model)
    return new


def resize(model: nn.Module, graph: ChannelGraph, orders: dict[int, list], example, init_new=None,
           silent_new: bool = False) -> nn.Module:
    """Rebuild ``model`` so that group g holds ``orders[g]``: old channel ids, or None for new ones.

    ``init_new(new_model, names)``, if given, initializes the rebuilt layers (``names``) before the
    kept channels' weights are copied into them, so it decides only what the new channels hold.
    ``silent_new``: the weights with which layers read new channels start at zero, so the widened
    network computes exactly what the narrower one did until training grows them."""
    new_width = {g: len(o) for g, o in orders.items()}
    for name, layer in graph.layers.items():
        g = int(graph.group_of[layer.out[0]])
        if new_width[g] > graph.groups[g].width and graph.interleaves(layer.out):
            raise ValueError(f"cannot widen '{name}': its channels are interleaved across tied pieces (a chunk "
                             "or similar split reads them), and new channels would land in the wrong piece")
        if new_width[g] > graph.groups[g].width and g in graph.capped:
            raise ValueError(f"cannot widen '{name}': its channels are read through a slice with a constant bound "
                             "(x[:, :n] in the model's code), which would cut the new channels off; it can only narrow")
    new = copy.deepcopy(model)
    rebuilt = set()
    with torch.no_grad():
        for name, layer in graph.layers.items():
            module = model.get_submodule(name)
            out_w = _width(graph, layer.out, new_width, orders)
            in_w = _width(graph, layer.inputs, new_width, orders)
            if out_w == layer.width and in_w == len(layer.inputs):
                continue
            if out_w == 0:
                _put(new, name, Vanished(module))
            elif len(layer.inputs) and in_w == 0 or isinstance(module, ConstantOutput):
                _put(new, name, ConstantOutput(module, torch.zeros(out_w, **_like(module))))
            else:
                groups = getattr(module, "groups", 1)
                if groups > 1:                 # the conv groups scale with the channel group they form
                    g = int(graph.group_of[layer.out[0]])
                    groups = groups * new_width[g] // graph.groups[g].width
                _put(new, name, _fresh_layer(module, in_w, out_w, groups))
                rebuilt.add(name)
        for name, cls in graph.norms.items():
            n = _width(graph, cls, new_width, orders)
            module = model.get_submodule(name)
            if n != len(cls):
                _put(new, name, _fresh_norm(module, n) if n else RemovedNorm(module))
                rebuilt.add(name)
        _set_attributes(new, graph, new_width, orders)
        _resize_params(model, new, graph, new_width, orders)
    if init_new is not None and rebuilt:
        init_new(new, rebuilt)
    new_graph = _record_copy(new, example)
    _copy_weights(model, graph, new, new_graph, orders, silent_new)
    _retie(model, new)
    return new


def _retie(model: nn.Module, new: nn.Module) -> None:
    """Share again the parameters the model shared that the rebuild gave separate copies of: GPT-2's
    ``lm_head.weight`` is ``wte.weight`` (both rebuilt: equal copies), T5's ``shared`` is its encoder's
    ``embed_tokens`` table (only the one the forward runs was rebuilt: the other, of the same type,
    takes the rebuilt table, and its size attributes follow)."""
    slots: dict[int, list[tuple[str, str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            slots.setdefault(id(p), []).append((name, attr))
    for places in slots.values():
        if len(places) < 2:
            continue
        old = getattr(model.get_submodule(places[0][0]) if places[0][0] else model, places[0][1])
        owners = [(new.get_submodule(n) if n else new, a) for n, a in places]
        params = [getattr(m, a, None) for m, a in owners]
        if not all(isinstance(p, nn.Parameter) for p in params):
            continue
        rebuilt = [(m, p) for (m, _), p in zip(owners, params) if p.shape != old.shape]
        source = rebuilt[0] if rebuilt else (owners[0][0], params[0])
        if any(not torch.equal(p, source[1]) for _, p in rebuilt) or \
                any(p.shape == old.shape and type(m) is not type(source[0]) for (m, _), p in zip(owners, params)):
            continue                                  # not one table any more: left apart
        for (m, a), p in zip(owners, params):
            if p is not source[1]:
                setattr(m, a, source[1])
                for attr in ("embedding_dim", "in_features", "out_features", "nf", "nx"):
                    if hasattr(source[0], attr) and hasattr(m, attr):
                        setattr(m, attr, getattr(source[0], attr))


def _set_attributes(new: nn.Module, graph: ChannelGraph, new_width, orders) -> None:
    """Set the int attributes the graph tied to channel lists (an attention module's ``num_heads``,
    ``attn_dim``: :data:`netmorph.graph.rules.reshape.HEAD_ATTRS`) to those lists' new lengths."""
    values: dict[tuple[str, str], int] = {}
    for module, attr, cls in graph.attrs:
        value = _width(graph, cls, new_width, orders)
        if values.setdefault((module, attr), value) != value:
            raise ValueError(f"'{module}.{attr}' counts two sets of heads that would get different sizes "
                             f"({values[(module, attr)]} and {value}); keep their widths equal")
    for (module, attr), value in values.items():
        setattr(new.get_submodule(module) if module else new, attr, value)


def _resize_params(model: nn.Module, new: nn.Module, graph: ChannelGraph, new_width, orders) -> None:
    """Give every parameter read in forward (a class token, position embeddings, a layer scale:
    ``graph.params``) its new size along its channel axis. Its entries are drawn from a normal law
    of the old parameter's mean and spread (a layer scale of one value stays that value); the kept
    channels' entries are copied in by :func:`_copy_weights`."""
    done = set()
    for name, axis, cls in graph.params:
        n = _width(graph, cls, new_width, orders)
        if name in done or n == len(cls):
            continue
        done.add(name)
        old = model.get_parameter(name)
        shape = list(old.shape)
        shape[axis] = n
        mean, std = old.detach().mean(), old.detach().std() if old.numel() > 1 else old.new_zeros(())
        fresh = torch.randn(shape, dtype=old.dtype, device=old.device) * std + mean
        owner, _, attr = name.rpartition(".")
        module = new.get_submodule(owner) if owner else new
        setattr(module, attr, nn.Parameter(fresh, requires_grad=old.requires_grad))


def _record_copy(new: nn.Module, example) -> ChannelGraph:
    """The channel graph of netmorph's rebuilt copy. If its forward rejects the empty tensor a removed
    branch emits (an upsample or a pool after it), the removed layers emit
    :class:`~netmorph.graph.removed.Hollow` tensors instead, which every torch function accepts."""
    vanished = [m for m in new.modules() if isinstance(m, Vanished)]
    for attempt in range(2):
        try:
            return build_graph(new, example)
        except GraphRecordError as exc:
            if attempt or not vanished or all(m.hollow for m in vanished):
                what = str(exc).replace(" Check that the example inputs have the shape and dtype the model expects.", "")
                raise GraphRecordError(f"netmorph's rebuilt copy of your model failed to run (your model itself ran): "
                                       f"{what}; this is a netmorph limitation, please report it") from exc
            for m in vanished:
                m.hollow = True
    raise AssertionError("unreachable")


# -- widths -----------------------------------------------------------------------------------
def _width(graph, cls: np.ndarray, new_width, orders=None) -> int:
    """New length of a channel list (layer outputs, norm channels): each group scales by its ratio,
    except where the list covers a group's channels unevenly (a concat input feeding some groups of
    a grouped conv): there, with ``orders``, its positions whose channel is kept are counted."""
    total = 0
    for g in np.unique(graph.group_of[cls]).tolist():
        mine = cls[graph.group_of[cls] == g]
        if orders is not None and graph.covers_unevenly(mine, g):
            kept = {c for c in orders[g] if c is not None}
            total += sum(int(c) in kept for c in mine.tolist())
        else:
            total += len(mine) * new_width[g] // graph.groups[g].width
    return total


def _like(module) -> dict:
    """dtype and device of a module's first parameter or buffer."""
    t = next(iter([*module.parameters(), *module.buffers()]), None)
    return dict(dtype=t.dtype, device=t.device) if t is not None else {}


def _fresh_layer(old: nn.Module, in_w: int, out_w: int, groups: int) -> nn.Module:
    """``old`` with new widths, its weights drawn the way its base layer draws them. A subclass with
    its own forward (timm's ``Linear``, ``Conv2dSame``) stays its class: a copy with new parameters."""
    ref = old.weight
    kw = dict(device=ref.device, dtype=ref.dtype)
    if isinstance(old, nn.Embedding):
        return _resized_embedding(old, out_w)
    if is_conv1d(old):
        return _resized_conv1d(old, in_w, out_w)
    if type(old) not in (nn.Linear, *_CONV_TYPES, *_TCONV_TYPES):
        return _resized_copy(old, in_w, out_w, groups)
    if isinstance(old, nn.Linear):
        return nn.Linear(in_w, out_w, bias=old.bias is not None, **kw)
    extra = dict(output_padding=old.output_padding) if isinstance(old, _TCONV) else {}
    return type(old)(in_w, out_w, old.kernel_size, stride=old.stride, padding=old.padding, dilation=old.dilation,
                     groups=groups, bias=old.bias is not None, padding_mode=old.padding_mode, **extra, **kw)


def _without_weights_copy(old: nn.Module) -> nn.Module:
    weight, bias = old.weight, old.bias
    old.weight, old.bias = None, None                # not deep-copied: replaced by the caller
    try:
        return copy.deepcopy(old)
    finally:
        old.weight, old.bias = weight, bias


def _resized_conv1d(old: nn.Module, in_w: int, out_w: int) -> nn.Module:
    """Hugging Face's Conv1D with new widths: weight ``[in, out]`` drawn N(0, 0.02) as its constructor
    does, bias 0."""
    new = _without_weights_copy(old)
    new.nf = out_w
    if hasattr(new, "nx"):
        new.nx = in_w
    new.weight = nn.Parameter(old.weight.new_empty(in_w, out_w).normal_(0, 0.02), requires_grad=old.weight.requires_grad)
    new.bias = None if old.bias is None else nn.Parameter(old.bias.new_zeros(out_w), requires_grad=old.bias.requires_grad)
    return new


def _resized_embedding(old: nn.Embedding, dim: int) -> nn.Module:
    """``old`` (its class and settings) with ``dim`` features, drawn N(0, 1) as ``nn.Embedding`` draws
    them (the padding row zero)."""
    weight = old.weight
    old.weight = None                                # not deep-copied: replaced below
    try:
        new = copy.deepcopy(old)
    finally:
        old.weight = weight
    new.embedding_dim = dim
    fresh = weight.new_empty(weight.shape[0], dim).normal_()
    if old.padding_idx is not None:
        fresh[old.padding_idx] = 0
    new.weight = nn.Parameter(fresh, requires_grad=weight.requires_grad)
    return new


def _resized_copy(old: nn.Module, in_w: int, out_w: int, groups: int) -> nn.Module:
    base = nn.Linear if isinstance(old, nn.Linear) else next(t for t in (*_CONV_TYPES, *_TCONV_TYPES) if isinstance(old, t))
    weight, bias = old.weight, old.bias
    new = _without_weights_copy(old)
    kw = dict(device=weight.device, dtype=weight.dtype)
    if base is nn.Linear:
        new.in_features, new.out_features = in_w, out_w
        shape = (out_w, in_w)
    else:
        new.in_channels, new.out_channels, new.groups = in_w, out_w, groups
        shape = ((in_w, out_w // groups) if isinstance(old, _TCONV) else (out_w, in_w // groups)) + tuple(old.kernel_size)
    new.weight = nn.Parameter(weight.new_empty(shape, **kw), requires_grad=weight.requires_grad)
    new.bias = None if bias is None else nn.Parameter(bias.new_empty(out_w, **kw), requires_grad=bias.requires_grad)
    with torch.no_grad():
        base.reset_parameters(new)
    return new


def _fresh_norm(old: nn.Module, n: int) -> nn.Module:
    """``old`` with ``n`` channels: a copy (its class, settings and whatever else it holds, such as
    the activation of timm's ``BatchNormAct2d``) whose per-channel parameters and running statistics
    are new: weight 1, bias 0, mean 0, variance 1 (the kept channels' values are copied in later)."""
    new = copy.deepcopy(old)
    with torch.no_grad():
        for key, fill in (("weight", 1.0), ("bias", 0.0)):
            p = getattr(old, key, None)
            if isinstance(p, nn.Parameter):
                setattr(new, key, nn.Parameter(p.new_full((n,), fill), requires_grad=p.requires_grad))
            elif isinstance(p, torch.Tensor):                     # a buffer (torchvision's FrozenBatchNorm2d)
                setattr(new, key, p.new_full((n,), fill))
        for key, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            buf = getattr(old, key, None)
            if isinstance(buf, torch.Tensor):
                setattr(new, key, buf.new_full((n,), fill))
    if isinstance(getattr(old, "normalized_shape", None), tuple):      # LayerNorm, RMSNorm over the channels
        new.normalized_shape = (n,)
    if hasattr(old, "num_features"):
        new.num_features = n
    if hasattr(old, "num_channels"):
        if hasattr(old, "num_groups"):
            new.num_groups = n // (old.num_channels // old.num_groups)
        new.num_channels = n
    return new


def _put(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at ``name`` and at every other name the same module object is reachable by,
    in the train/eval mode and with the ``requires_grad`` flags of the module it replaces."""
    target = root.get_submodule(name)
    module.train(target.training)
    if isinstance(target, ConstantOutput) or not isinstance(module, (Vanished, ConstantOutput, RemovedNorm)):
        for (n, p) in module.named_parameters():
            old = getattr(target, n, None)
            if isinstance(old, nn.Parameter):
                p.requires_grad_(old.requires_grad)
    for alias, m in list(root.named_modules(remove_duplicate=False)):
        if m is target and alias:
            parent, _, leaf = alias.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, leaf, module)


# -- copying weights --------------------------------------------------------------------------
def _class_map(old_graph, new_graph, orders) -> dict[int, int]:
    """new channel id -> old channel id, for every new channel that continues an old one.

    A rebuilt layer holds its kept old channels first, in their old order, then the new ones.
    Frozen channels (model inputs, outputs of ops without a rule) are matched by :func:`_positions`.
    """
    mapping = {}
    kept = {g: {c for c in order if c is not None} for g, order in orders.items()}
    for name, new_layer in new_graph.layers.items():
        old_layer = old_graph.layers.get(name)
        if old_layer is None or not old_layer.width:
            continue
        g = int(old_graph.group_of[old_layer.out[0]])
        old_kept = [c for c in old_layer.out.tolist() if c in kept[g]]
        for new_c, old_c in zip(new_layer.out.tolist(), old_kept):
            mapping.setdefault(new_c, int(old_c))
    return mapping


def _positions(new_slots: np.ndarray, old_slots: np.ndarray, cmap: dict[int, int],
               new_frozen: np.ndarray, old_frozen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (new position, old position) along one channel axis.

    The t-th new slot continuing an old channel maps to that channel's t-th old slot (a flattened
    map repeats a channel once per position, in order); frozen slots, which never change, pair up
    in order with the old frozen slots.
    """
    where: dict[int, list[int]] = {}
    for i, c in enumerate(old_slots.tolist()):
        where.setdefault(c, []).append(i)
    seen: dict[int, int] = {}
    new_pos, old_pos = [], []
    for j, c in enumerate(new_slots.tolist()):
        old_c = cmap.get(c)
        if old_c is None:
            continue
        t = seen.get(old_c, 0)                            # counted per old channel: a channel a
        seen[old_c] = t + 1                               # grouped conv tied may come back as several
        olds = where.get(old_c, [])
        if t < len(olds):
            new_pos.append(j)
            old_pos.append(olds[t])
    fixed_new = np.flatnonzero(new_frozen[new_slots]) if len(new_slots) else np.zeros(0, np.int64)
    fixed_old = np.flatnonzero(old_frozen[old_slots]) if len(old_slots) else np.zeros(0, np.int64)
    if len(fixed_new) == len(fixed_old):
        new_pos += fixed_new.tolist()
        old_pos += fixed_old.tolist()
    return np.array(new_pos, dtype=np.int64), np.array(old_pos, dtype=np.int64)


def _copy_weights(model, old_graph, new, new_graph, orders, silent_new: bool = False) -> None:
    cmap = _class_map(old_graph, new_graph, orders)
    frozen = (~new_graph.changeable(), ~old_graph.changeable())
    with torch.no_grad():
        for name, layer in new_graph.layers.items():
            if name not in old_graph.layers:
                continue
            old_l, new_m, old_m = old_graph.layers[name], new.get_submodule(name), model.get_submodule(name)
            o_new, o_old = _positions(layer.out, old_l.out, cmap, *frozen)
            if isinstance(new_m, ConstantOutput) and isinstance(old_m, ConstantOutput):
                new_m.value[o_new] = old_m.value[o_old]
            if getattr(new_m, "weight", None) is None or getattr(old_m, "weight", None) is None:
                continue
            if isinstance(new_m, nn.Embedding):           # a feature is a column of [num_embeddings, dim]
                new_m.weight[:, o_new] = old_m.weight[:, o_old]
                continue
            i_new, i_old = _positions(layer.inputs, old_l.inputs, cmap, *frozen)
            w_new, w_old = new_m.weight, old_m.weight
            transposed = isinstance(new_m, _TCONV) or is_conv1d(new_m)      # weight laid out [in, out]
            grouped = getattr(old_m, "groups", 1) > 1
            if grouped:                                   # whole groups: copy full rows of kept groups
                if transposed:
                    w_new[i_new] = w_old[i_old]
                else:
                    w_new[o_new] = w_old[o_old]
            elif transposed:
                w_new[np.ix_(i_new, o_new)] = w_old[np.ix_(i_old, o_old)]
            else:
                w_new[np.ix_(o_new, i_new)] = w_old[np.ix_(o_old, i_old)]
            if silent_new and not grouped:                # new inputs read with weight 0
                fresh_in = np.setdiff1d(np.arange(len(layer.inputs)), i_new)
                if len(fresh_in):
                    if transposed:
                        w_new[fresh_in] = 0
                    else:
                        w_new[:, fresh_in] = 0
            if getattr(new_m, "bias", None) is not None and getattr(old_m, "bias", None) is not None:
                new_m.bias[o_new] = old_m.bias[o_old]
        for name, cls in new_graph.norms.items():
            if name not in old_graph.norms:
                continue
            new_m, old_m = new.get_submodule(name), model.get_submodule(name)
            if new_m is old_m:
                continue
            n_new, n_old = _positions(cls, old_graph.norms[name], cmap, *frozen)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                a, b = getattr(new_m, attr, None), getattr(old_m, attr, None)
                if a is not None and b is not None:
                    a[n_new] = b[n_old]
            if name in old_graph.rescaled and len(cls) != len(old_graph.norms[name]):
                _rescale_rms(new_m, old_m, old_graph.rescaled[name], len(old_graph.norms[name]), len(cls))
        old_params = {name: (axis, cls) for name, axis, cls in old_graph.params}
        done = set()
        for name, axis, cls in new_graph.params:
            if name not in old_params or name in done:
                continue
            done.add(name)
            p_new, p_old = new.get_parameter(name), model.get_parameter(name)
            if p_new is p_old:
                continue
            n_new, n_old = _positions(cls, old_params[name][1], cmap, *frozen)
            p_new.index_copy_(axis, torch.as_tensor(n_new, device=p_new.device),
                              p_old.index_select(axis, torch.as_tensor(n_old, device=p_old.device)))


def _rescale_rms(new_m: nn.Module, old_m: nn.Module, eps_attr: str, old_n: int, new_n: int) -> None:
    """An RMS norm taken from ``old_n`` to ``new_n`` channels: ``eps * old_n / new_n`` and
    ``weight * sqrt(old_n / new_n)``, so ``weight * x / sqrt(mean(x**2) + eps)`` is unchanged on the
    kept channels when the removed (or added) ones are zero."""
    ratio = old_n / new_n
    eps = getattr(old_m, eps_attr)
    if eps is None:                                  # nn.RMSNorm(eps=None): the dtype's machine epsilon
        eps = torch.finfo(old_m.weight.dtype).eps
    setattr(new_m, eps_attr, float(eps) * ratio)
    new_m.weight.mul_(ratio ** 0.5)
