"""Randomized kill soak: ``netmorph morph`` killed (SIGKILL) at random steps and checkpoint writes, resumed
until it finishes, and compared with an uninterrupted run of the same seed.

Run: ``python benchmarks/kill_soak.py [--runs 10] [--kills 3] [--seed 0]`` from the repository root (cli
extra installed). Each run: the uninterrupted reference is made once; then a fresh run directory is
killed ``--kills`` times at random points (``NETMORPH_KILL_AT=step:N`` or ``checkpoint-write:N``, see
``netmorph/faults.py``), each kill followed by ``--resume``, and finally resumed to the end. It passes
when the final structure, the regularizer's cost and strength histories, the final training's
validation accuracies and the final weights equal the reference's exactly. Prints one line per run
and a summary; exit code 0 only if every run passed. The CI tests (tests/cli/test_faults.py) kill at
fixed points; this explores the others.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["morph", "--epochs", "3", "--batch-size", "128", "--no-baseline"]
STEPS = 2 * 3 * 11                      # digits: 11 steps an epoch, 3 regularized + 3 final epochs


def netmorph(*argv, kill_at: str | None = None) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    if kill_at:
        env["NETMORPH_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "netmorph", *map(str, argv)], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800).returncode


def summary(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    weights = torch.load(out / "final" / "model.pt", weights_only=True)
    return {"structure": (out / "final" / "structure.json").read_text(),
            "costs": m["rounds"][0]["cost_history"], "strengths": m["rounds"][0]["strength_history"],
            "val": [h["val_acc"] for h in m["final_history"]], "weights": weights}


def same(a: dict, b: dict) -> str:
    for key in ("structure", "costs", "strengths", "val"):
        if a[key] != b[key]:
            return key
    for k in a["weights"]:
        if not torch.equal(a["weights"][k], b["weights"][k]):
            return f"weights {k}"
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--kills", type=int, default=3, help="kills per run before it may finish")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points (not of training)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        assert netmorph(*ARGV, "--out", ref) == 0, "the uninterrupted run failed"
        reference = summary(ref)
        failures, lines = 0, []
        for run in range(args.runs):
            out, t, points = Path(tmp) / f"run{run}", time.time(), []
            first = True
            for _ in range(args.kills):
                point = rng.choice([f"step:{rng.randint(1, STEPS)}", f"checkpoint-write:{rng.randint(1, 6)}"])
                code = netmorph(*(ARGV if first else ["morph", "--resume"]), "--out", out, kill_at=point)
                points.append(f"{point}->{code}")
                first = False if (out / "config.json").exists() else first
                if code == 0:
                    break
            if not (out / "metrics.json").exists():
                assert netmorph("morph", "--resume", "--out", out) == 0, f"run {run}: the last resume failed"
            diff = same(summary(out), reference)
            failures += bool(diff)
            lines.append(f"run {run + 1}: {'FAILED (' + diff + ')' if diff else 'passed'} in {time.time() - t:.0f} s; "
                         f"kills (point -> exit code) {', '.join(points)}")
            print(lines[-1], flush=True)
        print(f"{args.runs - failures} of {args.runs} runs ended exactly as the uninterrupted run")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import write_section
    write_section("kill_soak", "Killed at random, resumed: a soak (benchmarks/kill_soak.py)",
                  f"python benchmarks/kill_soak.py --runs {args.runs} --kills {args.kills} --seed {args.seed}",
                  f"**{args.runs - failures} of {args.runs} runs ended exactly as the uninterrupted run** (same "
                  "structure, cost and strength histories, validation accuracies and final weights, `torch.equal`). "
                  f"Each run: `netmorph morph {' '.join(ARGV[1:])}` on the digits, SIGKILLed up to {args.kills} "
                  "times at a random training step or half-way through a random checkpoint write, resumed after "
                  "each kill, then resumed to the end.\n\n" + "\n".join(f"- {line}" for line in lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
