"""``load``: rebuild a network that netmorph saved as ``structure.json`` + ``model.pt``.

Rule: the widths come from the structure (:func:`apply_structure` on a fresh copy of the user's
model), the values from the ``state_dict``, loaded strictly, so a file that does not fit the model
is an error rather than a half-loaded network. One thing a structure cannot say: :func:`prune`
folds what removed channels emitted into the next layer, and a layer that had no bias (and no
BatchNorm after it) gets one. Such a layer is given a bias before loading when the file holds it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .resize import apply_structure
from .safeload import load_torch
from .structure import Structure


def load(model: nn.Module, directory, example_inputs=None, map_location="cpu") -> nn.Module:
    """The network saved in ``directory`` (a run's ``final/``, or ``netmorph prune --out``).

    ``model`` is a freshly built instance of the original architecture (it is not changed);
    ``example_inputs`` default to zeros of the shapes the structure recorded.
    """
    directory = Path(directory)
    for name in ("structure.json", "model.pt"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} does not exist: load() reads the structure.json and "
                                    "model.pt that a netmorph run (final/) or `netmorph prune --out` writes")
    structure = Structure.load(directory / "structure.json")
    state = load_torch(directory / "model.pt", "the saved network's weights", map_location=map_location)
    built = apply_structure(model, structure, keep="first", example_inputs=example_inputs)
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        if leaf != "bias":
            continue
        try:
            layer = built.get_submodule(owner)
        except AttributeError:
            continue                                  # load_state_dict names the unexpected key
        if getattr(layer, "bias", False) is None and isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            layer.bias = nn.Parameter(torch.zeros_like(value, device=layer.weight.device, dtype=layer.weight.dtype))
    built.load_state_dict(state)
    return built
