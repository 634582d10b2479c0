"""``--device``, ``--amp`` and ``--channels-last``: what ``auto`` means on this machine, a device it
does not have refused in one line, and a CPU run in bf16 and channels-last end to end (flags saved
resolved, so ``--resume`` trains the same way; the final weights saved on the CPU)."""
import json

import pytest
import torch

from netmorph.cli.common import UsageError, resolve_device
from netmorph.cli.morph_cmd import recipe_for
from netmorph.train import Recipe

from .conftest import NEEDS_DIGITS, run_cli, run_reload_code
from ..test_device import NO_CUDA


def test_auto_is_the_cpu_without_cuda_and_the_settings_follow_the_device():
    class Args:
        seed, epochs, lr, batch_size, amp, channels_last = 0, None, None, None, "auto", "auto"

    class Data:
        loaders, recipe = False, Recipe()
    args = Args()
    recipe = recipe_for(args, Data(), torch.device("cpu"))
    assert (recipe.amp, recipe.channels_last, args.amp, args.channels_last) == ("off", False, "off", "off")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: --device cuda is valid here")
def test_a_cuda_device_this_machine_lacks_is_refused_naming_the_fix(tmp_path, capsys):
    with pytest.raises(UsageError, match="no CUDA device.*use --device cpu"):
        resolve_device("cuda")
    assert run_cli("morph", "--device", "cuda", "--epochs", "1", "--out", tmp_path / "r") == 2
    assert "--device cuda: this machine has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="not a device"):
        resolve_device("gpu0")


def test_a_bf16_channels_last_cpu_run_ends_with_a_working_network(tmp_path):
    pytest.importorskip("sklearn", reason=NEEDS_DIGITS)
    out = tmp_path / "run"
    assert run_cli("morph", "--device", "cpu", "--amp", "bf16", "--channels-last", "on", "--epochs", "2",
                   "--batch-size", "128", "--no-baseline", "--budget", "70%", "--out", out) == 0
    saved = json.loads((out / "config.json").read_text())["args"]
    assert (saved["amp"], saved["channels_last"]) == ("bf16", "on")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["final"]["test_acc"] >= 0.4           # 2 bf16 epochs per stage on the digits
    assert metrics["models"]["final"]["flops"] <= metrics["budget"]
    state = torch.load(out / "final" / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state.values())
    model = run_reload_code((out / "metrics.md").read_text(), out)
    model.eval()
    from netmorph.datasets import load_data
    x, y = load_data(None, seed=0).test
    assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(metrics["models"]["final"]["test_acc"],
                                                                             abs=0.03)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_a_cuda_run_saves_cpu_weights_and_measures_cpu_latency(tmp_path):
    pytest.importorskip("sklearn", reason=NEEDS_DIGITS)
    out = tmp_path / "run"
    assert run_cli("morph", "--device", "cuda", "--epochs", "2", "--batch-size", "128", "--no-baseline",
                   "--out", out) == 0
    saved = json.loads((out / "config.json").read_text())["args"]
    assert saved["amp"] in ("bf16", "fp16") and saved["channels_last"] == "on"
    state = torch.load(out / "final" / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    assert json.loads((out / "metrics.json").read_text())["models"]["final"]["latency_ms"] > 0
