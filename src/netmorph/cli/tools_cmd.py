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
    p.add_argument("--out", required=True, help="directory for structure.json + model.pt")
    p.set_defaults(run=run_prune)

    x = sub.add_parser("expand", help="scale a learned structure uniformly up (or down) to a budget",
                       description=__doc__, formatter_class=fmt)
    _model_args(x)
    x.add_argument("--structure", required=True, help="the learned structure (JSON)")
    x.add_argument("--budget", required=True, help="percentage of the model's cost, fraction, or absolute cost")
    x.add_argument("--resource", default="flops", help="flops, size, latency or latency:HW")
    x.add_argument("--round-to", type=C.positive_int, default=1, help="widths become multiples of this")
    x.add_argument("--out", default=None, help="write the expanded structure JSON here")
    x.set_defaults(run=run_expand)


def _model_args(p) -> None:
    p.add_argument("--model", default="tiny", help="built-in network or module:function (default tiny)")
    p.add_argument("--num-classes", type=C.positive_int, default=10, help="classes, if the builder takes them")
    p.add_argument("--input-shape", default=None, help="C,H,W of one input (default: the built-in network's)")


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
    C.user_state_dict(args.checkpoint, "--checkpoint", model, args.trust_checkpoint, args.model)   # loads it
    reg = make_regularizer(model, example, resource, hardware)
    if args.structure is None or Structure.load(args.structure) == reg.structure():
        small = prune(model, reg)
        how = f"removed the dead channels ({small.netmorph_report})"
        structure = reg.structure()
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
    learned = Structure.load(args.structure)
    budget = absolute(amount, count_cost(model, example, resource, hardware), "budget")
    result = expand(model, example, learned, budget, resource, hardware, args.round_to)
    print(result.table())
    print(f"omega {result.omega:.4f}: {resource} {result.cost:,.0f} (budget {budget:,.0f})")
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}")
    return 0
