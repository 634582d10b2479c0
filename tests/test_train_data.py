"""The training recipe's pieces and the CIFAR-10 loader."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from netmorph.data import load_cifar10
from netmorph.train import augment, one_cycle

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_one_cycle_warms_up_linearly_then_decays_to_zero():
    lrs = [one_cycle(s, 100, 0.1, 0.15) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 15) and lrs[14] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(0.1) and lrs[-1] < 1e-4
    assert all(a >= b for a, b in zip(lrs[14:], lrs[15:]))


def test_augment_crops_within_the_padding_and_flips():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    out = augment(x, 0, True, torch.Generator().manual_seed(1))
    for a, b in zip(out, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    out = augment(x, 2, False, torch.Generator().manual_seed(0))
    for a, b in zip(out, x):        # every crop is the image shifted by at most 2, zeros shifted in
        assert any(torch.equal(a, torch.nn.functional.pad(b, (2, 2, 2, 2))[:, dy:dy + 6, dx:dx + 6])
                   for dy in range(5) for dx in range(5))


def test_cifar_loader_reads_python_batches_and_holds_out_validation(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(data))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                                                        b"labels": list(range(10))}))
    train, val, test = load_cifar10(tmp_path, val_size=30)
    assert train[0].shape == (70, 3, 32, 32) and val[0].shape == (30, 3, 32, 32) and test[0].shape == (10, 3, 32, 32)
    assert train[1].dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="no CIFAR-10"):
        load_cifar10(tmp_path / "..", val_size=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "missing")


@pytest.mark.skipif(not (SHARED / "cifar10_train.npz").exists(),
                    reason="the CIFAR-10 npz pair is only on the project's machines (../shared/data)")
def test_cifar_npz_pair_loads_normalized():
    train, val, test = load_cifar10(SHARED)
    assert len(train[0]) == 45000 and len(val[0]) == 5000 and len(test[0]) == 10000
    assert train[0].mean().abs() < 0.05 and (train[0].std() - 1).abs() < 0.05
    assert torch.bincount(test[1]).tolist() == [1000] * 10
