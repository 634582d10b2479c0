"""Nothing netmorph reads from disk runs code: a crafted pickle on every loading path is refused
with a clear error and runs nothing; users' plain checkpoints in other layouts still load."""
import argparse
import pickle

import numpy as np
import pytest
import torch

import netmorph
from netmorph.data import load_cifar10
from netmorph.morph import morph
from netmorph.safeload import (DamagedFileError, UnsafeFileError, extract_state_dict, load_data_pickle,
                               load_state_dict, load_torch)


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the loader ran the file's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """``(path of a torch file whose unpickling creates a marker file, the marker)``."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker), "w": torch.ones(2)}, path)
    return path, marker


def test_a_torch_file_that_would_run_code_is_refused_by_name(evil):
    path, marker = evil
    with pytest.raises(UnsafeFileError, match=r"--checkpoint .*evil\.pt holds Python objects .*io\.open.*"
                                              r"--trust-checkpoint"):
        load_torch(path, "--checkpoint", trust_flag="--trust-checkpoint")
    assert not marker.exists()
    # a raw pickle (not written by torch.save) is refused too, still without running anything
    raw = path.with_name("raw.pkl")
    raw.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4))
    with pytest.raises(DamagedFileError, match="raw pickle, which is not loaded"):
        load_torch(raw, "--teacher")
    raw.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))
    with pytest.raises(UnsafeFileError, match="io.open"):
        load_torch(raw, "--teacher")
    assert not marker.exists()


def test_damaged_torch_files_name_the_file_and_the_fix(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(100)}, good)
    data = good.read_bytes()
    for name, content in [("truncated.pt", data[: len(data) // 2]), ("empty.pt", b""),
                          ("noise.pt", bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DamagedFileError, match=rf"the run's checkpoint .*{name} could not be read.*replace it"):
            load_torch(tmp_path / name, "the run's checkpoint")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_torch(tmp_path / "missing.pt", "--teacher")


def test_netmorph_load_refuses_a_crafted_model_file(tmp_path, evil):
    path, marker = evil
    model = netmorph.models.tiny_cnn()
    example = torch.zeros(1, 1, 8, 8)
    reg = netmorph.GammaFlopsRegularizer(model, example)
    reg.structure().save(tmp_path / "structure.json")
    path.rename(tmp_path / "model.pt")
    with pytest.raises(UnsafeFileError, match="model.pt"):
        netmorph.load(netmorph.models.tiny_cnn(), tmp_path)
    assert not marker.exists()


def test_morph_refuses_a_crafted_checkpoint_to_resume_from(evil):
    path, marker = evil
    from netmorph.train import Recipe
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with pytest.raises(UnsafeFileError, match="morph checkpoint"):
        morph(netmorph.models.tiny, (x, y), (x, y), torch.zeros(1, 1, 8, 8), recipe=Recipe(epochs=1),
              checkpoint_path=path, log=lambda s: None)
    assert not marker.exists()


def test_cifar_batches_are_read_without_running_code(tmp_path):
    marker = tmp_path / "code_ran"
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4]}
    (tmp_path / "ok").write_bytes(pickle.dumps(batch))
    back = load_data_pickle(tmp_path / "ok")            # numpy arrays and plain data come back intact
    assert np.array_equal(back[b"data"], batch[b"data"]) and back[b"labels"] == [1, 2, 3, 4]
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": batch[b"data"], b"labels": Payload(marker)}))
    with pytest.raises(UnsafeFileError, match=r"test_batch asks to load io\.open"):
        load_cifar10(tmp_path, val_size=2)
    assert not marker.exists()
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch)[:-30])
    with pytest.raises(DamagedFileError, match="test_batch could not be read"):
        load_cifar10(tmp_path, val_size=2)


def _tiny_state(prefix=""):
    return {prefix + k: v for k, v in netmorph.models.tiny_cnn().state_dict().items()}


def test_state_dicts_are_found_in_the_layouts_users_save(tmp_path):
    model = netmorph.models.tiny_cnn()
    names = list(model.state_dict())
    lightning = {"epoch": 3, "global_step": 99, "pytorch-lightning_version": "2.5.0",
                 "state_dict": _tiny_state("model."), "hyper_parameters": {"lr": 0.1, "widths": [8, 16]},
                 "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}]}
    for obj in [_tiny_state(), {"model": _tiny_state()}, {"model_state_dict": _tiny_state("module.")}, lightning,
                {"train": {"model": _tiny_state("_orig_mod.")}}]:
        state = extract_state_dict(obj, model)
        assert list(state) == names
        model.load_state_dict(state)
    # a Lightning file holding plain data loads from disk without any flag
    torch.save(lightning, tmp_path / "last.ckpt")
    assert list(load_state_dict(tmp_path / "last.ckpt", model)) == names
    with pytest.raises(ValueError, match="holds no state_dict"):
        extract_state_dict({"epoch": 3, "note": "weights elsewhere"}, model)


def test_safetensors_weights_load(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors is the test extra's")
    model = netmorph.models.tiny_cnn()
    safetensors.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    state = load_state_dict(tmp_path / "w.safetensors", netmorph.models.tiny_cnn())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    with pytest.raises(DamagedFileError, match="bad.safetensors could not be read"):
        load_state_dict(tmp_path / "bad.safetensors")


# -- the command -------------------------------------------------------------------------------------
def _cli():
    pytest.importorskip("sklearn", reason="the command's built-in data set is scikit-learn's digits")
    from tests.cli.conftest import run_cli
    return run_cli


def test_prune_refuses_a_crafted_checkpoint_and_trust_is_explicit(tmp_path, evil, capsys):
    run_cli = _cli()
    path, marker = evil
    assert run_cli("prune", "--checkpoint", path, "--out", tmp_path / "p") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("netmorph: error: --checkpoint") and "io.open" in err and "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "p").exists()
    # a checkpoint with an object of the user's own beside the weights: refused, then loaded on request
    own = tmp_path / "own.ckpt"
    torch.save({"state_dict": _tiny_state("model."), "hparams": argparse.Namespace(lr=0.1)}, own)
    assert run_cli("prune", "--checkpoint", own, "--out", tmp_path / "p") == 2
    assert "argparse.Namespace" in capsys.readouterr().err
    assert run_cli("prune", "--checkpoint", own, "--trust-checkpoint", "--out", tmp_path / "p") == 0
    assert (tmp_path / "p" / "model.pt").exists()
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(own.read_bytes()[:200])
    assert run_cli("prune", "--checkpoint", truncated, "--out", tmp_path / "q") == 2
    assert "cut.pt could not be read" in capsys.readouterr().err


def test_tas_teacher_and_every_file_of_a_resumed_run_are_refused_when_crafted(tmp_path, evil, capsys):
    run_cli = _cli()
    path, marker = evil
    assert run_cli("tas", "--teacher", path, "--epochs", "1", "--out", tmp_path / "t") == 2
    err = capsys.readouterr().err
    assert "--teacher" in err and "io.open" in err and not marker.exists()
    # a finished quick run, made unfinished again; each of its checkpoints replaced by the crafted file
    out = tmp_path / "run"
    assert run_cli("tas", "--epochs", "1", "--search-epochs", "1", "--batch-size", "256", "--out", out) == 0
    (out / "metrics.json").unlink()
    for name in ("baseline.pt", "search.pt", "distill.pt"):
        keep = (out / name).read_bytes()
        (out / name).write_bytes(path.read_bytes())
        assert run_cli("tas", "--resume", "--out", out) == 2, name
        err = capsys.readouterr().err
        assert name in err and "io.open" in err and "Traceback" not in err, name
        assert not marker.exists()
        (out / name).write_bytes(keep)


def test_morph_resume_refuses_a_crafted_checkpoint(tmp_path, evil, capsys):
    run_cli = _cli()
    path, marker = evil
    out = tmp_path / "run"
    assert run_cli("morph", "--epochs", "1", "--batch-size", "256", "--no-baseline", "--out", out) == 0
    (out / "metrics.json").unlink()
    (out / "checkpoint.pt").write_bytes(path.read_bytes())
    assert run_cli("morph", "--resume", "--out", out) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "io.open" in err and not marker.exists()
