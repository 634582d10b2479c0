"""Did the CIFAR-10 networks get faster? CPU latency of every finished arm, side by side.

Run: ``python benchmarks/cifar_latency.py`` after ``cifar_morphnet.py`` and ``cifar_tas.py`` (it reads
their cached structures from ``benchmarks/results/cifar/``; no training, about two minutes). Each arm's
architecture is rebuilt from its structure (weights do not change the time), and the networks are
timed interleaved, round after round on the same input, so a slow moment of the machine hits them
all alike; the table gives the median milliseconds of one forward pass in eval mode and the ratio to
the baseline, for one image and for a batch of 128, with 2 and with 1 torch thread. Run it on an
otherwise idle machine: the ratios are what to read, the milliseconds depend on the load.
"""
from __future__ import annotations

import argparse
import json

import torch

import netmorph
from netmorph.cli.report import measure_latency
from netmorph.models import resnet20
from netmorph.structure import Structure
from cifar_morphnet import CACHE, EXAMPLE
from report import write_section

#: arm -> how its architecture is built from ResNet-20 and the arm's cached result
BUILD = {
    "baseline": lambda r: resnet20(),
    "uniform_0.7": lambda r: resnet20(width=0.7),
    "morph_50%": lambda r: netmorph.apply_structure(resnet20(), Structure.from_dict(r["structure"]),
                                                    example_inputs=EXAMPLE),
    "morph_100%": lambda r: netmorph.apply_structure(resnet20(), Structure.from_dict(r["structure"]),
                                                     example_inputs=EXAMPLE),
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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds at batch 128 (10x as many at batch 1)")
    args = ap.parse_args()
    models = finished_arms()
    torch.manual_seed(0)
    cells = {arm: [] for arm in models}
    settings = [(threads, batch) for threads in (2, 1) for batch in (1, 128)]
    with torch.inference_mode():
        for threads, batch in settings:
            torch.set_num_threads(threads)
            x = torch.randn(batch, 3, 32, 32)
            ms = measure_latency(models, x, repeats=args.repeats * (10 if batch == 1 else 1), warmup=3)
            for arm in models:
                cells[arm].append(f"{ms[arm]:.2f} ms ({ms[arm] / ms['baseline']:.0%})")
            print(f"threads {threads} batch {batch}: " + ", ".join(f"{a} {v:.2f} ms" for a, v in ms.items()),
                  flush=True)
    torch.set_num_threads(2)
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}, batch {b}" for t, b in settings)
    rows = [f"| arm | FLOPs vs baseline | {head} |", "|---|---|" + "---|" * len(settings)]
    base = netmorph.count_flops(models["baseline"], EXAMPLE)
    for arm, model in models.items():
        rows.append(f"| {arm} | {netmorph.count_flops(model, EXAMPLE) / base:.1%} | " + " | ".join(cells[arm]) + " |")
    write_section("cifar_latency", "Did it get faster? CPU latency of the CIFAR-10 arms (benchmarks/cifar_latency.py)",
                  "python benchmarks/cifar_latency.py",
                  "Median time of one forward pass (eval mode, `torch.inference_mode`), the arms interleaved round "
                  f"after round on the same input ({args.repeats} rounds at batch 128, {10 * args.repeats} at batch 1; "
                  "3 warm-up rounds); in brackets the ratio to the baseline measured in the same rounds.\n\n"
                  + "\n".join(rows))


if __name__ == "__main__":
    main()
