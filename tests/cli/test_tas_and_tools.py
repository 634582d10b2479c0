"""``netmorph tas`` end to end, and the ``explain`` / ``prune`` / ``expand`` tools on files."""
import json

import pytest
import torch

import netmorph
from netmorph.cli.common import load_model
from netmorph.morph import make_regularizer

from .conftest import NEEDS_DIGITS, run_cli, run_reload_code

pytest.importorskip("sklearn", reason=NEEDS_DIGITS)


def test_tas_command_finds_a_network_near_the_target_and_distills_it(tmp_path):
    out = tmp_path / "tas"
    assert run_cli("tas", "--epochs", "2", "--search-epochs", "3", "--batch-size", "128", "--budget", "50%",
                   "--tolerance", "0.1", "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    full, target = m["original_flops"], m["target"]
    assert target == pytest.approx(0.5 * full)
    final = m["models"]["final"]
    assert final["flops"] == m["models"]["searched"]["flops"] < full
    model = run_reload_code((out / "metrics.md").read_text(), out)
    assert netmorph.count_flops(model, torch.zeros(1, 1, 8, 8)) == final["flops"]
    assert len(m["kd_history"]) == 2 and len(m["search_history"]) == 3
    assert (out / "searched_structure.json").exists() and (out / "metrics.md").exists()


def test_tas_refuses_a_model_without_batchnorm_and_a_target_below_the_smallest_network(tmp_path, capsys):
    (tmp_path / "nobn.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes=10, in_channels=1):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, num_classes))\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        assert run_cli("tas", "--model", "nobn:build", "--out", tmp_path / "r") == 2
        err = capsys.readouterr().err
        assert "has no BatchNorm" in err and len(err.strip().splitlines()) == 1
        assert run_cli("tas", "--budget", "1%", "--out", tmp_path / "r") == 2
        assert "target" in capsys.readouterr().err
        assert not (tmp_path / "r").exists()
    finally:
        sys.path.remove(str(tmp_path))


def test_explain_prune_and_expand_commands(tmp_path, capsys):
    assert run_cli("explain", "--model", "resnet20") == 0
    text = capsys.readouterr().out
    assert "81,626,368 FLOPs" in text and "Groups" in text
    # a "regularized" tiny CNN: half the channels of the first layer dead
    model = load_model("tiny", 10, 1)
    example = torch.randn(1, 1, 8, 8)
    reg = make_regularizer(model, example)
    first = reg.graph.groups[int(reg.graph.group_of[reg.graph.layers["features.0.0"].out[0]])]
    mask = torch.zeros(reg.graph.n_channels, dtype=torch.bool)
    mask[first.channels[:16]] = True
    reg.zero_channels(mask.numpy())
    torch.save(model.state_dict(), tmp_path / "reg.pt")
    assert run_cli("prune", "--model", "tiny", "--checkpoint", tmp_path / "reg.pt", "--out", tmp_path / "p") == 0
    structure = netmorph.Structure.load(tmp_path / "p" / "structure.json")
    assert structure["features.0.0"] == 16
    assert "netmorph.load(" in capsys.readouterr().out
    small = netmorph.load(load_model("tiny", 10, 1), tmp_path / "p")
    model.eval(), small.eval()
    assert torch.allclose(model(example), small(example), atol=1e-5)
    capsys.readouterr()
    assert run_cli("expand", "--model", "tiny", "--structure", tmp_path / "p" / "structure.json", "--budget",
                   "100%", "--out", tmp_path / "e.json") == 0
    assert "omega" in capsys.readouterr().out
    expanded = netmorph.Structure.load(tmp_path / "e.json")
    full = netmorph.count_flops(load_model("tiny", 10, 1), example)
    grown = netmorph.count_flops(netmorph.apply_structure(load_model("tiny", 10, 1), expanded), example)
    assert 0.95 * full <= grown <= full
    assert run_cli("prune", "--model", "tiny", "--checkpoint", tmp_path / "nope.pt", "--out", tmp_path / "q") == 2
    assert "does not exist" in capsys.readouterr().err


def test_tas_ctrl_c_then_resume_gives_the_uninterrupted_result(tmp_path):
    import os
    import signal
    import threading
    import time
    argv = ["tas", "--epochs", "2", "--search-epochs", "2", "--batch-size", "128", "--tolerance", "0.1"]
    assert run_cli(*argv, "--out", tmp_path / "straight") == 0
    out = tmp_path / "run"

    def interrupt():                      # Ctrl-C once the first search epoch is saved
        deadline = time.time() + 300
        while not (out / "search.pt").exists() and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
    t = threading.Thread(target=interrupt)
    t.start()
    code = run_cli(*argv, "--out", out)
    t.join()
    assert code == 130 and not (out / "metrics.json").exists()
    assert run_cli("tas", "--resume", "--out", out) == 0
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert a["structure"] == b["structure"]
    assert [h["flops"] for h in a["search_history"]] == [h["flops"] for h in b["search_history"]]
    assert [h["val_acc"] for h in a["kd_history"]] == [h["val_acc"] for h in b["kd_history"]]
