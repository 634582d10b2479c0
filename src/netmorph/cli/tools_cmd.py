"""``netmorph explain``, ``netmorph prune`` and ``netmorph expand``: the library's tools on files.

- ``explain``: the channel groups of a model, what froze them, each layer's share of the cost.
- ``prune``: a regularized checkpoint (a ``state_dict`` file, or a run's ``checkpoint.pt``) made
  smaller for real. Without ``--structure`` the dead channels (the regularizer's notion) go; with a
  saved structure the model is narrowed to it, keeping the most important channels.
- ``expand``: a saved structure scaled uniformly (MorphNet's omega) to fill a budget.
Models are given as for ``netmorph morph``; the input shape is the built-in network's own or
``--input-shape``.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ..costs import count_cost, count_flops, count_params
from ..expand import expand
from ..explain import explain
from ..morph import absolute, make_regularizer
from ..resize import apply_structure
from ..structure import Structure
from ..surgery import prune
from . import common as C


def add_parsers(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser("explain", help="channel groups, frozen channels and why, cost per layer",
                       description=__doc__, formatter_class=fmt)
    _model_args(e)
    e.set_defaults(run=run_explain)

    p = sub.add_parser("prune", help="make a regularized checkpoint smaller for real", description=__doc__,
                       formatter_class=fmt)
    _model_args(p)
    p.add_argument("--checkpoint", required=True, help="state_dict file of the regularized model (or a netmorph "
                   "run's checkpoint.pt / final/model.pt, a Lightning .ckpt, .safetensors); read as plain data, never unpickled "
                   "in full")
    p.add_argument("--trust-checkpoint", action="store_true", help=C.TRUST_HELP)
    p.add_argument("--structure", default=None, help="structure JSON to prune to (default: the dead channels)")
    p.add_argument("--resource", default="flops", help="resource whose regularizer decides dead channels")
    p.add_argument("--approximate", action="store_true", help="also remove the dead channels of approximate groups "
                   "(a transformer's hidden width under LayerNorm: see netmorph explain); the output change is printed")

    o = sub.add_parser("export", help="write a saved network (a run's final/) to ONNX, checked in onnxruntime",
                       description=EXPORT_DOC, formatter_class=fmt)
    _model_args(o)
    o.add_argument("--from", dest="source", required=True, help="directory holding structure.json + model.pt "
                   "(a run's final/, or netmorph prune --out)")
    o.add_argument("--out", required=True, help="the .onnx file to write")
    o.set_defaults(run=run_export)

    f = sub.add_parser("profile", help="measure this device's layer times for a model (the latency:cpu resource)",
                       description=PROFILE_DOC, formatter_class=fmt)
    _model_args(f)
    f.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    f.add_argument("--threads", type=C.positive_int, default=None, help="torch threads (default: torch's current)")
    f.add_argument("--batch", type=C.positive_int, default=1, help="batch size the times are for (default 1)")
    f.add_argument("--out", default=None, help="also write the profile JSON here (to use it on another machine "
                   "with --resource latency:FILE)")
    f.set_defaults(run=run_profile)
    p.add_argument("--out", required=True, help="directory for structure.json + model.pt")
    p.set_defaults(run=run_prune)

    x = sub.add_parser("expand", help="scale a learned structure uniformly up (or down) to a budget",
                       description=__doc__, formatter_class=fmt)
    _model_args(x)
    x.add_argument("--structure", required=True, help="the learned structure (JSON)")
    x.add_argument("--budget", required=True, help="percentage of the model's cost, fraction, or absolute cost")
    x.add_argument("--resource", default="flops", help="flops, size, latency:cpu, latency:cuda, latency:PROFILE.json "
                   "or latency:HW (a roofline)")
    x.add_argument("--round-to", type=C.positive_int, default=None, help="widths become multiples of this (default: "
                   "1, or the multiple a measured latency profile is fast at)")
    x.add_argument("--out", default=None, help="write the expanded structure JSON here")
    x.set_defaults(run=run_expand)


def _model_args(p) -> None:
    p.add_argument("--model", default="tiny", help="built-in network or module:function (default tiny)")
    p.add_argument("--num-classes", type=C.positive_int, default=10, help="classes, if the builder takes them")
    p.add_argument("--input-shape", default=None, help="C,H,W of one input (default: the built-in network's)")


PROFILE_DOC = """``netmorph profile``: time a model's own layers on this device, at a grid of widths.

Each convolution and linear layer (by kind, kernel, stride and input size) is timed alone at a grid of
input x output widths, the other ops (norms, activations, additions, pooling) at a range of sizes,
and the sum is calibrated on timings of the whole network and random narrowings of it. The profile
is kept in the cache (~/.cache/netmorph/profiles, or $NETMORPH_CACHE) under everything that changes
timings (device, threads, torch version, batch...), so --resource latency:cpu reuses it. --out also
writes it as a file for --resource latency:FILE on another machine (format: docs/latency.md).

  netmorph profile --model resnet20 --batch 128
  netmorph profile --model resnet50 --input-shape 3,224,224 --out r50_cpu.json
"""


EXPORT_DOC = """``netmorph export``: the saved network as an ONNX file with a dynamic batch.

--model names the original architecture (as for netmorph morph); --from the directory the learned
network was saved in. When onnxruntime is installed the file is run on random inputs and its outputs
compared with PyTorch's. Needs pip install 'netmorph[onnx]'.

  netmorph export --model resnet20 --from runs/morph-resnet20/final --out resnet20_small.onnx
"""


def run_export(args) -> int:
    from ..export import ExportError, check_onnx, export_onnx
    from ..load import load
    model, example = _model_and_example(args)
    try:
        small = load(model, args.source)
    except FileNotFoundError as e:
        raise C.UsageError(str(e)) from None
    x = torch.randn(2, *example.shape[1:])
    try:
        path = export_onnx(small, x, args.out)
    except ExportError as e:
        raise C.UsageError(str(e)) from None
    try:
        diff = check_onnx(small, path, torch.randn(3, *example.shape[1:]))
        checked = f"; onnxruntime's outputs differ from PyTorch's by at most {diff:.2g}"
    except ExportError:
        checked = " (not checked: onnxruntime is not installed)"
    print(f"wrote {path}{checked}")
    return 0


def run_profile(args) -> int:
    import time
    from ..graph import build_graph
    from ..latency import ProfileError, cache_path, profile
    model, example = _model_and_example(args)
    t = time.perf_counter()
    try:
        prof = profile(model, example, args.device, threads=args.threads, batch=args.batch)
    except ProfileError as e:
        raise C.UsageError(str(e)) from None
    graph = build_graph(model, example)
    cal = prof.calibrated(graph)
    round_to, per = prof.rounding(graph)
    print(f"{prof.name}: {len(prof.tables)} layer signatures, {time.perf_counter() - t:.1f} s; "
          f"kept in {cache_path(prof.key)}")
    print(f"predicted {prof.cost(graph, np.ones(graph.n_channels)) / 1e6:.3f} ms for {args.model} at batch {args.batch}"
          + (f" (calibrated on {cal['structures']} timed structures, largest error {cal['max_relative_error']:.0%})"
             if "structures" in cal else ""))
    if per:
        print(f"fast width multiple: {round_to} (measured layer time over its straight-line fit, relative to the best multiple: "
              + ", ".join(f"{r}: {v:.2f}" for r, v in per.items()) + ")")
    if args.out:
        prof.save(args.out)
        print(f"wrote {args.out} (use it with --resource latency:{args.out})")
    return 0


def _model_and_example(args):
    shape = C.input_shape(args.model, args.input_shape)
    model = C.load_model(args.model, args.num_classes, shape[0])
    return model, torch.randn(1, *shape)


def run_explain(args) -> int:
    model, example = _model_and_example(args)
    print(explain(model, example))
    return 0


def run_prune(args) -> int:
    resource, hardware = C.parse_resource(args.resource)
    model, example = _model_and_example(args)
    hardware = C.resolve_hardware(resource, hardware, model, example)
    C.user_state_dict(args.checkpoint, "--checkpoint", model, args.trust_checkpoint, args.model)   # loads it
    reg = make_regularizer(model, example, resource, hardware)
    if args.structure is None or Structure.load(args.structure) == reg.structure():
        small = prune(model, reg, approximate=args.approximate)
        how = f"removed the dead channels ({small.netmorph_report})"
        structure = small.netmorph_report.widths          # approximate groups' dead channels kept unless asked
    else:
        structure = Structure.load(args.structure)
        small = apply_structure(model, structure, keep="importance", example_inputs=example)
        with torch.no_grad():
            model.eval(), small.eval()
            change = float((model(example) - small(example)).abs().max())
        how = f"narrowed to {args.structure}, keeping the largest |gamma| (largest output change {change:.3g})"
    C.prepare_out(args.out, "prune", args.model, resume=False).mkdir(parents=True, exist_ok=True)
    Structure(structure, original=reg.structure().original, input_shapes=[list(example.shape)]).save(
        f"{args.out}/structure.json")
    torch.save(small.state_dict(), f"{args.out}/model.pt")
    print(f"{how}\nFLOPs {count_flops(model, example):,} -> {count_flops(small, example):,}; parameters "
          f"{count_params(model):,} -> {count_params(small):,}\nwrote {args.out}/structure.json and model.pt "
          "(reload: " + "; ".join(C.reload_code(args.model, args.num_classes, int(example.shape[1]), str(args.out))[1:]) + ")")
    return 0


def run_expand(args) -> int:
    resource, hardware = C.parse_resource(args.resource)
    amount = C.parse_amount(args.budget, "--budget")
    model, example = _model_and_example(args)
    hardware = C.resolve_hardware(resource, hardware, model, example)
    learned = Structure.load(args.structure)
    budget = absolute(amount, count_cost(model, example, resource, hardware), "budget")
    result = expand(model, example, learned, budget, resource, hardware, args.round_to)
    print(result.table())
    if result.rounding_note:
        print(result.rounding_note)
    print(f"omega {result.omega:.4f}: {resource} {result.cost:,.0f} (budget {budget:,.0f})")
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}")
    return 0
