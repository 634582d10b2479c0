from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDS_DIGITS = "the command's built-in data set is scikit-learn's digits (pip install 'netmorph[cli]')"


@pytest.fixture(autouse=True)
def _importable_user_models(monkeypatch):
    """``--model tests.cli.usermodels:...`` resolves from the repository root, as a user's cwd would."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))


def run_cli(*argv):
    from netmorph.cli import main
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:            # argparse's own errors
        return exc.code


QUICK = ("--epochs", "2", "--batch-size", "128", "--no-baseline")


def run_reload_code(metrics_md: str, run_dir):
    """Run the python block of a run's metrics.md, from the run directory, as a user would; its ``model``."""
    import os
    import re
    (code,) = re.findall(r"```python\n(.*?)```", metrics_md, re.S)
    here = os.getcwd()
    os.chdir(run_dir)
    try:
        scope = {}
        exec(code, scope)
    finally:
        os.chdir(here)
    return scope["model"]
