"""The training recipe's pieces and the CIFAR-10 loader."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netmorph.data import load_cifar10
from netmorph.train import Recipe, augment, fit, one_cycle

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


def augmentation_of(image, raw, padding):
    """``(index, dy, dx, flipped)``: the one raw image and the one crop (shifted by ``dy, dx``, zeros
    shifted in, at most ``padding``) and horizontal flip of it that ``image`` equals."""
    n, _, h, w = raw.shape
    padded = nn.functional.pad(raw, (padding,) * 4)
    found = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, :, dy:dy + h, dx:dx + w]
            for flipped in (False, True):
                same = ((crop.flip(3) if flipped else crop) == image).flatten(1).all(1)
                found += [(i, dy - padding, dx - padding, flipped) for i in same.nonzero()[:, 0].tolist()]
    assert len(found) == 1, f"{len(found)} crops/flips of the raw images match this one"
    return found[0]


class Recorder(nn.Module):
    """A small trainable network that keeps a copy of every batch it is trained on."""

    def __init__(self, channels=2, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, classes))
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.net(x)


def test_fit_trains_on_random_crops_and_flips_of_the_data_as_the_recipe_says():
    torch.manual_seed(0)
    x, y = torch.randn(32, 2, 6, 6), torch.randint(0, 3, (32,))
    model = Recorder()
    fit(model, (x, y), (x[:4], y[:4]), Recipe(epochs=2, batch_size=8, crop_padding=2, flip=True), log=lambda *_: None)
    assert [b.shape for b in model.seen] == [(8, 2, 6, 6)] * 8               # 2 epochs x 4 batches
    found = [augmentation_of(image, x, 2) for batch in model.seen for image in batch]
    for epoch in (found[:32], found[32:]):                                  # every image once an epoch
        assert sorted(i for i, *_ in epoch) == list(range(32))
    # each image: shift dy, dx uniform in -2..2 and a flip with probability 1/2, so of the 64 images
    # about 1.3 are left as they were, ~32 are flipped and every shift occurs (~13 each)
    assert sum((dy, dx, f) == (0, 0, False) for _, dy, dx, f in found) <= 6
    assert 20 <= sum(f for *_, f in found) <= 44
    assert {dy for _, dy, _, _ in found} == {dx for _, _, dx, _ in found} == {-2, -1, 0, 1, 2}
    # no padding and no flips: fit trains on the raw images
    model = Recorder()
    fit(model, (x, y), (x[:4], y[:4]), Recipe(epochs=1, batch_size=8, crop_padding=0, flip=False), log=lambda *_: None)
    raw = [augmentation_of(image, x, 0) for batch in model.seen for image in batch]
    assert sorted(i for i, *_ in raw) == list(range(32)) and all(t[1:] == (0, 0, False) for t in raw)


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
    # validation is held out of the training files: the 100 distinct training images split without overlap
    rows = lambda t: {tuple(r.tolist()) for r in t.flatten(1)}            # noqa: E731
    assert len(rows(train[0])) == 70 and len(rows(val[0])) == 30 and not rows(train[0]) & rows(val[0])
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
