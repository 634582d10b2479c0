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

import numpy as np
import torch
from torch import nn

from . import regularizers as R
from .costs import check_resource, count_cost
from .expand import expand
from .resize import apply_structure
from .safeload import load_torch
from .structure import Structure
from .surgery import prune
from . import dist, faults
from .train import (Interrupted, Recipe, evaluate as accuracy, fit, learning_rate, load_training_state, make_optimizer,
                    train_epoch, training_state)

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


#: the shrink target's band: the controller steers the alive cost into it and the pick reads from it
BAND = (0.98, 1.02)


def in_band(cost: float, target: float) -> bool:
    return BAND[0] * target <= cost <= BAND[1] * target


def initial_strength(reg, recipe: Recipe, n_train: int, target: float, approach: float) -> float:
    """A first strength (in units of 1 / cost) at which the proximal steps of the first ``approach``
    of training would pull an average channel's value down by ``1 - target/cost`` of itself."""
    steps = math.ceil(n_train / recipe.batch_size)
    lr_sum = sum(learning_rate(t, steps * recipe.epochs, recipe) for t in range(int(approach * steps * recipe.epochs)))
    with torch.no_grad():
        values = reg.channel_values().detach().cpu().double().numpy()[reg.regularized]
    weights = reg.channel_weights(reg.alive())[reg.regularized]
    if not len(values) or weights.mean() <= 0 or lr_sum <= 0:
        return 1.0
    cost = reg.cost()
    return float(cost * values.mean() / (lr_sum * weights.mean()) * (1 - target / cost))


def revive(reg, target: float, death: np.ndarray, last_value: np.ndarray) -> list[int]:
    """Below the band, bring channels back until the alive cost is in it again: the channels that
    died last first (latest epoch of death, then the largest value they had while alive), each at
    ten times the threshold, skipping any whose return would overshoot the band. Returns them."""
    dead = np.flatnonzero(reg.regularized & ~reg.alive() & (death >= 0))
    order = dead[np.lexsort((-last_value[dead], -death[dead]))]
    value = max(10 * reg.threshold, 1e-2)
    back = []
    for c in order.tolist():
        if reg.cost() >= BAND[0] * target:
            break
        reg.revive_channels([c], value)
        if reg.cost() > BAND[1] * target:
            reg.zero_channels([c])
        else:
            back.append(c)
    return back


def regularize(model, train, val, example_inputs, target: float, recipe: Recipe, resource="flops",
               hardware=None, strength: float | None = None, approach: float = 0.6, step: float = 1.5, checks: int = 8,
               log: Callable = print, on_batch=None, stop=None, state: dict | None = None,
               checkpoint: Callable | None = None, schedule: str = "constant") -> tuple[Structure, float, Round]:
    """Train ``model`` with the regularizer, steering the alive cost into ``[0.98, 1.02] * target``;
    return the structure chosen on the validation split, its cost, and the history.

    The controller: the learning rate is held at its peak after the warm-up (``schedule``; MorphNet's
    advice: a decaying rate would take the proximal pull with it). Every ``steps_per_epoch // checks``
    steps (at least every step) the strength is multiplied by ``step`` while no channel has died (trained weights resist the pull far
    more than a fresh network, and a first guess can be 10x short), by ``step**(2/checks)`` (about
    ``step**2`` an epoch) if the alive cost is behind a path falling from the start to the target over
    the first ``approach`` of the steps, divided by that if ahead, and left alone on the path or
    inside the band. The pull acts only while the alive cost is
    above both the path and the band (checked before every step), and a step that would take it
    more than 4% below the path or below the band is shortened, so the network cannot shrink much
    faster than the path, nor below the band, whatever the strength. A channel dies when its value falls to the
    threshold, and is silenced (its gamma and beta, or weights and bias, zeroed) at once, which keeps
    pruning exact; behind a ReLU a silenced channel gets no gradient and cannot come back by
    itself, so when an epoch ends below the band, :func:`revive` brings the last to die back. The
    pick: the epoch in the band with the best validation accuracy, else the one closest to it.

    ``checkpoint(state)`` receives everything needed to continue (after every epoch, and when
    ``stop()`` interrupts training, before :class:`~netmorph.train.Interrupted` propagates);
    passing that ``state`` back resumes, with the same result as an uninterrupted run.
    """
    recipe = dataclasses.replace(recipe, schedule=schedule)
    reg = make_regularizer(model, example_inputs, resource, hardware, widths=True)
    for name in reg.kept_whole.values():
        log(f"keeping the channel group of '{name}' whole: it covers the group unevenly (say, one of a concat's "
            f"inputs feeding some groups of a grouped conv), so no width could say which channels stay")
    opt = make_optimizer(model, recipe, reg.source_parameters())
    gen = torch.Generator().manual_seed(recipe.seed)
    if state is None:
        initial = reg.cost()
        if strength is None:
            strength = initial_strength(reg, recipe, len(train[0]), target, approach)
        n = reg.graph.n_channels
        state = {"epoch": 0, "initial": initial, "strength": strength, "strengths": [], "costs": [], "vals": [],
                 "best": None, "position": None, "revived": [],
                 "death": [-1] * n, "last_value": reg.channel_values().detach().cpu().double().tolist()}
    else:
        load_training_state(state, model, opt, gen)
        reg = make_regularizer(model, example_inputs, resource, hardware, widths=True)
    initial = state["initial"]

    def save(position=None):
        if checkpoint is not None:
            checkpoint({**state, **training_state(model, opt, gen), "position": position})

    steps = math.ceil(len(train[0]) / recipe.batch_size)
    approach_steps = max(1.0, approach * recipe.epochs * steps)

    def path(step: float) -> float:
        """The cost the network may have shrunk to by ``step``: a line from the start to the target."""
        return max(target, initial - (initial - target) * step / approach_steps)

    check = max(1, steps // checks)

    def steer(s: int) -> float:
        """The strength at step ``s``, adjusted every ``check`` steps by where the alive cost is against
        the path (a function of the weights and the step only, so a resumed run steers the same)."""
        if s % check == 0 and s > 0:
            cost, on_path = reg.cost(), path(s)
            if cost >= initial:                                # nothing has died yet: far too weak
                state["strength"] *= step
            elif cost > 1.01 * max(on_path, BAND[1] * target):   # behind the path
                state["strength"] *= step ** (2 / checks)
            elif cost < 0.99 * min(on_path, BAND[0] * target) or (cost < 0.99 * on_path and on_path > target):
                state["strength"] /= step ** (2 / checks)      # ahead of it: the brake had to hold it back
        return state["strength"] / initial

    stepper = dist.wrap(model)
    for epoch in range(state["epoch"], recipe.epochs):
        if state["position"] is None:                # a fresh epoch: its starting strength is the record
            state["epoch_strength"] = state["strength"]
        strength = state.get("epoch_strength", state["strength"])
        try:
            train_epoch(stepper, opt, *train, recipe, epoch, gen, reg, steer, on_batch,
                        position=state["position"], stop=stop,
                        pull_above=lambda s: (max(BAND[1] * target, path(s + 1)),
                                              max(BAND[0] * target, 0.96 * path(s + 1))))
        except Interrupted as exc:
            save(exc.position)
            raise
        state["position"] = None
        death, last_value = np.asarray(state["death"]), np.asarray(state["last_value"])
        alive = reg.alive()
        values = reg.channel_values().detach().cpu().double().numpy()
        death[alive] = -1
        death[~alive & reg.regularized & (death < 0)] = epoch
        last_value[alive] = values[alive]
        back = revive(reg, target, death, last_value) if reg.cost() < BAND[0] * target else []
        death[back] = -1
        state["death"], state["last_value"] = death.tolist(), last_value.tolist()
        state["revived"].append(len(back))
        cost, val_acc = reg.cost(), dist.mean(accuracy(model, *val))
        state["strengths"].append(strength)
        state["costs"].append(cost)
        state["vals"].append(val_acc)
        # the pick: among epochs in the band, the best validation accuracy; else the closest to the band
        key = (1, val_acc, -abs(cost - target)) if in_band(cost, target) else (0, -abs(cost - target), 0)
        if state["best"] is None or tuple(key) > tuple(state["best"]["key"]):
            state["best"] = {"key": key, "cost": cost, "epoch": epoch + 1, "structure": reg.structure().to_dict(),
                             "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        on_path = path((epoch + 1) * steps)
        log(f"epoch {epoch + 1}/{recipe.epochs}: alive {resource} {cost:,.0f} ({cost / initial:.0%}), target path "
            f"{on_path:,.0f}, strength {strength:.3g}/cost, val acc {val_acc:.4f}"
            + (f", {len(back)} channels revived" if back else ""))
        state["epoch"] = epoch + 1
        save()
    best = state["best"]
    cost, structure = best["cost"], Structure.from_dict(best["structure"])
    reached = best["key"][0] == 1
    if not reached:
        log(f"the regularizer did not bring the alive {resource} into the band {BAND[0]:.0%}-{BAND[1]:.0%} of the "
            f"shrink target {target:,.0f} (closest {cost:,.0f}, {cost / initial:.0%} of the start); using the "
            "structure closest to it. Train for more epochs or shrink less.")
    info = Round(state["strengths"], state["costs"], state["vals"], structure, cost, structure, reached)
    info.state, info.epoch = best["model"], best["epoch"]
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
          start_state: dict | None = None) -> dict:
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
    training stage (for progress bars). Returns a dict with the final model, its structure, the
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
            save_atomic(state, path)

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
                                                 checkpoint=keep)
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
        load_training_state(done, model, opt, gen)

    def keep_final(epoch, opt, gen, hist, position=None):
        state["stage"] = "final"
        state["train"] = {**training_state(model, opt, gen), "epoch": epoch, "history": hist, "position": position}
        save()
    final_history = fit(model, train, val, final_recipe, log=log, checkpoint=keep_final,
                        start_epoch=done["epoch"] if done else 0, opt=opt, generator=gen, on_batch=on_batch,
                        position=done["position"] if done else None, stop=stop,
                        history=done["history"] if done else None)
    return {"model": model, "structure": history[-1].expanded, "rounds": history, "original_cost": original,
            "final_cost": graph_cost(model), "budget": budget_abs, "final_history": final_history, "init": init}
