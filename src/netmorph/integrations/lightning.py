"""A PyTorch Lightning callback that learns the network's structure while it trains.

::

    from netmorph.integrations.lightning import MorphNetCallback
    trainer = lightning.Trainer(callbacks=[MorphNetCallback(example_inputs, shrink="50%", monitor="val_acc",
                                                            output_dir="structure")])
    trainer.fit(module, train_loader, val_loader)
    # structure/learned.json, structure/expanded.json: netmorph.apply_structure(model, Structure.load(...))

Steps are optimizer steps (``trainer.global_step``), so gradient accumulation counts one step per
accumulated update; under ``precision="16-mixed"`` a step the grad scaler skipped is not counted.
The total the controller plans over is ``trainer.estimated_stepping_batches``. After every validation
the learner is evaluated on ``monitor`` (from ``trainer.callback_metrics``) and its alive cost,
strength and revivals are logged through the trainer's logger. The learner's state is part of
Lightning's checkpoints, so a resumed fit continues it.
"""
from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from ..learner import StructureLearner
from . import refuse_sharded, scalars, write_structures


class MorphNetCallback(pl.Callback):
    """Learn which channels the LightningModule keeps under a resource target.

    ``example_inputs``: what the module's ``forward`` takes (the graph is recorded from it).
    ``module``: a function returning the network inside the LightningModule to learn (default: the
    LightningModule itself). ``shrink``, ``resource``, ``hardware`` and ``learner_kw``: as for
    :class:`~netmorph.learner.StructureLearner`. ``monitor`` / ``mode``: the validation metric and
    whether higher (``"max"``) or lower is better. ``output_dir``: where the learned and expanded
    (to ``budget``, rounded to ``round_to``) structures are written at the end of training.
    """

    def __init__(self, example_inputs, shrink="50%", resource: str = "flops", hardware=None, monitor: str = "val_acc",
                 mode: str = "max", budget="100%", round_to: int | None = None, output_dir=None, module=None,
                 **learner_kw):
        self.example_inputs, self.shrink, self.resource, self.hardware = example_inputs, shrink, resource, hardware
        self.monitor, self.mode, self.budget, self.round_to = monitor, mode, budget, round_to
        self.output_dir, self.module, self.learner_kw = output_dir, module, learner_kw
        self.learner: StructureLearner | None = None
        self._resume: dict | None = None
        self._seen_step = 0

    def on_fit_start(self, trainer, pl_module):
        refuse_sharded(type(trainer.strategy).__name__)
        if not trainer.optimizers:
            raise ValueError("MorphNetCallback needs the optimizer from configure_optimizers (none was configured)")
        net = self.module(pl_module) if self.module is not None else pl_module
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("MorphNetCallback needs a finite run to plan over: set max_epochs or max_steps")
        self.learner = StructureLearner(net, self.example_inputs, shrink=self.shrink, resource=self.resource,
                                        hardware=self.hardware, total_steps=int(total), optimizer=trainer.optimizers[0],
                                        metric_mode=self.mode, log=rank_zero_info, **self.learner_kw)
        if self._resume is not None:
            self.learner.load_state_dict(self._resume)
        self._seen_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self._seen_step:        # accumulating: no optimizer step this batch
            return
        self._seen_step = trainer.global_step
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.learner.step(scaler=scaler)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.learner is None or trainer.state.fn != "fit":
            return                          # trainer.validate() after fit does not move the pick
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ValueError(f"MorphNetCallback monitors '{self.monitor}', which the module did not log in validation "
                             f"(logged: {sorted(trainer.callback_metrics)}); pass monitor=<a logged metric>")
        row = self.learner.evaluate(float(value))
        for logger in trainer.loggers:
            logger.log_metrics(scalars(self.learner, row), step=trainer.global_step)

    def on_fit_end(self, trainer, pl_module):
        if self.learner is None:
            return
        rank_zero_info(f"netmorph: learned {self.resource} {self.learner.learned_cost:,.0f} "
                       f"({self.learner.learned_cost / self.learner.original_cost:.0%} of the original), "
                       f"{'in' if self.learner.reached_target else 'NOT in'} the target band")
        if self.output_dir is not None and trainer.is_global_zero:
            write_structures(self.learner, self.output_dir, self.budget, self.round_to)

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict()} if self.learner is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict.get("learner")
