"""``StructureLearner``: MorphNet's structure learning inside any training loop.

The loop stays the user's; the learner adds two calls to it::

    learner = netmorph.StructureLearner(model, example_inputs, shrink="50%", total_steps=steps, optimizer=opt)
    for step, (x, y) in enumerate(batches):
        loss_fn(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        learner.step()                       # after every optimizer step
        if step % eval_every == eval_every - 1:
            learner.evaluate(validate(model))  # after every evaluation: a metric, higher is better
    learner.learned                          # the structure picked (a netmorph.Structure)
    learner.expanded("100%")                 # that structure widened uniformly to a budget

What :meth:`step` does after the optimizer's step (METHODS.md 1.6, the controller of :func:`netmorph.morph`):

- **the sparsifying step**: the proximal operator of the resource regularizer, applied at the *pull
  rate* (the largest learning rate the optimizer has had, or its scheduler's base rate), so the pull does
  not vanish while a schedule decays the learning rate. It acts on the weights outside the optimizer;
  under Adam and its kin each channel's pull is scaled by the optimizer's own step size for it
  (:meth:`~netmorph.regularizers.GammaFlopsRegularizer.preconditioner`), because Adam moves every
  parameter by about the learning rate whatever its gradient, so without it a channel the task needs
  could not resist the pull any better than a useless one;
- **the strength controller**: every ``check_every`` steps the strength (kept in units of 1 / initial
  cost) is multiplied by ``factor`` while no channel has died, by ``factor ** (2 / checks)`` when the
  alive cost is behind a path falling linearly from the start to the shrink target over the first
  ``approach`` of ``total_steps``, divided by that when ahead. The pull acts only while the alive cost is
  above the path and the band ``[0.98, 1.02] * target``, and a step that would take it more than 4% below
  the path or below the band is shortened.

What :meth:`evaluate` does at each evaluation: brings back the channels that died last if the alive cost
fell below the band (:func:`netmorph.morph.revive`), records the alive cost, the strength and the metric,
and updates **the pick**: among evaluations in the band, the best metric; else the one closest to the band.

Everything it needs to continue is in :meth:`state_dict` (the picked weights included, when
``keep_weights``); :meth:`load_state_dict` resumes exactly.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from .costs import check_resource, evaluate as graph_cost
from .structure import Structure

#: the shrink target's band: the controller steers the alive cost into it and the pick reads from it
BAND = (0.98, 1.02)


def in_band(cost: float, target: float) -> bool:
    return BAND[0] * target <= cost <= BAND[1] * target


def revive(reg, target: float, death: np.ndarray, last_value: np.ndarray) -> list[int]:
    """Below the band, bring channels back until the alive cost is in it again: the channels that
    died last first (latest evaluation of death, then the largest value they had while alive), each at
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


def first_strength(reg, lr_sum: float, target: float, scale: np.ndarray | None = None) -> float:
    """A first strength (in units of 1 / cost) at which proximal steps whose learning rates add up to
    ``lr_sum`` (each channel's pull times ``scale``, if given) would pull an average channel's value
    down by ``1 - target/cost`` of itself."""
    with torch.no_grad():
        values = reg.channel_values().detach().cpu().double().numpy()[reg.regularized]
    weights = (reg.channel_weights(reg.alive()) * (1.0 if scale is None else scale))[reg.regularized]
    if not len(values) or weights.mean() <= 0 or lr_sum <= 0:
        return 1.0
    cost = reg.cost()
    return float(cost * values.mean() / (lr_sum * weights.mean()) * (1 - target / cost))


def decayed_parameters(optimizer, parameters) -> list[int]:
    """Indices (into ``parameters``) of those ``optimizer`` decays (``weight_decay > 0`` in their group)."""
    decay = {id(p) for g in optimizer.param_groups if g.get("weight_decay", 0) for p in g["params"]}
    return [i for i, p in enumerate(parameters) if id(p) in decay]


class StructureLearner:
    """Learn which channels a network keeps under a resource target, inside the caller's training loop.

    ``model``: the network being trained (a ``torch.compile``d or DDP-wrapped one is read through;
    FSDP is refused). ``example_inputs``: what to record it with. ``shrink``: the alive cost to steer
    to, a fraction of the model's cost (``"50%"``, ``0.5``) or an absolute number; ``target`` (an
    absolute cost) overrides it. ``resource``: ``"flops"``, ``"size"`` or ``"latency"`` (with
    ``hardware``). ``total_steps``: the optimizer steps the run will take (the path to the target falls
    over the first ``approach`` of them). ``check_every``: steps between strength checks (default: 64
    checks over the run). ``strength``: the first strength in units of 1 / cost (default: estimated at
    the first step from the pull rate). ``optimizer``: read for the learning rate when :meth:`step`
    gets none, and checked for weight decay on the regularized parameters (which pulls every channel
    alike, against the cost weighting: reported, see :meth:`no_decay_parameters`). ``metric_mode``:
    ``"max"`` (accuracy) or ``"min"`` (a loss). ``keep_weights``: keep a copy of the weights at the picked
    evaluation (:attr:`best_weights`).
    """

    def __init__(self, model: nn.Module, example_inputs, *, shrink="50%", target: float | None = None,
                 resource: str = "flops", hardware=None, total_steps: int, approach: float = 0.6,
                 factor: float = 1.5, checks: int = 8, check_every: int | None = None,
                 strength: float | None = None, optimizer=None, metric_mode: str = "max",
                 keep_weights: bool = True, log: Callable[[str], None] = print):
        from .morph import absolute, make_regularizer
        check_resource(resource)
        if not (isinstance(total_steps, int) and total_steps > 0):
            raise ValueError(f"total_steps must be a positive number of optimizer steps, got {total_steps!r}")
        if metric_mode not in ("max", "min"):
            raise ValueError(f"metric_mode must be 'max' (accuracy) or 'min' (a loss), got {metric_mode!r}")
        if not 0 < approach <= 1:
            raise ValueError(f"approach must be a fraction of the steps in (0, 1], got {approach!r}")
        self.model, self.example_inputs = model, example_inputs
        self.resource, self.hardware = resource, hardware
        self.total_steps, self.approach, self.factor, self.checks = total_steps, approach, factor, checks
        self.check_every = max(1, int(check_every) if check_every else total_steps // (8 * checks))
        self.optimizer, self.metric_mode, self.keep_weights, self.log = optimizer, metric_mode, keep_weights, log
        self.reg = make_regularizer(model, example_inputs, resource, hardware, widths=True)
        for name in self.reg.kept_whole.values():
            log(f"keeping the channel group of '{name}' whole: it covers the group unevenly (say, one of a concat's "
                f"inputs feeding some groups of a grouped conv), so no width could say which channels stay")
        n = self.reg.graph.n_channels           # the model's cost, every channel alive, off the graph recorded
        self.original_cost = graph_cost(self.reg.graph, np.ones(n, dtype=bool), resource, hardware)
        self.target = float(target) if target is not None else absolute(shrink, self.original_cost, "shrink")
        if self.target >= self.original_cost:
            raise ValueError(f"the shrink target ({self.target:,.0f}) must be below the {resource} of the model "
                             f"({self.original_cost:,.0f}); ask for less than 100%")
        initial = self.reg.cost()
        self.state = {"steps": 0, "initial": initial, "strength": strength, "period_strength": None,
                      "pull_rate": 0.0, "history": [], "best": None, "scale": None,
                      "death": [-1] * n, "last_value": self.reg.channel_values().detach().cpu().double().tolist()}
        if optimizer is not None:
            self.check_weight_decay(optimizer)

    # -- the two hooks ---------------------------------------------------------------------------
    def step(self, lr: float | None = None, scaler=None) -> bool:
        """Call after every ``optimizer.step()``. ``lr``: that step's learning rate (default: read from the
        optimizer given to the constructor). ``scaler``: a ``torch.amp.GradScaler``, when called after its
        ``update()``; a step it skipped (non-finite gradients: the scale went down) is not counted.
        Returns whether the step counted."""
        if scaler is not None and scaler.is_enabled():
            # a skipped step is one after which the scale went down; the first is compared with the
            # scaler's starting scale (fp16 often skips its first steps)
            scale, last = float(scaler.get_scale()), self.state["scale"]
            if last is None:
                last = float(getattr(scaler, "_init_scale", scale))
            self.state["scale"] = scale
            if scale < last:
                return False
        lr = self._learning_rate(lr)
        state = self.state
        state["pull_rate"] = max(state["pull_rate"], lr, self._base_rate())
        s = state["steps"]
        if state["strength"] is None:
            approach_steps = max(1.0, self.approach * self.total_steps)
            state["strength"] = first_strength(self.reg, state["pull_rate"] * approach_steps, self.target,
                                               self._preconditioner())
        if state["period_strength"] is None:       # a fresh evaluation period: its starting strength is the record
            state["period_strength"] = state["strength"]
        k = self._steer(s)
        if k and self.reg.cost() > max(BAND[1] * self.target, self.path(s + 1)):
            self.reg.proximal_step(state["pull_rate"], k, floor=max(BAND[0] * self.target, 0.96 * self.path(s + 1)),
                                   scale=self._preconditioner())
        state["steps"] = s + 1
        return True

    def evaluate(self, metric=None) -> dict:
        """Call after every evaluation. ``metric``: the validation metric (higher is better unless
        ``metric_mode="min"``), or a function returning it (called after the end-of-period revival, so it
        measures the network the pick would keep), or ``None`` (the pick then takes the cost closest to
        the target). Returns the row recorded: steps, alive cost, strength, metric, channels revived."""
        state, reg, target = self.state, self.reg, self.target
        death, last_value = np.asarray(state["death"]), np.asarray(state["last_value"])
        alive = reg.alive()
        values = reg.channel_values().detach().cpu().double().numpy()
        period = len(state["history"])
        death[alive] = -1
        death[~alive & reg.regularized & (death < 0)] = period
        last_value[alive] = values[alive]
        back = revive(reg, target, death, last_value) if reg.cost() < BAND[0] * target else []
        death[back] = -1
        state["death"], state["last_value"] = death.tolist(), last_value.tolist()
        value = metric() if callable(metric) else metric
        cost = reg.cost()
        strength = state["period_strength"] if state["period_strength"] is not None else state["strength"]
        row = {"steps": state["steps"], "cost": cost, "strength": strength, "metric": value, "revived": len(back)}
        state["history"].append(row)
        state["period_strength"] = None
        score = 0.0 if value is None else (float(value) if self.metric_mode == "max" else -float(value))
        key = (1, score, -abs(cost - target)) if in_band(cost, target) else (0, -abs(cost - target), 0)
        if state["best"] is None or tuple(key) > tuple(state["best"]["key"]):
            state["best"] = {"key": key, "cost": cost, "evaluation": period + 1,
                             "structure": reg.structure().to_dict(),
                             "model": ({k: v.detach().clone() for k, v in self._module().state_dict().items()}
                                       if self.keep_weights else None)}
        return row

    # -- the readings ----------------------------------------------------------------------------
    @property
    def learned(self) -> Structure:
        """The structure picked so far (the current alive channels before the first evaluation)."""
        best = self.state["best"]
        return Structure.from_dict(best["structure"]) if best else self.reg.structure()

    @property
    def learned_cost(self) -> float:
        best = self.state["best"]
        return best["cost"] if best else self.reg.cost()

    @property
    def reached_target(self) -> bool:
        """Whether the pick's alive cost is in the band ``[0.98, 1.02] * target``."""
        best = self.state["best"]
        return bool(best) and best["key"][0] == 1

    @property
    def best_weights(self) -> dict | None:
        """The weights at the picked evaluation (a state dict), with ``keep_weights``."""
        best = self.state["best"]
        return best["model"] if best else None

    @property
    def history(self) -> list[dict]:
        """One row per evaluation: ``steps``, ``cost`` (alive), ``strength``, ``metric``, ``revived``."""
        return self.state["history"]

    def alive_cost(self) -> float:
        return self.reg.cost()

    def expanded(self, budget="100%", round_to: int | None = None) -> Structure:
        """The learned structure widened uniformly to ``budget`` (a fraction of the model's cost at
        construction, or an absolute number): MorphNet's expansion (:func:`netmorph.expand`)."""
        from .expand import expand
        from .morph import absolute
        return expand(self._module(), self.example_inputs, self.learned,
                      absolute(budget, self.original_cost, "budget"), self.resource, self.hardware, round_to)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """The parameters the regularizer reads: give them ``weight_decay=0`` in the optimizer."""
        return self.reg.source_parameters()

    def check_weight_decay(self, optimizer) -> list[int]:
        """Report (log and warn) regularized parameters that ``optimizer`` decays; returns their indices."""
        params = self.no_decay_parameters()
        decayed = decayed_parameters(optimizer, params)
        if decayed:
            msg = (f"{len(decayed)} of the {len(params)} parameters the structure regularizer reads are in an "
                   "optimizer group with weight_decay > 0: weight decay shrinks every channel alike, against "
                   "the cost weighting. Put learner.no_decay_parameters() in a group with weight_decay=0.")
            self.log(msg)
            warnings.warn(msg, stacklevel=3)
        return decayed

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        if len(state["death"]) != self.reg.graph.n_channels:
            raise ValueError("this learner state belongs to a model with a different channel graph "
                             f"({len(state['death'])} channels, this model has {self.reg.graph.n_channels})")
        self.state = copy.deepcopy(dict(state))

    # -- internals -------------------------------------------------------------------------------
    def path(self, step: float) -> float:
        """The cost the network may have shrunk to by ``step``: a line from the start to the target."""
        initial = self.state["initial"]
        approach_steps = max(1.0, self.approach * self.total_steps)
        return max(self.target, initial - (initial - self.target) * step / approach_steps)

    def _steer(self, s: int) -> float:
        """The strength at step ``s`` in units of 1 / cost, adjusted every ``check_every`` steps by where
        the alive cost is against the path (a function of the weights and the step only, so a resumed
        run steers the same)."""
        state, target = self.state, self.target
        if s % self.check_every == 0 and s > 0:
            cost, on_path, f = self.reg.cost(), self.path(s), self.factor
            if cost >= state["initial"]:                          # nothing has died yet: far too weak
                state["strength"] *= f
            elif cost > 1.01 * max(on_path, BAND[1] * target):    # behind the path
                state["strength"] *= f ** (2 / self.checks)
            elif cost < 0.99 * min(on_path, BAND[0] * target) or (cost < 0.99 * on_path and on_path > target):
                state["strength"] /= f ** (2 / self.checks)       # ahead of it: the brake had to hold it back
        return state["strength"] / state["initial"]

    def _learning_rate(self, lr):
        if lr is not None:
            return float(lr)
        if self.optimizer is None:
            raise ValueError("StructureLearner.step needs the step's learning rate: pass lr=..., or give the "
                             "optimizer to the constructor (optimizer=...)")
        return max(float(g["lr"]) for g in self.optimizer.param_groups)

    def _preconditioner(self):
        """Each channel's pull scale in the optimizer's metric (None for SGD), read only when a step pulls."""
        return self.reg.preconditioner(self.optimizer) if self.optimizer is not None else None

    def _base_rate(self) -> float:
        """A scheduler's base learning rate (torch schedulers record it as ``initial_lr``), else 0."""
        if self.optimizer is None:
            return 0.0
        return max(float(g.get("initial_lr", 0.0)) for g in self.optimizer.param_groups)

    def _module(self) -> nn.Module:
        from .graph.record import unwrap
        return unwrap(self.model)
