"""Graph building and exact pruning over every torchvision classification model.

Run: ``python benchmarks/torchvision_zoo.py [--models resnet50,vit_b_16]`` (needs the vision extra).
For each model: build the FLOPs regularizer (Gamma with BatchNorm, GroupLasso without), make 30% of
its regularized channels exactly dead (``reg.zero_channels``), prune, and check the pruned outputs
equal the original's and ``count_flops(pruned) == reg.cost()``; and compare ``count_flops`` with torch's
own ``FlopCounterMode`` (gradients on, so fused attention shows its matmuls) on the original and on the
pruned network, where netmorph derives the count for widths it changed. Input 1x3x224x224 (299 for
Inception v3). The raw results are kept per model in ``benchmarks/results/zoo.json`` (committed, so the
table can be checked against them; delete a model's entry to rerun it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import netmorph
from torch.utils.flop_counter import FlopCounterMode

from report import write_section

CACHE = Path(__file__).parent / "results" / "zoo.json"


def torch_flops(model, x) -> int:
    """FLOPs as torch's FlopCounterMode counts them, gradients enabled."""
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def run(name: str) -> dict:
    import torchvision.models as tvm
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = tvm.get_model(name, **kwargs).eval()
    with torch.no_grad():                   # zero-initialized heads (ViT) would make every output 0
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    size = 299 if name == "inception_v3" else 224
    x = torch.randn(1, 3, size, size)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    t = time.perf_counter()
    reg = netmorph.GammaFlopsRegularizer(model, x) if has_bn else \
        netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    build = time.perf_counter() - t
    changeable = [g for g in reg.graph.groups if g.frozen is None]
    dead = (np.random.default_rng(0).random(reg.graph.n_channels) < 0.3) & reg.regularized
    reg.zero_channels(dead)
    with torch.no_grad():
        before = model(x)
    t = time.perf_counter()
    small = netmorph.prune(model, reg)
    prune_time = time.perf_counter() - t
    with torch.no_grad():
        after = small(x)
    r = small.netmorph_report
    rel = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
    counted = {"original": (netmorph.count_flops(model, x), torch_flops(model, x)),
               "pruned": (netmorph.count_flops(small, x), torch_flops(small, x))}
    return {"flops_netmorph": {k: a for k, (a, _) in counted.items()},
            "flops_torch": {k: b for k, (_, b) in counted.items()},
            "flops_equal": all(a == b for a, b in counted.values()),
            "family": "gamma" if has_bn else "group lasso", "build_s": build, "prune_s": prune_time,
            "channels": reg.graph.n_channels, "regularized": int(reg.regularized.sum()),
            "groups": len(reg.graph.groups), "changeable_groups": len(changeable),
            "flops_ratio": r.flops_after / r.flops_before, "rel_change": rel,
            "cost_ok": r.flops_after == reg.cost(), "pruned": bool(dead.any() and rel < 1e-4 and r.flops_after < r.flops_before)}


def _flops_cell(r: dict) -> str:
    if "flops_equal" not in r:
        return "-"
    if r["flops_equal"]:
        return "yes"
    return ", ".join(f"{k} {r['flops_netmorph'][k] - r['flops_torch'][k]:+,}" for k in r["flops_torch"]
                     if r["flops_netmorph"][k] != r["flops_torch"][k])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    args = ap.parse_args()
    import torchvision.models as tvm
    names = args.models.split(",") if args.models else tvm.list_models(module=tvm)
    results = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    for name in names:
        if name not in results:
            try:
                results[name] = run(name)
            except Exception as exc:                          # noqa: BLE001 - reported in the table
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            CACHE.write_text(json.dumps(results, indent=1))
            print(name, results[name], flush=True)
    rows = ["| model | regularizer | build (s) | prune (s) | changeable groups | regularized channels | "
            "FLOPs kept | max rel. output change | pruned exactly | FLOPs = torch's counter |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(results):
        r = results[name]
        if "error" in r:
            rows.append(f"| {name} | error: {r['error']} | | | | | | | no | |")
            continue
        rows.append(f"| {name} | {r['family']} | {r['build_s']:.2f} | {r['prune_s']:.2f} | "
                    f"{r['changeable_groups']} / {r['groups']} | {r['regularized']} / {r['channels']} | "
                    f"{r['flops_ratio']:.1%} | {r['rel_change']:.1e} | {'yes' if r['pruned'] and r['cost_ok'] else 'no'} | "
                    f"{_flops_cell(r)} |")
    ok = [n for n, r in results.items() if r.get("pruned") and r.get("cost_ok")]
    builds = [r["build_s"] for r in results.values() if "build_s" in r]
    prunes = [r["prune_s"] for r in results.values() if "prune_s" in r]
    summary = (f"**{len(ok)} of {len(results)} models prune exactly** (outputs equal to 1e-4 of their scale, "
               f"fewer FLOPs, `count_flops(pruned) == reg.cost()`). Graph build: median "
               f"{np.median(builds):.2f} s, max {max(builds):.2f} s; prune (including the before/after "
               f"check): median {np.median(prunes):.2f} s, max {max(prunes):.2f} s.")
    same = [n for n, r in results.items() if r.get("flops_equal")]
    checked = [n for n, r in results.items() if "flops_equal" in r]
    summary += (f" **`count_flops` equals torch's FlopCounterMode (gradients on) exactly on {len(same)} of "
                f"{len(checked)} models**, original and pruned.")
    differ = sorted(set(checked) - set(same))
    if differ:
        summary += " Differ: " + ", ".join(differ) + "."
    not_ok = sorted(set(results) - set(ok))
    if not_ok:
        summary += " Not pruned: " + ", ".join(not_ok) + "."
    write_section("zoo", "Pruning the torchvision zoo (benchmarks/torchvision_zoo.py)",
                  "python benchmarks/torchvision_zoo.py", summary + "\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
