"""Wall time of the Quick start run, ``netmorph morph`` with no arguments (issue target: < 3 minutes
on 2 CPU cores), and what it produced.

Run: ``python benchmarks/default_run.py`` (from an environment with ``pip install -e ".[cli]"``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_section


def main():
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t = time.time()
        subprocess.run([sys.executable, "-m", "netmorph", "morph", "--out", str(out)], check=True,
                       stderr=subprocess.DEVNULL)
        seconds = time.time() - t
        m = json.loads((out / "metrics.json").read_text())
        pics = sorted(p.name for p in out.glob("*.png"))
    rows = ["| | original | learned | final |", "|---|---|---|---|"]
    for key, fmt in (("test_acc", "{:.2%}"), ("flops", "{:,.0f}"), ("params", "{:,.0f}"), ("latency_ms", "{:.2f}")):
        rows.append(f"| {key} | " + " | ".join(fmt.format(m["models"][k][key]) for k in ("original", "learned", "final"))
                    + " |")
    write_section("default_run", "The Quick start run (benchmarks/default_run.py)", "python benchmarks/default_run.py",
                  f"`netmorph morph` with no arguments (digits, tiny CNN, baseline + regularized + final training, "
                  f"30 epochs each): **{seconds:.0f} s** wall time, pictures {', '.join(pics)}.\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
