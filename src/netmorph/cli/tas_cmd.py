"""``netmorph tas``: TAS (Dong & Yang, NeurIPS 2019) on a built-in or user network.

Order of work: check the flags, the data, the model (a BatchNorm conv network) and that the FLOPs
target lies between the smallest and the full network, all before the run directory exists; then
train the teacher (the unpruned network, same recipe; or load ``--teacher``) -> search widths and
depths on two halves of the training split (weights on one, architecture on the other) -> derive
the structure -> train it with knowledge distillation from the teacher -> report (``metrics.json``
last). Every stage checkpoints after each epoch; ``--resume`` continues.
"""
from __future__ import annotations

import argparse
import math

import torch

from .. import dist
from ..costs import count_flops
from ..datasets import select
from ..morph import absolute, save_atomic
from ..resize import apply_structure
from ..tas import TAS, distill, initial_student, search
from ..tas.search import verdict
from ..train import Interrupted
from . import common as C
from .morph_cmd import add_common, closing_lines, restore, setup
from .report import metrics, plot_search, plot_widths, table

#: search settings and student init chosen on the CIFAR-10 ResNet-20 proxy (benchmarks/tas_proxy.py, cifar_tas.py)
SEARCH_DEFAULTS = {"a_lr": 5e-2, "w_lr": 0.01}
INITS = ("teacher", "keep", "fresh")
DEFAULT_INIT = "teacher"

EPILOG = """examples:
  netmorph tas                                            # built-in digits + tiny CNN, 50% of the FLOPs
  netmorph tas --model resnet20 --data cifar10:../shared/data --budget 50% --out runs/tas20
  netmorph tas --resume --out runs/tas20
"""


def add_parser(sub) -> None:
    p = sub.add_parser("tas", help="search widths and depths with TAS, then distill into the found network",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--budget", default="50%", help="the FLOPs target: a percentage or fraction of the original, "
                   "or absolute FLOPs (batch 1). Default: 50%%")
    p.add_argument("--search-epochs", type=C.positive_int, default=None, help="search epochs (default: --epochs)")
    p.add_argument("--tolerance", type=float, default=0.05, help="the FLOPs loss's tolerance band (default 0.05)")
    p.add_argument("--teacher", default=None, help="state_dict file of the trained original network (default: "
                   "train it with the same recipe); a state_dict, checkpoint, Lightning .ckpt or .safetensors, read as plain "
                   "data")
    p.add_argument("--trust-checkpoint", action="store_true", help=C.TRUST_HELP)
    p.add_argument("--arch-lr", type=float, default=SEARCH_DEFAULTS["a_lr"], help="Adam learning rate of the width "
                   "and depth logits (default %(default)g; too small and the search ends near uniform)")
    p.add_argument("--search-lr", type=float, default=SEARCH_DEFAULTS["w_lr"], help="peak SGD learning rate of the "
                   "weights while searching; the search starts from the teacher's weights, which a large rate "
                   "wipes out (default %(default)g)")
    p.add_argument("--init", choices=INITS, default=DEFAULT_INIT, help="how the found network starts its "
                   "distillation: 'teacher' keeps the teacher's most important channels of every layer (largest "
                   "|BatchNorm gamma|) with their trained weights; 'keep' takes the searched supernet's weights of the "
                   "first channels (the ones the search's interpolation trained); 'fresh' draws new weights the way "
                   "the model initializes itself. Default: %(default)s (docs/benchmarks.md, cifar_tas)")
    p.set_defaults(run=run)


def run(args) -> int:
    restore(args, "tas")
    amount = C.parse_amount(args.budget, "--budget")
    if not 0 <= args.tolerance < 1:
        raise C.UsageError(f"--tolerance must be in [0, 1), got {args.tolerance}")
    data, build, recipe, out = setup(args, "tas")
    if data.loaders:
        raise C.UsageError(f"netmorph tas splits the training data into two halves (weights and architecture), which "
                           f"it cannot do to the loaders of {data.name}; give tensors or folder: data, or call "
                           "netmorph.tas.search with two loaders from Python")
    example = data.example
    full = count_flops(build(), example)
    target = absolute(amount, full, "budget")
    try:
        TAS(build(), example, target, tolerance=args.tolerance)        # scope and target range, checked early
    except ValueError as exc:
        raise C.UsageError(f"netmorph tas: {exc}") from None
    teacher_state = None
    if args.teacher:
        teacher_state = C.user_state_dict(args.teacher, "--teacher", build(), args.trust_checkpoint, args.model)
    if dist.active():
        raise C.UsageError("netmorph tas runs in one process (its search is not data-parallel); drop torchrun")
    out.mkdir(parents=True, exist_ok=True)
    C.lock_out(out)
    (out / "FAILED.txt").unlink(missing_ok=True)
    C.write_json(out / "config.json", {"command": "tas", "args": {k: v for k, v in vars(args).items() if k != "run"},
                                       "torch": torch.__version__})
    C.log_to(out / "log.txt")
    C.say(f"netmorph tas: {args.model} on {data.name}, FLOPs {full:,} -> target {target:,.0f}; run directory {out}")
    with C.StopFlag() as stop, C.Progress(C.MetricsLog(out)) as progress:
        try:
            if teacher_state is None:
                teacher, teacher_hist = C.train_baseline(build, data, recipe, out, stop, progress)
            else:
                teacher, teacher_hist = build(), None
                teacher.load_state_dict(teacher_state)
            tas, search_hist = run_search(args, data, recipe, teacher, target, out, stop, progress)
            structure = tas.derive()
            structure.save(out / "searched_structure.json")
            searched = apply_structure(tas.model, structure, keep="first", example_inputs=example)
            student = initial_student(args.init, structure, build, teacher, tas.model, example, recipe.seed)
            kd_hist = run_distill(student, teacher, data, recipe, out, stop, progress)
        except Interrupted:
            C.say(f"interrupted: checkpoint saved in {out}; continue with: netmorph tas --resume --out {out}")
            return 130
    rows = metrics({"original": teacher, "searched": searched, "final": student}, data.test, example, "flops", None)
    (out / "final").mkdir(exist_ok=True)
    structure.save(out / "final" / "structure.json")
    torch.save(C.cpu_state(student), out / "final" / "model.pt")
    pics = plot_widths(out / "widths.png", structure.original, {"found": structure})
    pics &= plot_search(out / "training.png", search_hist, teacher_hist, kd_hist, target, full)
    undecided = verdict(search_hist)
    if undecided:
        C.say(f"warning: {undecided}")
    text = [f"# netmorph tas: {args.model} on {data.name}", "",
            f"FLOPs target {target:,.0f} ({target / full:.0%} of {full:,}), tolerance {args.tolerance}; "
            f"{len(search_hist)} search epochs, {recipe.epochs} distillation epochs; seed {args.seed}.", "",
            table(rows, "flops"), "",
            "original: the teacher (the unpruned network" + (", trained with the same recipe)" if teacher_hist else
                                                              ", loaded from --teacher)") +
            "; searched: the derived network with the search's weights; final: the derived network trained "
            f"({args.init} init) with knowledge distillation from the teacher.", "",
            *search_lines(search_hist, full), ""]
    text += closing_lines(args, data, rows, "flops", pics)
    (out / "metrics.md").write_text("\n".join(text) + "\n")
    C.say("\n" + table(rows, "flops") + f"\n\nrun directory: {out}")
    C.write_json(out / C.COMPLETE, {"models": rows, "target": target, "original_flops": full,
                                    "structure": structure.to_dict(), "search_history": search_hist,
                                    "teacher_history": teacher_hist, "kd_history": kd_hist})
    return 0


def run_search(args, data, recipe, teacher, target, out, stop, progress):
    """TAS over the teacher's weights; the training split's halves: weights on one, architecture on
    the other. Checkpointed to ``search.pt`` after every epoch."""
    ckpt = out / "search.pt"
    tas = TAS(teacher, data.example, target, tolerance=args.tolerance, seed=recipe.seed)
    epochs = args.search_epochs or recipe.epochs
    state = C.load_run_file(ckpt, "the TAS search checkpoint")
    if state is not None and state["epoch"] >= epochs:
        tas.load_state_dict(state["tas"])
        return tas, state["history"]
    perm = torch.randperm(len(data.train[0]), generator=torch.Generator().manual_seed(recipe.seed))
    half = len(perm) // 2
    x, y = data.train
    progress.stage("TAS search", epochs - (state["epoch"] if state else 0), math.ceil(half / recipe.batch_size))
    history = search(tas, (select(x, perm[:half]), y[perm[:half]]), (select(x, perm[half:]), y[perm[half:]]), epochs,
                     batch_size=recipe.batch_size, w_lr=args.search_lr, a_lr=args.arch_lr, seed=recipe.seed,
                     augment=x.dim() == 4 and recipe.flip, crop_padding=recipe.crop_padding,
                     log=lambda s: C.say(f"  search {s}"), on_batch=progress.step,
                     checkpoint=lambda s: save_atomic(s, ckpt), state=state, stop=stop, on_epoch=progress.epoch)
    C.say(f"  found: {tas.flops():,.0f} FLOPs for a target of {target:,.0f}")
    return tas, history


def search_lines(history: list[dict], full: float) -> list[str]:
    """metrics.md: per search epoch, how decided the distributions are and the FLOPs, then the last
    epoch's distributions one by one; the verdict line when the search ended undecided."""
    if not history or not all("decided" in h for h in history):      # a search from before the diagnostics
        return []
    lines = ["## Search", "", "| epoch | tau | decided (top-1 >= 0.5) | mean margin | mean entropy | argmax FLOPs | "
             "expected FLOPs |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {h['epoch']} | {h['tau']:.3g} | {h['decided']:.0%} | {h['margin']:.2f} | {h['entropy']:.2f} | "
              f"{h['flops'] / full:.1%} | {h['expected_flops'] / full:.1%} |" for h in history]
    lines += ["", "Entropy is over its maximum (1: uniform); margin is top-1 minus top-2 probability.", "",
              "| distribution | kind | chosen | top-1 | margin | entropy |", "|---|---|---|---|---|---|"]
    for d in history[-1].get("distributions", []):
        best = max(range(len(d["probs"])), key=d["probs"].__getitem__)
        lines.append(f"| {d['name']} | {d['kind']} | {d['candidates'][best]} of {d['candidates']} | {d['top1']:.2f} | "
                     f"{d['margin']:.2f} | {d['entropy']:.2f} |")
    undecided = verdict(history)
    return lines + (["", f"**Warning:** {undecided}."] if undecided else [])


def run_distill(student, teacher, data, recipe, out, stop, progress):
    """The found network trained with knowledge distillation from the teacher (``distill.pt``)."""
    def kd(model, train, val, recipe, **kw):
        return distill(model, teacher, train, val, recipe, **kw)
    return C.train_resumable(student, data, recipe, out / "distill.pt", "knowledge distillation", stop, progress,
                           train=kd)
