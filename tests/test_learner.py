"""StructureLearner: MorphNet's structure learning in the caller's own training loop."""
import math
import warnings

import pytest
import torch
from torch import nn

import netmorph
from netmorph.learner import BAND, StructureLearner, in_band
from netmorph.models import tiny_cnn
from netmorph.morph import initial_strength, regularize
from netmorph.train import Recipe, evaluate, learning_rate

from .test_morph import problem


def batches(n, batch_size, generator):
    return torch.randperm(n, generator=generator).split(batch_size)


def test_a_plain_loop_with_the_learner_learns_what_regularize_learns():
    """The public hooks are the controller morph() uses: a hand-written loop of the same recipe (same
    batch order, learning rates and optimizer groups) picks the same structure at the same cost."""
    recipe = Recipe(epochs=4, batch_size=64, lr=0.05, crop_padding=0, flip=False, schedule="constant")
    train, val = problem()
    example = train[0][:1]
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4, width=0.5)
    ours = tiny_cnn(num_classes=4, width=0.5)
    ours.load_state_dict(model.state_dict())
    full = netmorph.count_flops(model, example)
    structure, cost, info = regularize(model, train, val, example, 0.5 * full, recipe, log=lambda s: None)

    steps = math.ceil(len(train[0]) / recipe.batch_size)
    learner = StructureLearner(ours, example, shrink="50%", total_steps=recipe.epochs * steps,
                               check_every=steps // 8, log=lambda s: None)
    learner.state["strength"] = initial_strength(learner.reg, recipe, steps, 0.5 * full, 0.6)
    no_decay = {id(p) for p in learner.no_decay_parameters()}
    opt = torch.optim.SGD([{"params": [p for p in ours.parameters() if id(p) not in no_decay], "weight_decay": 5e-4},
                           {"params": [p for p in ours.parameters() if id(p) in no_decay], "weight_decay": 0.0}],
                          lr=recipe.lr, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(recipe.seed)
    for epoch in range(recipe.epochs):
        ours.train()
        for i, idx in enumerate(batches(len(train[0]), recipe.batch_size, gen)):
            lr = learning_rate(epoch * steps + i, recipe.epochs * steps, recipe)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = nn.functional.cross_entropy(ours(train[0][idx]), train[1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            learner.step(lr)
        learner.evaluate(lambda: evaluate(ours, *val))
    assert learner.learned.to_dict() == structure.to_dict()
    assert learner.learned_cost == cost and learner.reached_target == info.reached_target
    assert [r["cost"] for r in learner.history] == info.cost_history


def digits():
    pytest.importorskip("sklearn", reason="the built-in digits come with scikit-learn (the cli extra)")
    from netmorph.datasets import load_digits
    data = load_digits()
    return data.train, data.val


def adamw_run(weight_decay_on_gammas: bool, total_epochs=4, scaler=None, poison=()):
    """A Hugging Face style run on the digits: AdamW, linear decay to zero, an evaluation every 6 steps."""
    torch.manual_seed(0)
    train, val = digits()
    example = train[0][:1]
    model = tiny_cnn(num_classes=10)
    steps = math.ceil(len(train[0]) / 64) * total_epochs
    gammas = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    groups = [{"params": [p for p in model.parameters() if weight_decay_on_gammas or id(p) not in gammas],
               "weight_decay": 0.01}]
    if not weight_decay_on_gammas:
        groups.append({"params": [p for p in model.parameters() if id(p) in gammas], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner = StructureLearner(model, example, shrink="50%", total_steps=steps, optimizer=opt, log=lines.append)
    gen = torch.Generator().manual_seed(0)
    step = 0
    while step < steps:
        for idx in batches(len(train[0]), 64, gen):
            loss = nn.functional.cross_entropy(model(train[0][idx]), train[1][idx])
            if step in poison:
                loss = loss * float("inf")
            opt.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            learner.step(scaler=scaler)
            sched.step()
            step += 1
            if step % 6 == 0:
                learner.evaluate(evaluate(model, *val))
            if step == steps:
                break
    return learner, caught, lines, netmorph.count_flops(model, example), opt


def test_with_adamw_and_a_linearly_decaying_rate_the_alive_cost_reaches_the_target_and_accuracy_holds():
    learner, caught, lines, full, opt = adamw_run(weight_decay_on_gammas=False)
    assert not caught and not any("weight_decay" in line for line in lines)
    # the learning rate decayed to about zero, the pull kept the scheduler's base rate
    assert opt.param_groups[0]["lr"] < 1e-3 and learner.state["pull_rate"] == pytest.approx(3e-3)
    assert learner.reached_target and in_band(learner.learned_cost, 0.5 * full), learner.history
    # the pull in Adam's metric lets the channels the task needs resist it: the picked network
    # classifies the digits (a plain pull took every channel alike and ended at chance, 10-14%)
    assert learner.state["best"]["key"][1] >= 0.9, learner.history
    # what it learned is a real network at that cost
    example = digits()[0][0][:1]
    rebuilt = netmorph.apply_structure(tiny_cnn(num_classes=10), learner.learned, example_inputs=example)
    assert netmorph.count_flops(rebuilt, example) == learner.learned_cost
    expanded = learner.expanded("100%")
    assert 0.9 * full <= expanded.cost <= full and expanded.omega > 1


def test_weight_decay_on_the_regularized_parameters_is_reported():
    learner, caught, lines, full, opt = adamw_run(weight_decay_on_gammas=True, total_epochs=1)
    assert any("weight_decay > 0" in str(w.message) for w in caught)
    assert any("no_decay_parameters" in line for line in lines)
    with pytest.warns(UserWarning, match="weight_decay > 0"):
        assert learner.check_weight_decay(opt) == list(range(len(learner.no_decay_parameters())))


def test_steps_a_grad_scaler_skipped_are_not_counted():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    learner, *_ = adamw_run(weight_decay_on_gammas=False, total_epochs=1, scaler=scaler, poison=(3, 7))
    assert learner.state["steps"] == math.ceil(len(digits()[0][0]) / 64) - 2
    assert scaler.get_scale() == 2.0 ** 6                     # it halved twice: both skips were real


def test_a_resumed_learner_continues_exactly():
    recipe = Recipe(epochs=4, batch_size=64, lr=0.05, crop_padding=0, flip=False)
    train, val = problem()
    example = train[0][:1]

    def run(stop_after=None, resume=None):
        torch.manual_seed(0)
        model = tiny_cnn(num_classes=4, width=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9)
        learner = StructureLearner(model, example, shrink=0.5, total_steps=48, optimizer=opt, log=lambda s: None)
        gen = torch.Generator().manual_seed(0)
        start = 0
        if resume is not None:
            model.load_state_dict(resume["model"])
            opt.load_state_dict(resume["opt"])
            gen.set_state(resume["gen"])
            learner.load_state_dict(resume["learner"])
            start = resume["epoch"]
        for epoch in range(start, 4):
            for idx in batches(len(train[0]), 64, gen):
                nn.functional.cross_entropy(model(train[0][idx]), train[1][idx]).backward()
                opt.step()
                opt.zero_grad()
                learner.step()
            learner.evaluate(evaluate(model, *val))
            if epoch + 1 == stop_after:
                return {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "learner": learner.state_dict(), "epoch": epoch + 1}
        return learner

    whole = run()
    resumed = run(resume=run(stop_after=2))
    assert resumed.history == whole.history
    assert resumed.learned.to_dict() == whole.learned.to_dict()


def test_bad_settings_are_refused_with_the_reason():
    model = tiny_cnn(num_classes=4, width=0.5)
    example = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="total_steps must be"):
        StructureLearner(model, example, total_steps=0)
    with pytest.raises(ValueError, match="shrink target"):
        StructureLearner(model, example, shrink="100%", total_steps=10)
    with pytest.raises(ValueError, match="metric_mode"):
        StructureLearner(model, example, total_steps=10, metric_mode="best")
    learner = StructureLearner(model, example, total_steps=10, log=lambda s: None)
    with pytest.raises(ValueError, match="learning rate"):
        learner.step()


def test_with_a_loss_as_metric_the_pick_takes_the_lowest_in_the_band():
    model = tiny_cnn(num_classes=4, width=0.5)
    example = torch.randn(1, 1, 8, 8)
    learner = StructureLearner(model, example, shrink="50%", total_steps=10, metric_mode="min", log=lambda s: None)
    target = learner.target
    # kill channels by hand until the alive cost is in the band, evaluating with losses 0.9 then 0.5
    channels = list(map(int, (learner.reg.regularized.nonzero()[0])))
    for c in channels:
        if learner.alive_cost() <= BAND[1] * target:
            break
        learner.reg.zero_channels([c])
    assert in_band(learner.alive_cost(), target)
    learner.evaluate(0.9)
    learner.evaluate(0.5)
    learner.evaluate(0.7)
    assert learner.state["best"]["evaluation"] == 2 and learner.reached_target
