"""The property-based graph tests (tests/test_fuzz_graphs.py) with many more random networks than CI runs.

Run: ``python benchmarks/fuzz_soak.py [--examples 2000] [--seed N]`` from anywhere (test dependencies
installed). Uses the hypothesis profile ``soak`` (random unless ``--seed`` is given: every run explores
new networks); a failure prints the smallest network hypothesis could shrink it to. Add that network as
an ``@example`` to the test, fix the bug, and keep the example as its regression test.

Writes the "fuzz_soak" section of docs/benchmarks.md: per property, the networks tried and the
outcome, with the run's time.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="random networks per property (default 2000)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one)")
    args = ap.parse_args()
    env = dict(os.environ, NETMORPH_FUZZ_EXAMPLES=str(args.examples))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_fuzz_graphs.py",
           "--hypothesis-show-statistics"]
    if args.seed is not None:
        cmd.append(f"--hypothesis-seed={args.seed}")
    start = time.time()
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    minutes = (time.time() - start) / 60
    out = run.stdout + run.stderr
    print(out)
    rows = ["| property | networks tried | outcome |", "|---|---:|---|"]
    for name, body in re.findall(r"tests/test_fuzz_graphs\.py::(\w+):\n(.*?)(?=\n\S|\Z)", out, re.S):
        tried = sum(int(n) for n in re.findall(r"- (\d+) passing", body))
        stop = re.search(r"Stopped because (.*)", body)
        rows.append(f"| `{name}` | {tried} | {stop.group(1).strip() if stop else '-'} |")
    failed = re.findall(r"FAILED (\S+)", out)
    verdict = (f"**{len(failed)} propert{'y' if len(failed) == 1 else 'ies'} failed**: " + ", ".join(failed)
               if run.returncode else "**No failure**")
    body = (f"{verdict}, {args.examples} random networks asked for per property, {minutes:.1f} min in all. "
            "Each property is one test of tests/test_fuzz_graphs.py (exact pruning of random kills, "
            "`count_flops == reg.cost()`, expanded structures built at the predicted cost, a graph or a clear "
            "refusal for every network); hypothesis counts only the networks that passed its filters.\n\n"
            + "\n".join(rows))
    from report import write_section
    write_section("fuzz_soak", "Fuzzed graphs: a long soak (benchmarks/fuzz_soak.py)",
                  "python benchmarks/fuzz_soak.py" + (f" --examples {args.examples}" if args.examples != 2000 else "")
                  + (f" --seed {args.seed}" if args.seed is not None else ""), body)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
