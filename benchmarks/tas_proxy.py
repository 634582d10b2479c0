"""Short proxy for choosing TAS search settings on CIFAR-10 ResNet-20 (teacher: the baseline arm).

Run: ``python benchmarks/tas_proxy.py --data ../shared/data --configs old,teacher_a1e-2 [--epochs 2]``.
Each config searches for ``--epochs`` epochs over the same halves of the training split as
``cifar_tas.py`` (FLOPs target 50%), then reports what the issue measures a search by: the share of
distributions with a top-1 probability of at least 0.5, the mean entropy over uniform's, the argmax
network's FLOPs against the expected FLOPs, and the argmax network's validation accuracy with the
search's own weights (BatchNorm statistics re-estimated on 2k training images). The depth of the
last stage and the widths of the first one are printed to compare with the reference structure.
Results are cached in ``benchmarks/results/cifar/proxy_<config>.json`` and tabled in docs/benchmarks.md.
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
from netmorph.tas import TAS, search
from netmorph.tas.search import summarize

from cifar_morphnet import CACHE, EXAMPLE
from report import write_section

# name: (start, w_lr, a_lr, augment, tau)
CONFIGS = {
    "old": ("teacher", 0.1, 1e-3, False, (10.0, 0.1)),           # the settings the issue measured
    "teacher_a1e-3": ("teacher", 0.01, 1e-3, True, (10.0, 0.1)),
    "teacher_a1e-2": ("teacher", 0.01, 1e-2, True, (10.0, 0.1)),
    "teacher_a5e-2": ("teacher", 0.01, 5e-2, True, (10.0, 0.1)),
    "teacher_a1e-2_tau3": ("teacher", 0.01, 1e-2, True, (3.0, 0.1)),
    "random_a1e-2": ("random", 0.1, 1e-2, True, (10.0, 0.1)),
    "random_a5e-2": ("random", 0.1, 5e-2, True, (10.0, 0.1)),
}


def teacher() -> torch.nn.Module:
    model = resnet20()
    model.load_state_dict(torch.load(CACHE / "baseline.pt", weights_only=True)["model"])
    return model.eval()


@torch.no_grad()
def argmax_accuracy(tas, x_bn, val) -> float:
    """Validation accuracy of ``tas`` in argmax mode, BatchNorm statistics re-estimated on ``x_bn``."""
    tas.mode = "argmax"
    for m in tas.model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    tas.train()
    for xb in x_bn.split(256):
        tas(xb)
    tas.eval()
    x, y = val
    correct = sum(int((tas(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(500), y.split(500)))
    tas.mode = "gumbel"
    return correct / len(y)


def run(name: str, data, epochs: int, seed: int = 0) -> dict:
    start, w_lr, a_lr, augment, tau = CONFIGS[name]
    model = teacher() if start == "teacher" else (torch.manual_seed(seed), resnet20())[1]
    full = netmorph.count_flops(model, EXAMPLE)
    tas = TAS(model, EXAMPLE, 0.5 * full, tolerance=0.05, seed=seed)
    x, y = data[0]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    half = len(x) // 2
    t = time.time()
    history = search(tas, (x[perm[:half]], y[perm[:half]]), (x[perm[half:]], y[perm[half:]]), epochs,
                     batch_size=128, w_lr=w_lr, a_lr=a_lr, tau=tau, augment=augment, seed=seed,
                     log=lambda s: print(f"[{name}] {s}", flush=True))
    minutes = (time.time() - t) / 60
    acc = argmax_accuracy(tas, x[perm[:2048]], data[1])
    diag = tas.diagnostics()
    last_stage = next(d for d in reversed(diag) if d["kind"] == "depth")
    structure = tas.derive()
    return {"config": name, "start": start, "w_lr": w_lr, "a_lr": a_lr, "augment": augment, "tau": list(tau),
            "epochs": epochs, "minutes": minutes, **summarize(diag),
            "argmax_flops": tas.flops() / full, "expected_flops": float(tas.expected_flops().detach()) / full,
            "argmax_val_acc": acc, "last_stage_depth": last_stage["candidates"][int(torch.tensor(last_stage["probs"]).argmax())],
            "stage1_widths": [structure[n] for n in ("conv1", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1")],
            "structure": structure.to_dict(), "history": [{k: v for k, v in h.items() if k != "distributions"} for h in history]}


def table() -> None:
    rows = ["| config | start | w lr | arch lr | augment | tau | epochs | decided (top-1 >= 0.5) | mean entropy | "
            "argmax / expected FLOPs | argmax val acc (search weights) | last-stage depth | stage-1 widths | minutes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in CONFIGS:
        f = CACHE / f"proxy_{name}.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        rows.append(f"| {name} | {r['start']} | {r['w_lr']:g} | {r['a_lr']:g} | {r['augment']} | {r['tau'][0]:g}->{r['tau'][1]:g} | "
                    f"{r['epochs']} | {r['decided']:.0%} | {r['entropy']:.2f} | {r['argmax_flops']:.1%} / "
                    f"{r['expected_flops']:.1%} | {r['argmax_val_acc']:.2%} | {r['last_stage_depth']} | "
                    f"{r['stage1_widths']} | {r['minutes']:.0f} |")
    write_section("tas_proxy", "TAS search settings on a short proxy (benchmarks/tas_proxy.py)",
                  "python benchmarks/tas_proxy.py --epochs 2",
                  "ResNet-20 on CIFAR-10, FLOPs target 50% (tolerance 5%), batch 128, the halves of the 45k training "
                  "images as in cifar_tas.py, seed 0. 'teacher' starts from the trained baseline arm, 'random' from "
                  "a fresh init. Widths of stage 1 are the stem/residual group and the three blocks' inner convs "
                  "(full: 16 each); the reference structure keeps all 3 blocks of the last stage and makes stage 1 "
                  "very thin.\n\n" + "\n".join(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    for name in args.configs.split(","):
        out = CACHE / f"proxy_{name}.json"
        if not out.exists():
            out.write_text(json.dumps(run(name, data, args.epochs), indent=1))
    table()


if __name__ == "__main__":
    main()
