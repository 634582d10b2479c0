"""MorphNet's resource-weighted sparsifying regularizers (METHODS.md 1.3–1.5).

``loss()`` is Eq. 9–10 summed over every FLOPs piece of the channel graph::

    G = sum_L C_L * (alive_in_L * sum |gamma_out_L| + alive_out_L * sum |gamma_in_L|)

where ``|gamma|`` of a channel is the element-wise **max** over its members (the BatchNorm gammas
tied to it, or the weight-row norms of the layers producing it) and a channel is alive if that
max exceeds the threshold. Alive counts carry no gradient; the gradient flows only through the
``|gamma|`` sums. Since every term is linear in the per-channel values, the loss is computed as one
dot product ``sum_j r_j * w_j`` with the weights ``w`` derived from the alive counts (recomputed
only when the set of alive channels changes), which keeps it cheap inside a training step.

Channels that are frozen (model inputs and outputs, unknown ops, ``exclude``), or whose source
cannot prove them dead (they reach a layer without passing a BatchNorm, for the Gamma family), carry
no regularizer and are always alive.

Making dead channels reliably dead: with plain SGD an L1 term makes ``|gamma|`` hover around
``lr * strength * w`` instead of reaching zero. Train with the task loss only and call
:meth:`proximal_step` after each ``optimizer.step()`` (proximal gradient descent): for the Gamma
family it applies the exact proximal operator of ``lr * strength * w_j * max_k |gamma_jk|`` to each
channel's members, which sets a channel's gammas to exactly zero once the pull outweighs them.
Exclude :meth:`source_parameters` from weight decay (decay also pulls towards zero, but uniformly,
not weighted by cost, and it keeps fighting the task loss once the regularizer has decided).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .costs import Hardware, check_resource, evaluate, get_hardware, op_bytes, op_flops, piece_counts
from .graph import build_graph
from .graph.channel_graph import reads_columns
from .graph.record import input_shapes, is_conv1d, unwrap
from .structure import Structure, input_dtypes


class _Regularizer:
    family = ""          # "gamma" or "weight"
    resource = ""

    def __init__(self, model: nn.Module, example_inputs, *, threshold: float, exclude=(), hardware=None):
        check_resource(self.resource)
        model = unwrap(model)                         # torch.compile / DDP: the module they wrap (same parameters)
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.model = model
        self.threshold = float(threshold)
        self.hardware = get_hardware(hardware if hardware is not None else "V100") \
            if self.resource == "latency" else None
        if hardware is not None and self.resource != "latency":
            raise ValueError(f"hardware is only used by latency regularizers, not {type(self).__name__}")
        self.graph = build_graph(model, example_inputs, exclude)
        self._sources = self._find_sources()
        if not self._sources:
            raise ValueError(self._no_source_message())
        g = self.graph
        covered = np.zeros(g.n_channels, dtype=bool)
        held = np.zeros(g.n_channels, dtype=bool)          # a member the user froze: never written to
        for m, cls in self._sources:
            covered[cls] = True
            held[cls] |= not m.weight.requires_grad
        trainable = ~held
        ungated = np.zeros(g.n_channels, dtype=bool)
        ungated[list(g.ungated[self.family])] = True
        #: channels with a source the user froze (``requires_grad=False``: pretrained early layers):
        #: training cannot shrink it and netmorph must not write it, so they are not regularized and stay
        self.untrainable = covered & ~trainable
        #: channels that carry a regularizer (the rest are always alive)
        self.regularized = covered & trainable & g.changeable() & ~ungated
        self._index = torch.as_tensor(np.concatenate([cls for _, cls in self._sources]))
        self._cached_key = None
        self._cached_w = None
        self._surrogate = None
        #: groups left whole by :meth:`keep_uneven` (group id -> the layer covering it unevenly)
        self.kept_whole: dict[int, str] = {}

    def keep_uneven(self) -> dict[int, str]:
        """Stop regularizing every group some layer covers unevenly (:meth:`ChannelGraph.uneven`):
        a width cannot say which of its channels stay, so a structure of widths must keep it whole.
        Those channels stay alive; returns the groups, each with the layer that covers it unevenly."""
        self.kept_whole = self.graph.uneven()
        for gid in self.kept_whole:
            self.regularized[self.graph.groups[gid].channels] = False
        self._cached_key = None
        return self.kept_whole

    # -- per-channel values ------------------------------------------------------------------
    def _find_sources(self) -> list[tuple[nn.Module, np.ndarray]]:
        raise NotImplementedError

    def _source_values(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def channel_values(self) -> torch.Tensor:
        """Per channel: the max over its members of ``|gamma|`` (or weight norm); 0 where unregularized."""
        vals = torch.cat(self._source_values())
        index = self._index.to(vals.device)
        out = torch.zeros(self.graph.n_channels, dtype=vals.dtype, device=vals.device)
        out = out.scatter_reduce(0, index, vals, "amax", include_self=True)
        return out * torch.as_tensor(self.regularized, device=vals.device, dtype=vals.dtype)

    def alive(self) -> np.ndarray:
        """Alive channels (bool per channel) of the network :func:`netmorph.prune` would build.

        A channel is alive if its value exceeds the threshold or it carries no regularizer; then
        :meth:`ChannelGraph.settle` removes dead branches and towers whole and keeps the strongest
        channel of a dead group that cannot go (a layer is never left without channels).
        """
        with torch.no_grad():
            values = self.channel_values().detach().cpu()
        alive = (values > self.threshold).numpy() | ~self.regularized   # compared in the gammas' dtype
        return self.graph.settle(alive, values.double().numpy())

    # -- the three public readings -----------------------------------------------------------
    def loss(self) -> torch.Tensor:
        """The differentiable regularizer value (a 0-dim tensor); add ``strength * loss()`` to the task loss."""
        values = self.channel_values()
        return (values * self._weights(values).to(values.dtype)).sum()

    def cost(self) -> float:
        """The resource (FLOPs, weights or ns) of the network that keeps exactly the alive channels."""
        return evaluate(self.graph, self.alive(), self.resource, self.hardware)

    def structure(self) -> Structure:
        """Alive output channels of every conv/linear layer, with their original widths."""
        alive = self.alive()
        return Structure({n: int(alive[l.out].sum()) for n, l in self.graph.layers.items()},
                         original={n: l.width for n, l in self.graph.layers.items()},
                         input_shapes=input_shapes(self.graph.example_inputs), input_dtypes=input_dtypes(self.graph.example_inputs))

    @torch.no_grad()
    def zero_channels(self, channels) -> None:
        """Make ``channels`` (a bool mask or indices over the graph's channels) exactly dead: every
        member's gamma and beta (or weight row and bias) set to 0, so they carry 0 downstream."""
        mask = np.zeros(self.graph.n_channels, dtype=bool)
        mask[channels] = True
        if (mask & ~self.regularized).any():
            raise ValueError("zero_channels: some of these channels carry no regularizer (frozen or "
                             "ungated) and cannot be made dead by their sources")
        for src in self._sources:
            m, cls = src
            self._zero(src, torch.as_tensor(mask[cls], device=m.weight.device))

    @torch.no_grad()
    def revive_channels(self, channels, value: float) -> None:
        """Bring dead ``channels`` (a bool mask or indices) back to life: every member's gamma set to
        ``value`` (or its weight row to a random direction of RMS ``value``), betas and biases left at
        0, so the task gradient reaches them again and training decides whether they grow."""
        mask = np.zeros(self.graph.n_channels, dtype=bool)
        mask[channels] = True
        for src in self._sources:
            m, cls = src
            rows = torch.as_tensor(mask[cls], device=m.weight.device)
            if rows.any():
                self._set(src, rows, value)

    def source_parameters(self) -> list[nn.Parameter]:
        """The parameters this regularizer reads (exclude them from weight decay)."""
        return list({id(m.weight): m.weight for m, _ in self._sources}.values())

    # -- gradient weights --------------------------------------------------------------------
    def _weights(self, values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            alive = ((values.detach() > self.threshold).cpu().numpy() | ~self.regularized)
        key = alive.tobytes()
        if key != self._cached_key:
            self._cached_key, self._cached_w = key, torch.as_tensor(self.channel_weights(alive))
        return self._cached_w.to(values.device)

    def channel_weights(self, alive: np.ndarray) -> np.ndarray:
        """``w_j``: the derivative of the loss with respect to channel j's value, for fixed alive counts."""
        g, p = self.graph, self.graph.pieces
        a_in, a_out = piece_counts(g, alive)
        a_in = np.where(p.fixed, p.n_in, a_in)
        a_out = np.where(p.fixed, p.n_out, a_out)
        if self.resource == "flops":
            coef, mem = p.flops, np.zeros(len(g.mem_op))
        elif self.resource == "size":
            coef, mem = p.size, np.zeros(len(g.mem_op))
        elif not isinstance(self.hardware, Hardware):
            # a measured device profile: its smooth, monotone surrogate (time is not monotone in width)
            per_flop, per_elem = self._surrogate if self._surrogate is not None else self.hardware.surrogate(g)
            self._surrogate = (per_flop, per_elem)
            coef, mem = p.flops * per_flop[p.op], g.mem_scale * per_elem[g.mem_op]
        else:
            hw = self.hardware
            compute_bound = op_flops(g, alive) / hw.peak_gflops >= op_bytes(g, alive, hw.bytes_per_element) / hw.bandwidth_gbs
            mem_coef = hw.bytes_per_element / hw.bandwidth_gbs
            coef = np.where(compute_bound[p.op], p.flops / hw.peak_gflops, p.weight * mem_coef)
            mem = np.where(compute_bound[g.mem_op], 0.0, g.mem_scale * mem_coef)
        n = g.n_channels
        return (np.bincount(p.in_idx, weights=(coef * a_out)[p.in_seg], minlength=n)
                + np.bincount(p.out_idx, weights=(coef * a_in)[p.out_seg], minlength=n)
                + np.bincount(g.mem_idx, weights=mem[g.mem_seg], minlength=n))

    # -- proximal step -----------------------------------------------------------------------
    @torch.no_grad()
    def preconditioner(self, optimizer) -> np.ndarray | None:
        """Per channel, how far ``optimizer`` moves its source parameters per unit of gradient, relative
        to the typical alive channel (median 1); ``None`` for an optimizer without second moments (SGD).

        Adam and its kin (anything keeping ``exp_avg_sq``) move a parameter by about ``lr`` whatever its
        gradient's size, so a channel the task defends strongly cannot push back harder than a useless
        one: a plain proximal pull would take them alike. Scaling channel j's pull by its mean
        ``1 / (sqrt(v_hat) + eps)`` (Adam's own step size for it) puts the pull in the optimizer's metric,
        where a channel with large gradients resists it and one with small gradients gives way.
        """
        per_member = []
        for src in self._sources:
            m, p = src[0], src[0].weight
            st = optimizer.state.get(p) if hasattr(optimizer, "state") else None
            if not st or "exp_avg_sq" not in st:
                return None
            group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
            if group is None:
                return None
            beta2, eps = group.get("betas", (0.9, 0.999))[1], group.get("eps", 1e-8)
            step = float(st.get("step", 1))
            v = st["exp_avg_sq"].detach().double().cpu() / max(1e-12, 1 - beta2 ** max(step, 1.0))
            pre = 1.0 / (v.sqrt() + eps)
            per_member.append(pre if self.family == "gamma" else src.matrix(pre).mean(1))   # rows or head columns
        flat = torch.cat(per_member)
        index = self._index
        sums = torch.zeros(self.graph.n_channels, dtype=flat.dtype).index_add_(0, index, flat)
        counts = torch.zeros(self.graph.n_channels, dtype=flat.dtype).index_add_(0, index, torch.ones_like(flat))
        scale = (sums / counts.clamp_min(1)).numpy()
        typical = scale[self.regularized & self.alive()]
        if not len(typical) or not np.isfinite(typical).all() or np.median(typical) <= 0:
            return None
        return np.where(self.regularized, scale / np.median(typical), 1.0)

    @torch.no_grad()
    def proximal_step(self, lr: float, strength: float, floor: float | None = None,
                      scale: np.ndarray | None = None) -> None:
        """Apply the proximal operator of ``lr * strength * loss()`` to the source parameters
        (channel j's pull multiplied by ``scale[j]`` when given: :meth:`preconditioner`).

        Use it *instead of* adding ``strength * loss()`` to the objective, right after each
        ``optimizer.step()`` with that step's learning rate. A channel the step leaves dead (at
        exactly zero, or at or below the threshold and so removed by :func:`netmorph.prune`) is then
        silenced: its gammas and betas (or weight rows and biases) are set to zero, so it carries
        nothing downstream, the rest of the network trains without it, and pruning it later is exact
        (a dead channel that kept its beta would emit a constant, which pruning can fold only up to
        zero-padded borders, and one that kept a small gamma would still pass on a varying signal).
        The channel :meth:`alive` keeps for a layer whose channels all died is left as it is.

        ``floor``: a cost this step may not take the network below. A full step that would is
        shortened to the largest fraction of it that keeps :meth:`cost` at or above the floor (found
        by halving until one does, down to 2**-40, then bisecting between the last two fractions), so
        even a strength far too large moves the network only down to the floor.
        """
        if floor is None:
            return self._prox_and_silence(lr * strength, scale)
        saved = [(t, t.detach().clone()) for m, _ in self._sources for t in (m.weight, getattr(m, "bias", None))
                 if t is not None]

        def restore():
            for t, v in saved:
                t.copy_(v)
        self._prox_and_silence(lr * strength, scale)
        if self.cost() >= floor:
            return
        lo, hi = 0.5, 1.0
        while True:                                   # halve until a fraction keeps the floor
            restore()
            self._prox_and_silence(lr * strength * lo, scale)
            if self.cost() >= floor:
                break
            if lo < 2 ** -40:
                lo = 0.0
                break
            lo, hi = lo / 2, lo
        for _ in range(12 if lo > 0 else 0):
            mid = (lo + hi) / 2
            restore()
            self._prox_and_silence(lr * strength * mid, scale)
            if self.cost() >= floor:
                lo = mid
            else:
                hi = mid
        restore()
        if lo > 0:
            self._prox_and_silence(lr * strength * lo, scale)

    @torch.no_grad()
    def _prox_and_silence(self, t: float, scale: np.ndarray | None = None) -> None:
        t_channel = t * self.channel_weights(self.alive()) * self.regularized
        self._shrink(t_channel if scale is None else t_channel * scale)
        with torch.no_grad():
            values = self.channel_values().detach().cpu()
        below = ~(values > self.threshold).numpy()            # the comparison alive() makes
        dead = self.regularized & ((values == 0).numpy() | (below & ~self.alive()))
        if dead.any():
            self.zero_channels(dead)

    def _shrink(self, t_channel: np.ndarray) -> None:
        raise NotImplementedError

    def _no_source_message(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(channels={self.graph.n_channels}, "
                f"regularized={int(self.regularized.sum())}, threshold={self.threshold})")


class _Gamma(_Regularizer):
    family = "gamma"

    def __init__(self, model, example_inputs, gamma_threshold: float = 1e-3, exclude=(), **kw):
        super().__init__(model, example_inputs, threshold=gamma_threshold, exclude=exclude, **kw)

    def _find_sources(self):
        return [(self.model.get_submodule(name), cls) for name, (_, cls) in self.graph.bn_sources.items()]

    def _source_values(self):
        return [m.weight.abs() for m, _ in self._sources]

    @staticmethod
    def _zero(src, rows):
        m, _ = src
        m.weight[rows] = 0
        if getattr(m, "bias", None) is not None:
            m.bias[rows] = 0

    @staticmethod
    def _set(src, rows, value):
        src[0].weight[rows] = value

    def _no_source_message(self):
        return (f"{type(self).__name__} needs BatchNorm layers with affine weights, and "
                f"{type(self.model).__name__} has none that the channel graph could use; use "
                f"{type(self).__name__.replace('Gamma', 'GroupLasso')} instead (it regularizes weight norms)")

    @torch.no_grad()
    def _shrink(self, t_channel: np.ndarray) -> None:
        """Exact prox of the max-combined L1 term on every channel's gammas."""
        flat = torch.cat([m.weight.detach().double().cpu() for m, _ in self._sources]).numpy()
        index = self._index.numpy()
        new = _prox_max_norm(np.abs(flat), index, t_channel) * np.sign(flat)
        start = 0
        for m, _ in self._sources:
            n = m.weight.numel()
            m.weight.copy_(torch.as_tensor(new[start:start + n]).to(m.weight))
            start += n


def _prox_max_norm(v: np.ndarray, index: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per channel k: the prox of ``t_k * max(v)`` over the members ``v`` (``index == k``), v >= 0.

    It clips every member to a level theta where ``sum(max(v - theta, 0)) = t_k``; when
    ``sum(v) <= t_k`` all members become 0.
    """
    out = v.copy()
    order = np.lexsort((-v, index))
    vs, ks = v[order], index[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(vs)]):
        k, u = ks[s], vs[s:e]
        if t[k] <= 0:
            continue
        if u.sum() <= t[k]:
            out[order[s:e]] = 0.0
            continue
        css = np.cumsum(u)
        j = np.arange(1, len(u) + 1)
        above = np.flatnonzero(u - (css - t[k]) / j > 0)
        rho = above[-1] if len(above) else 0          # none: t is below the float resolution of u
        theta = (css[rho] - t[k]) / (rho + 1)
        out[order[s:e]] = np.minimum(u, theta)
    return out


class _GroupLasso(_Regularizer):
    family = "weight"

    def __init__(self, model, example_inputs, threshold: float = 1e-2, l1_fraction: float = 0.0,
                 exclude=(), **kw):
        if not 0.0 <= l1_fraction <= 1.0:
            raise ValueError(f"l1_fraction must be in [0, 1], got {l1_fraction}")
        self.l1_fraction = float(l1_fraction)
        super().__init__(model, example_inputs, threshold=threshold, exclude=exclude, **kw)

    def _find_sources(self):
        """Every layer's output rows, except those of attention heads (their query, key and value rows
        prove nothing); for heads, the columns of the linear layers reading them."""
        g, found = self.graph, []
        heads = g.heads if len(g.heads) == g.n_channels else np.zeros(g.n_channels, dtype=bool)
        for layer in g.layers.values():
            m = layer.module
            if getattr(m, "weight", None) is None:
                continue
            rows = np.flatnonzero(~heads[layer.out])
            if len(rows):
                found.append(_Block(m, layer.out[rows], "rows", rows))
            cols = np.flatnonzero(heads[layer.inputs]) if reads_columns(m) else []
            if len(cols):
                found.append(_Block(m, layer.inputs[cols], "columns", cols))
        for name, axis, cls in g.params:              # a class token, position embeddings, a layer scale
            found.append(_Block(ParamSlices(self.model.get_parameter(name), axis), cls, "rows", np.arange(len(cls))))
        return found

    def _source_values(self):
        vals = []
        for src in self._sources:
            w = src.matrix()
            n = w.shape[1]
            rms = torch.linalg.vector_norm(w, dim=1) / n ** 0.5
            vals.append((1 - self.l1_fraction) * rms + self.l1_fraction * w.abs().mean(1)
                        if self.l1_fraction else rms)
        return vals

    @staticmethod
    def _zero(src, rows):
        w = src.matrix().detach().clone()
        w[rows] = 0
        src.write(w)
        m = src.module
        if src.kind == "rows" and getattr(m, "bias", None) is not None:
            m.bias[torch.as_tensor(src.index, device=rows.device)[rows]] = 0

    @staticmethod
    def _set(src, rows, value):
        w = src.matrix().detach().clone()
        fresh = torch.randn(int(rows.sum()), w.shape[1], dtype=w.dtype, device=w.device)
        w[rows] = fresh * (value * w.shape[1] ** 0.5 / torch.linalg.vector_norm(fresh, dim=1, keepdim=True))
        src.write(w)

    def _no_source_message(self):
        return f"{type(self.model).__name__} has no convolution or linear layer the channel graph could use"

    @torch.no_grad()
    def _shrink(self, t_channel: np.ndarray) -> None:
        """Block soft-threshold of each member's weight row (tied members are shrunk one by one,
        the proximal operator of the sum over members, a slight over-pull compared to the max)."""
        t_channel = torch.as_tensor(t_channel)
        for src in self._sources:
            w = src.matrix().detach().clone()
            n = w.shape[1]
            t = t_channel[torch.as_tensor(src.cls)].to(w)[:, None]
            if self.l1_fraction:
                w.copy_(w.sign() * (w.abs() - t * self.l1_fraction / n).clamp_min(0))
            norm = torch.linalg.vector_norm(w, dim=1, keepdim=True)
            scale = (1 - t * (1 - self.l1_fraction) / (n ** 0.5 * norm.clamp_min(1e-30))).clamp_min(0)
            src.write(w * scale)


class _Block(tuple):
    """A group-lasso source: ``(module, class ids)`` -- unpacked like a Gamma source -- for either the
    output rows ``index`` of the layer (``kind="rows"``) or its input columns ``index``
    (``kind="columns"``: an attention head read by an output projection)."""

    def __new__(cls, module: nn.Module, classes: np.ndarray, kind: str, index: np.ndarray):
        self = super().__new__(cls, (module, classes))
        self.kind, self.index = kind, index
        return self

    @property
    def module(self) -> nn.Module:
        return self[0]

    @property
    def cls(self) -> np.ndarray:
        return self[1]

    def matrix(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """One row per member: its output row, or its input column (over every output), of the
        layer's weight (or of ``w``, a tensor laid out like it: an optimizer's state)."""
        w = out_rows(self.module, w)
        index = torch.as_tensor(self.index, device=w.device)
        return w[index] if self.kind == "rows" else w.t()[index]

    @torch.no_grad()
    def write(self, rows: torch.Tensor) -> None:
        """Write :meth:`matrix` back into the layer's weight."""
        w = out_rows(self.module).detach().clone()
        index = torch.as_tensor(self.index, device=w.device)
        if self.kind == "rows":
            w[index] = rows.to(w)
        else:
            w[:, index] = rows.to(w).t()
        set_out_rows(self.module, w)


class ParamSlices:
    """A parameter read in forward (:mod:`netmorph.graph.rules.parameter`) as a group-lasso source:
    its ``weight`` is the parameter, whose slices along ``axis`` are the members of their channels."""

    bias = None

    def __init__(self, weight: nn.Parameter, axis: int):
        self.weight, self.axis = weight, axis


def out_rows(m: nn.Module, w: torch.Tensor | None = None) -> torch.Tensor:
    """The weights of ``m`` (or ``w``, a tensor laid out like them) as ``[out_channels, fan]``: row j
    holds everything output channel j reads."""
    w = m.weight if w is None else w
    if isinstance(m, ParamSlices):                             # slices along its axis
        return w.movedim(m.axis, 0).reshape(w.shape[m.axis], -1)
    if isinstance(m, nn.Embedding):                            # [num_embeddings, dim]: a feature is a column
        return w.t()
    if isinstance(m, nn.modules.conv._ConvTransposeNd):       # laid out [in, out/g, *k]
        g = m.groups
        return w.reshape(g, w.shape[0] // g, w.shape[1], -1).permute(0, 2, 1, 3).reshape(m.out_channels, -1)
    if is_conv1d(m):                                           # Hugging Face Conv1D: [in, out]
        return w.t()
    return w.flatten(1)


@torch.no_grad()
def set_out_rows(m: nn.Module, rows: torch.Tensor) -> None:
    """Write ``[out_channels, fan]`` rows back into ``m.weight`` (inverse of :func:`out_rows`)."""
    w = m.weight
    if isinstance(m, ParamSlices):
        rows = rows.reshape((w.shape[m.axis],) + tuple(w.movedim(m.axis, 0).shape[1:])).movedim(0, m.axis)
    elif isinstance(m, nn.modules.conv._ConvTransposeNd):
        g = m.groups
        rows = rows.reshape(g, w.shape[1], w.shape[0] // g, -1).permute(0, 2, 1, 3)
    elif is_conv1d(m) or isinstance(m, nn.Embedding):
        rows = rows.t()
    w.copy_(rows.reshape(w.shape))


def _make(base, resource, doc):
    cls = type(f"{'Gamma' if base is _Gamma else 'GroupLasso'}{doc}Regularizer", (base,), {"resource": resource})
    cls.__doc__ = (f"MorphNet {resource} regularizer on "
                   f"{'BatchNorm gammas' if base is _Gamma else 'group-lasso weight norms'}.")
    cls.__module__ = __name__
    return cls


GammaFlopsRegularizer = _make(_Gamma, "flops", "Flops")
GammaModelSizeRegularizer = _make(_Gamma, "size", "ModelSize")
GammaLatencyRegularizer = _make(_Gamma, "latency", "Latency")
GroupLassoFlopsRegularizer = _make(_GroupLasso, "flops", "Flops")
GroupLassoModelSizeRegularizer = _make(_GroupLasso, "size", "ModelSize")
GroupLassoLatencyRegularizer = _make(_GroupLasso, "latency", "Latency")
