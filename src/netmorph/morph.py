"""``morph``: MorphNet's shrink-and-expand loop (METHODS.md 1.6, Algorithm 1).

Each round: train the network with the resource regularizer (proximal steps) while a controller sets
its strength so that the cost of the alive channels falls to the **shrink** target; read the learned
structure O' (at the epoch, among those at or under the target, with the best validation accuracy);
expand it uniformly to the **budget**; rebuild a freshly initialized network of those widths. After
the last round the final structure is trained from scratch without the regularizer.

The strength controller: the strength is kept in units of ``1 / initial cost`` (MorphNet's scale).
Every ``steps // 8`` steps (about eight times an epoch) the alive cost is compared with a target
path that falls linearly from the current cost to the shrink target over the first ``approach``
fraction of the epochs; while nothing has died the strength grows by ``step`` at each check, above
the path by ``step**(1/4)`` per check (about ``step**2`` an epoch), below it shrinks as fast. No strength is asked of the user.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import regularizers as R
from .costs import check_resource, count_cost
from .expand import expand
from .learner import BAND, StructureLearner, first_strength, in_band, revive  # noqa: F401  (public here too)
from .resize import apply_structure
from .safeload import load_torch
from .structure import Structure
from .surgery import prune
from . import dist, faults
from .train import (Interrupted, Recipe, evaluate as accuracy, fit, learning_rate, load_training_state, loader_rng_state,
                    make_optimizer, set_loader_rng_state, steps_per_epoch, to_channels_last, train_epoch, training_state)

FAMILY = {("gamma", "flops"): R.GammaFlopsRegularizer, ("gamma", "size"): R.GammaModelSizeRegularizer,
          ("gamma", "latency"): R.GammaLatencyRegularizer, ("weight", "flops"): R.GroupLassoFlopsRegularizer,
          ("weight", "size"): R.GroupLassoModelSizeRegularizer, ("weight", "latency"): R.GroupLassoLatencyRegularizer}


def make_regularizer(model, example_inputs, resource="flops", hardware=None, widths=False):
    """The Gamma regularizer for ``resource`` if the model has BatchNorm, else the GroupLasso one.

    When the BatchNorm gammas reach fewer than a quarter of the channels the weight norms reach
    (norms that mix channels, such as a MetaFormer's GroupNorm over all channels, leave the MLP widths
    without a BatchNorm), the GroupLasso one: it regularizes what the gammas would leave alone. (A
    VGG-BN, whose gammas reach its convs but not its classifier's hidden layers, keeps the gammas.)

    ``widths``: the result must be a structure of widths (the MorphNet loop), so groups a width
    cannot describe are not regularized (:meth:`~netmorph.regularizers.GammaFlopsRegularizer.keep_uneven`).
    """
    check_resource(resource)
    kw = {"hardware": hardware} if resource == "latency" else {}
    try:
        reg = FAMILY["gamma", resource](model, example_inputs, **kw)
    except ValueError as exc:
        if "needs BatchNorm" not in str(exc):
            raise
        reg = FAMILY["weight", resource](model, example_inputs, **kw)
    else:
        weights = FAMILY["weight", resource](model, example_inputs, **kw)
        if reg.regularized.sum() < 0.25 * weights.regularized.sum():
            reg = weights
    if widths:
        reg.keep_uneven()
    return reg


def absolute(value, reference: float, what: str) -> float:
    """``"50%"``, or a number up to 2 (a fraction of ``reference``), or a larger absolute number."""
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        try:
            number = float(text[:-1] if percent else text)
        except ValueError:
            raise ValueError(f"{what} must be a percentage like 50% or a number, got {value!r}") from None
        value = number / 100 if percent else number
        if percent and value > 0:
            return value * reference
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be greater than 0, got {value!r}")
    return value * reference if value <= 2 else float(value)


@dataclasses.dataclass
class Round:
    strength_history: list[float]
    cost_history: list[float]
    val_history: list[float]
    learned: Structure
    learned_cost: float
    expanded: Structure
    reached_target: bool

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["learned"], d["expanded"] = self.learned.to_dict(), self.expanded.to_dict()
        d["omega"] = getattr(self.expanded, "omega", None)
        d["expanded_cost"] = getattr(self.expanded, "cost", None)
        d["round_to"] = getattr(self.expanded, "round_to", None)
        d["rounding_note"] = getattr(self.expanded, "rounding_note", None)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Round":
        d = dict(d)
        omega, cost = d.pop("omega", None), d.pop("expanded_cost", None)
        round_to, note = d.pop("round_to", None), d.pop("rounding_note", None)
        d["learned"], d["expanded"] = Structure.from_dict(d["learned"]), Structure.from_dict(d["expanded"])
        d["expanded"].omega, d["expanded"].cost = omega, cost
        d["expanded"].round_to, d["expanded"].rounding_note = round_to, note
        return cls(**d)


def save_atomic(obj, path) -> None:
    """``torch.save`` through a temporary file (synced to disk, then renamed over ``path``), so a
    crash, a kill or a full disk never leaves a half-written checkpoint: ``path`` holds either the
    previous file or the new one. A write that fails (no space left, say) removes the temporary file
    and raises :class:`OSError` naming ``path`` and saying that the previous checkpoint is kept."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    try:
        with open(tmp, "wb") as fh:
            fh.write(data[:len(data) // 2])
            faults.point("checkpoint-write")
            fh.write(data[len(data) // 2:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = "the previous checkpoint is kept" if path.exists() else "there is no earlier checkpoint"
        err = OSError(f"could not write {path} ({exc.strerror or exc}); {kept}")
        err.errno = exc.errno                # a plain OSError (not FileNotFoundError & co.), errno kept
        raise err from exc


def initial_strength(reg, recipe: Recipe, steps: int, target: float, approach: float) -> float:
    """A first strength (in units of 1 / cost) at which the proximal steps of the first ``approach``
    of training (``steps`` an epoch) would pull an average channel's value down by ``1 - target/cost``
    of itself."""
    lr_sum = sum(learning_rate(t, steps * recipe.epochs, recipe) for t in range(int(approach * steps * recipe.epochs)))
    return first_strength(reg, lr_sum, target)


def regularize(model, train, val, example_inputs, target: float, recipe: Recipe, resource="flops",
               hardware=None, strength: float | None = None, approach: float = 0.6, step: float = 1.5, checks: int = 8,
               log: Callable = print, on_batch=None, stop=None, state: dict | None = None,
               checkpoint: Callable | None = None, schedule: str = "constant",
               on_epoch: Callable[[dict], None] | None = None) -> tuple[Structure, float, Round]:
    """Train ``model`` with the regularizer, steering the alive cost into ``[0.98, 1.02] * target``;
    return the structure chosen on the validation split, its cost, and the history.

    The recipe's loop with a :class:`~netmorph.learner.StructureLearner` (the controller, the pull and
    the pick are its own; see there) that checks the strength ``checks`` times an epoch and is evaluated
    after every epoch on the validation accuracy. The learning rate is held at its peak after the
    warm-up (``schedule``; MorphNet's advice: a decaying rate would take the proximal pull with it).

    ``checkpoint(state)`` receives everything needed to continue (after every epoch, and when
    ``stop()`` interrupts training, before :class:`~netmorph.train.Interrupted` propagates);
    passing that ``state`` back resumes, with the same result as an uninterrupted run. ``on_epoch(row)``
    receives each epoch's numbers (alive cost, its fraction of the start, strength, validation accuracy,
    channels revived, and ``widths``: the alive output channels per layer).
    """
    recipe = dataclasses.replace(recipe, schedule=schedule)
    steps = steps_per_epoch(train, recipe.batch_size)
    learner = StructureLearner(model, example_inputs, target=target, resource=resource, hardware=hardware,
                               total_steps=recipe.epochs * steps, approach=approach, factor=step, checks=checks,
                               check_every=max(1, steps // checks), log=log)
    opt = make_optimizer(model, recipe, learner.no_decay_parameters())
    gen = torch.Generator().manual_seed(recipe.seed)
    if recipe.channels_last:
        to_channels_last(model)
    if state is None:
        learner.state["strength"] = strength if strength is not None else \
            initial_strength(learner.reg, recipe, steps, target, approach)
        state = {"epoch": 0, "position": None}
    else:
        load_training_state(state, model, opt, gen, recipe)
        learner.load_state_dict(state["learner"])

    def save(position=None):
        if checkpoint is not None:
            checkpoint({**state, **training_state(model, opt, gen), "learner": learner.state_dict(),
                        "position": position})

    stepper = dist.wrap(model)
    for epoch in range(state["epoch"], recipe.epochs):
        try:
            train_epoch(stepper, opt, train, recipe, epoch, gen, on_batch=on_batch, position=state["position"],
                        stop=stop, after_step=lambda s, lr: learner.step(lr))
        except Interrupted as exc:
            save(exc.position)
            raise
        state["position"] = None
        row = learner.evaluate(lambda: dist.mean(accuracy(model, val, amp=recipe.amp,
                                                          channels_last=recipe.channels_last)))
        log(f"epoch {epoch + 1}/{recipe.epochs}: alive {resource} {row['cost']:,.0f} "
            f"({row['cost'] / learner.state['initial']:.0%}), target path {learner.path((epoch + 1) * steps):,.0f}, "
            f"strength {row['strength']:.3g}/cost, val acc {row['metric']:.4f}"
            + (f", {row['revived']} channels revived" if row["revived"] else ""))
        state["epoch"] = epoch + 1
        save()
        if on_epoch is not None:
            on_epoch({"epoch": epoch + 1, "val_acc": row["metric"], "alive_cost": row["cost"],
                      "alive_fraction": row["cost"] / learner.state["initial"], "strength": row["strength"],
                      "revived": row["revived"], "widths": dict(learner.reg.structure())})
    cost, structure = learner.learned_cost, learner.learned
    if not learner.reached_target:
        log(f"the regularizer did not bring the alive {resource} into the band {BAND[0]:.0%}-{BAND[1]:.0%} of the "
            f"shrink target {target:,.0f} (closest {cost:,.0f}, {cost / learner.state['initial']:.0%} of the start); "
            "using the structure closest to it. Train for more epochs or shrink less.")
    hist = learner.history
    info = Round([r["strength"] for r in hist], [r["cost"] for r in hist], [r["metric"] for r in hist],
                 structure, cost, structure, learner.reached_target)
    info.state, info.epoch = learner.best_weights, learner.state["best"]["evaluation"]
    return structure, cost, info


def next_network(model: nn.Module, done: Round, example_inputs, seed: int, reference: nn.Module, init: str,
                 resource="flops", hardware=None) -> nn.Module:
    """The network a finished round hands on: its expanded structure, either freshly initialized the
    model's way (``init="fresh"``, the paper's way) or warm (``init="keep"``): the regularized weights
    at the picked epoch, pruned exactly, widened with every alive weight kept and the new channels
    (formerly silenced ones included) drawn the model's way."""
    torch.manual_seed(seed)
    if init == "fresh":
        return apply_structure(model, done.expanded, init="fresh", example_inputs=example_inputs,
                               init_reference=reference)
    model.load_state_dict(done.state)
    pruned = prune(model, make_regularizer(model, example_inputs, resource, hardware, widths=True))
    return apply_structure(pruned, done.expanded, init="keep", example_inputs=example_inputs,
                           init_reference=reference)


def replay(model: nn.Module, rounds: list, example_inputs, seed: int, reference: nn.Module | None = None,
           init: str = "fresh", resource="flops", hardware=None) -> nn.Module:
    """The network after ``rounds`` (finished :class:`Round` s, with ``.state`` for warm rounds)
    starting from ``model`` (freshly built, or ``reference`` is), as :func:`morph` built it."""
    reference = reference if reference is not None else copy.deepcopy(model)
    for r, done in enumerate(rounds):
        model = next_network(model, done, example_inputs, seed + r + 1, reference, init, resource, hardware)
    return model


def morph(build_model: Callable[[], nn.Module], train, val, example_inputs, budget="100%", shrink="50%",
          resource="flops", hardware=None, rounds: int = 1, recipe: Recipe | None = None,
          final_recipe: Recipe | None = None, round_to: int | None = None, log: Callable = print,
          checkpoint_path=None, on_batch=None, stop=None, on_stage=None, init: str = "fresh",
          start_state: dict | None = None, on_epoch: Callable[[str, dict], None] | None = None) -> dict:
    """MorphNet's Algorithm 1 on the network ``build_model()`` returns.

    ``budget``: the final network's cost, a fraction of the original (``"100%"``, ``0.5``) or an
    absolute number; ``shrink``: how far the regularized network must shrink before expanding
    (default 50% of the current cost). ``init``: ``"fresh"`` trains each expanded structure from
    the model's own initialization (the paper's way); ``"keep"`` starts the regularizer from
    ``start_state`` (trained weights; else the fresh build), prunes the learned network exactly,
    widens it keeping every alive weight, and fine-tunes that (``final_recipe``). With ``checkpoint_path`` the whole loop saves its state
    there after every epoch and continues from it when the file exists (same seed, same result).
    ``stop()`` (polled after every step) interrupts cleanly: the state is saved and
    :class:`~netmorph.train.Interrupted` propagates. ``on_stage(name, epochs)`` announces each
    training stage (for progress bars); ``on_epoch(stage, row)`` receives each epoch's numbers
    (see :func:`regularize` and :func:`~netmorph.train.fit`). Returns a dict with the final model, its structure, the
    rounds (:class:`Round`: learned and expanded structures, controller history, and ``.state``,
    the regularized network's weights at the epoch its structure was picked), the final training
    history and the costs; the caller evaluates on its own test data.
    """
    recipe = recipe or Recipe()
    final_recipe = final_recipe or recipe
    if init not in ("fresh", "keep"):
        raise ValueError(f"init must be 'fresh' or 'keep', got {init!r}")
    if start_state is not None and init != "keep":
        raise ValueError("start_state (trained weights to start from) goes with init='keep'")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    path = Path(checkpoint_path) if checkpoint_path else None
    state = load_torch(path, "the morph checkpoint", redo=True) if path is not None and path.exists() else \
        {"rounds": [], "learned_models": [], "stage": None, "train": None}

    def save():
        if path is not None and dist.is_main():
            # a loader's own generators (its order) as they are now: a run resumed at an epoch's or a
            # stage's end goes on with the next epoch's order, not the first one again
            save_atomic({**state, "data_rng": loader_rng_state(train)}, path)

    set_loader_rng_state(train, state.get("data_rng"))
    torch.manual_seed(recipe.seed)
    model = build_model()
    reference = copy.deepcopy(model)              # the model's own initialization, for fresh weights
    graph_cost = lambda m: count_cost(m, example_inputs, resource, hardware)  # noqa: E731
    original = graph_cost(model)
    budget_abs = absolute(budget, original, "budget")
    history = [Round.from_dict(d) for d in state["rounds"]]
    for done, weights in zip(history, state["learned_models"]):
        done.state = weights
    if start_state is not None:
        model.load_state_dict(start_state)
    model = replay(model, history, example_inputs, recipe.seed, reference, init, resource, hardware)
    for r in range(len(history), rounds):
        current = graph_cost(model)
        target = absolute(shrink, current, "shrink")
        if target >= current:
            raise ValueError(f"the shrink target must be below the current cost ({current:,.0f}); got {shrink!r}")
        log(f"round {r + 1}/{rounds}: regularizing ({resource} {current:,.0f} -> shrink target {target:,.0f})")
        if on_stage:
            on_stage(f"round {r + 1}: regularize", recipe.epochs)

        def keep(s, r=r):
            state["stage"], state["train"] = f"regularize {r}", s
            save()
        resume = state["train"] if state["stage"] == f"regularize {r}" else None
        learned, learned_cost, info = regularize(model, train, val, example_inputs, target, recipe, resource,
                                                 hardware, log=log, on_batch=on_batch, stop=stop, state=resume,
                                                 checkpoint=keep, on_epoch=on_epoch and (
                                                     lambda row, r=r: on_epoch(f"round {r + 1}: regularize", row)))
        structure = expand(model, example_inputs, learned, budget_abs, resource, hardware, round_to)
        info.expanded = structure
        if getattr(structure, "rounding_note", None):
            log(structure.rounding_note)
        history.append(info)
        state["rounds"].append(info.to_dict())
        state["learned_models"].append(info.state)
        state["stage"], state["train"] = None, None
        save()
        log(f"round {r + 1}: learned {resource} {learned_cost:,.0f}, expanded by omega {structure.omega:.3f} "
            f"to {structure.cost:,.0f} (budget {budget_abs:,.0f})")
        model = next_network(model, info, example_inputs, recipe.seed + r + 1, reference, init, resource, hardware)
    log(f"training the final structure {'from scratch' if init == 'fresh' else 'on (fine-tuning)'} for "
        f"{final_recipe.epochs} epochs")
    if on_stage:
        on_stage("final training", final_recipe.epochs)
    opt, gen = make_optimizer(model, final_recipe), torch.Generator().manual_seed(final_recipe.seed)
    done = state["train"] if state["stage"] == "final" else None
    if done is not None:
        load_training_state(done, model, opt, gen, final_recipe)

    def keep_final(epoch, opt, gen, hist, position=None):
        state["stage"] = "final"
        state["train"] = {**training_state(model, opt, gen), "epoch": epoch, "history": hist, "position": position}
        save()
    final_history = fit(model, train, val, final_recipe, log=log, checkpoint=keep_final,
                        start_epoch=done["epoch"] if done else 0, opt=opt, generator=gen, on_batch=on_batch,
                        position=done["position"] if done else None, stop=stop,
                        history=done["history"] if done else None,
                        on_epoch=on_epoch and (lambda row: on_epoch("final training", row)))
    return {"model": model, "structure": history[-1].expanded, "rounds": history, "original_cost": original,
            "final_cost": graph_cost(model), "budget": budget_abs, "final_history": final_history, "init": init}
