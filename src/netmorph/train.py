"""Plain PyTorch training: one recipe, readable top to bottom.

The recipe (used by benchmarks and, later, the command line): SGD with Nesterov momentum, weight
decay (not on the gammas a regularizer reads), a one-cycle schedule (linear warm-up to the peak
learning rate over ``warmup`` of the steps, then cosine down to zero), random crop with padding and
horizontal flips. A regularizer, if given to :func:`fit` with a fixed strength, is applied with its
proximal step after every optimizer step at that step's learning rate.

Where it runs: on the device of the model's parameters (move the model, e.g. ``model.cuda()``; the
data stay where they are and each batch is moved as it is used). ``Recipe.amp`` runs the forward
pass and the loss under ``torch.autocast`` (``"bf16"``, or ``"fp16"`` with a ``GradScaler`` whose
skipped steps are not counted as steps by a regularizer's pull); ``Recipe.channels_last`` stores the
model's 4-d weights and every 4-d batch in the channels-last memory format (faster convolutions on
recent GPUs). Both default to off: on a CPU they rarely help.
"""
from __future__ import annotations

import dataclasses
import math
import time
import weakref
from typing import Callable

import torch
from torch import nn


@dataclasses.dataclass
class Recipe:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.15
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0
    schedule: str = "one_cycle"     # or "constant": the same warm-up, then the peak rate to the end
    amp: str = "off"                # "bf16" or "fp16": mixed precision (autocast) for forward and loss
    channels_last: bool = False     # 4-d weights and batches in the channels-last memory format


AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store the model's 4-d parameters and buffers in the channels-last memory format (in place; 5-d
    ones, a Conv3d's, stay as they are: ``nn.Module.to(memory_format=...)`` would refuse them)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def device_of(model: nn.Module) -> torch.device:
    """Where ``model`` runs: the device of its first parameter (or buffer); the CPU if it has none."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(x, device: torch.device, channels_last: bool = False):
    """``x`` (a tensor, or lists / tuples / dicts of them) on ``device``; 4-d float tensors in the
    channels-last memory format if asked. Anything else is returned as it is."""
    if torch.is_tensor(x):
        x = x.to(device, non_blocking=device.type == "cuda")    # asynchronous only towards a GPU
        if channels_last and x.dim() == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, channels_last) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, channels_last) for k, v in x.items()}
    return x


def autocast(recipe_or_amp, device: torch.device):
    """The ``torch.autocast`` context of ``Recipe.amp`` (or an amp name) on ``device``; a no-op when off."""
    amp = getattr(recipe_or_amp, "amp", recipe_or_amp) or "off"
    if amp not in AMP:
        raise ValueError(f"amp must be one of {', '.join(AMP)}, got {amp!r}")
    return torch.autocast(device.type, dtype=AMP[amp], enabled=AMP[amp] is not None)


_SCALERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # optimizer -> its fp16 GradScaler


def grad_scaler(opt, recipe, device: torch.device):
    """The ``GradScaler`` of ``opt`` under ``recipe.amp == "fp16"`` (made once per optimizer, so
    :func:`training_state` saves it beside the optimizer); ``None`` otherwise."""
    if getattr(recipe, "amp", "off") != "fp16":
        return None
    if opt not in _SCALERS:
        _SCALERS[opt] = torch.amp.GradScaler(device.type)
    return _SCALERS[opt]


def one_cycle(step: int, total: int, peak: float, warmup: float) -> float:
    """Learning rate at ``step``: linear warm-up over ``warmup * total`` steps, then cosine to zero."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return peak * (step + 1) / w
    return 0.5 * peak * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def learning_rate(step: int, total: int, recipe: Recipe) -> float:
    """The recipe's learning rate at ``step`` of ``total``: one-cycle, or warm-up then constant."""
    if recipe.schedule == "constant":
        return one_cycle(min(step, max(1, int(round(recipe.warmup * total))) - 1), total, recipe.lr, recipe.warmup)
    if recipe.schedule != "one_cycle":
        raise ValueError(f"schedule must be 'one_cycle' or 'constant', got {recipe.schedule!r}")
    return one_cycle(step, total, recipe.lr, recipe.warmup)


def augment(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of an NCHW batch."""
    n, _, h, w = x.shape
    if padding:
        padded = nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def make_optimizer(model: nn.Module, recipe: Recipe, no_decay=()) -> torch.optim.SGD:
    skip = {id(p) for p in no_decay}
    return torch.optim.SGD([
        {"params": [p for p in model.parameters() if id(p) not in skip], "weight_decay": recipe.weight_decay},
        {"params": [p for p in model.parameters() if id(p) in skip], "weight_decay": 0.0}],
        lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)


def training_state(model: nn.Module, opt, generator: torch.Generator) -> dict:
    """What continuing a training loop exactly needs: the weights, the optimizer, the generator of the
    batch order and augmentation, and torch's global generator (dropout)."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "generator": generator.get_state(),
             "torch_rng": torch.get_rng_state()}
    if opt in _SCALERS:        # fp16: the loss scale goes on where it was
        state["scaler"] = _SCALERS[opt].state_dict()
    device = device_of(model)
    if device.type == "cuda":  # dropout and other draws on the GPU come from its own generator
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def load_training_state(state: dict, model: nn.Module, opt, generator: torch.Generator, recipe=None) -> None:
    """Put back what :func:`training_state` saved (checkpoints older than ``torch_rng`` lack it). An fp16
    grad scaler's state is put back when ``recipe`` trains in fp16 (or no recipe is given); the GPU's
    generator when the model is on a GPU (a run moved between devices continues, not bit for bit)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    generator.set_state(state["generator"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    if state.get("scaler") and getattr(recipe, "amp", "fp16") == "fp16":   # the loss scale goes on where it was
        grad_scaler(opt, Recipe(amp="fp16"), device_of(model)).load_state_dict(state["scaler"])
    device = device_of(model)
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def is_loader(data) -> bool:
    """Whether ``data`` is an iterable of ``(inputs, targets)`` batches (a ``DataLoader``) rather than
    the pair of tensors ``(x, y)``."""
    return not (isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[1])
                and (torch.is_tensor(data[0]) or hasattr(data[0], "shape")))    # a tensor or datasets.ImageFiles


def steps_per_epoch(data, batch_size: int) -> int:
    """Optimizer steps in an epoch of ``data``: ``(x, y)`` tensors cut in batches, or a loader's length."""
    if not is_loader(data):
        return math.ceil(len(data[0]) / batch_size)
    try:
        return len(data)
    except TypeError:
        raise ValueError(f"training data must have a length (the steps in an epoch) for the schedule and the "
                         f"structure controller; this {type(data).__name__} has none. Give an iterable dataset "
                         "a __len__, or wrap it in a DataLoader of a map-style dataset") from None


def _pair(batch, what: str):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"each batch of the {what} data must be a pair (inputs, targets), got {type(batch).__name__}"
                     + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))


@torch.no_grad()
def evaluate(model: nn.Module, x, y: torch.Tensor | None = None, batch_size: int = 500, amp: str = "off",
             channels_last: bool = False) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``x, y``, or on the batches of a loader ``x``; each
    batch moved to the model's device (``channels_last`` as in :func:`to_device`), the forward pass
    under ``amp`` (:func:`autocast`)."""
    was = model.training
    model.eval()
    device = device_of(model)

    def correct_in(xb, yb) -> int:
        with autocast(amp, device):
            out = model(to_device(xb, device, channels_last))
        return (out.argmax(1) == to_device(yb, device)).sum().item()
    try:
        if y is None and is_loader(x):
            correct = n = 0
            for batch in x:
                xb, yb = _pair(batch, "validation")
                correct += correct_in(xb, yb)
                n += len(yb)
            return correct / max(1, n)
        if y is None:
            x, y = x
        correct = sum(correct_in(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
        return correct / max(1, len(x))
    finally:
        model.train(was)


class Interrupted(Exception):
    """Training stopped at a step boundary because ``stop()`` said so (Ctrl-C); ``position`` says
    where, so a checkpoint taken now resumes exactly there."""

    def __init__(self, position: dict):
        super().__init__("training interrupted")
        self.position = position


def cross_entropy(outputs, inputs, targets):
    """The default criterion: ``criterion(outputs, inputs, targets) -> loss``."""
    return nn.functional.cross_entropy(outputs, targets)


def loader_generators(data) -> list[torch.Generator]:
    """The generators a loader draws its order from besides torch's global one: its own
    (``DataLoader(generator=...)``) and its sampler's (``RandomSampler(generator=...)``, also inside a
    ``BatchSampler``); none for ``(x, y)`` tensors."""
    if not is_loader(data):
        return []
    found = {}
    for owner in (data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None),
                  getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def loader_rng_state(data) -> list[torch.Tensor]:
    """The states of :func:`loader_generators` (``[]`` for tensors), for :func:`set_loader_rng_state`."""
    return [g.get_state() for g in loader_generators(data)]


def set_loader_rng_state(data, states) -> None:
    """Put back what :func:`loader_rng_state` recorded (a single state: the loader's own generator)."""
    if states is None:
        return
    if torch.is_tensor(states):
        states = [states]
    generators = loader_generators(data)
    if len(generators) != len(states):
        raise ValueError(f"the checkpoint recorded {len(states)} data-order generator(s), this loader has "
                         f"{len(generators)} (DataLoader(generator=...) and its sampler's): resume with the loader "
                         "built as in the interrupted run")
    for g, state in zip(generators, states):
        g.set_state(state)


def _loader_batches(data, position: dict | None, state: dict):
    """The batches of a loader for one epoch, from ``position["step"]`` on when resuming.

    The loader's order is drawn when its iterator is made, from torch's global generator (a
    ``DataLoader`` with ``shuffle=True`` and no generator of its own) or from its own generator or its
    sampler's: all are recorded at the start of the epoch in ``state`` and, on resume, put back, the
    iterator made again and the batches before the position read and dropped (a lazily read dataset
    reads them again), then torch's generator is set back to where the interrupted run was."""
    if position is None:
        state["epoch_rng"] = torch.get_rng_state()
        state["loader_rng"] = loader_rng_state(data)
        first = 0
    else:
        state["epoch_rng"], state["loader_rng"] = position["epoch_rng"], position.get("loader_rng")
        first, now = position["step"], torch.get_rng_state()
        torch.set_rng_state(state["epoch_rng"])
        set_loader_rng_state(data, state["loader_rng"])
    it = iter(data)
    for _ in range(first):
        next(it)
    if first:
        torch.set_rng_state(now)
    for i, batch in enumerate(it, start=first):
        yield i, batch


def train_epoch(model, opt, data, recipe: Recipe, epoch: int, generator: torch.Generator,
                on_batch: Callable | None = None, criterion=cross_entropy, position: dict | None = None,
                stop: Callable[[], bool] | None = None, after_step: Callable[[int, float], object] | None = None) -> float:
    """One epoch of the recipe; returns the mean training loss.

    ``after_step(step, lr)`` is called after every optimizer step, with the step number counted from
    the start of training and that step's learning rate (a regularizer's proximal step, a
    :class:`~netmorph.learner.StructureLearner`'s ``step``).

    ``data``: ``(x, y)`` tensors (batches of ``recipe.batch_size`` in an order drawn from
    ``generator``, cropped and flipped as the recipe says), or a loader of ``(inputs, targets)``
    batches used as they come (its own batch size, order and augmentation).

    ``position`` (from an :class:`Interrupted`) continues an epoch stopped half-way: the same
    batch order, the generator state and the losses so far, so the result equals an uninterrupted
    epoch. ``stop()`` is polled after every step. Under ``torch.distributed`` every rank draws the
    same batches and trains on its own slice of each (the model is expected to be DDP-wrapped).
    """
    from . import dist
    model.train()
    steps = steps_per_epoch(data, recipe.batch_size)
    total = recipe.epochs * steps
    loader, where = is_loader(data), {}
    if position is None:
        first, losses = 0, []
        order = None if loader else torch.randperm(len(data[0]), generator=generator)
    else:
        order, first, losses = position.get("order"), position["step"], list(position["losses"])
        generator.set_state(position["generator"])
    batches = _loader_batches(data, position, where) if loader else \
        ((i, idx) for i, idx in enumerate(order.split(recipe.batch_size)) if i >= first)
    rank, world = dist.rank(), dist.world_size()
    device = device_of(model)
    scaler = grad_scaler(opt, recipe, device)
    for i, batch in batches:
        step = epoch * steps + i
        lr = learning_rate(step, total, recipe)
        for group in opt.param_groups:
            group["lr"] = lr
        if loader:
            xb, yb = _pair(batch, "training")
        else:
            xb = augment(data[0][batch], recipe.crop_padding, recipe.flip, generator)
            yb = data[1][batch]
        if world > 1:
            xb, yb = xb[rank::world], yb[rank::world]
        xb, yb = to_device(xb, device, recipe.channels_last), to_device(yb, device)
        with autocast(recipe, device):
            loss = criterion(model(xb), xb, yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                                     "lower the learning rate or the regularization strength")
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
            counted = True
        else:       # fp16: a step with non-finite gradients is skipped and the scale lowered
            before = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            counted = scaler.get_scale() >= before
        if after_step is not None and counted:
            after_step(step, lr)
        losses.append(dist.mean(loss.item()))
        if on_batch is not None:
            on_batch(i, steps, losses[-1])
        if stop is not None and dist.any_true(stop()) and i + 1 < steps:
            raise Interrupted({"epoch": epoch, "step": i + 1, "order": order, "losses": losses,
                               "generator": generator.get_state(), **where})
    return sum(losses) / max(1, len(losses))


def fit(model, train, val, recipe: Recipe, reg=None, strength: float = 0.0, log=print,
        checkpoint: Callable | None = None, start_epoch: int = 0, opt=None, generator=None,
        criterion=cross_entropy, on_batch=None, position=None, stop=None, history=None,
        on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train for ``recipe.epochs`` (from ``start_epoch``), logging loss and validation accuracy each epoch
    (and passing the row to ``on_epoch``).

    ``checkpoint(epochs_done, opt, generator, history, position=None)`` is called after every epoch
    and, with the mid-epoch ``position``, when ``stop()`` interrupts training (``position`` and
    ``history`` passed back continue it exactly). Under
    ``torch.distributed`` the model is wrapped in DistributedDataParallel for the steps.
    """
    from . import dist
    generator = generator or torch.Generator().manual_seed(recipe.seed)
    opt = opt or make_optimizer(model, recipe, reg.source_parameters() if reg is not None else ())
    grad_scaler(opt, recipe, device_of(model))         # fp16: made now, so a checkpoint holds its state
    if recipe.channels_last:
        to_channels_last(model)
    history = list(history or [])
    stepper = dist.wrap(model)
    pull = (lambda step, lr: reg.proximal_step(lr, strength)) if reg is not None and strength else None
    for epoch in range(start_epoch, recipe.epochs):
        t = time.time()
        try:
            loss = train_epoch(stepper, opt, train, recipe, epoch, generator, on_batch, criterion, position, stop,
                               after_step=pull)
        except Interrupted as exc:
            if checkpoint is not None:
                checkpoint(epoch, opt, generator, history, exc.position)
            raise
        position = None
        row = {"epoch": epoch + 1, "loss": loss,
               "val_acc": dist.mean(evaluate(model, val, amp=recipe.amp, channels_last=recipe.channels_last)),
               "seconds": time.time() - t}
        if reg is not None:
            row["cost"] = reg.cost()
        history.append(row)
        log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if checkpoint is not None:
            checkpoint(epoch + 1, opt, generator, history)
        if on_epoch is not None:
            on_epoch(row)
    return history
