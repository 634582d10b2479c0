"""``netmorph --version`` prints ``netmorph X.Y.Z``: the installed distribution's version, else (a source
tree that was never installed) ``netmorph.__version__``, the one place the version is written."""
import importlib.metadata
import subprocess
import sys

import netmorph
from netmorph.cli import common

from .conftest import ROOT, child_env, run_cli


def test_version_command_prints_the_package_version():
    out = subprocess.run([sys.executable, "-m", "netmorph", "--version"], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"netmorph {netmorph.__version__}"


def test_version_falls_back_to_the_package_when_not_installed(monkeypatch, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert common.version() == netmorph.__version__
    assert run_cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"netmorph {netmorph.__version__}"
