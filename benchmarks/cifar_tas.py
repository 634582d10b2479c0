"""TAS on CIFAR-10 against the width multiplier and random structures, at equal compute.

Run: ``python benchmarks/cifar_tas.py [--data ../shared/data] [--arms ...]`` after the baseline arms of
``cifar_morphnet.py`` (``baseline``, ``baseline_s1``, ``baseline_s2``: the teachers of seeds 0, 1, 2).
Every arm uses the MorphNet benchmark's 15-epoch recipe (SGD 0.1 one-cycle, crop + flip) and is
cached in ``benchmarks/results/cifar/`` (checkpointed every epoch: rerun to resume). Arms:
- ``tas_search_s{seed}``: TAS from seed's teacher, FLOPs target 50% (tolerance 5%), ``SEARCH_EPOCHS``
  epochs on the two halves of the 45k training images with the settings in ``SEARCH`` (chosen on
  ``tas_proxy.py``); checkpointed every epoch; the derived structure is the result.
- ``tas_kd_s{seed}``: the searched structure, initialized as ``INIT`` says (chosen on the
  ``init_*`` proxy arms), trained 15 epochs with knowledge distillation (alpha 0.9, T 4).
- ``uniform_kd_s{seed}``: every width x0.7, same init and KD, trained ``SEARCH_EPOCHS + 15`` epochs:
  as many as the TAS arm spends after the teacher (search plus distillation).
- ``tas_nokd_s0``: the TAS student without KD (what KD contributes).
- ``random_{k}``: a structure drawn uniformly from the same search space at the searched one's FLOPs
  (+-2 points), same student recipe (seed 0's teacher): does the search beat chance?
- ``reference``: the structure the TAS authors published for ResNet-20 (AutoDL-Projects,
  ``C010-ResNet20.config``) in our tied residual widths (see ``reference_structure``), same recipe.
- ``init_{fresh,keep,teacher}``: ``INIT_EPOCHS``-epoch KD proxies of the student inits on seed 0's structure.
Tables go to docs/benchmarks.md (``cifar_tas`` section).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

import netmorph
from netmorph.data import load_cifar10
from netmorph.models import resnet20
from netmorph.morph import save_atomic
from netmorph.structure import Structure
from netmorph.tas import TAS, initial_student, kd_criterion, search
from netmorph.train import Recipe

from cifar_morphnet import CACHE, EXAMPLE, baseline_name, minutes_of, train_arm, trained_baseline
from report import write_section

SEARCH_EPOCHS = 4
TARGET = 0.5
#: search settings, from the proxy (benchmarks/tas_proxy.py, docs/benchmarks.md "TAS search settings")
SEARCH = dict(w_lr=0.01, a_lr=5e-2, tau=(10.0, 0.1), augment=True)
#: the student's init, from the init_* proxy arms
INIT = "teacher"
SEEDS = (0, 1, 2)
#: epochs of the init proxies (one-cycle, KD): how far each start gets on a short budget
INIT_EPOCHS = 1


def load(name: str) -> dict | None:
    f = CACHE / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def searched_tas(seed: int) -> TAS:
    """Seed's TAS, searched (or resumed, or read back when done)."""
    model = trained_baseline(seed).eval()
    full = netmorph.count_flops(model, EXAMPLE)
    return TAS(model, EXAMPLE, TARGET * full, tolerance=0.05, seed=seed)


def arm_search(seed: int):
    def run(data, recipe):
        tas = searched_tas(seed)
        x, y = data[0]
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        half = len(x) // 2
        ckpt = CACHE / f"tas_search_s{seed}.pt"
        state = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
        t = time.time()
        history = search(tas, (x[perm[:half]], y[perm[:half]]), (x[perm[half:]], y[perm[half:]]), SEARCH_EPOCHS,
                         batch_size=recipe.batch_size, seed=seed, state=state, **SEARCH,
                         log=lambda s: print(f"[tas_search_s{seed}] {s}", flush=True),
                         checkpoint=lambda s: save_atomic(s, ckpt))
        structure = tas.derive()
        found = netmorph.apply_structure(tas.model, structure, keep="first", example_inputs=EXAMPLE)
        return {"structure": structure.to_dict(), "history": history, "flops": netmorph.count_flops(found, EXAMPLE),
                "expected_flops": float(tas.expected_flops().detach()), "params": netmorph.count_params(found),
                "test_acc": None, "train_minutes": (time.time() - t) / 60, "settings": {**SEARCH, "tau": list(SEARCH["tau"])}}
    return run


def search_result(seed: int) -> Structure:
    r = load(f"tas_search_s{seed}")
    if r is None:
        raise SystemExit(f"run the arm tas_search_s{seed} first")
    return Structure.from_dict(r["structure"])


def student(structure: Structure, seed: int, init: str) -> torch.nn.Module:
    """The structure as a network, started as ``netmorph.tas.initial_student`` says (``keep``: seed's
    searched supernet, read back from its search checkpoint)."""
    searched = None
    if init == "keep":
        tas = searched_tas(seed)
        tas.load_state_dict(torch.load(CACHE / f"tas_search_s{seed}.pt", weights_only=True)["tas"])
        searched = tas.model
    return initial_student(init, structure, resnet20, trained_baseline(seed), searched, EXAMPLE, seed)


def train_student(name: str, structure: Structure, seed: int, data, recipe: Recipe, init: str = INIT,
                  kd: bool = True, ledger: dict | None = None) -> dict:
    recipe = replace(recipe, seed=seed)
    criterion = kd_criterion(trained_baseline(seed).eval(), alpha=0.9, T=4.0) if kd else None
    out = train_arm(name, student(structure, seed, init), data, recipe,
                    **({"criterion": criterion} if kd else {}))
    out["structure"] = structure.to_dict()
    out["init"], out["kd"] = init, kd
    out["ledger"] = {**(ledger or {"teacher": 15, "search": SEARCH_EPOCHS}), "student": recipe.epochs}
    out["ledger"]["total"] = sum(out["ledger"].values())
    return out


def arm_tas(seed: int, kd: bool = True):
    def run(data, recipe):
        name = f"tas_{'kd' if kd else 'nokd'}_s{seed}"
        return train_student(name, search_result(seed), seed, data, recipe, kd=kd)
    return run


def uniform_structure(ratio: float = 0.7) -> Structure:
    model = resnet20()
    full = resnet20(width=ratio)
    widths = {n: m.out_channels for n, m in full.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return Structure(widths, original={n: m.out_channels for n, m in model.named_modules()
                                       if isinstance(m, torch.nn.Conv2d)}, input_shapes=[list(EXAMPLE.shape)])


def arm_uniform_kd(seed: int):
    def run(data, recipe):
        return train_student(f"uniform_kd_s{seed}", uniform_structure(), seed, data,
                             replace(recipe, epochs=SEARCH_EPOCHS + recipe.epochs), ledger={"teacher": 15})
    return run


def random_structure(k: int, around: float, tolerance: float = 0.02) -> Structure:
    """A structure drawn uniformly from the TAS search space (every width and depth distribution
    one-hot on a uniformly drawn candidate) whose FLOPs are within ``tolerance`` of ``around``
    (fractions of the full network); draw ``k`` of a fixed sequence."""
    tas = searched_tas(0)
    gen = torch.Generator().manual_seed(1000 + k)
    for _ in range(100000):
        with torch.no_grad():
            for p in tas.arch_parameters():
                p.copy_(torch.rand(len(p), generator=gen))
        if abs(tas.flops() / tas.full_flops - around) <= tolerance:
            return tas.derive()
    raise RuntimeError("no random structure at that FLOPs in 100000 draws")


def arm_random(k: int):
    def run(data, recipe):
        found = load("tas_search_s0")
        if found is None:
            raise SystemExit("run tas_search_s0 first: random structures are drawn at its FLOPs")
        full = netmorph.count_flops(resnet20(), EXAMPLE)
        structure = random_structure(k, found["flops"] / full)
        return train_student(f"random_{k}", structure, 0, data, recipe)
    return run


#: AutoDL-Projects' C010-ResNet20.config: per block (conv a, conv b) widths; its stem is 16 wide and
#: its blocks have projection shortcuts wherever widths differ
REFERENCE_BLOCKS = [[(6, 4), (4, 4), (4, 4)], [(32, 32), (12, 19), (32, 28)], [(64, 64), (64, 64), (64, 44)]]


def reference_structure() -> Structure:
    """The published structure in our tied residual widths. Each stage's residual stream (the stem
    and every block's second conv in stage 1; the second convs and the projection in stages 2, 3)
    has one width here: the widest of the reference's block outputs in that stage (4, 32, 64), so
    stage 1's stem is 4 wide instead of 16, stage 2's second and third blocks end at 32 instead of
    19 and 28, stage 3's last at 64 instead of 44. Every block's first conv keeps its published
    width; all 9 blocks are kept, as published."""
    original = {n: m.out_channels for n, m in resnet20().named_modules() if isinstance(m, torch.nn.Conv2d)}
    widths = {}
    for s, blocks in enumerate(REFERENCE_BLOCKS, start=1):
        residual = max(b for _, b in blocks)
        if s == 1:
            widths["conv1"] = residual
        else:
            widths[f"layer{s}.0.shortcut.0"] = residual
        for j, (a, _) in enumerate(blocks):
            widths[f"layer{s}.{j}.conv1"] = a
            widths[f"layer{s}.{j}.conv2"] = residual
    return Structure(widths, original=original, input_shapes=[list(EXAMPLE.shape)])


def arm_reference(data, recipe):
    return train_student("reference", reference_structure(), 0, data, recipe)


def arm_init(init: str):
    def run(data, recipe):
        return train_student(f"init_{init}", search_result(0), 0, data, replace(recipe, epochs=INIT_EPOCHS), init=init)
    return run


ARMS = {**{f"tas_search_s{s}": arm_search(s) for s in SEEDS},
        **{f"init_{i}": arm_init(i) for i in ("fresh", "keep", "teacher")},
        **{f"tas_kd_s{s}": arm_tas(s) for s in SEEDS},
        **{f"uniform_kd_s{s}": arm_uniform_kd(s) for s in SEEDS},
        "tas_nokd_s0": arm_tas(0, kd=False),
        **{f"random_{k}": arm_random(k) for k in range(3)},
        "reference": arm_reference}


def pct(r, key="test_acc"):
    return f"{r[key]:.2%}" if r and r.get(key) is not None else "pending"


def write_tables(full: float) -> None:
    rows = ["| seed | teacher | TAS + KD | uniform x0.7 + KD | TAS - uniform | FLOPs TAS / uniform | epochs TAS / uniform "
            "| train min TAS / uniform |", "|---|---|---|---|---|---|---|---|"]
    diffs = []
    for seed in SEEDS:
        base, srch, tas, uni = (load(baseline_name(seed)), load(f"tas_search_s{seed}"), load(f"tas_kd_s{seed}"),
                                load(f"uniform_kd_s{seed}"))
        both = tas and uni
        if both:
            diffs.append(tas["test_acc"] - uni["test_acc"])
        ledger = lambda r: "+".join(str(v) for k, v in r["ledger"].items() if k != "total") + f" = {r['ledger']['total']}"  # noqa: E731
        diff = f"{diffs[-1] * 100:+.2f} pt" if both else ""
        flops = f"{tas['flops'] / full:.1%} / {uni['flops'] / full:.1%}" if both else ""
        epochs = f"{ledger(tas)} / {ledger(uni)}" if both else ""
        minutes = f"{srch['train_minutes'] + minutes_of(tas):.0f} / {minutes_of(uni):.0f}" if both and srch else ""
        rows.append(f"| {seed} | {pct(base)} | {pct(tas)} | {pct(uni)} | {diff} | {flops} | {epochs} | {minutes} |")
    if diffs:
        d = torch.tensor(diffs, dtype=torch.float64) * 100
        rows.append(f"\nTAS - uniform over {len(diffs)} paired seed(s): mean {d.mean():+.2f} pt, spread (max - min) "
                    f"{(d.max() - d.min()):.2f} pt" + ("" if len(diffs) > 1 else " (one pair: no spread yet, so no verdict)"))
    search_rows = ["| seed | decided (top-1 >= 0.5) | mean entropy (1 = uniform) | argmax FLOPs | expected FLOPs | "
                   "search minutes |", "|---|---|---|---|---|---|"]
    for seed in SEEDS:
        r = load(f"tas_search_s{seed}")
        if r:
            last = r["history"][-1]
            search_rows.append(f"| {seed} | {last['decided']:.0%} | {last['entropy']:.2f} | {r['flops'] / full:.1%} | "
                               f"{r['expected_flops'] / full:.1%} | {r['train_minutes']:.0f} |")
    other = ["| arm | structure | init | KD | epochs | test acc | FLOPs | params |", "|---|---|---|---|---|---|---|---|"]
    for name, what in [("tas_kd_s0", "TAS (seed 0)"), ("tas_nokd_s0", "TAS (seed 0)"),
                       *[(f"random_{k}", f"random draw {k} from the search space") for k in range(3)],
                       ("reference", "published TAS structure (tied widths)"), ("uniform_kd_s0", "uniform x0.7"),
                       *[(f"init_{i}", f"TAS (seed 0), {INIT_EPOCHS}-epoch proxy") for i in ("fresh", "keep", "teacher")]]:
        r = load(name)
        if r:
            other.append(f"| {name} | {what} | {r['init']} | {'yes' if r['kd'] else 'no'} | {r['ledger']['student']} | "
                         f"{pct(r)} (val {pct(r, 'val_acc')}) | {r['flops'] / full:.1%} | {r['params']:,} |")
        else:
            other.append(f"| {name} | {what} | | | | pending | | |")
    randoms = [load(f"random_{k}") for k in range(3)]
    tas0 = load("tas_kd_s0")
    verdict = ""
    if all(randoms) and tas0:
        med = sorted(r["test_acc"] for r in randoms)[1]
        verdict = (f"\n\nSearch vs chance: TAS {tas0['test_acc']:.2%} against the random structures' median {med:.2%} "
                   f"({(tas0['test_acc'] - med) * 100:+.2f} pt).")
    elif sum(r is not None for r in randoms) == 2 and tas0:
        # the median of three lies between the two known draws, whatever the third gives
        low, high = sorted(r["test_acc"] for r in randoms if r is not None)
        verdict = (f"\n\nSearch vs chance (2 of 3 random draws done): the median of the three lies between {low:.2%} "
                   f"and {high:.2%} whatever the third gives, so TAS {tas0['test_acc']:.2%} is "
                   f"{(tas0['test_acc'] - low) * 100:+.2f} to {(tas0['test_acc'] - high) * 100:+.2f} pt from it.")
    write_section("cifar_tas", "TAS against the width multiplier and random structures (benchmarks/cifar_tas.py)",
                  "python benchmarks/cifar_tas.py",
                  "ResNet-20 on CIFAR-10, FLOPs target 50%; every student trained with the 15-epoch recipe and KD "
                  "(alpha 0.9, T 4) from its seed's baseline (the teacher); uniform x0.7 trained for the search's "
                  f"{SEARCH_EPOCHS} epochs more, so both arms spend the same epochs after the teacher (ledger: "
                  "teacher + search + student). Same seed: same teacher, same data order. Search settings "
                  f"{SEARCH}, student init '{INIT}'.\n\nSearch quality at the end of the search:\n\n"
                  + "\n".join(search_rows) + "\n\nPaired seeds:\n\n" + "\n".join(rows)
                  + "\n\nOther arms (seed 0's teacher):\n\n" + "\n".join(other) + verdict)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    recipe = Recipe(epochs=15)
    for arm in [a for a in args.arms.split(",") if a]:
        out = CACHE / f"{arm}.json"
        if not out.exists():
            out.write_text(json.dumps(ARMS[arm](data, recipe), indent=1))
    write_tables(netmorph.count_flops(resnet20(), EXAMPLE))


if __name__ == "__main__":
    main()
