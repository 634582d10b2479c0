"""A short proxy for the MorphNet warm start's controller: the trained CIFAR-10 baseline (seed 0,
``benchmarks/results/cifar/baseline.pt``) regularized on a subset of the training images, down to
a shrink target, logging where the alive FLOPs are after every epoch and the validation accuracy.

Run: ``python benchmarks/controller_proxy.py [--subset 9000] [--epochs 5] [--shrink 0.45] [--lr 0.1]``. A few
minutes on one core; used to decide the controller's settings before the full arms run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import netmorph
from netmorph.data import load_cifar10
from netmorph.models import resnet20
from netmorph.morph import regularize
from netmorph.train import Recipe

from cifar_morphnet import CACHE, EXAMPLE


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--subset", type=int, default=9000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shrink", type=float, default=0.45)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.1, help="the regularized run's (held) learning rate")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (xtr, ytr), (xva, yva), _ = load_cifar10(args.data)
    train, val = (xtr[:args.subset], ytr[:args.subset]), (xva[:2000], yva[:2000])
    model = resnet20()
    model.load_state_dict(torch.load(CACHE / "baseline.pt", weights_only=True)["model"])
    full = netmorph.count_flops(model, EXAMPLE)
    t = time.time()
    _, cost, info = regularize(model, train, val, EXAMPLE, args.shrink * full, Recipe(epochs=args.epochs, lr=args.lr), "flops",
                               log=lambda s: print(s, flush=True))
    print(f"landed at {cost / full:.1%} of the FLOPs (target {args.shrink:.0%}), in band: {info.reached_target}, "
          f"picked val acc {max(info.val_history):.4f}, {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
