"""Data sources: CIFAR-10 from files on disk (no downloads), returned as normalized tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .safeload import load_data_pickle

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (t - mean) / std


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if (path / "cifar10_train.npz").exists() and (path / "cifar10_test.npz").exists():
        tr = np.load(path / "cifar10_train.npz", allow_pickle=False)    # never unpickle data
        te = np.load(path / "cifar10_test.npz", allow_pickle=False)
        return tr["x"], tr["y"], te["x"], te["y"]
    batches = sorted(path.glob("data_batch_*"))
    if batches and (path / "test_batch").exists():
        def load(f):
            d = load_data_pickle(f, "CIFAR-10 batch")     # numpy arrays and plain data only, never code
            if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
                raise ValueError(f"CIFAR-10 batch {f} is not a CIFAR-10 python batch (no data and labels); "
                                 "use the files of cifar-10-python.tar.gz or cifar10_{train,test}.npz")
            return d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(d[b"labels"])
        parts = [load(f) for f in batches]
        xt, yt = load(path / "test_batch")
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt
    raise FileNotFoundError(f"no CIFAR-10 in {path}: expected cifar10_train.npz + cifar10_test.npz, or the "
                            "python batches data_batch_1..5 + test_batch")


def load_cifar10(path, val_size: int = 5000, seed: int = 0):
    """``(train, val, test)``, each ``(x, y)`` tensors; ``val`` is held out of the training files."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"CIFAR-10 directory {path} does not exist")
    xtr, ytr, xte, yte = _read(path)
    perm = np.random.default_rng(seed).permutation(len(xtr))
    val, tr = perm[:val_size], perm[val_size:]
    as_y = lambda y: torch.from_numpy(np.asarray(y, dtype=np.int64))
    return ((_normalize(xtr[tr]), as_y(ytr[tr])), (_normalize(xtr[val]), as_y(ytr[val])),
            (_normalize(xte), as_y(yte)))
