"""Did the CIFAR-10 networks get faster? CPU latency of every finished arm, side by side.

Run: ``python benchmarks/cifar_latency.py`` after ``cifar_morphnet.py`` and ``cifar_tas.py`` (it reads
their cached structures from ``benchmarks/results/cifar/``; no training, about two minutes). Each arm's
architecture is rebuilt from its structure (weights do not change the time), and the networks are
timed interleaved, round after round on the same input, so a slow moment of the machine hits them
all alike; the table gives the median milliseconds of one forward pass in eval mode and the ratio to
the baseline, for one image and for a batch of 128, with 2 and with 1 torch thread. Run it on an
otherwise idle machine: the ratios are what to read, the milliseconds depend on the load.

A second table asks whether MorphNet's latency cost (a roofline per op) would have predicted those
ratios: the roofline is fitted to this CPU (peak GFLOP/s of a 64->64 3x3 conv, bandwidth of a 64 MB
copy) and evaluated with ``netmorph.costs.count_cost(..., "latency", hardware)`` at batch 128.

Every timed round is kept in ``benchmarks/results/cifar_latency.json`` (committed), so the tables can
be recomputed and checked from the raw seconds.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import netmorph
import numpy as np
from netmorph.cli.report import interleaved_times
from netmorph.costs import Hardware, count_cost
from netmorph.models import resnet20
from netmorph.structure import Structure
from cifar_morphnet import CACHE, EXAMPLE
from report import write_section


def _expanded(result: dict) -> torch.nn.Module:
    return netmorph.apply_structure(resnet20(), Structure.from_dict(result["structure"]), example_inputs=EXAMPLE)


#: arm -> how its architecture is built from ResNet-20 and the arm's cached result
BUILD = {
    "baseline": lambda r: resnet20(),
    "uniform_0.7": lambda r: resnet20(width=0.7),
    "morph_50%": _expanded,
    "morph_100%": _expanded,
    "morph_50%_r8": _expanded,
    "morph_warm_50%_s0": _expanded,
    "peer_50%_s0": lambda r: netmorph.apply_structure(resnet20(), r["widths"], example_inputs=EXAMPLE),
    "tas_50%": lambda r: netmorph.apply_structure(resnet20(), Structure.from_dict(
        json.loads((CACHE / "tas_search.json").read_text())["structure"]), keep="first", example_inputs=EXAMPLE),
}


def finished_arms() -> dict:
    models = {}
    for arm, build in BUILD.items():
        f = CACHE / f"{arm}.json"
        if f.exists():
            models[arm] = build(json.loads(f.read_text())).eval()
    if "baseline" not in models:
        raise SystemExit(f"no finished baseline in {CACHE}: run benchmarks/cifar_morphnet.py first")
    return models


RAW = CACHE.parent / "cifar_latency.json"


def paired_times(models: dict, x: torch.Tensor, rounds: int, warmup: int = 3) -> tuple[dict, dict, dict]:
    """Median ms of each model, the median over rounds of its time / the baseline's in that round,
    and the raw seconds of every round."""
    times = interleaved_times(models, x, rounds, warmup)
    base = np.asarray(times["baseline"])
    return ({k: 1000 * float(np.median(v)) for k, v in times.items()},
            {k: float(np.median(np.asarray(v) / base)) for k, v in times.items()},
            {k: [float(t) for t in v] for k, v in times.items()})


def fitted_roofline(repeats: int = 7) -> Hardware:
    """This CPU as a roofline: a compute-bound conv's GFLOP/s and a large copy's GB/s (medians)."""
    def median_seconds(fn):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[repeats // 2]
    x, w = torch.randn(32, 64, 32, 32), torch.randn(64, 64, 3, 3)
    a = torch.randn(16 * 1024 * 1024)
    b = torch.empty_like(a)
    with torch.inference_mode():
        conv = median_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1))
        copy = median_seconds(lambda: b.copy_(a))
    return Hardware(2 * 32 * 64 * 64 * 9 * 32 * 32 / conv / 1e9, 2 * a.numel() * 4 / copy / 1e9, name="this CPU")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds per pass at batch 128 (10x at batch 1)")
    ap.add_argument("--passes", type=int, default=3, help="passes over every setting (the spread is reported)")
    args = ap.parse_args()
    models = finished_arms()
    torch.manual_seed(0)
    settings = [(threads, batch) for threads in (2, 1) for batch in (1, 128)]
    found = {s: [] for s in settings}                      # per setting: (ms, ratio, raw) of every pass
    raw = []
    with torch.inference_mode():
        for p in range(args.passes):
            for threads, batch in settings:
                torch.set_num_threads(threads)
                x = torch.randn(batch, 3, 32, 32)
                found[threads, batch].append(paired_times(models, x, args.repeats * (10 if batch == 1 else 1)))
                ms = found[threads, batch][-1][0]
                raw.append({"pass": p + 1, "threads": threads, "batch": batch, "seconds": found[threads, batch][-1][2]})
                print(f"pass {p + 1} threads {threads} batch {batch}: " +
                      ", ".join(f"{a} {v:.2f} ms" for a, v in ms.items()), flush=True)
    cells = {arm: [] for arm in models}
    median_ratio = {}                                      # (setting, arm) -> median over the passes
    for s in settings:
        for arm in models:
            ms = float(np.median([m[arm] for m, _, _ in found[s]]))
            ratios = sorted(r[arm] for _, r, _ in found[s])
            median_ratio[s, arm] = float(np.median(ratios))
            spread = f", {ratios[0]:.0%}-{ratios[-1]:.0%}" if arm != "baseline" and len(ratios) > 1 else ""
            cells[arm].append(f"{ms:.2f} ms ({median_ratio[s, arm]:.0%}{spread})")
    torch.set_num_threads(2)
    hw = fitted_roofline()
    batch = torch.zeros(128, 3, 32, 32)
    predicted = {arm: count_cost(m, batch, "latency", hw) for arm, m in models.items()}
    RAW.write_text(json.dumps({"arms": list(models), "rounds": raw, "roofline": {
        "gflops": hw.peak_gflops, "gbs": hw.bandwidth_gbs, "predicted_seconds_b128": predicted}}, indent=1) + "\n")
    roof = [f"Roofline fitted to this CPU (2 threads): {hw.peak_gflops:.0f} GFLOP/s, {hw.bandwidth_gbs:.1f} GB/s; "
            f"it predicts {predicted['baseline'] / 1e6:.1f} ms for the baseline at batch 128.", "",
            "| arm | FLOPs vs baseline | roofline-predicted time vs baseline | measured (2 threads, batch 128) |",
            "|---|---|---|---|"]
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}, batch {b}" for t, b in settings)
    rows = [f"| arm | FLOPs vs baseline | {head} |", "|---|---|" + "---|" * len(settings)]
    base = netmorph.count_flops(models["baseline"], EXAMPLE)
    for arm, model in models.items():
        flops = netmorph.count_flops(model, EXAMPLE) / base
        rows.append(f"| {arm} | {flops:.1%} | " + " | ".join(cells[arm]) + " |")
        roof.append(f"| {arm} | {flops:.1%} | {predicted[arm] / predicted['baseline']:.0%} | "
                    f"{median_ratio[(2, 128), arm]:.0%} |")
    write_section("cifar_latency", "Did it get faster? CPU latency of the CIFAR-10 arms (benchmarks/cifar_latency.py)",
                  "python benchmarks/cifar_latency.py",
                  "Median time of one forward pass (eval mode, `torch.inference_mode`), the arms interleaved round "
                  f"after round on the same input; {args.passes} passes over the four settings, each {args.repeats} "
                  f"rounds at batch 128 and {10 * args.repeats} at batch 1 (3 warm-up rounds). In brackets: the arm's "
                  "time over the baseline's time in the same round, median over rounds, then the median and the "
                  "range over the passes. This machine is a VM with neighbours: milliseconds move by tens of "
                  "percent between runs, so read the ratios.\n\n"
                  + "\n".join(rows) + "\n\n" + "\n".join(roof))


if __name__ == "__main__":
    main()
