"""The training-code examples run end to end (short runs on the built-in digits)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytest.importorskip("sklearn", reason="the examples use the built-in digits (scikit-learn, the cli extra)")


@pytest.mark.parametrize("script,needs", [("plain_loop.py", None), ("lightning_callback.py", "lightning"),
                                          ("hf_trainer_callback.py", "accelerate")])
def test_the_example_runs_and_learns_a_structure_at_half_the_flops(tmp_path, script, needs):
    if needs:
        pytest.importorskip(needs, reason=f"{script} needs {needs} (the test extra has it)")
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--epochs", "4"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "learned" in out and "of the FLOPs" in out, out
    learned = [line for line in out.splitlines() if line.startswith("learned")][0]
    share = int(learned.split("learned")[1].split("%")[0].strip(": "))
    assert 45 <= share <= 52, out
