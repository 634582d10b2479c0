"""Latency measured on this device: a profile of the network's own layers and the time it predicts.

A roofline (``costs.Hardware``) cannot see what decides time on a real device: each op's fixed
overhead, and that a width the kernels are not blocked for (17 channels where they work in
multiples of 16) can cost more than the next aligned one. A :class:`DeviceProfile` measures
instead:

- every convolution and linear layer of the network, by its *signature* (kind, kernel, stride,
  padding, dilation, bias, input spatial size or token shape, channels per conv group), is timed
  alone on a grid of input x output widths (:func:`axis_grid`: a few small widths, the layers' own,
  multiples of 8 and the width just below the multiples of 16 next to them, up to 1.5x the widest);
  a grouped or depthwise convolution on a grid of conv-group counts;
- every other op kind (norms, activations, additions, pooling, concatenation, copies) is timed at
  a range of sizes and fitted as ``overhead + seconds per element``.

The profile predicts any structure's time as the sum over the recorded ops (:meth:`DeviceProfile.op_seconds`):
a layer's measured time at its alive widths, interpolated between grid points (bilinear; beyond the
grid proportionally), plus each other op's fitted time for its alive elements. It is a JSON file
(:meth:`DeviceProfile.save`, format in ``docs/latency.md``) keyed by everything that changes timings
(:func:`device_key`), so a profile made on one machine can steer a search on another.

Because measured time is not monotone in width, the regularizer does not differentiate it: it uses
a smooth, monotone surrogate (:meth:`DeviceProfile.surrogate`), per op a least-squares fit of
``seconds = a + b * FLOPs`` (layers, ``b >= 0``) or ``a + c * elements`` (other ops) to the
measurements. :meth:`DeviceProfile.rounding` picks the width multiple this device is fast at.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

FORMAT = "netmorph-device-profile"
VERSION = 1
#: the width multiples :meth:`DeviceProfile.rounding` chooses from
ROUNDINGS = (1, 2, 4, 8, 16, 32)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DECONV = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

#: op name (a layer's class or a function's name) -> the kind timed for it; ops not listed and
#: without activation memory (views, flatten, size queries) cost nothing
KINDS = {
    "norm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm", "FrozenBatchNorm2d", "GroupNorm",
             "group_norm", "LayerNorm", "layer_norm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
             "instance_norm", "BatchNormAct2d", "GroupNormAct", "LayerNorm2d", "rms_norm", "RMSNorm", "LlamaRMSNorm",
             "T5LayerNorm"),
    "activation": ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "gelu", "sigmoid",
                   "sigmoid_", "hardswish", "hardswish_", "hardsigmoid", "tanh", "leaky_relu", "elu",
                   "mish", "softplus", "dropout", "clamp", "clamp_", "softmax", "exp", "neg", "pow"),
    "binary": ("add", "add_", "iadd", "mul", "mul_", "imul", "sub", "sub_", "truediv", "div", "div_", "radd",
               "rmul", "rsub", "where", "maximum", "minimum"),
    "pool": ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
             "mean", "sum", "amax", "interpolate", "upsample"),
    "cat": ("cat", "concat", "stack", "pad", "chunk", "split", "contiguous", "clone", "permute", "transpose"),
}
_KIND_OF = {name: kind for kind, names in KINDS.items() for name in names}


class ProfileError(ValueError):
    """A profile that cannot be used for this network or this device (the message says why)."""


def device_key(device: str = "cpu", threads: int | None = None, batch: int = 1,
               dtype: torch.dtype = torch.float32, channels_last: bool = False) -> dict:
    """Everything that changes timings: device and its name, threads, torch version, dtype, batch,
    memory format and the backend flags torch chooses kernels by."""
    device = str(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProfileError("latency:cuda asked for, but torch sees no CUDA device here; "
                               "use latency:cpu, or a profile file made on the GPU machine")
        name = torch.cuda.get_device_name(torch.device(device))
        flags = {"cudnn": torch.backends.cudnn.enabled, "cudnn_benchmark": torch.backends.cudnn.benchmark,
                 "tf32": torch.backends.cuda.matmul.allow_tf32}
    elif device == "cpu":
        name = _cpu_name()
        flags = {"mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
                 "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    else:
        raise ProfileError(f"unknown device {device!r} for a latency profile: use cpu or cuda")
    return {"device": device, "device_name": name,
            "threads": int(threads or torch.get_num_threads()) if device == "cpu" else None,
            "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "batch": int(batch),
            "memory_format": "channels_last" if channels_last else "contiguous", "flags": flags}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- signatures ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Signature:
    """What a layer's time depends on besides its widths. ``grouped``: the widths are a number of conv
    groups of ``per_group`` (in, out) channels each (one axis); otherwise in x out channels."""

    cls: str
    spec: tuple            # kernel, stride, padding, dilation, output_padding, padding_mode, bias
    shape: tuple           # input's spatial size (convs) or token shape (linear), batch excluded
    grouped: bool = False
    per_group: tuple = (1, 1)

    @property
    def key(self) -> str:
        return json.dumps([self.cls, list(self.spec), list(self.shape), self.grouped, list(self.per_group)])

    @staticmethod
    def from_key(key: str) -> "Signature":
        cls, spec, shape, grouped, per = json.loads(key)
        return Signature(cls, tuple(tuple(s) if isinstance(s, list) else s for s in spec), tuple(shape),
                         grouped, tuple(per))

    def build(self, n_in: int, n_out: int) -> tuple[nn.Module, tuple[int, ...]]:
        """A layer of this signature and the per-sample input shape, ``n_in x n_out`` channels (or
        ``n_in`` conv groups when grouped)."""
        kernel, stride, padding, dilation, out_pad, mode, bias = self.spec
        if self.cls == "Linear":
            return nn.Linear(n_in, n_out, bias=bias), (*self.shape, n_in)
        groups = 1
        if self.grouped:
            groups, (n_in, n_out) = n_in, (n_in * self.per_group[0], n_in * self.per_group[1])
        cls = getattr(nn, self.cls)
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
        if self.cls.startswith("ConvTranspose"):
            kw["output_padding"] = out_pad
        else:
            kw["padding_mode"] = mode
        return cls(n_in, n_out, kernel, **kw), (n_in, *self.shape)


def layer_signature(op) -> tuple[Signature, int, int] | None:
    """The signature of a recorded layer op and its (in, out) widths on the table's axes, or None
    for ops that are not a convolution or linear layer."""
    m = op.module
    shape = tuple(op.inputs[0].shape) if op.inputs and hasattr(op.inputs[0], "shape") else None
    if m is None or shape is None:
        return None
    if type(m) is nn.Linear or isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
        return Signature("Linear", (None, None, None, None, None, None, m.bias is not None), shape[1:-1]), \
            m.in_features, m.out_features
    if isinstance(m, _CONV + _DECONV):
        cls = next(c for c in _CONV + _DECONV if isinstance(m, c)).__name__
        padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        spec = (tuple(m.kernel_size), tuple(m.stride), padding, tuple(m.dilation),
                tuple(getattr(m, "output_padding", (0,))), m.padding_mode, m.bias is not None)
        if m.groups == 1:
            return Signature(cls, spec, shape[2:]), m.in_channels, m.out_channels
        per = (m.in_channels // m.groups, m.out_channels // m.groups)
        return Signature(cls, spec, shape[2:], True, per), m.groups, m.groups
    return None


def axis_grid(widths, headroom: float = 1.5, most: int = 12) -> list[int]:
    """Widths one axis of a layer signature is timed at, for layers of ``widths`` (one or several):
    1, 2, 4, each width itself, multiples of 8 up to ``headroom x`` the largest (at most ``most``,
    spaced geometrically when the layers are wide, always keeping the multiples of 16 next to each
    width), and the width just below each multiple of 16 next to a width (where unaligned widths show
    their cost)."""
    widths = sorted({int(w) for w in np.atleast_1d(widths)})
    top = max(widths[-1], int(math.ceil(widths[-1] * headroom / 8)) * 8)
    aligned = list(range(8, top + 1, 8))
    near = {int(math.ceil(w / 16)) * 16 for w in widths} | {max(16, w // 16 * 16) for w in widths}
    if len(aligned) > most:
        picks = np.round(np.geomspace(8, top, most) / 8).astype(int) * 8
        aligned = sorted({int(a) for a in picks} | {a for a in near if a <= top})
    probes = [a - 1 for a in aligned if a % 16 == 0 and (len(aligned) <= most or a in near)]
    return sorted({w for w in (1, 2, 4, *widths, *aligned, *probes) if 1 <= w <= top})


# -- timing ----------------------------------------------------------------------------------
def _time(fn, device: str, min_seconds: float = 0.01, reps: int = 3) -> float:
    """Median seconds of ``fn()`` after a warm-up, over at least ``reps`` runs or ``min_seconds``."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times, spent = [], 0.0
    while len(times) < reps or (spent < min_seconds and len(times) < 50):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        spent += times[-1]
        if spent > 1.0 and len(times) >= 3:
            break
    return float(np.median(times))


def _time_layer(sig: Signature, n_in: int, n_out: int, key: dict) -> float:
    torch.manual_seed(0)
    dtype = getattr(torch, key["dtype"])
    layer, shape = sig.build(n_in, n_out)
    layer = layer.to(device=key["device"], dtype=dtype).eval()
    x = torch.randn(key["batch"], *shape, device=key["device"], dtype=dtype)
    if key["memory_format"] == "channels_last" and x.dim() == 4:
        layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _time(lambda: layer(x), key["device"])


def _kind_call(kind: str, shape: tuple, device: str, dtype):
    """A call of op ``kind`` on a tensor of ``shape`` (batch first, channels second), and the
    elements it reads and writes."""
    x = torch.randn(*shape, device=device, dtype=dtype)
    c = shape[1] if len(shape) > 1 else 1
    if kind == "norm":
        rm, rv = torch.zeros(c, device=device, dtype=dtype), torch.ones(c, device=device, dtype=dtype)
        return (lambda: F.batch_norm(x, rm, rv, rv, rm, False)), 2 * x.numel()
    if kind == "activation":
        return (lambda: F.relu(x)), 2 * x.numel()
    if kind == "binary":
        y = torch.randn_like(x)
        return (lambda: x + y), 3 * x.numel()
    if kind == "pool":
        flat = x.flatten(2)
        if flat.shape[-1] < 2:
            return (lambda: flat.mean(-1)), 2 * x.numel()
        return (lambda: F.avg_pool1d(flat, 2)), x.numel() + x.numel() // 2
    return (lambda: torch.cat([x, x], 1)), 4 * x.numel()


def _fit_kind(kind: str, shapes: list[tuple], key: dict) -> tuple[float, float]:
    """``(overhead seconds, seconds per element)`` of op ``kind``: least squares over the given
    per-sample shapes (the network's own) at 1/8, 1/2 and all of their channels (both clipped at 0)."""
    dtype = getattr(torch, key["dtype"])
    xs, ys = [], []
    with torch.inference_mode():
        for shape in shapes:
            for f in (0.125, 0.5, 1.0):
                c = max(1, int(round(shape[0] * f)))
                fn, elements = _kind_call(kind, (key["batch"], c, *shape[1:]), key["device"], dtype)
                xs.append(elements)
                ys.append(_time(fn, key["device"]))
    return _line(xs, ys)


def _line(x, y) -> tuple[float, float]:
    """``(a, b)`` of the least-squares line ``y = a + b * x``, each clipped at 0."""
    x = np.asarray(x, float).ravel()
    a, b = np.linalg.lstsq(np.stack([np.ones(x.size), x], 1), np.asarray(y, float).ravel(), rcond=None)[0]
    return max(float(a), 0.0), max(float(b), 0.0)


def _kind_shapes(graph, limit: int = 4) -> dict[str, list[tuple]]:
    """Per op kind, up to ``limit`` distinct per-sample shapes of the first input of ``graph``'s ops
    of that kind (the largest ones and the smallest); a kind the graph lacks gets the input's shape."""
    found: dict[str, set] = {k: set() for k in (*KINDS, "other")}
    for op in graph.recording.ops:
        first = next((v for v in op.inputs if hasattr(v, "shape") and hasattr(v, "id")), None)
        if first is not None and len(first.shape) >= 2:
            found[_KIND_OF.get(op.name, "other")].add(tuple(first.shape[1:]))
    first = tuple(graph.example_inputs[0].shape[1:]) if graph.example_inputs and \
        isinstance(graph.example_inputs[0], torch.Tensor) else (16, 32)
    out = {}
    for k, shapes in found.items():
        ordered = sorted(shapes or {first}, key=lambda s: -int(np.prod(s)))
        out[k] = ordered[:limit - 1] + ordered[-1:] if len(ordered) >= limit else ordered
    return out


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """The time at width ``x`` from times ``ys`` measured at widths ``xs``.

    Kernels work on blocks of channels, so a width costs about what the next measured width costs:
    where the grid is dense (points at most 8 apart) that value is used as it is; where it is sparse
    (wide layers) the width is rounded up to a multiple of 8 and interpolated linearly. Below the
    first point the time falls proportionally to 0; beyond the last it grows proportionally."""
    if x <= 0:
        return 0.0
    w = math.ceil(x - 1e-6)
    if w > xs[-1]:
        return float(ys[-1] * x / xs[-1])
    i = int(np.searchsorted(xs, w))
    if xs[i] == w:
        return float(ys[i])
    lo = xs[i - 1] if i else 0
    if xs[i] - lo <= 8 or i == 0:
        return float(ys[i] if i else ys[0] * x / xs[0])
    return float(np.interp(min(math.ceil(w / 8) * 8, xs[i]), xs, ys))


@dataclasses.dataclass
class Table:
    """Measured seconds of one signature: ``seconds[i][j]`` at ``ins[i]`` x ``outs[j]`` (a grouped
    signature has one axis: ``outs == [0]`` and ``seconds[i][0]`` at ``ins[i]`` conv groups)."""

    ins: list[int]
    outs: list[int]
    seconds: list[list[float]]

    def at(self, n_in: float, n_out: float) -> float:
        arrays = self.__dict__.get("_arrays")
        if arrays is None:
            arrays = self.__dict__["_arrays"] = (np.asarray(self.ins, float), np.asarray(self.outs, float),
                                                 np.asarray(self.seconds, float))
        ins, outs, s = arrays
        if len(outs) == 1 and outs[0] == 0:
            return _interp(ins, s[:, 0], n_in)
        if n_in <= 0 or n_out <= 0:
            return 0.0
        rows = [_interp(outs, s[i], n_out) for i in range(len(ins))]
        return _interp(ins, np.asarray(rows), n_in)


class DeviceProfile:
    """Measured layer times of one device (see the module docstring). Use it wherever a ``hardware``
    is accepted with ``resource="latency"``: costs are in nanoseconds, like the roofline's."""

    bytes_per_element = 4

    def __init__(self, key: dict, tables: dict | None = None, kinds: dict | None = None, path: str | None = None,
                 calibration: dict | None = None):
        self.key = dict(key)
        self.tables: dict[str, Table] = dict(tables or {})
        self.kinds: dict[str, tuple[float, float]] = dict(kinds or {})
        #: network key (:func:`network_key`) -> {"layers", "other", "constant_s", ...}: scales fitted
        #: to whole-network timings (a layer timed alone runs warmer than inside the network)
        self.calibration: dict[str, dict] = dict(calibration or {})
        self.path = path

    @property
    def name(self) -> str:
        k = self.key
        where = f"{k['device']} ({k['threads']} threads)" if k["device"] == "cpu" else k["device_name"]
        return f"measured {where}, batch {k['batch']}"

    def __repr__(self) -> str:
        return f"DeviceProfile({self.name}, {len(self.tables)} layer signatures)"

    def is_here(self) -> bool:
        """Whether this profile describes this machine as it is now (same key)."""
        k = self.key
        try:
            return device_key(k["device"], k.get("threads"), k["batch"], getattr(torch, k["dtype"]),
                              k["memory_format"] == "channels_last") == k
        except (ProfileError, AttributeError, KeyError, RuntimeError):
            return False

    # -- measuring -----------------------------------------------------------------------
    def missing(self, graph) -> list[tuple[Signature, list[int], list[int]]]:
        """Signatures of ``graph``'s layers this profile has no table for, each with the grids of widths
        to time it at (:func:`axis_grid` of every layer of that signature, joined)."""
        out = {}
        for op in graph.recording.ops:
            found = layer_signature(op)
            if found is not None and found[0].key not in self.tables:
                sig, n_in, n_out = found
                _, ins, outs = out.setdefault(sig.key, (sig, set(), set()))
                ins.add(n_in)
                outs.add(n_out)
        return [(sig, axis_grid(sorted(ins)), [0] if sig.grouped else axis_grid(sorted(outs)))
                for sig, ins, outs in out.values()]

    def measure(self, graph, progress=None) -> int:
        """Time every layer signature of ``graph`` not yet in the profile, and every op kind.
        ``progress(done, total, what)`` is called after each timing. Returns the timings made.
        Must run on the device the profile's key names."""
        if not self.is_here():
            raise ProfileError(f"this profile was made for {self.name} ({self.key.get('device_name')}, torch "
                               f"{self.key.get('torch')}), not for this machine as it is; measure a new one here")
        todo = self.missing(graph)
        jobs = todo
        need_kinds = [k for k in (*KINDS, "other") if k not in self.kinds]
        total = sum(len(a) * len(b) for _, a, b in jobs) + len(need_kinds)
        done = 0
        threads = torch.get_num_threads()
        if self.key["threads"]:
            torch.set_num_threads(self.key["threads"])
        try:
            for sig, ins, outs in jobs:
                rows = []
                for a in ins:
                    row = []
                    for b in outs:
                        row.append(_time_layer(sig, a, b or a, self.key))
                        done += 1
                        if progress:
                            progress(done, total, sig.cls)
                    rows.append(row)
                self.tables[sig.key] = Table(ins, outs, rows)
            shapes = _kind_shapes(graph)
            for kind in need_kinds:
                self.kinds[kind] = _fit_kind(kind, shapes[kind], self.key)
                done += 1
                if progress:
                    progress(done, total, kind)
        finally:
            torch.set_num_threads(threads)
        return done

    # -- predicting ----------------------------------------------------------------------
    def _batch_scale(self, graph) -> float:
        xs = graph.example_inputs
        b = xs[0].shape[0] if xs and hasattr(xs[0], "shape") and xs[0].dim() > 0 else 1
        return self.key["batch"] / max(1, b)

    def _layer_ops(self, graph):
        """Every convolution / linear op: (op index, table, grouped, its FLOPs pieces or None, fixed
        widths). An op without pieces (a layer the channel graph froze) is read at its own widths."""
        cache = graph.__dict__.setdefault("_profile_ops", {})
        hit = cache.get(id(self))
        if hit is not None and hit[0] is self and hit[1] == len(self.tables):
            return hit[2]
        by_op = {}
        for i, op in enumerate(graph.pieces.op):
            by_op.setdefault(int(op), []).append(i)
        out = []
        for op_index, op in enumerate(graph.recording.ops):
            found = layer_signature(op)
            if found is None:
                continue
            sig, n_in, n_out = found
            table, grouped = self.tables.get(sig.key), sig.grouped
            if table is None and not grouped and n_in == n_out == 1 and sig.cls != "Linear":
                # a depthwise conv narrowed to one channel is rebuilt as a 1 -> 1 dense conv: its timing
                # is the depthwise signature's at one conv group
                table = self.tables.get(dataclasses.replace(sig, grouped=True, per_group=(1, 1)).key)
                grouped = table is not None
            if table is None:
                where = f" ({self.path})" if self.path else ""
                raise ProfileError(
                    f"the latency profile{where}, {self.name}, has no timings for {sig.cls} layer "
                    f"{graph.op_names[op_index]} ({sig.key}); measure this network into it: netmorph profile "
                    "--model ... on that device (latency:cpu / latency:cuda measure what is missing by themselves)")
            pieces = np.asarray(by_op[op_index]) if op_index in by_op else None
            out.append((op_index, table, grouped, pieces, (n_in, n_out)))
        cache[id(self)] = (self, len(self.tables), out)
        return out

    def op_seconds(self, graph, alive: np.ndarray) -> np.ndarray:
        """Predicted seconds of every recorded op for the given alive channels (bool, or each channel's
        group width scale as in :func:`netmorph.costs.piece_products`)."""
        from .costs import op_bytes, piece_counts
        seconds = np.zeros(graph.n_ops)
        a_in, a_out = piece_counts(graph, alive)
        n_out = graph.pieces.n_out
        layer_ops = self._layer_ops(graph)
        scale = self._batch_scale(graph)
        for op_index, table, grouped, pieces, fixed in layer_ops:
            if pieces is not None and a_in[pieces].sum() == 0 < a_out[pieces].sum():
                # every input removed: pruning puts a ConstantOutput there, which writes its output
                out = graph.recording.ops[op_index].outputs[0]
                elements = float(np.prod(out.shape)) * a_out[pieces].sum() / n_out[pieces].sum() * scale
                overhead, per = self.kinds["other"]
                seconds[op_index] = overhead + per * elements
            elif pieces is None:
                seconds[op_index] = table.at(fixed[0], fixed[1] if not grouped else 0)
            elif grouped:
                seconds[op_index] = table.at(float((a_out[pieces] / n_out[pieces]).sum()), 0)
            else:
                seconds[op_index] = table.at(float(a_in[pieces].sum()), float(a_out[pieces].sum()))
        elements = op_bytes(graph, alive, 1.0) * scale
        is_layer = self._is_layer(graph)
        for i, name in enumerate(graph.op_names):
            if is_layer[i] or elements[i] <= 0:
                continue
            overhead, per = self.kinds.get(_KIND_OF.get(graph.recording.ops[i].name, "other"), self.kinds["other"])
            seconds[i] = overhead + per * elements[i]
        return seconds

    def _is_layer(self, graph) -> np.ndarray:
        is_layer = np.zeros(graph.n_ops, dtype=bool)
        is_layer[[o for o, *_ in self._layer_ops(graph)]] = True
        return is_layer

    def calibrated(self, graph) -> dict:
        """The whole-network calibration of ``graph``'s network, or the identity if it has none."""
        found = self.calibration.get(network_key(graph))
        if found is None:            # fewer layers (a removed branch): the closest network holding all of its kinds
            mine = _signatures(graph)
            near = [c for c in self.calibration.values() if set(mine) <= set(c.get("signatures", ()))]
            found = min(near, key=lambda c: abs(len(c["signatures"]) - len(mine)), default=None)
        return found or {"layers": 1.0, "other": 1.0, "constant_s": 0.0}

    def _parts(self, graph, alive) -> tuple[float, float]:
        seconds = self.op_seconds(graph, alive)
        is_layer = self._is_layer(graph)
        return float(seconds[is_layer].sum()), float(seconds[~is_layer].sum())

    def cost(self, graph, alive: np.ndarray) -> float:
        """Predicted nanoseconds of the whole network (calibrated when :meth:`calibrate` ran for it)."""
        c = self.calibrated(graph)
        layers, other = self._parts(graph, alive)
        return (c["layers"] * layers + c["other"] * other + c["constant_s"]) * 1e9

    def calibrate(self, model: nn.Module, graph, n: int = 8, rounds: int = 7, seed: int = 0) -> dict:
        """Fit ``seconds = a * (sum of the ops' predicted seconds) + c`` (a, c >= 0, least relative
        error) to the measured time of ``model`` and ``n - 1`` random narrowings of it (each changeable
        group at 30%-100% of its width), timed interleaved for about 3 seconds. ``a`` corrects for a
        layer timed alone running warmer than inside the network, ``c`` is the forward's own Python
        overhead. Kept in the profile for this network (layers and other ops share ``a``; the file
        format keeps them apart for profiles that fit them separately)."""
        from .resize import apply_structure
        rng = np.random.default_rng(seed)
        dtype = getattr(torch, self.key["dtype"])
        models, feats = [], []
        uneven = set(graph.uneven())
        for i in range(n):
            widths = {}
            scale = np.ones(graph.n_channels)
            if i:
                for g, grp in enumerate(graph.groups):
                    if grp.frozen is None and g not in uneven:
                        w = max(1, int(round(grp.width * rng.uniform(0.3, 1.0))))
                        scale[grp.channels] = w / grp.width
                        for name in grp.producers:
                            if name in graph.layers:
                                widths[name] = graph.layers[name].width // grp.width * w
            try:
                m = apply_structure(model, widths, example_inputs=graph.example_inputs) if widths else \
                    copy.deepcopy(model)       # timed on the device: copies, never the caller's model
            except ValueError:
                continue                       # a random narrowing this network cannot take
            models.append(m.to(device=self.key["device"], dtype=dtype).eval())
            feats.append(self._parts(graph, scale))
        x = tuple(torch.randn(self.key["batch"], *t.shape[1:], device=self.key["device"], dtype=dtype)
                  if torch.is_tensor(t) and t.is_floating_point() else t for t in graph.example_inputs)
        sync = torch.cuda.synchronize if self.key["device"].startswith("cuda") else (lambda: None)
        times = [[] for _ in models]
        threads = torch.get_num_threads()
        if self.key["threads"]:
            torch.set_num_threads(self.key["threads"])
        try:
            with torch.inference_mode():
                t = time.perf_counter()
                models[0](*x)
                sync()
                # enough rounds for about 3 s of timing, at least ``rounds``
                rounds = int(min(200, max(rounds, 3.0 / max(time.perf_counter() - t, 1e-6) / len(models))))
                for r in range(rounds + 2):
                    for i, m in enumerate(models):
                        t = time.perf_counter()
                        m(*x)
                        sync()
                        if r >= 2:
                            times[i].append(time.perf_counter() - t)
        finally:
            torch.set_num_threads(threads)
        measured = np.array([np.median(t) for t in times])
        X = np.array([[l + o, 1.0] for l, o in feats])
        coef = _nnls(X / measured[:, None], np.ones(len(measured)))
        predicted = X @ coef
        entry = {"layers": float(coef[0]), "other": float(coef[0]), "constant_s": float(coef[1]),
                 "structures": len(models), "max_relative_error": float(np.max(np.abs(predicted / measured - 1))),
                 "measured_s": [float(t) for t in measured], "signatures": _signatures(graph)}
        self.calibration[network_key(graph)] = entry
        return entry

    def surrogate(self, graph) -> tuple[np.ndarray, np.ndarray]:
        """Per op, nanoseconds per FLOP of its pieces and per element of its activations: the smooth,
        monotone model the regularizer differentiates (least squares on the measurements, >= 0)."""
        per_flop, per_elem = np.zeros(graph.n_ops), np.zeros(graph.n_ops)
        p = graph.pieces
        n_in, n_out = p.n_in, p.n_out
        for op_index, table, grouped, pieces, _ in self._layer_ops(graph):
            if pieces is None:
                continue                      # no channel of it changes: no gradient weight
            fit = self._fit(table, grouped)
            # seconds per in x out slot pair (a whole conv group when grouped) -> per FLOP of the op
            first = pieces[0]
            flops_unit = p.flops[first] * (n_in[first] * n_out[first] if grouped else 1.0)
            per_flop[op_index] = fit[1] / max(flops_unit, 1e-30) * 1e9
        scale = self._batch_scale(graph)
        for i in range(graph.n_ops):
            if per_flop[i] == 0:
                per_elem[i] = self.kinds.get(_KIND_OF.get(graph.recording.ops[i].name, "other"),
                                             self.kinds.get("other", (0.0, 0.0)))[1] * scale * 1e9
        return per_flop, per_elem

    def _fit(self, table: Table, grouped: bool) -> tuple[float, float]:
        """``(a, b)`` of the least-squares line ``seconds = a + b * work`` through a table (``work`` is
        in x out channels, or conv groups), both clipped at 0: the table without its alignment effects."""
        fit = table.__dict__.get("_fit")
        if fit is None:
            ins, outs, s = np.asarray(table.ins, float), np.asarray(table.outs, float), np.asarray(table.seconds)
            work = ins[:, None] if grouped else ins[:, None] * outs[None, :]
            fit = table.__dict__["_fit"] = _line(work, s)
        return fit

    def smooth_layer_seconds(self, graph, alive: np.ndarray) -> float:
        """The layers' time for ``alive`` by the fitted lines of :meth:`_fit` (no alignment effects)."""
        from .costs import piece_counts
        a_in, a_out = piece_counts(graph, alive)
        n_out = graph.pieces.n_out
        total = 0.0
        for _, table, grouped, pieces, fixed in self._layer_ops(graph):
            a, b = self._fit(table, grouped)
            if pieces is None:
                work = float(fixed[0]) if grouped else float(fixed[0] * fixed[1])
            elif grouped:
                work = float((a_out[pieces] / n_out[pieces]).sum())
            else:
                work = float(a_in[pieces].sum()) * float(a_out[pieces].sum())
            total += (a + b * work) if work > 0 else 0.0
        return total

    def rounding(self, graph, widths: dict[int, int] | None = None) -> tuple[int, dict[int, float]]:
        """The width multiple this device is fast at for ``graph``. For each of :data:`ROUNDINGS`, the
        network is narrowed uniformly (0.3x to 0.95x, widths rounded to that multiple) and the layers'
        measured time is divided by what the straight-line fit of each table (no alignment effects)
        predicts for the same widths: above 1 where the widths are ones the kernels are slow at. The
        smallest multiple within 3% of the lowest mean ratio is chosen. Returns it and every
        multiple's mean ratio."""
        if widths is None:
            widths = {g: grp.width for g, grp in enumerate(graph.groups) if grp.frozen is None}
        layer_ops = [o for o, *_ in self._layer_ops(graph)]
        if not widths or not layer_ops:
            return 1, {}
        penalty = {}
        for r in ROUNDINGS:
            ratios = []
            for m in np.linspace(0.3, 0.95, 14):
                scale = np.ones(graph.n_channels)
                for g, w in widths.items():
                    new = 0 if w == 0 else max(r, int(round(m * w / r)) * r)
                    scale[graph.groups[g].channels] = new / graph.groups[g].width
                measured = float(self.op_seconds(graph, scale)[layer_ops].sum())
                ratios.append(measured / max(self.smooth_layer_seconds(graph, scale), 1e-30))
            penalty[r] = float(np.mean(ratios))
        best = min(penalty.values())
        return next(r for r in ROUNDINGS if penalty[r] <= 1.03 * best), {r: p / best for r, p in penalty.items()}

    # -- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "key": self.key,
                "kinds": {k: {"overhead_s": v[0], "per_element_s": v[1]} for k, v in self.kinds.items()},
                "layers": {k: {"ins": t.ins, "outs": t.outs, "seconds": t.seconds} for k, t in self.tables.items()},
                "calibration": self.calibration}

    def save(self, path) -> Path:
        """Write the profile as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        self.path = str(path)
        return path

    @staticmethod
    def load(path) -> "DeviceProfile":
        """Read a profile file (JSON: nothing in it can run code). Errors name the file and the problem."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"latency profile {path} does not exist; make one with netmorph profile") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProfileError(f"latency profile {path} is not readable JSON ({e}); make it again with "
                               "netmorph profile") from None
        return DeviceProfile.from_dict(data, str(path))

    @staticmethod
    def from_dict(data, source: str = "the latency profile") -> "DeviceProfile":
        """A profile from its JSON form (:meth:`to_dict`), every field checked."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProfileError(f"{source} is not a netmorph device profile (no \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise ProfileError(f"{source} has version {data.get('version')}, this netmorph reads "
                               f"version {VERSION}; make it again with netmorph profile")

        def number(v, what, positive=False):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (positive and v <= 0):
                raise ValueError(f"{what} must be a finite number >= 0, got {v!r}")
            return float(v)

        def widths(v, what, zero_ok=False):
            if not isinstance(v, list) or not v or any(isinstance(w, bool) or not isinstance(w, int) for w in v):
                raise ValueError(f"{what} must be a non-empty list of whole numbers")
            if any(w < (0 if zero_ok else 1) for w in v) or any(b <= a for a, b in zip(v, v[1:])):
                raise ValueError(f"{what} must be increasing widths of at least 1")
            return v
        try:
            for field in ("layers", "kinds", "key"):
                if not isinstance(data.get(field), dict):
                    raise ValueError(f"{field} must be an object")
            tables = {}
            for k, t in data["layers"].items():
                sig = Signature.from_key(k)
                if not isinstance(t, dict):
                    raise ValueError(f"table {k} must be an object")
                ins = widths(t.get("ins"), f"table {k}: ins")
                outs = [0] if sig.grouped and t.get("outs") == [0] else widths(t.get("outs"), f"table {k}: outs")
                seconds = t.get("seconds")
                if not isinstance(seconds, list) or len(seconds) != len(ins) or any(
                        not isinstance(row, list) or len(row) != len(outs) for row in seconds):
                    raise ValueError(f"table {k}: seconds must be {len(ins)} rows of {len(outs)} numbers")
                tables[k] = Table(ins, outs, [[number(x, f"table {k}: a time") for x in row] for row in seconds])
            kinds = {}
            for k, v in data["kinds"].items():
                if not isinstance(v, dict):
                    raise ValueError(f"kind {k} must be an object")
                kinds[k] = (number(v.get("overhead_s"), f"kind {k}: overhead_s"),
                            number(v.get("per_element_s"), f"kind {k}: per_element_s"))
            key = dict(data["key"])
            for field in ("device", "torch", "dtype", "memory_format"):
                if not isinstance(key.get(field), str):
                    raise ValueError(f"key.{field} must be a string")
            if isinstance(key.get("batch"), bool) or not isinstance(key.get("batch"), int) or key["batch"] < 1:
                raise ValueError("key.batch must be a positive integer")
            raw = data.get("calibration", {})
            if not isinstance(raw, dict):
                raise ValueError("calibration must be an object")
            calibration = {}
            for k, v in raw.items():
                if not isinstance(v, dict):
                    raise ValueError(f"calibration {k} must be an object")
                calibration[str(k)] = {**v, "layers": number(v.get("layers"), "calibration layers"),
                                       "other": number(v.get("other"), "calibration other"),
                                       "constant_s": number(v.get("constant_s"), "calibration constant_s")}
        except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as e:
            raise ProfileError(f"{source} is malformed ({e}); make it again with netmorph profile") from None
        if "other" not in kinds:
            raise ProfileError(f"{source} has no timing for op kind 'other'; make it again")
        return DeviceProfile(key, tables, kinds, source if source != "the latency profile" else None, calibration)


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0, by trying each set of free coefficients (few columns)."""
    k = A.shape[1]
    best, best_err = np.zeros(k), float(np.sum(b ** 2))
    for mask in range(1, 2 ** k):
        cols = [j for j in range(k) if mask >> j & 1]
        sol = np.linalg.lstsq(A[:, cols], b, rcond=None)[0]
        if np.all(sol >= 0):
            x = np.zeros(k)
            x[cols] = sol
            err = float(np.sum((A @ x - b) ** 2))
            if err < best_err:
                best, best_err = x, err
    return best


def _signatures(graph) -> list[str]:
    """The layer signatures of ``graph``'s ops, sorted, with repeats (a multiset)."""
    cache = graph.__dict__.setdefault("_profile_signatures", None)
    if cache is None:
        cache = graph.__dict__["_profile_signatures"] = sorted(
            found[0].key for op in graph.recording.ops if (found := layer_signature(op)) is not None)
    return cache


def network_key(graph) -> str:
    """A network's identity for its calibration: its layer signatures, with how often each occurs (widths
    left out, so a narrowed copy of the network shares its original's calibration; ResNet-20 and
    ResNet-56 differ)."""
    cache = graph.__dict__.get("_profile_network_key")
    if cache is None:
        cache = graph.__dict__["_profile_network_key"] = hashlib.sha256(
            "|".join(_signatures(graph)).encode()).hexdigest()[:16]
    return cache


def cache_dir() -> Path:
    """Where measured profiles are kept: ``$NETMORPH_CACHE`` or ``~/.cache/netmorph``, then ``profiles/``."""
    base = os.environ.get("NETMORPH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "netmorph")
    return Path(base) / "profiles"


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['device'].replace(':', '')}-b{key['batch']}-{digest}.json"


def _bar(done: int, total: int, what: str) -> None:
    if sys.stderr.isatty() or os.environ.get("NETMORPH_PROGRESS"):
        width = 30
        fill = int(width * done / max(total, 1))
        sys.stderr.write(f"\rprofiling [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {what:<12}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def profile(model: nn.Module, example_inputs, device: str = "cpu", threads: int | None = None, batch: int = 1,
            dtype: torch.dtype = torch.float32, channels_last: bool = False, cache: bool = True,
            calibrate: bool = True, progress=_bar) -> DeviceProfile:
    """The measured latency profile of ``model``'s layers on ``device`` at ``batch``.

    With ``cache`` the profile is kept in :func:`cache_dir` under its :func:`device_key`, and only
    layer signatures not measured before are timed (a second call for the same network only reads
    the file). ``example_inputs`` give the layers' input shapes; their batch does not matter.
    """
    from .graph import build_graph
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    key = device_key(device, threads, batch, dtype, channels_last)
    path = cache_path(key)
    prof = None
    if cache and path.exists():
        try:
            prof = DeviceProfile.load(path)
            if prof.key != key:
                prof = None
        except ProfileError:
            prof = None                       # a damaged cache entry is measured again
    prof = prof or DeviceProfile(key)
    graph = build_graph(model, example_inputs)
    changed = False
    if prof.missing(graph) or any(k not in prof.kinds for k in (*KINDS, "other")):
        prof.measure(graph, progress)
        changed = True
    if calibrate and network_key(graph) not in prof.calibration:
        prof.calibrate(model, graph)
        changed = True
    if cache and changed:
        prof.save(path)
    return prof


def parse_target(spec: str) -> dict:
    """``cpu``, ``cuda``, ``cpu@128`` (batch 128) or a profile file path -> what :func:`resolve` needs."""
    name, _, batch = spec.partition("@")
    if os.path.exists(spec) or spec.endswith(".json"):
        return {"path": spec}
    if name in ("cpu", "cuda") or name.startswith("cuda:"):
        try:
            b = int(batch) if batch else 1
        except ValueError:
            raise ProfileError(f"latency:{spec}: the batch after @ must be a whole number, e.g. latency:cpu@128") from None
        if b < 1:
            raise ProfileError(f"latency:{spec}: the batch after @ must be at least 1")
        return {"device": name, "batch": b}
    if batch:
        raise ProfileError(f"latency:{spec}: a profile file carries its own batch; drop @{batch}")
    return {"path": spec}


def resolve(spec: str, model: nn.Module, example_inputs, progress=_bar) -> DeviceProfile:
    """The profile ``latency:spec`` names, measured (or read from the cache) for ``model`` when the
    spec is a device, read from the file otherwise."""
    target = parse_target(spec)
    if "path" in target:
        return DeviceProfile.load(target["path"])
    return profile(model, example_inputs, target["device"], batch=target["batch"], progress=progress)
