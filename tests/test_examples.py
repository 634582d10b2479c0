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


def test_tiny_vit_learns_heads_and_mlp_widths_and_prunes_exactly(tmp_path):
    """examples/tiny_vit.py: the learner steers a two-block ViT to half its FLOPs by whole heads and MLP
    channels; pruning what died (zeroed first) keeps the test accuracy to the digit, above chance."""
    done = subprocess.run([sys.executable, str(EXAMPLES / "tiny_vit.py"), "--epochs", "6"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    lines = {line.split(":")[0].split(" ")[0]: line for line in out.splitlines()}
    assert lines["before"] == "before: block 0: 4 heads, MLP 64; block 1: 4 heads, MLP 64", out
    learned = [(int(b.split(" heads")[0].split()[-1]), int(b.split("MLP ")[1])) for b in lines["learned"].split(";")]
    assert len(learned) == 2 and sum(h for h, _ in learned) < 8 and all(0 <= h <= 4 and 0 < m <= 64 for h, m in learned)
    flops = lines["FLOPs"]
    before, after = (int(n.replace(",", "")) for n in flops.split()[1:4:2])
    assert 0.45 * before <= after <= 0.55 * before, out
    acc = [float(a.split()[0]) for a in flops.split("test acc ")[1].split(", ")]
    assert acc[1] == acc[2] > 0.3, out                           # pruning what was zeroed changes nothing
    assert float(lines["fine-tuned"].split("test acc ")[1]) > 0.3, out
