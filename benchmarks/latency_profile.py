"""How long profiling takes, and how well a profile predicts measured time.

Run: ``python benchmarks/latency_profile.py`` on an otherwise idle machine (about 10 minutes).

1. **Cost of profiling**: ResNet-50 (torchvision, 224x224) at batch 1 and ResNet-20 at batch 128,
   each measured into an empty cache (the time includes the calibration), then reloaded from it.
2. **Prediction against measurement**: 10 random-width ResNet-20s (every channel group at a random
   30%-130% of its width, different per group) and the full network, timed interleaved; for each the
   predicted and the measured time as ratios to the full network's, at batch 1 and batch 128. Reported:
   the rank correlation and the median and largest error of the predicted ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import netmorph
from netmorph.cli.report import interleaved_times
from netmorph.costs import count_cost
from netmorph.graph import build_graph
from netmorph.latency import profile
from netmorph.models import resnet20
from report import write_section

X = torch.zeros(1, 3, 32, 32)


def timed_profile(model, x, batch):
    t = time.perf_counter()
    prof = profile(model, x, "cpu", threads=2, batch=batch)
    made = time.perf_counter() - t
    t = time.perf_counter()
    profile(model, x, "cpu", threads=2, batch=batch)
    return prof, made, time.perf_counter() - t


def random_structures(n, seed=0):
    graph = build_graph(resnet20(), X)
    rng = np.random.default_rng(seed)
    models = {"full": resnet20()}
    for i in range(n):
        widths = {}
        for grp in graph.groups:
            if grp.frozen is None:
                w = max(1, int(round(grp.width * rng.uniform(0.3, 1.3))))
                widths.update({name: w for name in grp.producers if name in graph.layers})
        models[f"r{i}"] = netmorph.apply_structure(resnet20(), widths, example_inputs=X)
    return models


def check(prof, batch, models, rounds):
    with torch.inference_mode():
        times = interleaved_times(models, torch.randn(batch, 3, 32, 32), rounds, warmup=3)
    base = np.asarray(times["full"])
    measured = np.array([np.median(np.asarray(times[k]) / base) for k in models])
    full = count_cost(models["full"], X, "latency", prof)
    predicted = np.array([count_cost(m, X, "latency", prof) / full for m in models.values()])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = float(np.corrcoef(rank(measured), rank(predicted))[0, 1])
    err = np.abs(predicted / measured - 1)[1:]
    return rho, float(np.median(err)), float(np.max(err)), measured, predicted


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--structures", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import torchvision
    lines = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NETMORPH_CACHE"] = cache
        _, made50, reload50 = timed_profile(torchvision.models.resnet50(), torch.zeros(1, 3, 224, 224), 1)
        print(f"resnet50 batch 1: {made50:.0f} s, reload {reload50:.2f} s", flush=True)
        profs = {}
        for batch in (1, 128):
            profs[batch], made, reload = timed_profile(resnet20(), X, batch)
            lines.append(f"| ResNet-20, batch {batch} | {made:.0f} s | {reload:.2f} s |")
            print(lines[-1], flush=True)
        models = random_structures(args.structures)
        checks = {b: check(profs[b], b, models, 40 if b == 1 else 10) for b in (1, 128)}
    table = ["| profiled network | measuring (empty cache, with calibration) | reloading |", "|---|---|---|",
             f"| ResNet-50 (224x224), batch 1 | {made50:.0f} s | {reload50:.2f} s |", *lines]
    acc = ["| batch | rank correlation | median error of the predicted ratio | largest error |", "|---|---|---|---|"]
    pairs = []
    for b, (rho, med, worst, measured, predicted) in checks.items():
        acc.append(f"| {b} | {rho:.2f} | {med:.1%} | {worst:.1%} |")
        pairs.append(f"batch {b}, predicted / measured ratio to the full network: " + ", ".join(
            f"{p:.2f}/{m:.2f}" for p, m in zip(predicted[1:], measured[1:])))
    write_section("latency_profile", "Device profiles: cost and accuracy (benchmarks/latency_profile.py)",
                  "python benchmarks/latency_profile.py",
                  "Profiles measured into an empty cache on this machine (2 threads), then reloaded:\n\n"
                  + "\n".join(table) + f"\n\nPredicted against measured time of {args.structures} random-width "
                  "ResNet-20s (each channel group at 30-130% of its width), as ratios to the full network timed in "
                  "the same rounds:\n\n" + "\n".join(acc) + "\n\n" + "\n\n".join(pairs))


if __name__ == "__main__":
    main()
