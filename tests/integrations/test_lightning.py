"""The Lightning callback: a tiny module trained a few epochs learns a structure at the target."""
import csv

import pytest
import torch
from torch import nn

import netmorph
from netmorph.models import tiny_cnn
from netmorph.structure import Structure

from ..test_morph import problem

pl = pytest.importorskip("lightning.pytorch", reason="the Lightning callback needs lightning (pip install .[lightning])")
from netmorph.integrations.lightning import MorphNetCallback  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn(num_classes=4, width=0.5)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, i):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loaders():
    (x, y), (vx, vy) = problem()
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy), batch_size=256)
    return train, val


@pytest.mark.parametrize("precision,accumulate", [("32-true", 1), ("bf16-mixed", 2)])
def test_the_callback_learns_a_structure_at_the_target_and_writes_it(tmp_path, precision, accumulate):
    torch.manual_seed(0)
    module = Module()
    example = torch.randn(1, 1, 8, 8)
    full = netmorph.count_flops(module.net, example)
    cb = MorphNetCallback(example, shrink="50%", monitor="val_acc", output_dir=tmp_path / "structure",
                          module=lambda m: m.net)
    logger = pl.loggers.CSVLogger(tmp_path, name="logs")
    trainer = pl.Trainer(max_epochs=10, accelerator="cpu", precision=precision, accumulate_grad_batches=accumulate,
                         callbacks=[cb], logger=logger, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    trainer.fit(module, *loaders())
    learner = cb.learner
    # every optimizer step counted once, however many batches it accumulated
    assert learner.state["steps"] == trainer.global_step == 10 * 24 // accumulate
    assert learner.reached_target and 0.98 * 0.5 * full <= learner.learned_cost <= 1.02 * 0.5 * full, learner.history
    learned = Structure.load(tmp_path / "structure" / "learned.json")
    expanded = Structure.load(tmp_path / "structure" / "expanded.json")
    assert learned.to_dict() == learner.learned.to_dict()
    rebuilt = netmorph.apply_structure(tiny_cnn(num_classes=4, width=0.5), expanded, example_inputs=example)
    assert 0.9 * full <= netmorph.count_flops(rebuilt, example) <= full
    # the alive cost went through the trainer's logger, once per validation
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    costs = [float(r["netmorph/alive_cost"]) for r in rows if r.get("netmorph/alive_cost")]
    assert costs == [r["cost"] for r in learner.history] and len(costs) == 10


def test_an_unlogged_monitor_is_named_in_the_error(tmp_path):
    cb = MorphNetCallback(torch.randn(1, 1, 8, 8), monitor="val_accuracy", module=lambda m: m.net)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[cb], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.raises(ValueError, match="monitors 'val_accuracy'.*val_acc"):
        trainer.fit(Module(), *loaders())


def test_a_fit_resumed_from_a_lightning_checkpoint_resumes_the_learner(tmp_path):
    class StopAfter(pl.Callback):
        def __init__(self, epoch):
            self.epoch = epoch

        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == self.epoch:
                trainer.should_stop = True

    (x, y), (vx, vy) = problem()
    in_order = lambda a, b, n: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, b), batch_size=n)  # noqa: E731

    def run(directory, stop=None, ckpt=None):
        torch.manual_seed(0)
        cb = MorphNetCallback(torch.randn(1, 1, 8, 8), shrink="50%", monitor="val_acc", module=lambda m: m.net)
        callbacks = [cb, pl.callbacks.ModelCheckpoint(dirpath=directory, save_last=True)]
        trainer = pl.Trainer(max_epochs=4, min_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0,
                             callbacks=callbacks + ([StopAfter(stop)] if stop is not None else []))
        trainer.fit(Module(), in_order(x, y, 32), in_order(vx, vy, 256), ckpt_path=ckpt)
        return cb.learner

    straight = run(tmp_path / "a")
    first = run(tmp_path / "b", stop=1)                   # stopped after 2 of 4 epochs, last.ckpt written
    assert len(first.history) == 2
    resumed = run(tmp_path / "b", ckpt=tmp_path / "b" / "last.ckpt")
    assert resumed.state["steps"] == straight.state["steps"] == 4 * 24
    assert [(r["steps"], r["cost"], r["strength"]) for r in resumed.history] == \
        [(r["steps"], r["cost"], r["strength"]) for r in straight.history]
