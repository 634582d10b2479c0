"""Structure: the output width of every width-carrying layer, by module name.

A ``Structure`` is what MorphNet learns and what expansion and pruning consume: a read-only mapping
``layer name -> output channels``, optionally with the original widths beside it (for tables and
plots). It saves to and loads from JSON. A ``module.`` prefix (DDP, DataParallel) is dropped from
names, so a structure learned under a wrapper applies to the bare model.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch


def _strip(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def input_dtypes(inputs) -> list[str] | None:
    """The dtypes of plain tensor example inputs by name (``"int64"``), or None when they are all float32
    (what apply_structure assumes) or an argument is no tensor."""
    if not all(isinstance(t, torch.Tensor) for t in inputs) or all(t.dtype == torch.float32 for t in inputs):
        return None
    return [str(t.dtype).removeprefix("torch.") for t in inputs]


class Structure(Mapping):
    """Read-only ``{layer name: width}``; ``original`` holds the widths it was learned from and
    ``input_shapes`` the shapes of the example inputs (so the structure can be applied alone),
    ``input_dtypes`` their dtypes when they are not all float32 (None: float32)."""

    def __init__(self, widths: Mapping[str, int], original: Mapping[str, int] | None = None,
                 input_shapes=None, input_dtypes=None):
        self._widths = {}
        for name, width in widths.items():
            if not isinstance(width, int) or isinstance(width, bool) or width < 0:
                raise ValueError(f"width of layer {name!r} must be a non-negative integer, got {width!r}")
            self._widths[_strip(str(name))] = width
        self.original = {_strip(str(k)): int(v) for k, v in (original or {}).items()}
        #: shapes of the example inputs the structure was learned with (apply_structure's default)
        self.input_shapes = [list(map(int, s)) for s in input_shapes] if input_shapes else None
        self.input_dtypes = [str(d) for d in input_dtypes] if input_dtypes else None
        bad = [d for d in self.input_dtypes or [] if not isinstance(getattr(torch, d, None), torch.dtype)]
        if bad or (self.input_dtypes and len(self.input_dtypes) != len(self.input_shapes or [])):
            raise ValueError(f"input_dtypes {self.input_dtypes} must name a torch dtype for every input shape")

    def __getitem__(self, name: str) -> int:
        return self._widths[_strip(name)]

    def __iter__(self):
        return iter(self._widths)

    def __len__(self) -> int:
        return len(self._widths)

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == {_strip(k): v for k, v in other.items()}

    def __repr__(self) -> str:
        return f"Structure({self._widths})"

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {"format": "netmorph.structure/1", "widths": dict(self._widths), "original": dict(self.original),
                "input_shapes": self.input_shapes}
        if self.input_dtypes:
            data["input_dtypes"] = self.input_dtypes
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "Structure":
        if not isinstance(data, Mapping) or not isinstance(data.get("widths"), Mapping):
            raise ValueError("not a netmorph structure: the JSON has no 'widths' object")
        bad = [k for k, v in data["widths"].items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if bad:
            raise ValueError(f"not a netmorph structure: the width of {bad[0]!r} is {data['widths'][bad[0]]!r}, "
                             "not a whole number of channels")
        return cls(data["widths"], data.get("original") or None, data.get("input_shapes"), data.get("input_dtypes"))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "Structure":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"structure file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"structure file {path} is damaged (not valid JSON: {exc}); write it again (netmorph "
                             "saves it as final/structure.json) or restore a copy") from None
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"structure file {path} is not a netmorph structure ({exc}); write it again or "
                             "restore a copy") from None

    # -- reading -----------------------------------------------------------------------------
    def table(self) -> str:
        """A text table: layer, original width, width, and the fraction kept."""
        rows = [("layer", "original", "width", "kept")]
        for name, width in self._widths.items():
            orig = self.original.get(name)
            kept = f"{width / orig:.0%}" if orig else "-"
            rows.append((name, "-" if orig is None else str(orig), str(width), kept))
        total_o = sum(self.original.get(n, 0) for n in self._widths)
        total = sum(self._widths.values())
        rows.append(("total", str(total_o) if self.original else "-", str(total),
                     f"{total / total_o:.0%}" if self.original and total_o else "-"))
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}" for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
