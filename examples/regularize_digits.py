"""Regularize a small CNN with MorphNet's FLOPs regularizer and print what it learned.

Data: scikit-learn's bundled 8x8 handwritten digits (1,797 images; no download). The model is the
built-in ``tiny`` CNN. Training uses the task loss plus the proximal step of
``GammaFlopsRegularizer`` after every optimizer step, so channels the regularizer kills reach
exactly zero. At the end: test accuracy, the cost table (original network vs the network that
keeps only the alive channels), the learned structure, and the pruned network itself: its accuracy
and its latency *measured* on this CPU against the original's.

    python examples/regularize_digits.py [--epochs 20] [--strength 50] [--seed 0]

``--strength`` is given in units of 1 / (initial FLOPs), MorphNet's suggested scale.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import netmorph
from netmorph.models import tiny_cnn


def load_digits(seed: int):
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError:
        raise SystemExit("this example needs scikit-learn for its bundled digits: pip install scikit-learn")
    data = sk_load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 5
    return (x[perm[n_test:]], y[perm[n_test:]]), (x[perm[:n_test]], y[perm[:n_test]])


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--strength", type=float, default=50.0, help="regularization strength x initial FLOPs")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = load_digits(args.seed)
    model = tiny_cnn(num_classes=10, in_channels=1)
    example = xtr[:1]
    reg = netmorph.GammaFlopsRegularizer(model, example)
    size = netmorph.GammaModelSizeRegularizer(model, example)
    latency = netmorph.GammaLatencyRegularizer(model, example, hardware="V100")
    original = {"FLOPs": reg.cost(), "weights": size.cost(), "latency V100 (ns)": latency.cost()}
    strength = args.strength / original["FLOPs"]
    print(f"tiny CNN on sklearn digits: {len(xtr)} train / {len(xte)} test images, "
          f"{original['FLOPs']:,.0f} FLOPs per image, strength {strength:.3g}")

    # BN gammas carry the regularizer: no weight decay on them (it would fight the cost weighting)
    gammas = {id(p) for p in reg.source_parameters()}
    opt = torch.optim.SGD([
        {"params": [p for p in model.parameters() if id(p) not in gammas], "weight_decay": 5e-4},
        {"params": reg.source_parameters(), "weight_decay": 0.0}], lr=args.lr, momentum=0.9)
    batches = torch.randperm(len(xtr)).split(64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * len(batches), pct_start=0.15)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(xtr)).split(64):
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            lr = opt.param_groups[0]["lr"]
            opt.step()
            reg.proximal_step(lr, strength)          # the proximal step uses this step's lr
            sched.step()
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}  test acc {accuracy(model, xte, yte):.3f}  "
                  f"alive FLOPs {reg.cost():,.0f} ({reg.cost() / original['FLOPs']:.0%})  "
                  f"[{time.time() - start:.0f}s]")

    learned = {"FLOPs": reg.cost(), "weights": size.cost(), "latency V100 (ns)": latency.cost()}
    print(f"\ntest accuracy {accuracy(model, xte, yte):.3f}\n")
    print(f"{'cost':<20}{'original':>14}{'learned':>14}{'ratio':>8}")
    for key in original:
        print(f"{key:<20}{original[key]:>14,.0f}{learned[key]:>14,.0f}{learned[key] / original[key]:>8.0%}")
    print("\nlearned structure (alive output channels per layer)\n")
    print(reg.structure().table())

    small = netmorph.prune(model, reg)
    print(f"\n{small.netmorph_report}")
    print(f"pruned network: test accuracy {accuracy(small, xte, yte):.3f}, "
          f"{netmorph.count_params(small):,} parameters (was {netmorph.count_params(model):,})")
    before, after = measure_ms(model, xte), measure_ms(small, xte)
    print(f"measured on this CPU, batch {len(xte)}: {before:.2f} ms -> {after:.2f} ms ({before / after:.2f}x faster)")


def measure_ms(model, x, repeats: int = 30) -> float:
    """Median wall time of one forward pass (eval mode, no grad), after a warm-up."""
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 5):
            t = time.perf_counter()
            model(x)
            if i >= 5:
                times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


if __name__ == "__main__":
    main()
