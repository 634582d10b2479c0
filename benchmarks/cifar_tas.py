"""TAS on CIFAR-10 with the MorphNet benchmark's recipe: teacher = its baseline arm (ResNet-20).

Run: ``python benchmarks/cifar_tas.py [--data ../shared/data]`` after ``cifar_morphnet.py --arms baseline``.
Arms, cached like the MorphNet ones in ``benchmarks/results/cifar/``:
- ``tas_search``: TAS over the trained baseline's weights, FLOPs target 50% (tolerance 5%), 4 search
  epochs on the two halves of the 45k training images (weights: SGD 0.1 cosine; architecture: Adam
  1e-3), tau 10 -> 0.1; checkpointed every epoch; the derived structure is the result.
- ``tas_50%``: the derived structure, freshly initialized, trained 15 epochs with the recipe and
  knowledge distillation (alpha 0.9, T 4) from the baseline.
The row joins the MorphNet, uniform and baseline rows in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import netmorph
from netmorph.data import load_cifar10
from netmorph.models import resnet20
from netmorph.morph import save_atomic
from netmorph.structure import Structure
from netmorph.tas import TAS, kd_criterion, search
from netmorph.train import Recipe

from cifar_morphnet import CACHE, EXAMPLE, train_arm, write_table

SEARCH_EPOCHS = 4
TARGET = 0.5


def teacher() -> torch.nn.Module:
    ckpt = CACHE / "baseline.pt"
    if not (CACHE / "baseline.json").exists():
        raise SystemExit("the teacher is the baseline arm: run python benchmarks/cifar_morphnet.py --arms baseline")
    model = resnet20()
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    return model.eval()


def arm_search(data, recipe):
    model = teacher()
    full = netmorph.count_flops(model, EXAMPLE)
    tas = TAS(model, EXAMPLE, TARGET * full, tolerance=0.05, seed=recipe.seed)
    x, y = data[0]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(recipe.seed))
    half = len(x) // 2
    ckpt = CACHE / "tas_search.pt"
    state = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
    t = time.time()
    history = search(tas, (x[perm[:half]], y[perm[:half]]), (x[perm[half:]], y[perm[half:]]), SEARCH_EPOCHS,
                     batch_size=recipe.batch_size, w_lr=recipe.lr, seed=recipe.seed, state=state,
                     log=lambda s: print(f"[tas_search] {s}", flush=True), checkpoint=lambda s: save_atomic(s, ckpt))
    structure = tas.derive()
    found = netmorph.apply_structure(tas.model, structure, keep="first", example_inputs=EXAMPLE)
    return {"structure": structure.to_dict(), "history": history, "flops": netmorph.count_flops(found, EXAMPLE),
            "params": netmorph.count_params(found), "test_acc": None, "train_minutes": (time.time() - t) / 60}


def arm_kd(data, recipe):
    structure = Structure.from_dict(json.loads((CACHE / "tas_search.json").read_text())["structure"])
    torch.manual_seed(recipe.seed)
    student = netmorph.apply_structure(resnet20(), structure, init="fresh", keep="first", example_inputs=EXAMPLE)
    return train_arm("tas_50%", student, data, recipe, criterion=kd_criterion(teacher(), alpha=0.9, T=4.0))


ARMS = {"tas_search": arm_search, "tas_50%": arm_kd}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    recipe = Recipe(epochs=15)
    for arm in args.arms.split(","):
        out = CACHE / f"{arm}.json"
        if not out.exists():
            out.write_text(json.dumps(ARMS[arm](data, recipe), indent=1))
    write_table(recipe.epochs)


if __name__ == "__main__":
    main()
