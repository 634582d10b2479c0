"""Callbacks that put a :class:`~netmorph.learner.StructureLearner` into other training stacks.

- :mod:`netmorph.integrations.lightning`: a PyTorch Lightning ``Callback`` (``pip install netmorph[lightning]``).
- :mod:`netmorph.integrations.transformers`: a Hugging Face ``TrainerCallback`` (``pip install netmorph[hf]``).

Both do the same three things as :func:`netmorph.morph` does inside its own loop: the learner's
``step`` after every optimizer step that was taken (not after every batch when gradients accumulate,
not after a step the fp16 grad scaler skipped), its ``evaluate`` after every validation with the
monitored metric, and at the end of training the learned and expanded structures written as JSON
(:func:`write_structures`).
"""
from __future__ import annotations

import json
from pathlib import Path

SHARDED = ("fsdp", "deepspeed", "zero")


def refuse_sharded(name: str) -> None:
    """Refuse a sharded strategy (FSDP, DeepSpeed ZeRO): every rank holds a slice of each parameter,
    so no rank can read a whole channel's gamma or weight row."""
    if any(s in name.lower() for s in SHARDED):
        raise ValueError(f"netmorph cannot learn a structure under sharded training ({name}): each rank holds only "
                         "a slice of every parameter, so no rank sees a whole channel. Use DDP (or one device) for "
                         "the structure-learning run, then train the found network however you like.")


def write_structures(learner, directory, budget="100%", round_to: int | None = None) -> dict:
    """Write ``learned.json`` (the picked structure), ``expanded.json`` (widened to ``budget``) and
    ``history.json`` (one row per evaluation) into ``directory``; return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    expanded = learner.expanded(budget, round_to)
    paths = {"learned": out / "learned.json", "expanded": out / "expanded.json", "history": out / "history.json"}
    learner.learned.save(paths["learned"])
    expanded.save(paths["expanded"])
    paths["history"].write_text(json.dumps({"target": learner.target, "original_cost": learner.original_cost,
                                            "resource": learner.resource, "reached_target": learner.reached_target,
                                            "learned_cost": learner.learned_cost, "expanded_cost": expanded.cost,
                                            "omega": expanded.omega, "evaluations": learner.history}, indent=1))
    return paths


def scalars(learner, row: dict) -> dict:
    """The numbers a callback logs after an evaluation."""
    return {"netmorph/alive_cost": row["cost"], "netmorph/alive_fraction": row["cost"] / learner.original_cost,
            "netmorph/strength": row["strength"], "netmorph/revived": float(row["revived"])}
