"""Deploying a learned network: ONNX files (checked in onnxruntime) and ``torch.export`` programs.

A pruned network may hold the stand-ins of removed branches (``Vanished``, ``ConstantOutput``,
``RemovedNorm``, see :mod:`netmorph.graph.removed`). They export as ordinary ops: a removed residual
branch becomes the constant it emitted, broadcast to the size of its input (so the file keeps a
dynamic batch; the zero-channel tensor is only read for its shape there), and a removed branch that
fed a concat is cut out of the ONNX graph (:func:`_fold_empty`).

``onnx`` and ``onnxruntime`` are optional (``pip install 'netmorph[onnx]'``).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torch.overrides import TorchFunctionMode

from .graph.record import as_input_tuple, flatten_tensors
from .graph.removed import Vanished, _empty_axis, _map


class ExportError(RuntimeError):
    """The network could not be exported (the message says what failed and what to try)."""


def _plain(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose removed branches emit plain (not ``Hollow``) empty tensors: exporters
    trace tensor subclasses poorly, and an exported graph never needs the Hollow fallback."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, Vanished):
            m.hollow = False
    return model


class _EmptyBranches(TorchFunctionMode):
    """While exporting: an op that rejects a tensor with an empty channel axis (``F.interpolate``,
    ``F.max_pool2d``...) runs on a one-channel stand-in of zeros and keeps zero channels of the result,
    as :class:`~netmorph.graph.removed.Hollow` does in eager mode (exporters cannot trace a subclass).

    Used twice: on an eager forward it tries each op and learns which ones need the stand-in
    (``needs``); while an exporter traces, those ops go to the stand-in directly (an op failing inside
    a trace can leave the tracer broken)."""

    def __init__(self, needs: set | None = None):
        super().__init__()
        self.learning = needs is None
        self.needs = set() if needs is None else needs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # (sizes traced as 0-dim tensors take part too: they are not data)
        tensors = [t for t in flatten_tensors((args, kwargs)) if t.dim() > 0]
        empty = bool(tensors) and all(t.numel() == 0 and t.dim() > 1 for t in tensors)
        if empty and func in self.needs:
            return self._stand_in(func, args, kwargs, _empty_axis(tensors[0]))
        if not (empty and self.learning):
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except RuntimeError:
            self.needs.add(func)
            return self._stand_in(func, args, kwargs, _empty_axis(tensors[0]))

    @staticmethod
    def _stand_in(func, args, kwargs, axis):
        def one(t):
            if isinstance(t, torch.Tensor) and t.dim() > 1 and t.numel() == 0:
                return torch.zeros(*t.shape[:axis], 1, *t.shape[axis + 1:], dtype=t.dtype, device=t.device)
            return t
        out = func(*_map(args, one), **_map(kwargs, one))
        return _map(out, lambda t: t.narrow(axis, 0, 0) if t.dim() > axis else t)


def _traceable(model: nn.Module, inputs: tuple):
    """``(copy, ops, outputs)``: :func:`_plain`'s copy of ``model``, the ops that need the empty-branch
    stand-in while an exporter traces it (learnt on one eager forward) and that forward's outputs."""
    net, learn = _plain(model), _EmptyBranches()
    with torch.no_grad(), learn:
        outputs = net(*inputs)
    return net, learn.needs, outputs


def _fold_empty(path: Path, example_inputs) -> int:
    """Drop every input of a Concat that carries no channels, and then every node whose outputs nothing
    uses any more: a removed branch that only fed a concat leaves the file. Which inputs are empty is
    read by running the file once in onnxruntime on the example inputs (their sizes are dynamic, so
    shape inference cannot tell); without onnxruntime nothing is folded. Returns the nodes removed."""
    import onnx
    try:
        import onnxruntime as ort
    except ImportError:
        return 0
    model = onnx.load(str(path))
    graph = model.graph
    concats = [n for n in graph.node if n.op_type == "Concat"]
    if not concats:
        return 0
    probe = onnx.load(str(path))
    known = {o.name for o in probe.graph.output}
    wanted = sorted({i for n in concats for i in n.input if i not in known})
    probe.graph.output.extend(onnx.ValueInfoProto(name=i) for i in wanted)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), as_input_tuple(example_inputs))}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    for node in concats:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        keep = [i for i in node.input if not (i in values and values[i].ndim > axis and values[i].shape[axis] == 0)]
        if keep and len(keep) < len(node.input):
            del node.input[:]
            node.input.extend(keep)
    before = len(graph.node)
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    onnx.save(model, str(path))
    return before - len(graph.node)


def export_onnx(model: nn.Module, example_inputs, path, dynamic_batch: bool = True, opset: int | None = None) -> Path:
    """Write ``model`` (in eval mode) to the ONNX file ``path`` for inputs shaped like
    ``example_inputs``; with ``dynamic_batch`` the first dimension of every input and output may vary.
    Inputs are named ``input0``, ``input1``..., outputs ``output0``... Returns the path."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'netmorph[onnx]'") from None
    inputs = as_input_tuple(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net, needs, outputs = _traceable(model, inputs)
    n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    names_in = [f"input{i}" for i in range(len(inputs))]
    names_out = [f"output{i}" for i in range(n_out)]
    axes = {n: {0: "batch"} for n in names_in + names_out} if dynamic_batch else None
    kw = {"opset_version": opset} if opset else {}
    try:
        with warnings.catch_warnings(), _EmptyBranches(needs):
            warnings.simplefilter("ignore", DeprecationWarning)      # the TorchScript exporter: dynamic batch, fast
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(net, inputs, str(path), dynamo=False, input_names=names_in, output_names=names_out,
                              dynamic_axes=axes, **kw)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is reported with its cause
        raise ExportError(f"torch.onnx.export failed on this network ({type(exc).__name__}: {exc}); if the "
                          "original network does not export either, the cause is in its own forward") from exc
    _fold_empty(path, inputs)
    return path


def onnx_outputs(path, example_inputs, threads: int | None = None) -> list[np.ndarray]:
    """The outputs of the ONNX file ``path`` run in onnxruntime (CPU) on ``example_inputs``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running an ONNX file needs onnxruntime: pip install 'netmorph[onnx]'") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), as_input_tuple(example_inputs))}
    return session.run(None, feed)


def check_onnx(model: nn.Module, path, example_inputs) -> float:
    """The largest difference between ``model``'s outputs and the ONNX file's (onnxruntime), relative
    to the largest output magnitude where that is above 1 (float32 rounding grows with the values)."""
    with torch.no_grad():
        ours = copy.deepcopy(model).eval()(*as_input_tuple(example_inputs))
    ours = list(ours) if isinstance(ours, (tuple, list)) else [ours]
    theirs = onnx_outputs(path, example_inputs)
    worst = 0.0
    for a, b in zip(ours, theirs):
        a = a.detach().cpu().numpy()
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(a)))))
    return worst


def export_program(model: nn.Module, example_inputs):
    """``torch.export.export`` of ``model`` in eval mode (removed branches as plain tensors, ops that
    reject them run as in :class:`_EmptyBranches`)."""
    inputs = as_input_tuple(example_inputs)
    net, needs, _ = _traceable(model, inputs)
    with _EmptyBranches(needs):
        return torch.export.export(net, inputs)
