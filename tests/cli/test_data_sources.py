"""The ``--data`` sources: built-in digits, ``cifar10:PATH`` (npz pair) and ``folder:PATH``."""
import json

import numpy as np
import pytest
import torch

from netmorph.datasets import load_data

from .conftest import NEEDS_DIGITS, run_cli


def test_digits_are_split_by_class_without_overlap():
    pytest.importorskip("sklearn", reason=NEEDS_DIGITS)
    d = load_data(None, seed=0)
    sizes = [len(d.train[0]), len(d.val[0]), len(d.test[0])]
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=10)
    assert d.example.shape == (1, 1, 8, 8) and d.num_classes == 10
    for part in (d.train, d.val, d.test):                      # every class in every split
        assert set(part[1].tolist()) == set(range(10))
    rows = [{tuple(r.tolist()) for r in part[0].flatten(1)} for part in (d.train, d.val, d.test)]
    assert [len(r) for r in rows] == sizes                     # the 1797 digits are distinct images ...
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]   # ... in one split each
    assert abs(float(d.train[0].mean())) < 1e-4 and float(d.train[0].std()) == pytest.approx(1, abs=1e-3)
    again = load_data(None, seed=0)
    assert torch.equal(again.val[1], d.val[1])


def test_cifar_npz_pair(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cifar10_train.npz", x=rng.integers(0, 255, (6000, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, 6000).astype(np.uint8))
    np.savez(tmp_path / "cifar10_test.npz", x=rng.integers(0, 255, (100, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, 100).astype(np.uint8))
    d = load_data(f"cifar10:{tmp_path}")
    assert [len(p[0]) for p in (d.train, d.val, d.test)] == [1000, 5000, 100]
    assert d.example.shape == (1, 3, 32, 32) and d.recipe.epochs == 15
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no CIFAR-10 in"):
        load_data(f"cifar10:{tmp_path / 'empty'}")


def _folder(root, per_class=10, size=10):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((size, size, 3), 60 + 120 * c, dtype=np.uint8) + rng.integers(0, 40, (size, size, 3),
                                                                                       dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")


def test_image_folder_is_split_80_10_10_per_class_and_runs_end_to_end(tmp_path):
    pytest.importorskip("PIL", reason="folder data are read with Pillow")
    _folder(tmp_path / "pics")
    d = load_data(f"folder:{tmp_path / 'pics'}", image_size=8)
    assert [len(p[0]) for p in (d.train, d.val, d.test)] == [16, 2, 2]
    assert d.example.shape == (1, 3, 8, 8) and d.num_classes == 2
    out = tmp_path / "run"
    assert run_cli("morph", "--data", f"folder:{tmp_path / 'pics'}", "--image-size", "8", "--epochs", "2",
                   "--no-baseline", "--out", out) == 0
    assert (out / "metrics.json").exists()
    # TAS too: its search reads the two halves of the training split lazily
    assert run_cli("tas", "--data", f"folder:{tmp_path / 'pics'}", "--image-size", "8", "--epochs", "1",
                   "--search-epochs", "1", "--out", tmp_path / "tas") == 0
    assert (tmp_path / "tas" / "metrics.json").exists()
    with pytest.raises(ValueError, match="at least 2 class"):
        (tmp_path / "one" / "only").mkdir(parents=True)
        load_data(f"folder:{tmp_path / 'one'}")


def test_image_folder_is_read_batch_by_batch_not_loaded_whole(tmp_path, monkeypatch):
    pytest.importorskip("PIL", reason="folder data are read with Pillow")
    import netmorph.datasets as D
    _folder(tmp_path / "pics")
    reads = []
    real = D._images
    monkeypatch.setattr(D, "_images", lambda files, size: reads.append(len(files)) or real(files, size))
    d = load_data(f"folder:{tmp_path / 'pics'}", image_size=8)
    assert reads == [16]                          # the normalization's sample (up to 1,000 training images)
    batch = d.train[0][torch.tensor([3, 0, 7])]
    assert reads[-1] == 3 and batch.shape == (3, 3, 8, 8)
    assert torch.equal(batch[1], d.train[0][0]) and torch.equal(d.train[0][2:4], d.train[0][torch.tensor([2, 3])])
    # indexed as a tensor's first axis is: a mask, numpy and 0-dim integers, negative positions
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[1, 5]] = True
    assert torch.equal(d.train[0][mask], d.train[0][torch.tensor([1, 5])])
    assert d.train[0][np.int64(4)].shape == d.train[0][torch.tensor(4)].shape == (3, 8, 8)
    assert torch.equal(d.train[0][-1], d.train[0][15])
    before = len(reads)
    half = D.select(d.train[0], torch.arange(8))  # a lazy selection: nothing read
    assert len(reads) == before and len(half) == 8 and half.shape == (8, 3, 8, 8)
    # normalized with the sample's statistics: the training split has mean ~0, std ~1 per channel
    x = d.train[0][:]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def _split_folder(root, counts: dict, size=8):
    """``root/<split>/{cats,dogs}/`` with ``counts[split]`` images per class; pixel (0, 0) of every image
    holds a value from the split's own range (train < val < test), the rest is the class's grey."""
    from PIL import Image
    ranges = {"train": (0, 80), "val": (90, 140), "test": (160, 255)}
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        lo, hi = ranges[split]
        for c, name in enumerate(("cats", "dogs")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.full((size, size, 3), 60 + 120 * c, dtype=np.uint8)
                img[0, 0] = rng.integers(lo, hi + 1)
                Image.fromarray(img).save(root / split / name / f"{i}.png")


def test_image_folder_already_split_into_train_val_test_is_used_as_given(tmp_path):
    pytest.importorskip("PIL", reason="folder data are read with Pillow")
    _split_folder(tmp_path / "given", {"train": 7, "val": 3, "test": 4})
    d = load_data(f"folder:{tmp_path / 'given'}", image_size=8)          # 8x8 images: no resampling
    assert [len(p[0]) for p in (d.train, d.val, d.test)] == [14, 6, 8]
    assert [p[1].tolist() for p in (d.train, d.val, d.test)] == [[0] * 7 + [1] * 7, [0] * 3 + [1] * 3, [0] * 4 + [1] * 4]
    marks = [p[0][:, 0, 0, 0] for p in (d.train, d.val, d.test)]      # normalization keeps their order
    assert marks[0].max() < marks[1].min() and marks[1].max() < marks[2].min()   # no image changed split
    # without val/: the validation split comes out of train/ (10% per class), test/ stays as given
    _split_folder(tmp_path / "no_val", {"train": 10, "test": 4})
    d = load_data(f"folder:{tmp_path / 'no_val'}", image_size=8)
    assert [len(p[0]) for p in (d.train, d.val, d.test)] == [18, 2, 8]
    train_marks, val_marks, test_marks = (p[0][:, 0, 0, 0] for p in (d.train, d.val, d.test))
    assert torch.cat([train_marks, val_marks]).max() < test_marks.min()
    assert sorted(d.val[1].tolist()) == [0, 1]


def test_data_from_a_users_module_as_loaders(tmp_path):
    out = tmp_path / "run"
    assert run_cli("morph", "--data", "tests.cli.userdata:loaders", "--model", "tiny", "--no-baseline", "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["models"]["final"]["test_n"] == 64 and m["models"]["final"]["latency_batch"] == 64
    assert "(512 train / 64 val / 64 test)" in (out / "log.txt").read_text()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert sum(",round 1: regularize," in r for r in rows) == 2 and sum(",final training," in r for r in rows) == 2


@pytest.mark.parametrize("argv,message", [
    (["morph", "--no-baseline", "--data", "tests.cli.userdata:no_test"], "missing test"),
    (["morph", "--data", "tests.cli.userdata:loaders", "--batch-size", "32"], "own batch size is used"),
    (["tas", "--data", "tests.cli.userdata:loaders"], "cannot do to the loaders"),
    (["morph", "--data", "tests.cli.nowhere:loaders"], "cannot import module 'tests.cli.nowhere'"),
])
def test_user_data_that_cannot_work_is_refused_with_the_reason(tmp_path, capsys, argv, message):
    assert run_cli(*argv, "--out", tmp_path / "run") == 2
    assert message in capsys.readouterr().err
