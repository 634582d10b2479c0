"""Record one eager forward pass of a model as a flat list of ops.

Why eager recording rather than ``torch.fx`` or ``torch.export``: both fail on data-dependent
control flow, and fx also on shape checks, which users' own models are full of. Recording the
forward that really runs follows every branch the example inputs take and needs no change to the
user's code.

How: forward hooks on every submodule plus a ``TorchFunctionMode``. Modules with a layer rule
(convolutions, linear layers, batch norms: see :data:`LAYER_TYPES`) are recorded as one op each and
everything they call inside is hidden; every other torch function called outside such a layer
(``F.relu``, ``x + y``, ``torch.cat``, ``x.view``...) is recorded as a function op. A
``FlopCounterMode`` runs underneath, so every op also carries the FLOPs torch itself counted for it
(used as the constant cost of ops the channel graph does not understand), with
:data:`FLOP_FORMULAS` for the attention kernel torch's counter leaves out on CPU.

The model runs in eval mode with gradients enabled (under ``no_grad`` fused attention kernels hide
their matrix products), and leaves no trace: train/eval flags, buffers (BN statistics) and the RNG
state are restored afterwards.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .removed import ConstantOutput, Vanished

#: Module types recorded as one op (when their ``forward`` is not overridden).
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
               nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.Embedding, Vanished, ConstantOutput)

#: Attribute names a Python-written RMS norm module (Llama's ``LlamaRMSNorm``, T5's ``T5LayerNorm``) may
#: keep its epsilon in.
EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")


def attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of attention's two products, ``2 * B * heads * L * S * (E + Ev)`` (causality not counted,
    as torch counts its other attention kernels). Torch's counter has no formula for the CPU kernel
    (``_scaled_dot_product_flash_attention_for_cpu``) and would count it as free; grouped-query heads
    are counted per query head."""
    *batch, heads, length, dim = query_shape
    source, value_dim = key_shape[-2], value_shape[-1]
    return int(2 * int(np.prod(batch)) * heads * length * source * (dim + value_dim))


#: Formulas for ops ``torch.utils.flop_counter`` does not count (added to its own).
FLOP_FORMULAS = {op: attention_flops for op in
                 (getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),) if op is not None}


class GraphRecordError(RuntimeError):
    """The model could not be run and recorded on the example inputs."""


@dataclasses.dataclass(eq=False)
class Value:
    """One tensor seen during the forward pass (a new Value after every in-place op)."""

    id: int
    shape: tuple[int, ...]


@dataclasses.dataclass(eq=False)
class Op:
    """One recorded call: a layer module (``module`` set) or a torch function."""

    name: str                     # normalized function name, or the layer's class name
    scope: str                    # name of the innermost module running when it was called
    inputs: list[Any]             # args with tensors replaced by Values (parameters stay Parameters)
    kwargs: dict[str, Any]
    outputs: list[Value]
    measured_flops: int
    module: nn.Module | None = None
    module_name: str | None = None
    note: str | None = None       # what the recorder checked about a layer (an RMS norm's formula)


@dataclasses.dataclass
class Recording:
    inputs: list[Value]
    outputs: list[Value]
    ops: list[Op]
    module_names: dict[int, str]      # id(module) -> first name in named_modules()
    param_owner: dict[int, str]       # id(parameter) -> "module.param"
    module_outputs: dict[str, list[Value]]  # module name -> Values it returned (every call)
    modules: dict[str, nn.Module] = dataclasses.field(default_factory=dict)   # name -> module


def is_frozen_batchnorm(module) -> bool:
    """torchvision's ``FrozenBatchNorm2d`` itself (by its exact class, so torchvision need not be imported)."""
    cls = type(module)
    return cls.__name__ == "FrozenBatchNorm2d" and cls.__module__ == "torchvision.ops.misc"


def _is_layer(module: nn.Module) -> bool:
    return (isinstance(module, LAYER_TYPES) and type(module).forward in {t.forward for t in LAYER_TYPES}) or \
        is_frozen_batchnorm(module) or is_conv1d(module) or is_rms_module(module)


def is_rms_module(module: Any) -> bool:
    """A Python-written RMS norm (Llama's ``LlamaRMSNorm``, T5's ``T5LayerNorm``, Mistral's, ...): a
    module whose class name says RMS norm (or is ``T5LayerNorm``), with a 1-d ``weight`` as its only
    parameter, no submodules and a float epsilon (:data:`EPS_ATTRS`). It is recorded as one op; whether
    it really computes ``weight * x / sqrt(mean(x**2, -1) + eps)`` is checked on the example inputs
    (:func:`rms_norm_check`)."""
    cls = type(module)
    if isinstance(module, nn.RMSNorm) or not ("rmsnorm" in cls.__name__.lower() or cls.__name__ == "T5LayerNorm"):
        return False
    params = dict(module.named_parameters(recurse=False))
    weight = params.get("weight")
    return list(params) == ["weight"] and weight.dim() == 1 and not any(True for _ in module.children()) and \
        rms_eps_attr(module) is not None


def rms_eps_attr(module: Any) -> str | None:
    """The name of the float attribute holding an RMS norm module's epsilon."""
    return next((a for a in EPS_ATTRS if isinstance(getattr(module, a, None), float)), None)


def rms_norm_check(module: nn.Module, args, out) -> str | None:
    """None if ``out`` is ``weight * x / sqrt(mean(x**2, -1) + eps)`` of the module's input (to float32
    rounding), else what differs."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or out.shape != x.shape or \
            x.shape[-1] != module.weight.numel():
        return "its input and output are not one tensor of the width of its weight"
    with torch.no_grad():
        xf = x.detach().double()
        eps = float(getattr(module, rms_eps_attr(module)))
        want = module.weight.detach().double() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        err = float((want - out.detach().double()).abs().max()) if want.numel() else 0.0
        scale = float(want.abs().max()) if want.numel() else 1.0
    tol = 1e-6 if out.dtype == torch.float64 else 1e-2 if out.dtype in (torch.float16, torch.bfloat16) else 1e-5
    return None if err <= tol * max(scale, 1e-30) else \
        f"its output differs from weight * x / sqrt(mean(x**2) + eps) by {err:.3g} on the example inputs"


def normalize_name(func: Any) -> str:
    """``Tensor.__iadd__``/``add_``/``torch.add`` -> ``add``; ``__rsub__`` -> ``rsub``."""
    name = getattr(func, "__name__", None) or str(func)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in {"add", "sub", "mul", "truediv", "div"}:
            name = name[1:]
    name = name.lstrip("_")
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return {"truediv": "div", "rtruediv": "rdiv", "concat": "cat", "concatenate": "cat"}.get(name, name)


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, flops: FlopCounterMode):
        super().__init__()
        self.flops = flops
        self.values: dict[int, Value] = {}
        self.keep: list[torch.Tensor] = []        # strong references: ids must not be reused
        self.ops: list[Op] = []
        self.hidden = 0                           # >0 while inside a recorded layer
        self.stack: list[str] = [""]
        self.pending: list[tuple[list[Any], int]] = []
        self.module_names = {}
        for name, m in model.named_modules():
            self.module_names.setdefault(id(m), name)
        self.param_owner = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.param_owner.setdefault(id(p), name)
        self.last_call = "forward"
        self.module_outputs: dict[str, list[Value]] = {}

    # -- values ------------------------------------------------------------------------------
    def new_value(self, t: torch.Tensor) -> Value:
        v = Value(len(self.keep), tuple(t.shape))
        self.keep.append(t)
        self.values[id(t)] = v
        return v

    def wrap(self, obj: Any) -> Any:
        """Replace tensors seen before by their Values; keep parameters and constants as they are."""
        if isinstance(obj, torch.Tensor):
            if isinstance(obj, nn.Parameter) or id(obj) in self.param_owner:
                return obj
            return self.values.get(id(obj), obj)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.wrap(o) for o in obj) if not hasattr(obj, "_fields") else obj
        if isinstance(obj, dict):
            return {k: self.wrap(o) for k, o in obj.items()}
        return obj

    def outputs(self, out: Any) -> list[Value]:
        return [self.new_value(t) for t in flatten_tensors(out)]

    # -- function calls ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = normalize_name(func)
        self.last_call = name
        if self.hidden:
            return func(*args, **kwargs)
        before = self.flops.get_total_flops()
        wrapped_args, wrapped_kwargs = self.wrap(list(args)), self.wrap(kwargs)
        out = func(*args, **kwargs)
        if name == "setitem" and args and isinstance(args[0], torch.Tensor):
            # x[i] = v writes into x and returns nothing: from here on x is a new value, made by this op
            self.ops.append(Op(name, self.stack[-1], wrapped_args, wrapped_kwargs, [self.new_value(args[0])],
                               self.flops.get_total_flops() - before))
            return out
        if not any(True for _ in flatten_tensors(out)):
            return out                            # sizes, dtypes, bools: no value flows
        self.ops.append(Op(name, self.stack[-1], wrapped_args, wrapped_kwargs, self.outputs(out),
                           self.flops.get_total_flops() - before))
        return out

    # -- module hooks ------------------------------------------------------------------------
    def pre_hook(self, module, args):
        name = self.module_names.get(id(module), type(module).__name__)
        self.stack.append(name)
        if _is_layer(module):
            if not self.hidden:
                with torch._C.DisableTorchFunction():
                    self.pending.append((self.wrap(list(args)), self.flops.get_total_flops()))
            self.hidden += 1

    def post_hook(self, module, args, out):
        name = self.stack.pop()
        self.module_outputs.setdefault(name, []).extend(
            self.values[id(t)] for t in flatten_tensors(out) if id(t) in self.values and not _is_layer(module))
        if _is_layer(module):
            self.hidden -= 1
            if not self.hidden:
                with torch._C.DisableTorchFunction():
                    inputs, before = self.pending.pop()
                    note = rms_norm_check(module, args, out) if is_rms_module(module) else None
                    self.ops.append(Op(type(module).__name__, self.stack[-1], inputs, {}, self.outputs(out),
                                       self.flops.get_total_flops() - before, module, name, note))
                    self.module_outputs.setdefault(name, []).extend(self.ops[-1].outputs)


def flatten_tensors(obj: Any):
    """Yield the tensors inside nested tuples, lists and dicts, in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from flatten_tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from flatten_tensors(o)


def is_conv1d(module: Any) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer whose weight is laid out ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int) and \
        isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.dim() == 2


def unwrap(model: Any) -> Any:
    """The user's own module inside the wrappers training code puts around it, which share its
    parameters: ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``) and (Distributed)DataParallel
    (``module``). Sharded models (FSDP) hold only a shard of each parameter and are refused."""
    while True:
        cls = type(model)
        if any(c.__name__ in ("FullyShardedDataParallel", "FSDPModule") for c in cls.__mro__):
            raise TypeError(f"{cls.__name__}: netmorph does not work on sharded models (FSDP), whose parameters are "
                            "split across processes; record, regularize and prune the model before sharding it, or "
                            "use DistributedDataParallel")
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif cls.__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _tensors_only(obj: Any) -> bool:
    """A tensor, or a non-empty list / tuple / dict holding only such."""
    if isinstance(obj, torch.Tensor):
        return True
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else None
    return values is not None and len(values) > 0 and all(_tensors_only(v) for v in values)


def as_input_tuple(example_inputs: Any) -> tuple:
    """The positional arguments of ``model(*args)``: a tensor becomes ``(tensor,)``; a tuple or list is
    the arguments themselves, each a tensor or a list / tuple / dict of tensors (a torchvision
    detection model takes a list of images: pass ``([image],)``). Anything else is refused."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(_tensors_only(t) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a non-empty tuple of arguments, each a tensor or a list or "
                    f"dict of tensors (got {type(example_inputs).__name__}); pass e.g. torch.randn(1, 3, 32, 32), or "
                    "([image],) for a model that takes a list of images")


def inputs_on_device_of(model: nn.Module, inputs: tuple) -> tuple:
    """``inputs`` moved to the device of the model's first parameter (or buffer), so example inputs
    made on the CPU record a model on a GPU; unchanged when the model has neither."""
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    if first is None or all(t.device == first.device for t in flatten_tensors(inputs)):
        return inputs
    from ..train import to_device
    return to_device(inputs, first.device)


def input_shapes(inputs: tuple) -> list[list[int]] | None:
    """The shapes of plain tensor arguments (what a Structure records to rebuild them alone), or None
    when an argument is a list or dict (the structure then needs its example inputs passed again)."""
    return [list(t.shape) for t in inputs] if all(isinstance(t, torch.Tensor) for t in inputs) else None


def record(model: nn.Module, example_inputs: Any) -> Recording:
    """Run ``model(*example_inputs)`` once and return what it did, leaving the model as it was."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    inputs = inputs_on_device_of(model, as_input_tuple(example_inputs))
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flops = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    rec = _Recorder(model, flops)
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(rec.pre_hook))
        handles.append(m.register_forward_hook(rec.post_hook))
    devices = [t.device for t in flatten_tensors(inputs) if t.device.type == "cuda"]
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), flops, rec:
            in_values = [rec.new_value(t) for t in flatten_tensors(inputs)]
            try:
                out = model(*inputs)
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                where = rec.stack[-1] or "<top level>"
                kind = type(_find_module(model, where)).__name__ if where != "<top level>" else type(model).__name__
                raise GraphRecordError(
                    f"could not record the forward pass of {type(model).__name__}: it failed in module "
                    f"'{where}' ({kind}) at op '{rec.last_call}': {type(exc).__name__}: {exc}. "
                    "Check that the example inputs have the shape and dtype the model expects.") from exc
            out_values = [rec.values[id(t)] for t in flatten_tensors(out) if id(t) in rec.values]
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    if not out_values:
        raise GraphRecordError(f"{type(model).__name__} returned no tensor computed from its inputs; "
                               "the model must return a tensor, a tuple or a dict of tensors")
    return Recording(in_values, out_values, rec.ops, rec.module_names, rec.param_owner, rec.module_outputs,
                     dict(model.named_modules()))


def _find_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return model
