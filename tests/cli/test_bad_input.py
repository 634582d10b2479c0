"""Every bad input of ``netmorph morph`` ends in one line that names the problem and the fix,
a non-zero exit code, no traceback, and no run directory that looks finished."""
import subprocess
import sys

import pytest

from .conftest import NEEDS_DIGITS, QUICK, ROOT, run_cli

CASES = {
    "unknown model": (["--model", "resnet21"], "unknown model 'resnet21'"),
    "module that does not import": (["--model", "no_such_module_xyz:build"], "cannot import module"),
    "function missing": (["--model", "tests.cli.usermodels:nope"], "has no function 'nope'"),
    "builder returns no module": (["--model", "tests.cli.usermodels:not_a_module"], "not a torch.nn.Module"),
    "missing cifar path": (["--data", "cifar10:/no/such/dir"], "does not exist"),
    "missing folder path": (["--data", "folder:/no/such/dir"], "does not exist"),
    "unknown data kind": (["--data", "mnist:/tmp"], "unknown data source"),
    "budget zero": (["--budget", "0"], "greater than 0"),
    "budget negative": (["--budget=-5%"], "greater than 0"),
    "shrink 100%": (["--shrink", "100%"], "below 100%"),
    "shrink 150%": (["--shrink", "150%"], "below 100%"),
    "unknown hardware": (["--resource", "latency:TPU9"], "unknown hardware 'TPU9'"),
    "unknown resource": (["--resource", "energy"], "unknown --resource"),
    "negative epochs": (["--epochs", "-3"], "positive whole number"),
    "negative epochs with =": (["--epochs=-3"], "positive whole number"),
    "zero rounds": (["--rounds", "0"], "positive whole number"),
    "unreachable budget": (["--model", "tests.cli.usermodels:mostly_frozen", "--budget", "50%"],
                           "unreachable: the channels that cannot change"),
    "absolute budget below smallest": (["--budget", "1000"], "unreachable"),
}

pytest.importorskip("sklearn", reason=NEEDS_DIGITS)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_leaves_no_run_directory(name, tmp_path, capsys):
    extra, needle = CASES[name]
    out = tmp_path / "run"
    argv = ["morph", *QUICK, "--out", out, *extra]
    if any(a.startswith("--epochs") for a in extra):
        argv = ["morph", "--no-baseline", "--out", out, *extra]
    code = run_cli(*argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("netmorph")
    assert not out.exists()


def test_nan_loss_stops_with_one_line_and_marks_the_run_failed(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("morph", *QUICK, "--model", "tests.cli.usermodels:nan_net", "--out", out)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("netmorph: error: the training loss became nan") and "lower the learning rate" in err[-1]
    assert not (out / "metrics.json").exists()                 # not finished...
    assert "nan" in (out / "FAILED.txt").read_text()           # ...and says why


def test_existing_directory_needs_resume_and_resume_needs_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    assert run_cli("morph", *QUICK, "--out", out) == 2
    assert "already exists: continue it with --resume" in capsys.readouterr().err
    assert run_cli("morph", "--resume", "--out", out) == 2
    assert "not a netmorph run directory" in capsys.readouterr().err


def test_the_installed_command_prints_help_and_bad_input_without_traceback(tmp_path):
    env_py = [sys.executable, "-m", "netmorph"]
    for argv in ([], ["morph"], ["explain"], ["prune"], ["expand"]):
        done = subprocess.run(env_py + argv + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0 and "usage: netmorph" in done.stdout
    done = subprocess.run(env_py + ["morph", "--budget", "-1", "--out", str(tmp_path / "r")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "netmorph: error: --budget must be greater than 0, got '-1'"
