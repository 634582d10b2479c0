"""The property-based graph tests (tests/test_fuzz_graphs.py) with many more random networks than CI runs.

Run: ``python benchmarks/fuzz_soak.py [--examples 2000]`` from the repository root (test dependencies
installed). Uses the hypothesis profile ``soak`` (random, not derandomized: every run explores new
networks); a failure prints the smallest network hypothesis could shrink it to. Add that network as an
``@example`` to the test, fix the bug, and keep the example as its regression test.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="random networks per property (default 2000)")
    args = ap.parse_args()
    env = dict(os.environ, NETMORPH_FUZZ_EXAMPLES=str(args.examples))
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "tests/test_fuzz_graphs.py",
                            "--hypothesis-show-statistics"], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
