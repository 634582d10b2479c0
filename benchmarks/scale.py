"""Scale: graph build and prune time and peak resident memory on the largest torchvision models.

Run: ``python benchmarks/scale.py [--models vit_h_14,regnet_y_128gf,efficientnet_v2_l]`` (needs the vision
extra; about 10 GB of memory for vit_h_14). Every measurement runs in a fresh child process, so its peak
resident set (``ru_maxrss``) is its own:

- ``forward``: the model built, then one forward and backward pass with gradients (1x3x224x224): the
  memory any training of the model needs;
- ``netmorph``: the model built, then the FLOPs regularizer's channel graph recorded, 30% of its
  regularized channels made dead, and the network pruned.

The target (issue: survive faults, scale): recording the graph within 2x the peak memory of one
forward pass with gradients. Results go to the "scale" section of docs/benchmarks.md and the raw
numbers to ``benchmarks/results/scale.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from report import write_section

CACHE = Path(__file__).parent / "results" / "scale.json"
MODELS = ["vit_h_14", "regnet_y_128gf", "efficientnet_v2_l"]


def child(name: str, what: str) -> dict:
    import numpy as np
    import torch
    import torchvision.models as tvm

    import netmorph
    torch.manual_seed(0)
    model = tvm.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    out = {"model_gb": built}
    t = time.perf_counter()
    if what == "forward":
        model(x).sum().backward()
        out["forward_s"] = time.perf_counter() - t
    else:
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        reg = (netmorph.GammaFlopsRegularizer if has_bn else netmorph.GroupLassoFlopsRegularizer)(model, x)
        out["build_s"] = time.perf_counter() - t
        out["build_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        reg.zero_channels((np.random.default_rng(0).random(reg.graph.n_channels) < 0.3) & reg.regularized)
        t = time.perf_counter()
        small = netmorph.prune(model, reg)
        out["prune_s"] = time.perf_counter() - t
        out["flops_ratio"] = small.netmorph_report.flops_after / small.netmorph_report.flops_before
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def measure(name: str) -> dict:
    row = {}
    for what in ("forward", "netmorph"):
        done = subprocess.run([sys.executable, __file__, "--child", name, what], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} {what} failed:\n{done.stderr[-3000:]}")
        row[what] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, what, row[what], flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    results = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    for name in args.models.split(","):
        if name not in results:
            results[name] = measure(name)
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            CACHE.write_text(json.dumps(results, indent=1))
    rows = ["| model | model alone (GB) | forward + backward peak (GB) | graph recorded, peak (GB) | "
            "graph / forward peak | graph build (s) | prune, 30% dead (s) | prune peak (GB) | within 2x |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        f, n = r["forward"], r["netmorph"]
        ratio = n["build_peak_gb"] / f["peak_gb"]
        rows.append(f"| {name} | {f['model_gb']:.2f} | {f['peak_gb']:.2f} | {n['build_peak_gb']:.2f} | {ratio:.2f} | "
                    f"{n['build_s']:.1f} | {n['prune_s']:.1f} | {n['peak_gb']:.2f} | {'yes' if ratio <= 2 else 'NO'} |")
    write_section("scale", "Scale: the largest torchvision models (benchmarks/scale.py)", "python benchmarks/scale.py",
                  "Peak resident memory (ru_maxrss) of a fresh process per column, input 1x3x224x224. Forward + "
                  "backward: the model built, one pass with gradients. Graph recorded: the model built and the FLOPs "
                  "regularizer's channel graph recorded. Prune peak: after also pruning 30% of the channels (prune "
                  "works on a copy, so it holds two models). Target: graph within 2x the forward peak. Times on a "
                  "shared 2-core machine (other benchmarks running): compare only roughly.\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
