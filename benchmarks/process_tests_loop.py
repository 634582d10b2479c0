"""Run the tests that start other processes (torchrun with 2 ranks, Ctrl-C then resume) many times, to
show they do not fail now and then.

Run: ``python benchmarks/process_tests_loop.py [--runs 30] [TEST ...]`` from anywhere (with the
test dependencies installed). Every run is a fresh ``python -m pytest`` of the tests; prints one line
per run (passed or FAILED, its time, and on failure pytest's failure summary), then a summary line
with the counts. Exit code 0 only if every run passed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/cli/test_morph_command.py::test_ctrl_c_checkpoints_and_resume_gives_the_uninterrupted_result",
    "tests/cli/test_morph_command.py::test_two_ddp_ranks_learn_the_same_structure_and_only_rank_0_writes",
    "tests/cli/test_tas_and_tools.py::test_tas_ctrl_c_then_resume_gives_the_uninterrupted_result",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="how many times to run the tests (default 30)")
    ap.add_argument("tests", nargs="*", default=TESTS, help="pytest node ids (default: the process tests)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    failed, seconds = [], []
    for i in range(1, args.runs + 1):
        t = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args.tests],
                              cwd=ROOT, capture_output=True, text=True)
        seconds.append(time.monotonic() - t)
        last = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
        if done.returncode == 0:
            print(f"run {i}/{args.runs}: passed in {seconds[-1]:.1f} s ({last[0]})", flush=True)
            continue
        failed.append(i)
        print(f"run {i}/{args.runs}: FAILED in {seconds[-1]:.1f} s (pytest exit code {done.returncode})", flush=True)
        summary = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        for line in summary or done.stdout.splitlines()[-30:] + done.stderr.splitlines()[-10:]:
            print(f"    {line}", flush=True)
    passed = args.runs - len(failed)
    line = (f"{passed} passed, {len(failed)} failed of {args.runs} runs of {len(args.tests)} test(s)"
            + (f" (failed runs: {', '.join(map(str, failed))})" if failed else "")
            + f"; {sum(seconds) / len(seconds):.1f} s per run, {sum(seconds):.0f} s in all")
    print("summary: " + line, flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import write_section
    write_section("process_tests", "The process tests, many times over (benchmarks/process_tests_loop.py)",
                  f"python benchmarks/process_tests_loop.py --runs {args.runs}",
                  f"**{line}**, on a machine also running other benchmarks. Each run is a fresh pytest of:\n\n"
                  + "\n".join(f"- `{t}`" for t in args.tests))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
