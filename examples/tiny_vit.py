"""Learn the attention heads per layer and the MLP width of a tiny vision transformer, then prune it.

Data: scikit-learn's bundled 8x8 digits (no download), cut into 16 patches of 2x2 pixels; model: a
two-block ViT written the usual way (query, key and value projections split into heads with
``view(B, N, -1, head_dim)``, ``F.scaled_dot_product_attention``, an MLP). ``netmorph.StructureLearner``
pulls whole heads (read from the output projection's columns) and MLP channels towards zero inside a
plain AdamW loop until half the FLOPs are left; what fell below the threshold is zeroed, ``netmorph.prune``
removes it exactly (same accuracy), and the smaller network is fine-tuned briefly. The hidden width (the
residual stream, read by LayerNorm) is kept here.

    python examples/tiny_vit.py [--epochs 12] [--shrink 50%]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import netmorph
from netmorph.datasets import load_data
from netmorph.train import evaluate


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads       # netmorph updates num_heads when heads go
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = (lin(x).view(B, N, -1, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.patches = nn.Conv2d(1, dim, kernel_size=2, stride=2)          # 8x8 -> 16 tokens
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patches(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


def describe(model: TinyViT) -> str:
    return "; ".join(f"block {i}: {b.attn.num_heads} heads, MLP {b.mlp[0].out_features}"
                     for i, b in enumerate(model.blocks))


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--shrink", default="50%")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_data(None)                                                 # the built-in digits
    (x, y), val = data.train, data.val
    model = TinyViT()
    example = x[:1]
    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    total = args.epochs * len(batches)
    learner = netmorph.StructureLearner(model, example, shrink=args.shrink, total_steps=total, log=lambda s: None)
    # the hidden width is read by LayerNorm, so removing its channels would only be approximate: left whole here
    learner.reg.regularized &= ~learner.reg.graph.approximate_mask()
    # the weights the regularizer reads (MLP rows, the output projections' columns) get no weight decay
    free = {id(p) for p in learner.no_decay_parameters()}
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in free], "weight_decay": 0.05},
                             {"params": [p for p in model.parameters() if id(p) in free], "weight_decay": 0.0}],
                            lr=3e-3)
    learner.optimizer = opt
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
    print(f"before: {describe(model)}")
    for epoch in range(args.epochs):
        for xb, yb in batches:
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            learner.step()                      # after the optimizer's step
            schedule.step()
        row = learner.evaluate(evaluate(model, *val))
        print(f"epoch {epoch + 1}: alive FLOPs {row['cost'] / learner.original_cost:.0%}, val acc {row['metric']:.3f}")
    if learner.best_weights is not None:
        model.load_state_dict(learner.best_weights)      # the evaluation the learner picked
    before_flops = netmorph.count_flops(model, example)
    accuracy = evaluate(model, *data.test)
    # "dead" means below the regularizer's threshold (AdamW keeps moving them by about its learning rate):
    # make them exactly zero, then pruning removes them without changing the function
    learner.reg.zero_channels(learner.reg.regularized & ~learner.reg.alive())
    zeroed = evaluate(model, *data.test)
    small = netmorph.prune(model, learner.reg)
    after_flops, pruned = netmorph.count_flops(small, example), evaluate(small, *data.test)
    print(f"learned: {describe(small)}")
    print(f"FLOPs {before_flops:,} -> {after_flops:,} ({after_flops / before_flops:.0%}); test acc {accuracy:.3f}, "
          f"{zeroed:.3f} with the dead heads and channels zeroed, {pruned:.3f} pruned")
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(max(1, args.epochs // 4)):                          # a short fine-tune of the pruned network
        small.train()
        for xb, yb in batches:
            loss = F.cross_entropy(small(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    tuned = evaluate(small, *data.test)
    print(f"fine-tuned {max(1, args.epochs // 4)} epochs: test acc {tuned:.3f}")
    return {"flops": (before_flops, after_flops), "accuracy": (accuracy, zeroed, pruned, tuned),
            "heads": [b.attn.num_heads for b in small.blocks], "mlp": [b.mlp[0].out_features for b in small.blocks]}

if __name__ == "__main__":
    main()
