import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NEEDS_DIGITS = "the command's built-in data set is scikit-learn's digits (pip install 'netmorph[cli]')"


@pytest.fixture(autouse=True)
def _importable_user_models(monkeypatch):
    """``--model tests.cli.usermodels:...`` resolves from the repository root, as a user's cwd would."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """One intra-op thread for the in-process runs, as the subprocess runs get (``OMP_NUM_THREADS=1``):
    the tests that compare an in-process run with a resumed subprocess run need the same kernels, and
    on a small shared machine one thread is also the faster for these tiny networks. Restored after
    the last test of ``tests/cli``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def child_env(**extra) -> dict:
    """The environment of a ``python -m netmorph`` child: this checkout's source, one thread, no .pyc writes."""
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                **extra)


def start_interruptible(argv, stderr_path):
    """``python -m netmorph *argv`` in a child process that reports its checkpoints on a pipe
    (``NETMORPH_READY_FD``, see ``netmorph.cli.common.notify``); returns (process, read end)."""
    r, w = os.pipe()
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "netmorph", *map(str, argv)], cwd=ROOT, stderr=err,
                                stdout=subprocess.DEVNULL, env=child_env(NETMORPH_READY_FD=str(w)), pass_fds=(w,))
    os.close(w)                          # the child holds the only write end: EOF when it exits
    return proc, r


def wait_for_line(fd: int, prefix: str, timeout: float = 120) -> str:
    """Block until the child writes a line starting with ``prefix`` on the pipe ``fd``; fail if it exits
    (end of file) or ``timeout`` seconds pass first."""
    deadline, buf = time.monotonic() + timeout, b""
    while True:
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.decode().startswith(prefix):
                return line.decode()
        left = deadline - time.monotonic()
        assert left > 0, f"no {prefix!r} line from the child within {timeout} s"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"the child exited before writing a {prefix!r} line"
            buf += chunk


def ctrl_c_at(argv, stderr_path, line: str) -> str:
    """Start ``netmorph *argv`` (:func:`start_interruptible`), send Ctrl-C to the child once it reports
    ``line``, check it exits with 130, and return what it wrote on stderr."""
    proc, ready = start_interruptible(argv, stderr_path)
    try:
        wait_for_line(ready, line)
        proc.send_signal(signal.SIGINT)                           # Ctrl-C, to the child only
        assert proc.wait(timeout=120) == 130
    finally:
        os.close(ready)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return stderr_path.read_text()


def run_cli(*argv):
    from netmorph.cli import main
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:            # argparse's own errors
        return exc.code


QUICK = ("--epochs", "2", "--batch-size", "128", "--no-baseline")
#: the run the resume tests compare with: 3 epochs per stage, no baseline
STRAIGHT = ("morph", "--epochs", "3", "--batch-size", "128", "--no-baseline")


#: the TAS run the resume tests compare with: 2 epochs per stage
TAS_STRAIGHT = ("tas", "--epochs", "2", "--search-epochs", "2", "--batch-size", "128", "--tolerance", "0.1")


@pytest.fixture(scope="package")
def tas_straight_run(tmp_path_factory):
    """One uninterrupted quick TAS run (:data:`TAS_STRAIGHT`), shared by the tests of ``tests/cli``."""
    out = tmp_path_factory.mktemp("tas_straight") / "run"
    assert run_cli(*TAS_STRAIGHT, "--out", out) == 0
    return out


@pytest.fixture(scope="package")
def straight_run(tmp_path_factory):
    """One uninterrupted quick run (:data:`STRAIGHT`), shared by the tests of ``tests/cli``."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli(*STRAIGHT, "--out", out) == 0
    return out


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
