"""Graph-build time and the training-step overhead of ``reg.loss()`` on a ResNet-50 at batch 32.

Run: ``python benchmarks/overhead.py`` (needs the vision extra for torchvision's ResNet-50).
Figure of merit (target: at most 1.03): the overhead ``1 + t_loss / t_step``, where ``t_loss`` is the
median time of ``reg.loss()`` with its backward alone and ``t_step`` the median plain training step. It
is measured directly because the whole-step comparison cannot resolve it: plain and regularized steps
alternate (so machine noise hits both alike) and their paired ratio is reported as a cross-check with
its spread over the repetitions; the text says whether that ratio is distinguishable from 1.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import netmorph
from report import write_section


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args()
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    example = torch.randn(1, 3, args.size, args.size)

    builds = {}
    for family in (netmorph.GammaFlopsRegularizer, netmorph.GammaLatencyRegularizer,
                   netmorph.GroupLassoFlopsRegularizer):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            reg = family(model, example)
            times.append(time.perf_counter() - t)
        builds[family.__name__] = min(times)
    reg = netmorph.GammaFlopsRegularizer(model, example)
    strength = 1.0 / reg.cost()

    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step(with_reg: bool) -> float:
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        if with_reg:
            loss = loss + strength * reg.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    step(False), step(True)                                   # warm-up
    plain, regd = [], []
    for _ in range(args.reps):
        plain.append(step(False))
        regd.append(step(True))
    loss_only = []
    for _ in range(20):
        t = time.perf_counter()
        (strength * reg.loss()).backward()
        loss_only.append(time.perf_counter() - t)
    ratio = statistics.median(regd) / statistics.median(plain)
    direct = 1 + statistics.median(loss_only) / statistics.median(plain)
    spread = (max(plain) - min(plain)) / statistics.median(plain)
    paired = sorted(r / p for r, p in zip(regd, plain))          # each regularized step over the plain one before it
    lo, hi = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
    if lo <= 1.0 <= hi:
        verdict = (f"The whole-step ratio ({ratio:.3f}; paired ratios' middle half {lo:.3f} to {hi:.3f}) cannot tell "
                   "the regularized step from the plain one on this machine, so the direct figure, the time "
                   "`reg.loss()` and its backward add over a plain step, is the overhead itself.")
    else:
        verdict = (f"The paired step ratios' middle half ({lo:.3f} to {hi:.3f}) excludes 1: the whole-step "
                   f"comparison sees a difference of {ratio - 1:+.1%}, against {direct - 1:+.3%} measured directly; "
                   "rerun on an idle machine before trusting either.")
    met = "meets" if direct <= 1.03 else "misses"
    body = "\n".join([
        f"ResNet-50 (torchvision), example input 1x3x{args.size}x{args.size} for the graph, training "
        f"steps at batch {args.batch} (SGD, cross-entropy), {args.reps} alternating repetitions.",
        "",
        "| measurement | value |", "|---|---|",
        *[f"| build `{name}` (best of 3) | {t:.3f} s |" for name, t in builds.items()],
        f"| channel groups / channels | {len(reg.graph.groups)} / {reg.graph.n_channels} |",
        f"| plain training step (median) | {statistics.median(plain):.3f} s |",
        f"| step with `strength * reg.loss()` (median) | {statistics.median(regd):.3f} s |",
        f"| step-time ratio, regularized / plain (medians; cross-check) | {ratio:.4f} |",
        f"| paired step ratios, middle half of {len(paired)} | {lo:.3f} to {hi:.3f} |",
        f"| spread of the plain step times (max - min) / median | {spread:.1%} |",
        f"| `reg.loss()` forward + backward alone (median of 20) | {1000 * statistics.median(loss_only):.2f} ms |",
        f"| **overhead: 1 + loss time / plain step** (figure of merit, target <= 1.03) | **{direct:.5f}** |",
        "",
        f"**Overhead {direct:.5f}: {met} the target.** " + verdict,
    ])
    write_section("overhead", "Regularizer overhead (benchmarks/overhead.py)",
                  "python benchmarks/overhead.py", body)


if __name__ == "__main__":
    main()
