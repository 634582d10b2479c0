"""The data sources of the ``netmorph`` command, each ``(train, val, test)`` tensors plus a recipe.

``--data`` takes:

- nothing: scikit-learn's bundled 8x8 handwritten digits (1,797 images, installed with the package,
  no download): 20% test, 10% of the rest validation, stratified by class;
- ``cifar10:PATH``: the python-pickle batches or our ``cifar10_{train,test}.npz`` pair in PATH
  (5,000 training images held out for validation);
- ``folder:PATH``: one sub-directory of images per class (PNG/JPEG, read with Pillow, resized to
  ``image_size`` squared). ``PATH/train`` + ``PATH/test`` (+ optional ``PATH/val``) are used as
  given; otherwise each class is split 80/10/10 into train/val/test.

Validation data steer model selection and the strength controller; test data are for the report.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from .data import load_cifar10
from .train import Recipe

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclasses.dataclass
class Dataset:
    name: str
    train: tuple
    val: tuple
    test: tuple
    num_classes: int
    recipe: Recipe          # defaults that suit the data (the command's flags override them)

    @functools.cached_property
    def example(self) -> torch.Tensor:
        """One training image as a batch of one: the input costs are counted for. Read once: a loader
        makes a new iterator (and draws its order from torch's generator) at every read, folder images
        come from disk."""
        from .train import _pair, is_loader
        if is_loader(self.train):
            return _pair(next(iter(self.train)), "training")[0][:1]
        return self.train[0][:1]

    @property
    def loaders(self) -> bool:
        """Whether the splits are loaders of batches (``--data module:function``), not tensors."""
        from .train import is_loader
        return is_loader(self.train)

    def size(self, split: str) -> str:
        """The number of examples in ``split`` (``"train"``, ``"val"``, ``"test"``), as text."""
        from .train import is_loader
        data = getattr(self, split)
        if not is_loader(data):
            return str(len(data[1]))
        dataset = getattr(data, "dataset", None)
        try:
            return str(len(dataset))
        except TypeError:
            return f"{len(data)} batches of"


def _split(n_per_class: dict, fractions, seed: int):
    """Stratified index split: for each class, shuffled indices cut by ``fractions``."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for idx in n_per_class.values():
        idx = rng.permutation(np.asarray(idx))
        cuts = np.cumsum([int(round(f * len(idx))) for f in fractions[:-1]])
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _by_class(y: np.ndarray) -> dict:
    return {c: np.flatnonzero(y == c) for c in np.unique(y)}


def _normalize(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    mean = ref.mean(dim=(0, 2, 3), keepdim=True)
    std = ref.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


def load_digits(seed: int = 0) -> Dataset:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ValueError("the built-in data set is scikit-learn's digits: pip install scikit-learn "
                         "(or pip install 'netmorph[cli]'), or pass --data cifar10:PATH / folder:PATH") from None
    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = np.asarray(d.target, dtype=np.int64)
    test, val, train = _split(_by_class(y), (0.2, 0.08, 0.72), seed)
    x = _normalize(x, x[train])
    t = lambda i: (x[i], torch.from_numpy(y[i]))  # noqa: E731
    recipe = Recipe(epochs=30, batch_size=64, lr=0.05, crop_padding=1, flip=False, seed=seed)
    return Dataset("digits", t(train), t(val), t(test), 10, recipe)


def load_cifar(path: str, seed: int = 0) -> Dataset:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"CIFAR-10 directory {path} does not exist: give cifar10:DIR with data_batch_1..5 + "
                         "test_batch or cifar10_train.npz + cifar10_test.npz")
    try:
        train, val, test = load_cifar10(p, seed=seed)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    return Dataset("cifar10", train, val, test, 10, Recipe(epochs=15, seed=seed))


def _images(files, size: int) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("folder data needs Pillow to read images: pip install pillow") from None
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)


class ImageFiles:
    """The images of a folder split, read from disk when indexed: ``x[batch_indices]`` (or a slice)
    decodes, resizes and normalizes those files only, so a folder larger than memory trains batch by
    batch. It stands in for the ``[N, 3, S, S]`` tensor the training loop, evaluation and the command
    index (``len``, ``shape``, ``dim()``, indexing); :meth:`subset` is a lazy selection (TAS's halves)."""

    def __init__(self, files, size: int, mean: torch.Tensor, std: torch.Tensor):
        self.files, self.size, self.mean, self.std = list(files), size, mean, std

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple:
        return (len(self.files), 3, self.size, self.size)

    def dim(self) -> int:
        return 4

    def _indices(self, index) -> list[int]:
        """Positions ``index`` selects, as indexing a tensor's first axis would (a slice, integers, a
        boolean mask)."""
        positions = range(len(self.files))
        if isinstance(index, slice):
            return list(positions)[index]
        t = torch.as_tensor(index)
        if t.dtype == torch.bool:
            if t.shape != (len(self.files),):
                raise IndexError(f"a boolean mask over {len(self.files)} images must have that length, got {tuple(t.shape)}")
            return t.nonzero().reshape(-1).tolist()
        return [positions[i] for i in t.reshape(-1).tolist()]       # negative positions count from the end

    @staticmethod
    def _single(index) -> bool:
        return not isinstance(index, (slice, list, tuple)) and torch.as_tensor(index).dim() == 0 and \
            torch.as_tensor(index).dtype != torch.bool

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):                  # x[rows, ...]: the rows read, then the rest applied
            rows = self[index[0]]
            return rows[((slice(None),) if rows.dim() == 4 else ()) + index[1:]]
        x = (_images([self.files[i] for i in self._indices(index)], self.size) - self.mean) / self.std
        return x[0] if self._single(index) else x

    def subset(self, index) -> "ImageFiles":
        return ImageFiles([self.files[i] for i in self._indices(index)], self.size, self.mean, self.std)


def select(x, index):
    """``x[index]``: rows of a tensor, or a lazy selection of :class:`ImageFiles`."""
    return x.subset(index) if isinstance(x, ImageFiles) else x[index]


def _listing(root: Path):
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(c)
    return classes, files, np.asarray(labels, dtype=np.int64)


def load_folder(path: str, seed: int = 0, image_size: int = 32) -> Dataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"image folder {path} does not exist: give folder:DIR with one sub-directory per class")
    splits = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" in splits and "test" in splits:
        classes, files, y = _listing(splits["train"])
        if "val" in splits:
            _, vf, vy = _listing(splits["val"])
            tr = np.arange(len(files))
        else:
            tr, va = _split(_by_class(y), (0.9, 0.1), seed)
            vf, vy = [files[i] for i in va], y[va]
            files, y = [files[i] for i in tr], y[tr]
        _, tf, ty = _listing(splits["test"])
        parts = [(files, y), (vf, vy), (tf, ty)]
    else:
        classes, files, y = _listing(root)
        tr, va, te = _split(_by_class(y), (0.8, 0.1, 0.1), seed)
        parts = [([files[i] for i in idx], y[idx]) for idx in (tr, va, te)]
    if len(classes) < 2 or any(len(p[0]) == 0 for p in parts):
        raise ValueError(f"image folder {path} needs at least 2 class sub-directories with images in each split "
                         f"(found {len(classes)} classes, split sizes {[len(p[0]) for p in parts]})")
    # the images stay on disk and are read batch by batch; the per-channel mean and std are those of up
    # to 1,000 training images spread evenly over the split
    train_files = parts[0][0]
    sample = _images([train_files[i] for i in np.linspace(0, len(train_files) - 1, min(1000, len(train_files)),
                                                          dtype=int)], image_size)
    mean = sample.mean(dim=(0, 2, 3), keepdim=True)
    std = sample.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    data = [(ImageFiles(f, image_size, mean, std), torch.from_numpy(lab)) for f, lab in parts]
    recipe = Recipe(epochs=15, batch_size=64, lr=0.05, crop_padding=max(1, image_size // 8), seed=seed)
    return Dataset(f"folder:{root.name}", *data, len(classes), recipe)


def load_user_data(spec: str, seed: int = 0) -> Dataset:
    """``module:function`` (the current directory importable) returning a dict with ``train``, ``val``
    and ``test`` (each a loader of ``(inputs, targets)`` batches, e.g. a ``DataLoader``, or a pair of
    tensors) and ``num_classes``; optional ``epochs`` and ``lr`` set the recipe's defaults. The loaders'
    own batch size, order and augmentation are used (the function is called with ``seed=`` if it takes it)."""
    import inspect
    from .userfn import import_function
    mod_name, _, fn_name = spec.partition(":")
    fn = import_function(spec, "--data")
    takes_seed = "seed" in inspect.signature(fn).parameters
    got = fn(seed=seed) if takes_seed else fn()
    missing = [k for k in ("train", "val", "test", "num_classes") if not isinstance(got, dict) or k not in got]
    if missing:
        raise ValueError(f"--data {spec} must return a dict with train, val, test (loaders of (inputs, targets) "
                         f"batches) and num_classes; missing {', '.join(missing)}")
    recipe = Recipe(epochs=int(got.get("epochs", 15)), batch_size=int(getattr(got["train"], "batch_size", None) or 64),
                    lr=float(got.get("lr", 0.05)), crop_padding=0, flip=False, seed=seed)
    return Dataset(f"{mod_name}.{fn_name}", got["train"], got["val"], got["test"], int(got["num_classes"]), recipe)


def load_data(spec: str | None, seed: int = 0, image_size: int = 32) -> Dataset:
    """The data set named by a ``--data`` value (``None`` or ``digits``: the built-in one)."""
    if spec in (None, "", "digits"):
        return load_digits(seed)
    kind, sep, path = spec.partition(":")
    if kind == "cifar10" and sep and path:
        return load_cifar(path, seed)
    if kind == "folder" and sep and path:
        return load_folder(path, seed, image_size)
    if sep and kind and path and path.isidentifier():
        return load_user_data(spec, seed)
    raise ValueError(f"unknown data source {spec!r}: use nothing (built-in digits), cifar10:PATH, folder:PATH or "
                     "module:function returning your loaders")
