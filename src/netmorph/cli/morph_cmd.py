"""``netmorph morph``: MorphNet's loop on a built-in or user network, into a run directory.

Order of work: check every flag, load the data and the model, check the budget can be met (all
before the run directory exists); train the original network as the baseline the result must
beat (``--no-baseline`` skips it); run :func:`netmorph.morph.morph` with a checkpoint after every
epoch; then write the structures, the final model, the metrics and the pictures, ``metrics.json``
last (a run directory without it is unfinished and ``--resume`` continues it).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math

import torch

from .. import dist
from ..datasets import load_data
from ..expand import cost_floor
from ..graph import GraphRecordError, build_graph
from ..morph import absolute, make_regularizer, morph, replay
from ..surgery import prune
from ..train import Interrupted, steps_per_epoch
from . import common as C
from .report import metrics, onnx_files, plot_training, plot_widths, speed_note, table

EPILOG = """examples:
  netmorph morph                                   # built-in digits + tiny CNN, FLOPs budget 100%
  netmorph morph --model resnet20 --data cifar10:../shared/data --budget 50% --out runs/r20
  netmorph morph --model mynet:build --data folder:~/pics --resource latency:P100 --budget 70%
  netmorph morph --resume --out runs/r20           # continue an interrupted run
  torchrun --nproc_per_node=2 -m netmorph morph ...  # the same, data-parallel (gloo on CPU)
"""


def add_parser(sub) -> None:
    p = sub.add_parser("morph", help="learn a structure with MorphNet and train it (shrink, expand, retrain)",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--resource", default="flops", help="flops, size (weights), latency or latency:HW "
                   "(roofline; HW a name from netmorph.HARDWARE, default V100). Default: flops")
    p.add_argument("--budget", default="100%", help="cost of the final network: a percentage of the original "
                   "(100%% = same cost, better network; above 100%% grows it), a fraction, or an absolute "
                   "number in the resource's unit. Default: 100%%")
    p.add_argument("--shrink", default="50%", help="how far the regularizer shrinks the network before it is "
                   "expanded to the budget: a percentage (below 100%%) of the current cost or an absolute cost. "
                   "Default: 50%%, deep enough to show which layers matter, shallow enough to reach in a short run")
    p.add_argument("--rounds", type=C.positive_int, default=1, help="shrink-expand rounds (default 1)")
    p.add_argument("--round-to", type=C.positive_int, default=None,
                   help="widths become multiples of this (default: 1, or with latency:cpu/cuda/FILE the multiple the "
                   "measured device is fast at, stated in the log)")
    p.add_argument("--no-baseline", action="store_true", help="do not train the original network for comparison")
    p.add_argument("--init", choices=("keep", "fresh"), default=None, help="keep (the default when there are "
                   "trained weights): regularize the trained original (--checkpoint, else the baseline this run "
                   "trains; with --no-baseline a fresh build), prune it exactly, widen it "
                   "keeping every alive weight, fine-tune; fresh (the default with --no-baseline and no --checkpoint): train "
                   "the expanded structure from the model's own initialization (the paper's way)")
    p.add_argument("--checkpoint", default=None, help="with --init keep: the trained original to start from (a "
                   "state_dict, a Lightning .ckpt, .safetensors; read as plain data) instead of training a baseline")
    p.add_argument("--trust-checkpoint", action="store_true", help=C.TRUST_HELP)
    p.add_argument("--reg-epochs", type=C.positive_int, default=None, help="epochs of each regularized run "
                   "(default: --epochs)")
    p.add_argument("--final-epochs", type=C.positive_int, default=None, help="epochs of the final training or "
                   "fine-tuning (default: --epochs)")
    p.set_defaults(run=run)


def add_common(p) -> None:
    p.add_argument("--model", default="tiny", help="a built-in network (tiny, resnet20, resnet56, mobilenetv2, "
                   "vgg11, inception, densenet, senet) or module:function returning your nn.Module. Default: tiny")
    p.add_argument("--data", default=None, help="nothing for the built-in 8x8 digits (scikit-learn), "
                   "cifar10:PATH, or folder:PATH (one sub-directory of images per class)")
    p.add_argument("--image-size", type=C.positive_int, default=32, help="folder data: resize images to this")
    p.add_argument("--epochs", type=C.positive_int, default=None,
                   help="epochs of every training run (default: 30 for digits, 15 otherwise)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--batch-size", type=C.positive_int, default=None, help="batch size (all ranks together)")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same structure (default 0)")
    p.add_argument("--out", default=None, help="run directory (default runs/<command>-<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    p.add_argument("--device", default="auto", help="where to train: auto (CUDA when present, else the CPU), cpu, "
                   "cuda or cuda:N. Not saved with the run: --resume continues on this machine's device")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto", help="mixed precision for "
                   "training: auto is bf16 on a GPU that has it, else fp16 with a grad scaler, and off on the CPU")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="channels-last memory "
                   "format for 4-d weights and batches: auto is on for a GPU, off on the CPU")


def recipe_for(args, data, device):
    args.amp = C.resolve_amp(args.amp, device)                  # saved resolved: --resume trains the same way
    args.channels_last = "on" if C.resolve_channels_last(args.channels_last, device) else "off"
    changes = {"seed": args.seed, "amp": args.amp, "channels_last": args.channels_last == "on"}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.lr is not None:
        if not (args.lr > 0 and math.isfinite(args.lr)):
            raise C.UsageError(f"--lr must be a positive number, got {args.lr}")
        changes["lr"] = args.lr
    if args.batch_size is not None:
        if data.loaders:
            raise C.UsageError(f"--batch-size: the data ({data.name}) come as loaders, whose own batch size is used; "
                               "set it where the loaders are made")
        changes["batch_size"] = args.batch_size
    return dataclasses.replace(data.recipe, **changes)


def setup(args, command: str):
    """Everything that can be checked before the run directory exists: returns (data, build, recipe, out)."""
    out = C.prepare_out(args.out, command, args.model, resume=args.resume)
    args.out = str(out)
    try:
        data = load_data(args.data, seed=args.seed, image_size=args.image_size)
    except ValueError as exc:
        raise C.UsageError(str(exc)) from None
    device = C.resolve_device(args.device)
    recipe = recipe_for(args, data, device)
    in_ch = int(data.example.shape[1])
    C.load_model(args.model, data.num_classes, in_ch)          # fails early on a bad --model

    def build():
        return C.load_model(args.model, data.num_classes, in_ch).to(device)
    try:
        build_graph(build(), data.example)
    except GraphRecordError as exc:
        raise C.UsageError(f"--model {args.model} does not run on the data's inputs "
                           f"{tuple(data.example.shape)}: {str(exc).splitlines()[0]}") from None
    return data, build, recipe, out


def check_budget(build, example, budget_abs, resource, hardware) -> None:
    """Refuse a budget the network cannot meet whatever the regularizer does."""
    frozen, smallest = cost_floor(build_graph(build(), example), resource, hardware)
    if budget_abs < smallest:
        raise C.UsageError(f"--budget {budget_abs:,.0f} {resource} is unreachable: the channels that cannot change "
                           f"already cost {frozen:,.0f} (see netmorph explain) and the smallest network, every "
                           f"changeable layer at one channel, {smallest:,.0f}; raise the budget")


def learned_model(build, result, example, recipe, resource, hardware):
    """The last round's regularized network at the epoch its structure was picked, its dead channels
    removed: what the regularizer learned, as a real network."""
    torch.manual_seed(recipe.seed)
    model = replay(build(), result["rounds"][:-1], example, recipe.seed, init=result["init"], resource=resource,
                   hardware=hardware)
    model.load_state_dict(result["rounds"][-1].state)
    # the learned structure, approximate groups (a LayerNorm's hidden width) included: what it costs
    return prune(model, make_regularizer(model, example, resource, hardware, widths=True), approximate=True)


def restore(args, command: str) -> None:
    """With ``--resume``, the flags the run was started with (saved in its config.json) replace these."""
    if args.resume:
        out = C.prepare_out(args.out, command, args.model, resume=True)
        saved = C.read_config(out)
        if saved.get("command") != command:
            raise C.UsageError(f"--resume: {out} is a 'netmorph {saved.get('command')}' run, not '{command}'")
        args.__dict__.update({k: v for k, v in saved["args"].items() if k not in ("resume", "out", "device")})


def run(args) -> int:
    restore(args, "morph")
    resource, hardware = C.parse_resource(args.resource)
    budget = C.parse_amount(args.budget, "--budget")
    shrink = C.parse_amount(args.shrink, "--shrink", below_100=True)
    data, build, recipe, out = setup(args, "morph")
    hardware = C.resolve_hardware(resource, hardware, build(), data.example)
    from ..costs import count_cost
    original_cost = count_cost(build(), data.example, resource, hardware)
    budget_abs = absolute(budget, original_cost, "budget")
    if absolute(shrink, original_cost, "shrink") >= original_cost:
        raise C.UsageError(f"--shrink {args.shrink} is not below the original cost ({original_cost:,.0f} "
                           f"{resource}); give a percentage below 100% or a smaller absolute cost")
    check_budget(build, data.example, budget_abs, resource, hardware)
    if args.init is None:                  # warm when there are trained weights to keep, else the paper's way
        args.init = "fresh" if args.no_baseline and not args.checkpoint else "keep"
    start_state = None
    if args.checkpoint:
        if args.init != "keep":
            raise C.UsageError("--checkpoint is the trained network --init keep starts from; drop it or use --init keep")
        start_state = C.user_state_dict(args.checkpoint, "--checkpoint", build(), args.trust_checkpoint, args.model)
    reg_recipe = dataclasses.replace(recipe, epochs=args.reg_epochs or recipe.epochs)
    final_recipe = dataclasses.replace(recipe, epochs=args.final_epochs or recipe.epochs)

    busy = None
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        try:
            C.lock_out(out)
        except C.UsageError as exc:
            busy = exc
    if dist.any_true(busy is not None):      # every rank stops with the same error, none waits for rank 0
        raise busy or C.UsageError(f"{out} is in use by another netmorph run (rank 0 says which)")
    if dist.is_main():
        (out / "FAILED.txt").unlink(missing_ok=True)
        if hasattr(hardware, "save"):
            # the measured profile goes with the run: --resume reads this file, never a new measurement
            args.resource = f"latency:{hardware.save(out / 'profile.json').resolve()}"
        C.write_json(out / "config.json", {"command": "morph", "args": {k: v for k, v in vars(args).items()
                                                                        if k != "run"},
                                           "torch": torch.__version__, "world_size": dist.world_size()})
    dist.barrier()
    C.log_to(out / "log.txt")
    C.say(f"netmorph morph: {args.model} on {data.name} ({data.size('train')} train / {data.size('val')} val / "
          f"{data.size('test')} test), {resource} {original_cost:,.0f} -> budget {budget_abs:,.0f}; run directory "
          f"{out}")
    steps = steps_per_epoch(data.train, recipe.batch_size)
    with C.StopFlag() as stop, C.Progress(C.MetricsLog(out)) as progress:
        try:
            baseline, base_hist = (None, None) if args.no_baseline else \
                C.train_baseline(build, data, recipe, out, stop, progress)
            if args.init == "keep" and start_state is None and baseline is not None:
                start_state = baseline.state_dict()          # else (--no-baseline) it regularizes a fresh build
            result = morph(build, data.train, data.val, data.example, budget=budget, shrink=shrink,
                           resource=resource, hardware=hardware, rounds=args.rounds, recipe=reg_recipe,
                           final_recipe=final_recipe, init=args.init, start_state=start_state,
                           round_to=args.round_to, log=lambda s: C.say(f"  {s}"),
                           checkpoint_path=out / "checkpoint.pt", on_batch=progress.step, stop=stop,
                           on_stage=lambda name, epochs: progress.stage(name, epochs, steps),
                           on_epoch=lambda stage, row: progress.epoch(row, stage))
        except Interrupted:
            C.say(f"interrupted: checkpoint saved in {out}; continue with: netmorph morph --resume --out {out}")
            return 130
    report(args, out, data, build, recipe, resource, hardware, result, baseline, base_hist)
    return 0


def report(args, out, data, build, recipe, resource, hardware, result, baseline, base_hist) -> None:
    example = data.example
    final = result["model"]
    learned = learned_model(build, result, example, recipe, resource, hardware)
    agree = ranks_agree(result)
    if not dist.is_main():
        return
    for r, info in enumerate(result["rounds"]):
        info.learned.save(out / f"round{r + 1}_learned_structure.json")
        info.expanded.save(out / f"round{r + 1}_expanded_structure.json")
    (out / "final").mkdir(exist_ok=True)
    result["structure"].save(out / "final" / "structure.json")
    torch.save(C.cpu_state(final), out / "final" / "model.pt")
    models = {"original": baseline if baseline is not None else build(), "learned": learned, "final": final}
    rows = metrics(models, data.test, example, resource, hardware)
    onnx_note = onnx_files(models, rows, out, data, hardware)
    if baseline is None:
        rows["original"]["test_acc"] = None
    last = result["rounds"][-1]
    widths_ok = plot_widths(out / "widths.png", result["rounds"][0].learned.original,
                            {"learned": last.learned, "final": result["structure"]})
    starts = [result["original_cost"]] + [float(i.expanded.cost) for i in result["rounds"][:-1]]
    targets = [absolute(args.shrink, c, "shrink") for c in starts]
    curves_ok = plot_training(out / "training.png", result["rounds"], result["final_history"], base_hist,
                              result["original_cost"], targets, resource)
    text = [f"# netmorph morph: {args.model} on {data.name}", "",
            f"Budget {result['budget']:,.0f} {resource} ({result['budget'] / result['original_cost']:.0%} of the "
            f"original); shrink target {args.shrink}; init {args.init}; {args.rounds} round(s) of "
            f"{args.reg_epochs or recipe.epochs} regularized epochs, then {args.final_epochs or recipe.epochs} "
            f"epochs of {'fine-tuning' if args.init == 'keep' else 'training from scratch'}; seed {args.seed}. "
            f"The final structure is omega = {result['structure'].omega:.3f} x the learned one.", "",
            ledger(args, recipe), "",
            *rounding_lines(result["structure"]),
            table(rows, resource), "",
            "original: the network as given" + (", trained with the same recipe" if baseline is not None else
                                                 " (untrained: --no-baseline)") +
            "; learned: the regularized network at the epoch its structure was picked, dead channels removed; " +
            ("final: the learned network pruned exactly, widened to the expanded structure keeping every alive "
             "weight, and fine-tuned." if args.init == "keep" else
             "final: the expanded structure trained from scratch."), ""]
    if not last.reached_target:
        text.append(f"Note: the regularizer did not bring the network into 98-102% of the shrink target "
                    f"{args.shrink}; the structure closest to it was used. Train longer (--reg-epochs) or shrink less "
                    "(--shrink).")
    verdict = beat_line(rows)
    if verdict:
        text += [verdict, ""]
    if onnx_note:
        text += [onnx_note, ""]
    text += closing_lines(args, data, rows, resource, widths_ok and curves_ok)
    (out / "metrics.md").write_text("\n".join(text) + "\n")
    summary = {"models": rows, "budget": result["budget"], "original_cost": result["original_cost"],
               "final_cost": result["final_cost"], "resource": resource, "omega": result["structure"].omega,
               "rounds": [i.to_dict() for i in result["rounds"]], "final_history": result["final_history"],
               "baseline_history": base_hist, "ranks": agree}
    C.say("\n" + table(rows, resource) + f"\n\nrun directory: {out}  (metrics.md, widths.png, training.png, "
          "final/structure.json + final/model.pt)")
    C.write_json(out / C.COMPLETE, summary)                    # last: marks the run finished


def rounding_lines(structure) -> list[str]:
    """The sentence saying which width multiple a measured profile chose, as metrics.md lines."""
    note = getattr(structure, "rounding_note", None)
    return [note[0].upper() + note[1:] + ".", ""] if note else []


def ledger(args, recipe) -> str:
    """Every epoch the run spent, by stage: what a fair comparison counts."""
    base = 0 if args.no_baseline or args.checkpoint else recipe.epochs
    reg = args.rounds * (args.reg_epochs or recipe.epochs)
    final = args.final_epochs or recipe.epochs
    return (f"Epoch ledger: baseline {base}" + (" (given by --checkpoint)" if args.checkpoint else "") +
            f" + regularized {reg} + {'fine-tuning' if args.init == 'keep' else 'final'} {final} = "
            f"{base + reg + final} epochs.")


def beat_line(rows: dict) -> str | None:
    """Whether the final network beat the original, in the test set's resolution."""
    a, b = rows["final"].get("test_acc"), rows["original"].get("test_acc")
    n = rows["final"].get("test_n")
    if a is None or b is None or not n:
        return None
    diff, one = a - b, 1 / n
    spread = (max(a, b) * (1 - max(a, b)) / n) ** 0.5          # one binomial standard error
    if abs(diff) < one / 2:
        word = "is exactly as accurate as"
    else:
        word = "beat" if diff > 0 else "is less accurate than"
    return (f"**The final network {word} the original**: {a:.2%} vs {b:.2%} ({diff * n:+.0f} of {n} test images, "
            f"{diff:+.2%}; one standard error of a test accuracy here is {spread:.2%}, so a gap smaller than about "
            f"{2 * spread:.2%} is within the test set's noise).")


def closing_lines(args, data, rows: dict, resource: str, pictures_ok: bool) -> list[str]:
    """The end of a run's metrics.md: the warning when the final network's measured time did not follow
    ``resource`` (also said on the console), a line when the pictures were skipped, and the code that
    reloads ``final/``."""
    lines = []
    note = speed_note(rows, resource)
    if note:
        lines.append(note)
        C.say(note)
    if not pictures_ok:
        lines.append("Pictures skipped: matplotlib is not installed (pip install 'netmorph[cli]').")
    code = C.reload_code(args.model, data.num_classes, int(data.example.shape[1]))
    return lines + ["", "Reload the final model (final/structure.json + final/model.pt):", "", "```python", *code, "```"]


def ranks_agree(result) -> dict:
    """Under torch.distributed: every rank's learned structures, and whether they are identical."""
    mine = json.dumps([dict(i.learned) for i in result["rounds"]], sort_keys=True)
    if not dist.active():
        return {"world_size": 1, "agree": True}
    gathered = [None] * dist.world_size()
    torch.distributed.all_gather_object(gathered, mine)
    digests = [hashlib.sha256(g.encode()).hexdigest()[:16] for g in gathered]
    if len(set(digests)) > 1:
        C.say(f"warning: the ranks learned different structures ({digests}); using rank 0's")
    return {"world_size": len(gathered), "agree": len(set(digests)) == 1, "digests": digests,
            "structures": [json.loads(g) for g in gathered]}
