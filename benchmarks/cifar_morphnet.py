"""MorphNet on CIFAR-10 against the baseline and a uniform width multiplier, one recipe for every arm.

Run: ``python benchmarks/cifar_morphnet.py [--data ../shared/data] [--arms baseline,uniform_0.7]``.
Recipe (every training run): ResNet-20, batch 128, SGD momentum 0.9 Nesterov, weight decay 5e-4,
one-cycle schedule peaking at lr 0.1 (15% warm-up, cosine down), random crop (pad 4) + flip,
15 epochs, seed 0; 45k training images, 5k held out for validation, accuracy on the 10k test images.
Each arm is cached in ``benchmarks/results/cifar/ARM.json`` (``NETMORPH_BENCH_CACHE`` moves
it) and checkpointed every epoch, so an interrupted run resumes where it stopped. About 2 hours on
2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

import netmorph
from netmorph.data import load_cifar10
from netmorph.models import resnet20
from netmorph.morph import morph, regularize, save_atomic
from netmorph.structure import Structure
from netmorph.train import Recipe, evaluate, fit, make_optimizer
from report import DOC, write_section

# finished arms (ARM.json) are committed so a later session, on any machine, skips them; the per-epoch
# checkpoints (ARM.pt) are not (override the directory with NETMORPH_BENCH_CACHE)
CACHE = Path(os.environ.get("NETMORPH_BENCH_CACHE", Path(__file__).resolve().parent / "results")) / "cifar"
EXAMPLE = torch.zeros(1, 3, 32, 32)


def train_arm(name: str, model: torch.nn.Module, data, recipe: Recipe, reg=None, strength=0.0, **fit_kwargs) -> dict:
    """Train ``model`` with the recipe, resuming from this arm's checkpoint if there is one."""
    ckpt = CACHE / f"{name}.pt"
    opt = make_optimizer(model, recipe, reg.source_parameters() if reg is not None else ())
    gen = torch.Generator().manual_seed(recipe.seed)
    start, history = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, history = state["epoch"], state["history"]
        print(f"[{name}] resuming after epoch {start}", flush=True)

    def checkpoint(epoch, opt, gen, hist, position=None):
        save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                     "epoch": epoch, "history": history + hist}, ckpt)

    t = time.time()
    history += fit(model, data[0], data[1], recipe, reg, strength, log=lambda s: print(f"[{name}] {s}", flush=True),
                   checkpoint=checkpoint, start_epoch=start, opt=opt, generator=gen, **fit_kwargs)
    return {"test_acc": evaluate(model, *data[2]), "val_acc": history[-1]["val_acc"],
            "flops": netmorph.count_flops(model, EXAMPLE), "params": netmorph.count_params(model),
            # every epoch's own time, so an arm resumed across processes counts all of its epochs
            "train_minutes": sum(h.get("seconds", 0) for h in history) / 60,
            "process_minutes": (time.time() - t) / 60, "history": history}


def arm_baseline(data, recipe):
    torch.manual_seed(recipe.seed)
    return train_arm("baseline", resnet20(), data, recipe)


def baseline_name(seed: int) -> str:
    """Seed 0's baseline is the table's ``baseline``; the paired seeds have their own."""
    return "baseline" if seed == 0 else f"baseline_s{seed}"


def arm_seeded_baseline(seed: int):
    """The baseline with another seed (its init and data order): the start of that seed's pair."""
    def run(data, recipe):
        recipe = replace(recipe, seed=seed)
        torch.manual_seed(seed)
        out = train_arm(baseline_name(seed), resnet20(), data, recipe)
        out["ledger"] = {"baseline": recipe.epochs, "total": recipe.epochs}
        return out
    return run


def trained_baseline(seed: int) -> torch.nn.Module:
    """The finished baseline of ``seed`` (its last checkpoint holds the final weights)."""
    name = baseline_name(seed)
    if not (CACHE / f"{name}.json").exists():
        raise SystemExit(f"run the arm {name} first (python benchmarks/cifar_morphnet.py --arms {name})")
    model = resnet20()
    model.load_state_dict(torch.load(CACHE / f"{name}.pt", weights_only=True)["model"])
    return model


def magnitude_prune_peer(model: torch.nn.Module, target: float) -> torch.nn.Module:
    """Torch-Pruning's documented magnitude pruner (L2 norm, global ranking, the classifier kept), its
    pruning ratio bisected so the network lands at ``target`` of the FLOPs (at or just below)."""
    import copy

    import torch_pruning as tp
    full = netmorph.count_flops(model, EXAMPLE)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(16):
        ratio = (lo + hi) / 2
        cand = copy.deepcopy(model)
        tp.pruner.MagnitudePruner(cand, EXAMPLE, importance=tp.importance.MagnitudeImportance(p=2),
                                  global_pruning=True, pruning_ratio=ratio, ignored_layers=[cand.fc]).step()
        if netmorph.count_flops(cand, EXAMPLE) > target * full:
            lo = ratio
        else:
            hi, best = ratio, cand
    return best


def arm_peer(seed: int, budget: float = 0.5):
    """The tool a user would pick instead: magnitude pruning of the trained baseline (Torch-Pruning),
    then fine-tuning with the same recipe. Epochs: the baseline's + the fine-tune's."""
    def run(data, recipe):
        recipe = replace(recipe, seed=seed)
        small = magnitude_prune_peer(trained_baseline(seed), budget)
        torch.manual_seed(seed)
        out = train_arm(f"peer_{budget:.0%}_s{seed}", small, data, recipe)
        out["ledger"] = {"baseline": recipe.epochs, "fine-tune": recipe.epochs, "total": 2 * recipe.epochs}
        out["widths"] = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, torch.nn.Conv2d)}
        return out
    return run


def arm_uniform(data, recipe):
    torch.manual_seed(recipe.seed)
    return train_arm("uniform_0.7", resnet20(width=0.7), data, recipe)


SHRINK = 0.5     # MorphNet arms: regularize down to 50% of the FLOPs, then expand to the budget


def arm_morph_regularize(data, recipe):
    """MorphNet step 1-2: ResNet-20 trained 15 epochs with the FLOPs regularizer, strength found by
    the controller, down to SHRINK of its FLOPs; the learned structure (picked on validation)."""
    torch.manual_seed(recipe.seed)
    model = resnet20()
    full = netmorph.count_flops(model, EXAMPLE)
    ckpt = CACHE / "morph_regularize.pt"
    state = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
    t = time.time()
    learned, cost, info = regularize(model, data[0], data[1], EXAMPLE, SHRINK * full, recipe, "flops",
                                     log=lambda s: print(f"[morph_regularize] {s}", flush=True), state=state,
                                     checkpoint=lambda s: save_atomic(s, ckpt))
    return {"learned": learned.to_dict(), "learned_flops": cost, "reached_target": info.reached_target,
            "strengths": info.strength_history, "costs": info.cost_history, "val_history": info.val_history,
            "train_minutes": (time.time() - t) / 60, "flops": cost, "test_acc": None,
            "params": netmorph.count_params(netmorph.apply_structure(model, learned, example_inputs=EXAMPLE))}


def arm_morph(budget: float, round_to: int = 1):
    def run(data, recipe):
        learned = Structure.from_dict(json.loads((CACHE / "morph_regularize.json").read_text())["learned"])
        model = resnet20()
        expanded = netmorph.expand(model, EXAMPLE, learned, budget * netmorph.count_flops(model, EXAMPLE),
                                   round_to=round_to)
        torch.manual_seed(recipe.seed)
        final = netmorph.apply_structure(model, expanded, init="fresh", example_inputs=EXAMPLE)
        out = train_arm(f"morph_{budget:.0%}" + (f"_r{round_to}" if round_to > 1 else ""), final, data, recipe)
        out.update(structure=expanded.to_dict(), omega=expanded.omega)
        return out
    return run


def cpu_profile():
    """The measured latency profile of ResNet-20 on this CPU at batch 128, 2 threads (cached on disk)."""
    from netmorph.latency import profile
    return profile(resnet20(), EXAMPLE, "cpu", threads=2, batch=128)


def arm_morph_warm(seed: int, budget: float = 0.5, shrink: float = 0.45, reg_epochs: int = 5,
                   resource: str = "flops", round_to: int | None = None, suffix: str = ""):
    """MorphNet warm start: the trained baseline of ``seed`` regularized for ``reg_epochs`` (constant
    learning rate) down to ``shrink`` of its FLOPs, pruned exactly, widened to ``budget`` keeping every
    alive weight, fine-tuned for the rest of the baseline's epoch count (same total as the peer)."""
    def run(data, recipe):
        name = f"morph_warm_{budget:.0%}_s{seed}{suffix}"
        recipe = replace(recipe, seed=seed)
        start = trained_baseline(seed).state_dict()
        t = time.time()
        hardware = cpu_profile() if resource == "latency" else None
        out = morph(resnet20, data[0], data[1], EXAMPLE, budget=budget, shrink=shrink, resource=resource,
                    hardware=hardware, round_to=round_to,
                    recipe=replace(recipe, epochs=reg_epochs), final_recipe=replace(recipe, epochs=recipe.epochs - reg_epochs),
                    init="keep", start_state=start, checkpoint_path=CACHE / f"{name}.pt",
                    log=lambda s: print(f"[{name}] {s}", flush=True))
        model, info = out["model"], out["rounds"][0]
        return {"test_acc": evaluate(model, *data[2]), "val_acc": out["final_history"][-1]["val_acc"],
                "flops": netmorph.count_flops(model, EXAMPLE), "params": netmorph.count_params(model),
                "train_minutes": sum(h.get("seconds", 0) for h in out["final_history"]) / 60,
                "process_minutes": (time.time() - t) / 60, "history": out["final_history"],
                "learned": info.learned.to_dict(), "learned_flops": info.learned_cost, "costs": info.cost_history,
                "reg_val": info.val_history, "reached_target": info.reached_target,
                "structure": out["structure"].to_dict(), "omega": out["structure"].omega,
                "resource": resource, "round_to": out["structure"].round_to,
                "rounding_note": out["structure"].rounding_note,
                "ledger": {"baseline": recipe.epochs, "regularized": reg_epochs,
                           "fine-tune": recipe.epochs - reg_epochs, "total": 2 * recipe.epochs}}
    return run


ARMS = {"baseline": arm_baseline, "uniform_0.7": arm_uniform, "morph_regularize": arm_morph_regularize,
        "morph_50%": arm_morph(0.5), "morph_100%": arm_morph(1.0), "morph_50%_r8": arm_morph(0.5, round_to=8),
        **{f"baseline_s{s}": arm_seeded_baseline(s) for s in (1, 2)},
        **{f"peer_50%_s{s}": arm_peer(s) for s in (0, 1, 2)},
        **{f"morph_warm_50%_s{s}": arm_morph_warm(s) for s in (0, 1, 2)},
        # the latency issue's arms: the measured CPU profile as the resource (rounding chosen from it),
        # and the FLOPs arm with widths rounded to 8, both on the warm recipe
        "morph_warm_50%_s0_latency": arm_morph_warm(0, 0.5, resource="latency", suffix="_latency"),
        "morph_warm_100%_s0_latency": arm_morph_warm(0, 1.0, resource="latency", suffix="_latency"),
        "morph_warm_50%_s0_r8": arm_morph_warm(0, 0.5, round_to=8, suffix="_r8"),
        # a shallower shrink for time: regularizing to 45% of the time kept 23% of the FLOPs and collapsed the network
        "morph_warm_50%_s0_latency_shrink70": arm_morph_warm(0, 0.5, shrink=0.7, resource="latency",
                                                             suffix="_latency_shrink70")}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 to run two arms side by side)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    data = load_cifar10(args.data)
    recipe = Recipe(epochs=args.epochs)
    for arm in args.arms.split(","):
        out = CACHE / f"{arm}.json"
        if not out.exists():
            out.write_text(json.dumps(ARMS[arm](data, recipe), indent=1))
    write_table(args.epochs)
    paired_table()


#: every arm of the CIFAR-10 table, in its order (the TAS arm is run by benchmarks/cifar_tas.py)
TABLE = ["baseline", "uniform_0.7", "morph_regularize", "morph_50%", "morph_100%", "morph_50%_r8", "tas_search",
         "tas_50%"]
NOTES = {"baseline": "ResNet-20 as is", "uniform_0.7": "every width x0.7",
         "morph_regularize": "regularized run: learns the structure (not retrained)",
         "morph_50%": "learned structure expanded to 50% FLOPs, trained from scratch",
         "morph_100%": "learned structure expanded to 100% FLOPs, trained from scratch",
         "morph_50%_r8": "as morph_50%, every width a multiple of 8 (expand round_to=8; for CPUs)",
         "tas_search": "TAS search from the baseline's weights",
         "tas_50%": "TAS structure (target 50%), trained with KD from the baseline"}


def widths_picture() -> str:
    """docs/cifar_widths.png: every layer's width in each finished arm (MorphNet's Figure 1); its markdown."""
    from netmorph.cli.report import plot_widths
    conv_widths = lambda m: {n: x.out_channels for n, x in m.named_modules()  # noqa: E731
                             if isinstance(x, torch.nn.Conv2d)}
    original = conv_widths(resnet20())
    columns = {}
    if (CACHE / "uniform_0.7.json").exists():
        columns["uniform x0.7"] = conv_widths(resnet20(width=0.7))
    for arm, label, key in [("morph_regularize", "MorphNet learned", "learned"), ("morph_50%", "MorphNet 50%", "structure"),
                            ("morph_100%", "MorphNet 100%", "structure"),
                            ("morph_50%_r8", "MorphNet 50%, round_to 8", "structure"),
                            ("tas_search", "TAS 50%", "structure")]:
        if (CACHE / f"{arm}.json").exists():
            columns[label] = dict(Structure.from_dict(json.loads((CACHE / f"{arm}.json").read_text())[key]))
    path = DOC.parent / "cifar_widths.png"
    return "\n\n![per-layer widths of every arm](cifar_widths.png)" if plot_widths(path, original, columns) else ""


def write_table(epochs: int) -> None:
    base = json.loads((CACHE / "baseline.json").read_text()) if (CACHE / "baseline.json").exists() else None
    rows = ["| arm | what | test acc | FLOPs (batch 1) | FLOPs vs baseline | params | train time |",
            "|---|---|---|---|---|---|---|"]
    for arm in TABLE:
        f = CACHE / f"{arm}.json"
        if f.exists():
            r = json.loads(f.read_text())
            ratio = f"{r['flops'] / base['flops']:.1%}" if base else "-"
            acc = f"{r['test_acc']:.2%}" if r.get("test_acc") is not None else "-"
            # the epochs' own times (an arm resumed across processes reports only its last process's time)
            minutes = sum(h.get("seconds", 0) for h in r["history"]) / 60 if r.get("history") else r["train_minutes"]
            rows.append(f"| {arm} | {NOTES[arm]} | {acc} | {r['flops'] / 1e6:.2f} M | {ratio} | {r['params']:,} | "
                        f"{minutes:.0f} min |")
        else:
            done = ""
            ckpt = CACHE / f"{arm}.pt"
            if ckpt.exists():
                state = torch.load(ckpt, weights_only=True)
                done = f" ({state.get('epoch', 0)} epochs done, resumable)"
            rows.append(f"| {arm} | {NOTES[arm]} | pending{done} | | | | |")
    write_section("cifar_morphnet", "MorphNet and TAS on CIFAR-10 (benchmarks/cifar_morphnet.py, cifar_tas.py)",
                  "python benchmarks/cifar_morphnet.py && python benchmarks/cifar_tas.py",
                  f"ResNet-20, {epochs} epochs per training run, recipe in the scripts' docstrings; test accuracy "
                  "on the 10k test images; FLOPs counted by netmorph (= torch's FlopCounterMode). Most arms trained two "
                  "side by side with 1 torch thread each (and other work on the machine), so their train time is "
                  "about twice what one arm alone with 2 threads takes; morph_50%_r8 ran alone with 2.\n\n"
                  + "\n".join(rows) + widths_picture())


def minutes_of(r: dict) -> float:
    """An arm's training minutes, from its epochs' own times (a resumed arm's process time is partial)."""
    return sum(h.get("seconds", 0) for h in r["history"]) / 60 if r.get("history") else r["train_minutes"]


def paired_table(budget: float = 0.5) -> None:
    """MorphNet warm start against the peer, seed by seed (same seed: same baseline, same data order)."""
    load = lambda name: json.loads((CACHE / f"{name}.json").read_text()) if (CACHE / f"{name}.json").exists() else None  # noqa: E731
    rows = ["| seed | baseline | peer (Torch-Pruning) | MorphNet warm | MorphNet - peer | FLOPs peer / MorphNet | "
            "epochs peer / MorphNet | train min peer / MorphNet |", "|---|---|---|---|---|---|---|---|"]
    diffs = []
    for seed in (0, 1, 2):
        base, peer, ours = load(baseline_name(seed)), load(f"peer_{budget:.0%}_s{seed}"), load(f"morph_warm_{budget:.0%}_s{seed}")
        cell = lambda r: f"{r['test_acc']:.2%}" if r else "pending"  # noqa: E731
        if peer and ours:
            diffs.append(ours["test_acc"] - peer["test_acc"])
        full = base["flops"] if base else None
        flops = (f"{peer['flops'] / full:.1%} / {ours['flops'] / full:.1%}" if peer and ours and full else "")
        ledger = lambda r: "+".join(str(v) for k, v in r["ledger"].items() if k != "total") + f" = {r['ledger']['total']}"  # noqa: E731
        epochs = f"{ledger(peer)} / {ledger(ours)}" if peer and ours else ""
        # the peer's and MorphNet's minutes include the baseline's (both start from it)
        # MorphNet's history times only its fine-tune epochs: its process time covers the regularized ones too
        # (exact while the arm ran in one process; a resumed arm's is a lower bound)
        wall = (f"{minutes_of(base) + minutes_of(peer):.0f} / {minutes_of(base) + ours['process_minutes']:.0f}"
                if base and peer and ours else "")
        rows.append(f"| {seed} | {cell(base)} | {cell(peer)} | {cell(ours)} | "
                    f"{f'{diffs[-1] * 100:+.2f} pt' if peer and ours else ''} | {flops} | {epochs} | {wall} |")
    if diffs:
        d = torch.tensor(diffs, dtype=torch.float64) * 100
        rows.append(f"\nMorphNet - peer over {len(diffs)} paired seed(s): mean {d.mean():+.2f} pt, spread (max - min) "
                    f"{(d.max() - d.min()):.2f} pt" + (f", std {d.std():.2f} pt" if len(diffs) > 1 else
                                                        " (one pair: no spread yet, so no verdict)"))
    write_section("cifar_peer", f"MorphNet vs prune-and-fine-tune at equal compute, {budget:.0%} FLOPs "
                  "(benchmarks/cifar_morphnet.py)",
                  'python benchmarks/cifar_morphnet.py --threads 1 --arms "baseline_s1,peer_50%_s1,morph_warm_50%_s1"',
                  "Both arms start from the same trained baseline (15 epochs) of their seed and spend 15 more epochs: "
                  "the peer prunes it with Torch-Pruning's global L2 magnitude pruner (ratio bisected to <= 50% "
                  "FLOPs) and fine-tunes 15 epochs with the recipe; MorphNet warm regularizes 5 epochs (held "
                  "learning rate, shrink target 45%), prunes exactly, widens to 50% keeping every alive weight, and "
                  "fine-tunes 10 epochs. Epoch ledger: baseline + the arm's own epochs. Train minutes are the sum "
                  "of the epochs' own times (MorphNet's: its process time), on a machine shared with other "
                  "benchmarks and tests, so minutes compare only roughly. A difference counts only when it is larger than the spread of the pairs.\n\n"
                  + "\n".join(rows))


if __name__ == "__main__":
    main()
