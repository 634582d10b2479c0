"""Learn a network's structure inside your own training loop: AdamW, a linearly decaying learning
rate, evaluation every few steps, and two calls to ``netmorph.StructureLearner``.

Data: scikit-learn's bundled 8x8 digits (no download); model: the built-in ``tiny`` CNN. At the end,
the learned structure (alive channels per layer at 50% of the FLOPs) widened back to the original's
FLOPs, built as a real network and fine-tuned briefly.

    python examples/plain_loop.py [--epochs 12] [--shrink 50%]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import netmorph
from netmorph.datasets import load_digits
from netmorph.models import tiny_cnn
from netmorph.train import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--shrink", default="50%")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_digits()
    (x, y), val = data.train, data.val
    model = tiny_cnn(num_classes=10)
    example = x[:1]
    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    total = args.epochs * len(batches)
    # the gammas the regularizer reads get no weight decay (it would pull every channel alike)
    gammas = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in gammas], "weight_decay": 0.01},
                             {"params": [p for p in model.parameters() if id(p) in gammas], "weight_decay": 0.0}],
                            lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
    learner = netmorph.StructureLearner(model, example, shrink=args.shrink, total_steps=total, optimizer=opt)
    step = 0
    for epoch in range(args.epochs):
        for xb, yb in batches:
            model.train()
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            learner.step()                      # after the optimizer's step
            schedule.step()
            step += 1
            if step % 10 == 0:                  # an evaluation every 10 steps, not per epoch
                row = learner.evaluate(evaluate(model, *val))
        print(f"epoch {epoch + 1}: alive FLOPs {row['cost']:,.0f} ({row['cost'] / learner.original_cost:.0%}), "
              f"val acc {row['metric']:.3f}")
    print(f"learned: {learner.learned_cost / learner.original_cost:.0%} of the FLOPs "
          f"({'in' if learner.reached_target else 'not in'} the target band)")
    for name, width in learner.learned.items():
        print(f"  {name}: {width} of {learner.learned.original[name]}")
    expanded = learner.expanded("100%")
    print(f"expanded by {expanded.omega:.2f} to {expanded.cost / learner.original_cost:.0%} of the FLOPs:",
          dict(expanded))
    final = netmorph.apply_structure(tiny_cnn(num_classes=10), expanded, example_inputs=example)
    opt = torch.optim.AdamW(final.parameters(), lr=3e-3, weight_decay=0.01)
    for epoch in range(max(1, args.epochs // 2)):
        final.train()
        for xb, yb in batches:
            loss = nn.functional.cross_entropy(final(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"the expanded network trained {max(1, args.epochs // 2)} epochs: test acc {evaluate(final, *data.test):.3f} "
          f"at {netmorph.count_flops(final, example):,} FLOPs (original {learner.original_cost:,.0f})")


if __name__ == "__main__":
    main()
