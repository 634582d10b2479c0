"""``morph``: MorphNet's shrink-and-expand loop (METHODS.md 1.6, Algorithm 1).

Each round: train the network with the resource regularizer (proximal steps) while a controller sets
its strength so that the cost of the alive channels falls to the **shrink** target; read the learned
structure O' (at the epoch, among those at or under the target, with the best validation accuracy);
expand it uniformly to the **budget**; rebuild a freshly initialized network of those widths. After
the last round the final structure is trained from scratch without the regularizer.

The strength controller: the strength is kept in units of ``1 / initial cost`` (MorphNet's scale).
After every epoch the alive cost is compared with a target path that falls linearly from the
current cost to the shrink target over the first ``approach`` fraction of the epochs; above the path
the strength grows by ``step``, below it shrinks by ``step``. No strength is asked of the user.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from . import regularizers as R
from .costs import check_resource, count_cost
from .expand import expand
from .resize import apply_structure
from .structure import Structure
from .train import Recipe, evaluate as accuracy, fit, make_optimizer, one_cycle, train_epoch

FAMILY = {("gamma", "flops"): R.GammaFlopsRegularizer, ("gamma", "size"): R.GammaModelSizeRegularizer,
          ("gamma", "latency"): R.GammaLatencyRegularizer, ("weight", "flops"): R.GroupLassoFlopsRegularizer,
          ("weight", "size"): R.GroupLassoModelSizeRegularizer, ("weight", "latency"): R.GroupLassoLatencyRegularizer}


def make_regularizer(model, example_inputs, resource="flops", hardware=None):
    """The Gamma regularizer for ``resource`` if the model has BatchNorm, else the GroupLasso one."""
    check_resource(resource)
    kw = {"hardware": hardware} if resource == "latency" else {}
    try:
        return FAMILY["gamma", resource](model, example_inputs, **kw)
    except ValueError as exc:
        if "needs BatchNorm" not in str(exc):
            raise
        return FAMILY["weight", resource](model, example_inputs, **kw)


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


def initial_strength(reg, recipe: Recipe, n_train: int, target: float, approach: float) -> float:
    """A first strength (in units of 1 / cost) at which the proximal steps of the first ``approach``
    of training would pull an average channel's value down by ``1 - target/cost`` of itself."""
    steps = math.ceil(n_train / recipe.batch_size)
    lr_sum = sum(one_cycle(t, steps * recipe.epochs, recipe.lr, recipe.warmup)
                 for t in range(int(approach * steps * recipe.epochs)))
    with torch.no_grad():
        values = reg.channel_values().detach().cpu().double().numpy()[reg.regularized]
    weights = reg.channel_weights(reg.alive())[reg.regularized]
    if not len(values) or weights.mean() <= 0 or lr_sum <= 0:
        return 1.0
    cost = reg.cost()
    return float(cost * values.mean() / (lr_sum * weights.mean()) * (1 - target / cost))


def regularize(model, train, val, example_inputs, target: float, recipe: Recipe, resource="flops",
               hardware=None, strength: float | None = None, approach: float = 0.6, step: float = 1.5,
               log: Callable = print) -> tuple[Structure, float, Round]:
    """Train ``model`` with the regularizer, steering the alive cost down to ``target``; return the
    structure chosen on the validation split, its cost, and the history."""
    reg = make_regularizer(model, example_inputs, resource, hardware)
    initial = reg.cost()
    if strength is None:
        strength = initial_strength(reg, recipe, len(train[0]), target, approach)
    opt = make_optimizer(model, recipe, reg.source_parameters())
    gen = torch.Generator().manual_seed(recipe.seed)
    strengths, costs, vals, candidates = [], [], [], []
    start = initial
    for epoch in range(recipe.epochs):
        train_epoch(model, opt, *train, recipe, epoch, gen, reg, strength / initial)
        cost, val_acc = reg.cost(), accuracy(model, *val)
        strengths.append(strength)
        costs.append(cost)
        vals.append(val_acc)
        candidates.append((cost, val_acc, reg.structure()))
        path = max(target, start - (start - target) * (epoch + 1) / max(1, approach * recipe.epochs))
        log(f"epoch {epoch + 1}/{recipe.epochs}: alive {resource} {cost:,.0f} ({cost / initial:.0%}), target path "
            f"{path:,.0f}, strength {strength:.3g}/cost, val acc {val_acc:.4f}")
        strength = strength * step if cost > path else strength / step
    under = [c for c in candidates if c[0] <= target * 1.02]
    reached = bool(under)
    if reached:
        cost, _, structure = max(under, key=lambda c: (c[1], c[0]))
    else:
        cost, _, structure = min(candidates, key=lambda c: c[0])
        log(f"the regularizer did not bring the alive {resource} to the shrink target {target:,.0f} "
            f"(lowest {cost:,.0f}); using the smallest structure seen. Train longer or shrink less.")
    return structure, cost, Round(strengths, costs, vals, structure, cost, structure, reached)


def morph(build_model: Callable[[], nn.Module], train, val, example_inputs, budget="100%", shrink="50%",
          resource="flops", hardware=None, rounds: int = 1, recipe: Recipe | None = None,
          final_recipe: Recipe | None = None, round_to: int = 1, log: Callable = print) -> dict:
    """MorphNet's Algorithm 1 on the network ``build_model()`` returns.

    ``budget``: the final network's cost, a fraction of the original (``"100%"``, ``0.5``) or an
    absolute number; ``shrink``: how far the regularized network must shrink before expanding
    (default 50% of the current cost). Returns a dict with the final model, its structure, the
    learned and expanded structures of every round and the test-free training history (the caller
    evaluates on its test data).
    """
    recipe = recipe or Recipe()
    final_recipe = final_recipe or recipe
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    torch.manual_seed(recipe.seed)
    model = build_model()
    graph_cost = lambda m: count_cost(m, example_inputs, resource, hardware)  # noqa: E731
    original = graph_cost(model)
    budget_abs = absolute(budget, original, "budget")
    history = []
    structure = None
    for r in range(rounds):
        current = graph_cost(model)
        target = absolute(shrink, current, "shrink")
        if target >= current:
            raise ValueError(f"the shrink target must be below the current cost ({current:,.0f}); got {shrink!r}")
        log(f"round {r + 1}/{rounds}: regularizing ({resource} {current:,.0f} -> shrink target {target:,.0f})")
        learned, learned_cost, info = regularize(model, train, val, example_inputs, target, recipe, resource,
                                                 hardware, log=log)
        structure = expand(model, example_inputs, learned, budget_abs, resource, hardware, round_to)
        info.expanded = structure
        history.append(info)
        log(f"round {r + 1}: learned {resource} {learned_cost:,.0f}, expanded by omega {structure.omega:.3f} "
            f"to {structure.cost:,.0f} (budget {budget_abs:,.0f})")
        torch.manual_seed(recipe.seed + r + 1)
        model = apply_structure(model, structure, init="fresh", example_inputs=example_inputs)
    log(f"training the final structure from scratch for {final_recipe.epochs} epochs")
    fit(model, train, val, final_recipe, log=log)
    return {"model": model, "structure": structure, "rounds": history, "original_cost": original,
            "final_cost": graph_cost(model), "budget": budget_abs}
