"""MorphNet with the measured CPU latency as its resource, against the FLOPs arms, timed side by side.

Run: ``python benchmarks/cifar_latency_resource.py`` after ``cifar_morphnet.py --arms
morph_warm_50%_s0_latency,morph_warm_100%_s0_latency`` (it reads the cached arms; no training, a few
minutes). The arms:

- ``baseline``: ResNet-20, 15 epochs;
- ``uniform_0.7``: every width x0.7, 15 epochs from scratch;
- ``morph_50%_r8``: MorphNet with FLOPs as the resource at 50%, widths rounded to 8 (15 regularized
  epochs, then the expanded structure 15 epochs from scratch);
- ``morph_warm_50%_s0_latency`` / ``morph_warm_100%_s0_latency``: MorphNet with ``latency:cpu@128``
  (the profile measured on this machine at batch 128, 2 threads; widths rounded to what the profile
  chose) at 50% and 100% of the baseline's predicted time: the trained baseline regularized 5 epochs,
  pruned, widened, fine-tuned 10 epochs.

Every architecture is rebuilt from its cached structure and the networks are timed interleaved, round
after round on the same batch of 128 (eval mode, 2 threads), in ``--passes`` passes of ``--rounds``
rounds; a pass gives each arm the median over rounds of its time over the baseline's in the same
round, and the table gives the median and range over the passes. The prediction is the profile's.
Raw seconds go to ``benchmarks/results/cifar_latency_resource.json``.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import netmorph
from netmorph.cli.report import interleaved_times
from netmorph.costs import count_cost
from netmorph.latency import profile
from netmorph.models import resnet20
from netmorph.structure import Structure
from cifar_morphnet import CACHE, EXAMPLE
from report import write_section

ARMS = {
    "baseline": ("ResNet-20", 15),
    "uniform_0.7": ("every width x0.7, trained from scratch", 15),
    "morph_50%_r8": ("MorphNet, FLOPs at 50%, widths rounded to 8, trained from scratch", 30),
    "morph_warm_50%_s0_latency": ("MorphNet, measured latency at 50% (latency:cpu@128)", 30),
    "morph_warm_100%_s0_latency": ("MorphNet, measured latency at 100% (latency:cpu@128)", 30),
    "morph_warm_50%_s0_latency_shrink70": ("as the 50% latency arm, regularized to 70% of the time (not 45%), "
                                           "then narrowed to 50%", 30),
}
RAW = CACHE.parent / "cifar_latency_resource.json"


def build(arm: str, result: dict) -> torch.nn.Module:
    if arm == "baseline":
        return resnet20()
    if arm == "uniform_0.7":
        return resnet20(width=0.7)
    return netmorph.apply_structure(resnet20(), Structure.from_dict(result["structure"]), example_inputs=EXAMPLE)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {a: json.loads((CACHE / f"{a}.json").read_text()) for a in ARMS if (CACHE / f"{a}.json").exists()}
    missing = [a for a in ARMS if a not in results]
    if "baseline" not in results:
        raise SystemExit(f"no finished baseline in {CACHE}: run benchmarks/cifar_morphnet.py first")
    models = {a: build(a, r).eval() for a, r in results.items()}
    prof = profile(resnet20(), EXAMPLE, "cpu", threads=2, batch=128)
    predicted = {a: count_cost(m, EXAMPLE, "latency", prof) for a, m in models.items()}
    x = torch.randn(128, 3, 32, 32)
    passes, raw = [], []
    with torch.inference_mode():
        for p in range(args.passes):
            times = interleaved_times(models, x, args.rounds, warmup=3)
            base = np.asarray(times["baseline"])
            passes.append({a: float(np.median(np.asarray(t) / base)) for a, t in times.items()})
            raw.append({a: [float(s) for s in t] for a, t in times.items()})
            print(f"pass {p + 1}: " + ", ".join(f"{a} {v:.0%}" for a, v in passes[-1].items()), flush=True)
    ms = {a: 1000 * float(np.median([np.median(r[a]) for r in raw])) for a in models}
    ratio = {a: float(np.median([p[a] for p in passes])) for a in models}
    spread = {a: (min(p[a] for p in passes), max(p[a] for p in passes)) for a in models}
    pred = {a: predicted[a] / predicted["baseline"] for a in models}
    RAW.write_text(json.dumps({"arms": list(models), "passes": raw, "predicted_ns": predicted,
                               "profile": prof.key}, indent=1) + "\n")
    base_flops = netmorph.count_flops(models["baseline"], EXAMPLE)
    rows = ["| arm | epochs (ledger) | test accuracy | FLOPs | predicted time | measured time (range over passes) "
            "| measured speedup / predicted |", "|---|---|---|---|---|---|---|"]
    for a, m in models.items():
        acc = results[a].get("test_acc")
        ok = (1 / ratio[a]) / (1 / pred[a])
        rows.append(f"| {a}: {ARMS[a][0]} | {ARMS[a][1]} | {acc:.2%} | {netmorph.count_flops(m, EXAMPLE) / base_flops:.1%} "
                    f"| {pred[a]:.1%} | {ratio[a]:.1%} ({spread[a][0]:.0%}-{spread[a][1]:.0%}); {ms[a]:.1f} ms "
                    f"| {ok:.2f} |")
    acc = {a: results[a]["test_acc"] for a in results}
    verdicts = []
    for a in [x for x in ("morph_warm_50%_s0_latency", "morph_warm_50%_s0_latency_shrink70") if x in ratio]:
        verdicts.append(f"- {a} measures {ratio[a]:.1%} of the baseline's time (target 45-55%): "
                        f"**{'met' if 0.45 <= ratio[a] <= 0.55 else 'missed'}**.")
        for other in ("morph_50%_r8", "uniform_0.7"):
            if other in acc:
                verdicts.append(f"- {a} {acc[a]:.2%} vs {other} {acc[other]:.2%} ({acc[a] - acc[other]:+.2%}) at "
                                f"{ratio[a]:.0%} vs {ratio[other]:.0%} of the baseline's time: "
                                f"**{'more accurate' if acc[a] > acc[other] else 'not more accurate'}**"
                                f"{', and no slower' if ratio[a] <= ratio[other] + 0.02 else ', but slower'}.")
    if "morph_warm_100%_s0_latency" in ratio:
        a = "morph_warm_100%_s0_latency"
        verdicts.append(f"- 100% arm measures {ratio[a]:.1%} of the baseline's time (target <= 100%) and reaches "
                        f"{acc[a]:.2%} vs the baseline's {acc['baseline']:.2%}: **"
                        f"{'met' if ratio[a] <= 1.0 and acc[a] > acc['baseline'] else 'missed'}**.")
    slow = [a for a in models if a != "baseline" and (1 / ratio[a]) < 0.9 * (1 / pred[a])]
    verdicts.append(f"- measured speedup at least 0.9 of the predicted one on every pruned arm: "
                    f"**{'met' if not slow else 'missed on ' + ', '.join(slow)}**.")
    body = (f"The profile: {prof.name}, {len(prof.tables)} layer signatures; it rounded the latency arms' widths "
            f"to {results.get('morph_warm_50%_s0_latency', {}).get('round_to', '?')}. Timed in {args.passes} "
            f"passes of {args.rounds} interleaved rounds at batch 128 (2 threads, eval mode). Ledger: epochs "
            "each arm trained in all (the warm arms count the baseline's 15 they start from).\n\n"
            + "\n".join(rows) + "\n\n" + "\n".join(verdicts)
            + (f"\n\nNot finished yet: {', '.join(missing)}." if missing else ""))
    write_section("cifar_latency_resource", "Measured latency as the resource (benchmarks/cifar_latency_resource.py)",
                  "python benchmarks/cifar_latency_resource.py", body)


if __name__ == "__main__":
    main()
