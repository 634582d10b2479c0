"""``save`` and ``load``: a pruned network as ``structure.json`` + ``model.pt``, rebuilt from its original.

Rule: the widths come from the structure (:func:`apply_structure` on a fresh copy of the user's
model), the values from the ``state_dict``, loaded strictly, so a file that does not fit the model
is an error rather than a half-loaded network. One thing a structure cannot say: :func:`prune`
folds what removed channels emitted into the next layer, and a layer that had no bias (and no
BatchNorm after it) gets one. Such a layer is given a bias before loading when the file holds it.

Per-layer widths are what the structure holds, so a transformer whose layers kept different numbers of
attention heads (and MLP widths) reloads as it was: ``apply_structure`` sets each attention module's
head-count attributes (``num_heads``, ``all_head_size``, ...) from its own projections' widths. A
Hugging Face config holds one head count and one MLP width for every layer, so ``save_pretrained`` /
``from_pretrained`` cannot express such a network (``from_pretrained`` refuses the mismatched shapes):
save the original config and reload with ``load(AutoModel.from_config(config), directory)``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .resize import apply_structure
from .safeload import load_torch
from .structure import Structure


def save(model: nn.Module, structure, directory) -> Path:
    """Write ``model``'s weights (``model.pt``) and ``structure`` (``structure.json``: the widths, e.g.
    ``reg.structure()`` of the regularizer ``model`` was pruned with) into ``directory`` for :func:`load`.

    Every width the structure names must be the model's own (a layer of width 0 was removed): a
    structure of another network is refused here rather than at reload."""
    if not isinstance(structure, Structure):
        structure = Structure(dict(structure))
    for name, width in structure.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"save: the structure names '{name}', which the model does not have") from None
        own = next((getattr(layer, a) for a in ("out_features", "out_channels", "nf") if hasattr(layer, a)), None)
        if width and own is not None and own != width:
            raise ValueError(f"save: the structure gives '{name}' {width} output channels, the model has {own}; "
                             "pass the structure the model was pruned to (reg.structure() of its regularizer)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    structure.save(directory / "structure.json")
    torch.save(model.state_dict(), directory / "model.pt")
    return directory


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
