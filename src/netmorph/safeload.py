"""Reading files without running code from them.

Rule: nothing netmorph reads from disk is unpickled in full. A pickle can name any importable
function and have it called while loading (``os.system``, ``builtins.exec``, ...), so a crafted
checkpoint would run its author's code on the user's machine. Therefore:

- torch files (state dicts, run checkpoints, a teacher, a Lightning ``.ckpt``) go through
  ``torch.load(..., weights_only=True)``: tensors, numbers, strings and plain containers only;
- ``.safetensors`` files are read with the ``safetensors`` package (a format that cannot carry code);
- CIFAR-10's python batches go through :class:`DataUnpickler`, which rebuilds numpy arrays and
  nothing else;
- structures are JSON.

A user's file that really needs full unpickling (an object of their own saved beside the weights)
is loaded only with ``trust=True`` (the command's ``--trust-checkpoint``), which says what it risks.
Every refusal is a :class:`UnsafeFileError` and every unreadable file a :class:`DamagedFileError`
(both ``ValueError``), with one message naming the file and what to do.
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["UnsafeFileError", "DamagedFileError", "load_torch", "load_state_dict", "extract_state_dict",
           "DataUnpickler", "load_data_pickle"]


class UnsafeFileError(ValueError):
    """The file holds Python objects that only full unpickling (which can run code) could rebuild."""


class DamagedFileError(ValueError):
    """The file is truncated, corrupted, or not in the format expected."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refused_global(exc: BaseException) -> str | None:
    """What a weights-only load refused, from torch's message (None if the file is merely unreadable)."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return None
    found = _GLOBAL.search(text)
    if found:
        return found.group(1)
    return None


def load_torch(path, what: str = "file", trust: bool = False, map_location="cpu", trust_flag: str | None = None,
               redo: bool = False):
    """``torch.load`` of ``path`` that never runs code unless ``trust`` is set.

    ``what`` names the file in messages (``"--checkpoint"``, ``"the run's checkpoint"``);
    ``trust_flag`` is the option that sets ``trust`` (named in the refusal), if the caller has one;
    ``redo`` says the file is a run's own checkpoint, which may be deleted to redo its stage.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as exc:
        name = _refused_global(exc)
        if name is None or trust:
            raise DamagedFileError(_damaged(path, what, exc, redo)) from None
        fix = (f"if you made this file yourself and trust it, pass {trust_flag} (full unpickling runs any code "
               "the file carries)" if trust_flag else
               "it was not written by netmorph or was altered; delete it or start a new run")
        raise UnsafeFileError(f"{what} {path} holds Python objects beyond tensors and plain data ({name}); "
                              f"netmorph refuses to unpickle them because loading them could run code; {fix}, "
                              "or save only the state_dict (torch.save(model.state_dict(), path))") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError,
            IndexError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedFileError(_damaged(path, what, exc, redo)) from None


def _damaged(path: Path, what: str, exc: BaseException, redo: bool = False) -> str:
    text = str(exc)
    if "Unsupported operand" in text:         # noise, or a raw pickle: never unpickled in full
        text = "it holds pickle instructions that torch.save never writes, such as a raw pickle, which is not loaded"
    elif "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = " ".join(text.split())[:200] or type(exc).__name__
    return (f"{what} {path} could not be read: it is truncated, corrupted or not a torch file ({first}); "
            "replace it with a good copy" + (" (or delete it to start that stage again)" if redo else ""))


def load_state_dict(path, model: nn.Module | None = None, what: str = "file", trust: bool = False,
                    trust_flag: str | None = None) -> dict:
    """The ``state_dict`` held in ``path``, ready for ``model.load_state_dict``.

    Reads ``.safetensors`` files (needs the ``safetensors`` package) and torch files holding a
    state dict directly or inside a checkpoint: a netmorph run's ``checkpoint.pt``, a Lightning
    ``.ckpt`` (``state_dict``), or a dict with ``model`` / ``model_state_dict`` / ``state_dict``. With
    ``model`` given, a prefix the checkpoint adds to every key (``model.`` in a Lightning module,
    ``module.`` from DistributedDataParallel, ``_orig_mod.`` from ``torch.compile``) is removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{what} {path} is a safetensors file: pip install safetensors "
                             "(or netmorph[safetensors]) to read it") from None
        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise DamagedFileError(_damaged(path, what, exc)) from None
    else:
        obj = load_torch(path, what, trust=trust, trust_flag=trust_flag)
    return extract_state_dict(obj, model, f"{what} {path}")


_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")


def extract_state_dict(obj, model: nn.Module | None = None, label: str = "the checkpoint") -> dict:
    """The tensors of a state dict found in ``obj`` (see :func:`load_state_dict`)."""
    if isinstance(obj, dict) and isinstance(obj.get("train"), dict):
        obj = obj["train"]                                   # a netmorph run's checkpoint.pt
    for _ in range(3):
        if not isinstance(obj, dict) or _is_state(obj):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not _is_state(obj):
        raise ValueError(f"{label} holds no state_dict (tensors by parameter name); save one with "
                         "torch.save(model.state_dict(), path)")
    if model is None:
        return dict(obj)
    return _strip_prefix(dict(obj), list(model.state_dict()))


def _is_state(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and any(torch.is_tensor(v) for v in d.values())


def _strip_prefix(state: dict, names: list[str]) -> dict:
    """``state`` with the one key prefix removed under which it holds every one of ``names``."""
    if not names or all(n in state for n in names):
        return state
    first = names[0]
    prefixes = {k[: len(k) - len(first)] for k in state if k.endswith("." + first)}
    for prefix in sorted(prefixes, key=len):
        if all(prefix + n in state for n in names):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state                                      # load_state_dict names what does not fit


# -- pickled data (CIFAR-10's python batches) --------------------------------------------------------
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _Refused(pickle.UnpicklingError):
    """A global that :class:`DataUnpickler` does not load."""


class DataUnpickler(pickle.Unpickler):
    """An unpickler for data files: builtin containers, strings, bytes and numbers, plus numpy
    arrays and scalars; any other global (a function to call, a class to build) is refused."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            import numpy  # noqa: F401 - the module must be imported for the lookup
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def load_data_pickle(path, what: str = "data file", encoding: str = "bytes"):
    """Unpickle a data file with :class:`DataUnpickler` (refusals and damage as clear errors)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return DataUnpickler(io.BufferedReader(fh), encoding=encoding).load()
    except _Refused as exc:
        raise UnsafeFileError(f"{what} {path} asks to load {exc} while unpickling, which a data file never "
                              "needs and which could run code: netmorph refuses it; use a genuine copy of "
                              "the data") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DamagedFileError(_damaged(path, what, exc)) from None
