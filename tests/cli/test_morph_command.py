"""``netmorph morph`` end to end on the built-in digits: the run directory, resume after Ctrl-C
(the same result as an uninterrupted run with the same seed), and data-parallel training."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import netmorph

from .conftest import NEEDS_DIGITS, QUICK, ROOT, run_cli, run_reload_code

FILES = ["config.json", "log.txt", "checkpoint.pt", "round1_learned_structure.json",
         "round1_expanded_structure.json", "final/structure.json", "final/model.pt", "metrics.md", "metrics.json"]

pytest.importorskip("sklearn", reason=NEEDS_DIGITS)


def learned(out):
    return json.loads((out / "round1_learned_structure.json").read_text())["widths"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """One uninterrupted quick run (3 epochs per stage, no baseline), shared by the tests below."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli("morph", "--epochs", "3", "--batch-size", "128", "--no-baseline", "--out", out) == 0
    return out


def test_run_directory_holds_structures_model_metrics_and_pictures(straight_run):
    out = straight_run
    for name in FILES:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["models"]["final"]
    assert final["flops"] <= metrics["budget"] and final["flops"] == metrics["final_cost"]
    assert 0 < final["latency_ms"] and 0.1 < final["test_acc"] <= 1
    learned_row = metrics["models"]["learned"]
    assert learned_row["flops"] == pytest.approx(metrics["rounds"][0]["learned_cost"])
    # the final model reloads exactly as metrics.md says
    text = (out / "metrics.md").read_text()
    assert "measured CPU latency" in text
    model = run_reload_code(text, out)
    assert netmorph.count_flops(model, torch.zeros(1, 1, 8, 8)) == final["flops"]
    pytest.importorskip("matplotlib", reason="pictures need matplotlib")
    for png in ("widths.png", "training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_checkpoints_and_resume_gives_the_uninterrupted_result(straight_run, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "netmorph", "morph", "--epochs", "3", "--batch-size", "128",
                             "--no-baseline", "--out", str(out)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists():            # first epoch of the regularized run done
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume --out" in err
    assert not (out / "metrics.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["train"] is not None                        # interrupted mid-run, with a saved position
    assert run_cli("morph", "--resume", "--out", out) == 0
    assert learned(out) == learned(straight_run)            # same seed, same structure
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((straight_run / "metrics.json").read_text())
    assert a["rounds"][0]["cost_history"] == b["rounds"][0]["cost_history"]
    assert [h["val_acc"] for h in a["final_history"]] == [h["val_acc"] for h in b["final_history"]]


def test_two_ddp_ranks_learn_the_same_structure(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29531", "-m", "netmorph", "morph", *QUICK, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = json.loads((out / "metrics.json").read_text())["ranks"]
    assert ranks["world_size"] == 2 and ranks["agree"]
    assert ranks["structures"][0] == ranks["structures"][1]
    assert ranks["structures"][0][0] == learned(out)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
