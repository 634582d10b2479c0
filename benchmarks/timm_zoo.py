"""timm's convolutional families, zero configuration: netmorph beside Torch-Pruning on the same list.

Run: ``python benchmarks/timm_zoo.py [--models a,b] [--size 128]`` (needs ``timm``; the Torch-Pruning
columns need the ``bench`` extra). One small variant of each family, random weights (nothing is
downloaded), input 1x3xSIZExSIZE. For each model:

- netmorph: build the FLOPs regularizer ``morph`` would (``make_regularizer``: Gamma, or GroupLasso when the
  model has no BatchNorm or its gammas reach less than half of what weight norms reach); make 30% of
  the regularized channels exactly dead; prune; check the outputs equal the original's (1e-4 of their
  scale), ``count_flops(pruned) == reg.cost()`` below 97% of the FLOPs, and ``count_flops`` equals torch's
  ``FlopCounterMode`` (gradients on) on the original. *Handled* = all of that holds.
- Torch-Pruning: its documented magnitude pruner (L2, pruning ratio 0.3, the classifier ignored), zero
  configuration. *Handled* = ``step()`` runs and the pruned model runs with fewer FLOPs and the same
  output shape, below 97% of the FLOPs (Torch-Pruning is approximate by design: its outputs change, so exactness is not asked).

Raw results per model go to ``benchmarks/results/timm_zoo.json`` (committed; delete an entry to rerun
it); the table to the "timm_zoo" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import netmorph
from netmorph.morph import make_regularizer
from report import write_section

CACHE = Path(__file__).parent / "results" / "timm_zoo.json"

#: family -> one small variant
MODELS = {
    "ResNet": "resnet10t", "ResNet-D": "resnet18d", "ResNeXt": "resnext26ts", "SE-ResNet": "seresnet18",
    "SK-ResNet": "skresnet18", "ResNeSt": "resnest14d", "EfficientNet": "efficientnet_b0",
    "EfficientNet-Lite": "efficientnet_lite0", "EfficientNetV2": "tf_efficientnetv2_b0",
    "MobileNetV2": "mobilenetv2_050", "MobileNetV3": "mobilenetv3_small_050", "MNASNet": "mnasnet_small",
    "FBNet": "fbnetc_100", "GhostNet": "ghostnet_050", "RegNetX": "regnetx_002", "RegNetY": "regnety_002",
    "RepVGG": "repvgg_a0", "ByobNet (GENet)": "gernet_s", "DLA": "dla34", "DPN": "dpn48b",
    "CSPNet": "cspresnet50", "CSPDarkNet": "cs3darknet_s", "DarkNet": "darknet17", "VoVNet": "ese_vovnet19b_dw",
    "TResNet": "tresnet_m", "HRNet": "hrnet_w18_small", "Xception": "xception41", "Inception": "inception_v3",
    "DenseNet": "densenet121", "NF-RegNet": "nf_regnet_b0", "NFNet": "dm_nfnet_f0", "ConvNeXt": "convnext_atto",
    "EdgeNeXt": "edgenext_xx_small", "MobileViT": "mobilevit_xxs", "MobileViTv2": "mobilevitv2_050",
    "PoolFormer": "poolformer_s12", "Res2Net": "res2net50_14w_8s", "ReXNet": "rexnet_100",
    "SelecSLS": "selecsls42b", "HardCoReNAS": "hardcorenas_a", "LCNet": "lcnet_050", "TinyNet": "tinynet_e",
    "MixNet": "mixnet_s", "SPNASNet": "spnasnet_100", "MobileOne": "mobileone_s0", "RepGhostNet": "repghostnet_050",
    "FastViT": "fastvit_t8", "EfficientViT": "efficientvit_b0",
}


def torch_flops(model, x) -> int:
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def build(name: str):
    import timm
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


def run_netmorph(name: str, x) -> dict:
    model = build(name)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    t = time.perf_counter()
    reg = make_regularizer(model, x)               # the library's own zero-configuration choice
    family = "gamma" if reg.family == "gamma" else "group lasso"
    reg.threshold = 0.0                              # dead = exactly zero (the kills below), nothing else
    build_s = time.perf_counter() - t
    share = float(reg.regularized.mean())
    dead = (np.random.default_rng(0).random(reg.graph.n_channels) < 0.3) & reg.regularized
    if dead.any():
        reg.zero_channels(dead)
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        after = small(x)
    rel = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
    full, kept = netmorph.count_flops(model, x), netmorph.count_flops(small, x)
    flops_equal = full == torch_flops(model, x)
    handled = bool(dead.any() and rel < 1e-4 and kept == reg.cost() and kept < 0.97 * full and flops_equal)
    return {"family": family, "has_bn": has_bn, "build_s": build_s, "regularized": share, "flops_kept": kept / full,
            "rel_change": rel, "flops_equal": flops_equal, "handled": handled}


def run_peer(name: str, x) -> dict:
    import torch_pruning as tp
    model = build(name)
    head = model.get_classifier()
    full = torch_flops(model, x)
    with torch.no_grad():
        shape = tuple(model(x).shape)
    tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3,
                              ignored_layers=[head] if isinstance(head, torch.nn.Module) else []).step()
    with torch.no_grad():
        out = model(x)
    kept = torch_flops(model, x) / full
    return {"flops_kept": kept, "handled": bool(tuple(out.shape) == shape and kept < 0.97)}


def guarded(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as exc:                     # noqa: BLE001 - reported in the table
        return {"error": f"{type(exc).__name__}: {exc}".replace("\n", " ")[:160], "handled": False}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated timm names (default: the list above)")
    ap.add_argument("--size", type=int, default=128, help="input height and width (default 128)")
    ap.add_argument("--rerun-netmorph", action="store_true", help="recompute netmorph's column of every cached model "
                    "(after a change to netmorph; Torch-Pruning's is kept)")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else list(MODELS.values())
    results = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    x = torch.randn(1, 3, args.size, args.size)
    for name in names:
        if name in results and args.rerun_netmorph:
            results[name]["netmorph"] = guarded(run_netmorph, name, x)
            CACHE.write_text(json.dumps(results, indent=1))
            print(f"{name}: {results[name]['netmorph']}", flush=True)
            continue
        if name in results:
            continue
        t = time.perf_counter()
        results[name] = {"netmorph": guarded(run_netmorph, name, x), "peer": guarded(run_peer, name, x),
                         "size": args.size}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(results, indent=1))
        print(f"{name}: {results[name]} ({time.perf_counter() - t:.0f} s)", flush=True)
    family_of = {v: k for k, v in MODELS.items()}
    rows = ["| family | model | netmorph | regularized channels | FLOPs kept (30% killed) | max rel. change | "
            "FLOPs = torch's counter | Torch-Pruning (ratio 0.3) |", "|---|---|---|---|---|---|---|---|"]
    for name in sorted(results, key=lambda n: family_of.get(n, n).lower()):
        n, p = results[name]["netmorph"], results[name]["peer"]
        peer = (f"error: {p['error']}" if "error" in p else
                f"{'yes' if p['handled'] else 'no'}, {p['flops_kept']:.0%} FLOPs")
        if "error" in n:
            rows.append(f"| {family_of.get(name, '')} | {name} | error: {n['error']} | | | | | {peer} |")
            continue
        rows.append(f"| {family_of.get(name, '')} | {name} | {'yes' if n['handled'] else 'no'} ({n['family']}) | "
                    f"{n['regularized']:.0%} | {n['flops_kept']:.0%} | {n['rel_change']:.1e} | "
                    f"{'yes' if n['flops_equal'] else 'no'} | {peer} |")
    ours = sum(r["netmorph"]["handled"] for r in results.values())
    theirs = sum(r["peer"]["handled"] for r in results.values())
    both = sum(r["netmorph"]["handled"] and r["peer"]["handled"] for r in results.values())
    summary = (f"**netmorph handles {ours} of {len(results)} models, Torch-Pruning {theirs}** (both: {both}). "
               "netmorph handled = a graph without refusal, 30% of its regularized channels killed and "
               "pruned exactly (1e-4) at the predicted FLOPs, below 97%, and `count_flops` equal to torch's "
               "counter; Torch-Pruning handled = its pruner runs with zero configuration and the model "
               "still runs, below 97% of the FLOPs (it is approximate by design). The regularized share shows how much "
               "of each network netmorph can change; the rest is frozen, and `netmorph explain` says why.")
    write_section("timm_zoo", "timm's CNN families, zero configuration (benchmarks/timm_zoo.py)",
                  "python benchmarks/timm_zoo.py" + (f" --size {args.size}" if args.size != 128 else ""),
                  summary + "\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
