"""Runs that die without warning (SIGKILL) at named points, a full disk, a busy run directory and damaged
files: ``--resume`` finishes with exactly the structure and weights of an uninterrupted run, and every
failure is one line that names the file and what to do."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import NEEDS_DIGITS, ROOT, STRAIGHT, TAS_STRAIGHT, child_env, run_cli, wait_for_line

pytest.importorskip("sklearn", reason=NEEDS_DIGITS)


def killed_at(point: str, *argv) -> None:
    """``python -m netmorph *argv`` with ``NETMORPH_KILL_AT=point``: it must die by SIGKILL there."""
    done = subprocess.run([sys.executable, "-m", "netmorph", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, env=child_env(NETMORPH_KILL_AT=point), timeout=600)
    assert done.returncode == -signal.SIGKILL, (point, done.returncode, done.stderr[-2000:])


def same_weights(a, b) -> None:
    sa, sb = (torch.load(d / "final" / "model.pt", weights_only=True) for d in (a, b))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_morph_killed_anywhere_resumes_to_exactly_the_uninterrupted_run(straight_run, tmp_path, capsys):
    out = tmp_path / "run"
    # 1. frozen (SIGSTOP) mid-epoch 2, once the first epoch is saved: while it lives the directory is
    #    locked; then killed from outside
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "netmorph", *map(str, STRAIGHT), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(w,),
                            env=child_env(NETMORPH_READY_FD=str(w), NETMORPH_KILL_AT="step:16",
                                          NETMORPH_KILL_SIGNAL="STOP"))
    os.close(w)
    ready = r
    try:
        wait_for_line(ready, "checkpoint round 1: regularize")
        deadline = time.monotonic() + 120
        while Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0] != "T":
            assert time.monotonic() < deadline, "the child never reached its 16th step"
            time.sleep(0.05)
        assert run_cli("morph", "--resume", "--out", out) == 2
        err = capsys.readouterr().err
        assert f"in use by another netmorph run (process {proc.pid})" in err and "Traceback" not in err
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        os.close(ready)
        if proc.poll() is None:
            proc.kill()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["train"]["epoch"] == 1
    # 2. killed half-way through writing its second checkpoint: the file on disk is still the first one
    killed_at("checkpoint-write:2", "morph", "--resume", "--out", out)
    assert (out / "checkpoint.pt.tmp").exists()                       # the half-written file, never renamed
    state = torch.load(out / "checkpoint.pt", weights_only=True)       # the previous one, whole
    assert state["stage"] == "regularize 0" and state["train"]["epoch"] == 2
    # 3. killed between the stages, once the round's structure is saved
    killed_at("stage final training", "morph", "--resume", "--out", out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["stage"] is None
    assert len(torch.load(out / "checkpoint.pt", weights_only=True)["rounds"]) == 1
    # 4. and mid-epoch in the final training
    killed_at("step:16", "morph", "--resume", "--out", out)
    assert run_cli("morph", "--resume", "--out", out) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out, straight_run))
    assert a["rounds"][0]["learned"] == b["rounds"][0]["learned"]
    assert (out / "final" / "structure.json").read_text() == (straight_run / "final" / "structure.json").read_text()
    assert a["rounds"][0]["cost_history"] == b["rounds"][0]["cost_history"]
    assert a["rounds"][0]["strength_history"] == b["rounds"][0]["strength_history"]
    assert [h["val_acc"] for h in a["final_history"]] == [h["val_acc"] for h in b["final_history"]]
    same_weights(out, straight_run)


def test_tas_killed_anywhere_resumes_to_exactly_the_uninterrupted_run(tas_straight_run, tmp_path):
    out = tmp_path / "run"
    killed_at("step:16", *TAS_STRAIGHT, "--out", out)                 # mid-epoch 2 of the teacher
    killed_at("stage TAS search", "tas", "--resume", "--out", out)    # between the teacher and the search
    assert torch.load(out / "baseline.pt", weights_only=True)["epoch"] == 2
    assert not (out / "search.pt").exists()
    killed_at("checkpoint-write:2", "tas", "--resume", "--out", out)  # writing the search's 2nd epoch
    assert torch.load(out / "search.pt", weights_only=True)["epoch"] == 1
    killed_at("step:8", "tas", "--resume", "--out", out)              # in the distillation's 1st epoch
    assert run_cli("tas", "--resume", "--out", out) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out, tas_straight_run))
    assert a["structure"] == b["structure"]
    assert [h["flops"] for h in a["search_history"]] == [h["flops"] for h in b["search_history"]]
    assert [h["val_acc"] for h in a["kd_history"]] == [h["val_acc"] for h in b["kd_history"]]
    same_weights(out, tas_straight_run)


def test_a_full_disk_fails_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import netmorph.morph as M
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:                        # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)
    monkeypatch.setattr(M.os, "fsync", fsync)
    out = tmp_path / "run"
    assert run_cli("morph", "--epochs", "2", "--batch-size", "128", "--no-baseline", "--out", out) == 1
    err = capsys.readouterr().err
    (line,) = [s for s in err.splitlines() if s.startswith("netmorph: error:")]
    assert "No space left on device" in line and str(out / "checkpoint.pt") in line
    assert "the previous checkpoint is kept" in line and f"netmorph morph --resume --out {out}" in line
    assert "Traceback" not in err and not (out / "checkpoint.pt.tmp").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["train"]["epoch"] == 1
    monkeypatch.setattr(M.os, "fsync", real)
    assert run_cli("morph", "--resume", "--out", out) == 0         # space freed: it goes on
    assert (out / "metrics.json").exists()


@pytest.mark.parametrize("name, damage", [
    ("checkpoint.pt", lambda b: b[:len(b) // 3]),
    ("checkpoint.pt", lambda b: b""),
    ("config.json", lambda b: b[:len(b) // 2]),
])
def test_a_damaged_file_of_a_run_is_one_line_naming_it(straight_run, tmp_path, name, damage, capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    (out / "metrics.json").unlink()                                  # as if it had stopped before the end
    (out / name).write_bytes(damage((out / name).read_bytes()))
    assert run_cli("morph", "--resume", "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("netmorph: error:") == 1 and str(out / name) in err and "Traceback" not in err
    assert "damaged" in err or "could not be read" in err


@pytest.mark.parametrize("content", [b'{"widths": {"a": 4', b"\x80\x81garbage", b'[1, 2]',
                                     b'{"widths": {"features.0.0": "four"}}'])
def test_a_damaged_structure_file_is_one_line_naming_it(tmp_path, content, capsys):
    bad = tmp_path / "structure.json"
    bad.write_bytes(content)
    assert run_cli("expand", "--model", "tiny", "--structure", bad, "--budget", "100%") == 2
    err = capsys.readouterr().err
    assert err.count("netmorph: error:") == 1 and str(bad) in err and "Traceback" not in err


def test_netmorph_load_names_a_damaged_model_file(straight_run, tmp_path):
    import shutil

    import netmorph
    from netmorph.cli.common import load_model
    final = tmp_path / "final"
    shutil.copytree(straight_run / "final", final)
    (final / "model.pt").write_bytes((final / "model.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="model.pt"):
        netmorph.load(load_model("tiny", 10, 1), final)


@pytest.mark.parametrize("signal_name", ["STOP", "KILL"])
def test_a_rank_that_hangs_or_dies_stops_the_run_within_a_minute_and_resume_continues(tmp_path, signal_name):
    import time
    from .conftest import QUICK
    out = tmp_path / "run"
    netmorph = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "netmorph"]
    torchrun = [*netmorph, "morph", *QUICK, "--out", str(out)]
    t = time.monotonic()
    # rank 1 stops (SIGSTOP: hung, its sockets open) or dies in its 16th step, in the 2nd epoch
    done = subprocess.run(torchrun, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=child_env(NETMORPH_KILL_AT="step:16@1", NETMORPH_KILL_SIGNAL=signal_name))
    seconds = time.monotonic() - t
    assert done.returncode != 0
    # rank 0 names the problem and the way on (a dead rank's sockets close at once; a hung one's time out)
    assert "lost the other ranks" in done.stderr and "--resume --out" in done.stderr, done.stderr[-3000:]
    assert seconds < 60 + 60, seconds                      # startup + 1 epoch (~20 s) + the 60 s timeout + margin
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["train"]["epoch"] >= 1
    resumed = subprocess.run([*netmorph, "morph", "--resume", "--out", str(out)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600, env=child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ranks = json.loads((out / "metrics.json").read_text())["ranks"]
    assert ranks["world_size"] == 2 and ranks["agree"]
