"""A Hugging Face ``Trainer`` callback that learns the model's structure while it trains.

::

    from netmorph.integrations.transformers import MorphNetCallback
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy)
    MorphNetCallback.attach(trainer, example_inputs, shrink="50%", monitor="eval_accuracy", output_dir="structure")
    trainer.train()
    # structure/learned.json, structure/expanded.json

Steps are the trainer's optimizer steps (``on_step_end``; with gradient accumulation one per
accumulated update); a step the fp16 grad scaler skipped is not counted. The controller plans over
``state.max_steps``. After every evaluation the learner is evaluated on ``monitor`` (``eval_loss``
with ``mode="min"`` needs no ``compute_metrics``) and its alive cost, strength and revivals go through
``trainer.log`` (so to every reporter the trainer has: TensorBoard, W&B, ``log_history``).
The learner's state is saved into every checkpoint the trainer writes (``netmorph_learner.pt``) and
read back by ``trainer.train(resume_from_checkpoint=...)``. DeepSpeed and FSDP are refused.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from ..learner import StructureLearner
from . import refuse_sharded, scalars, write_structures


#: the learner's state in each checkpoint folder the trainer writes
STATE_FILE = "netmorph_learner.pt"


class MorphNetCallback(TrainerCallback):
    """Learn which channels the trainer's model keeps under a resource target.

    ``example_inputs``: what the model's ``forward`` is recorded with (a tensor, a tuple, or a dict of
    keyword inputs such as ``{"input_ids": ...}``). The other arguments are those of
    :class:`netmorph.integrations.lightning.MorphNetCallback`.
    """

    def __init__(self, example_inputs, shrink="50%", resource: str = "flops", hardware=None,
                 monitor: str = "eval_loss", mode: str = "min", budget="100%", round_to: int | None = None,
                 output_dir=None, **learner_kw):
        self.example_inputs, self.shrink, self.resource, self.hardware = example_inputs, shrink, resource, hardware
        self.monitor, self.mode, self.budget, self.round_to = monitor, mode, budget, round_to
        self.output_dir, self.learner_kw = output_dir, learner_kw
        self.learner: StructureLearner | None = None
        self.trainer = None
        self.training = False

    @classmethod
    def attach(cls, trainer, example_inputs, **kw) -> "MorphNetCallback":
        """Make the callback, add it to ``trainer`` and log through it; returns the callback."""
        cb = cls(example_inputs, **kw)
        cb.trainer = trainer
        trainer.add_callback(cb)
        return cb

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        for name in ("deepspeed", "fsdp"):
            if getattr(args, name, None):
                refuse_sharded(name)
        if not state.max_steps or state.max_steps <= 0:
            raise ValueError("MorphNetCallback needs the number of training steps (state.max_steps) to plan over")
        self.learner = StructureLearner(model, self.example_inputs, shrink=self.shrink, resource=self.resource,
                                        hardware=self.hardware, total_steps=int(state.max_steps), optimizer=optimizer,
                                        metric_mode=self.mode, **self.learner_kw)
        if state.global_step > 0:                   # resumed from a checkpoint: the learner goes on too
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if not saved.exists():
                raise ValueError(f"resuming at step {state.global_step}, but {saved} does not exist: MorphNetCallback "
                                 "saves its state into the checkpoints it sees written; resume from one of those, or "
                                 "start the structure learning again")
            self.learner.load_state_dict(torch.load(saved, weights_only=True, map_location="cpu"))
        self.training = True

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        if not getattr(optimizer, "step_was_skipped", False):      # accelerate's fp16 scaler skipped it
            self.learner.step()

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.learner is not None and state.is_world_process_zero and folder.is_dir():
            torch.save(self.learner.state_dict(), folder / STATE_FILE)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if self.learner is None or not self.training:
            return                          # trainer.evaluate() outside training does not move the pick
        metrics = metrics or {}
        if self.monitor not in metrics:
            raise ValueError(f"MorphNetCallback monitors '{self.monitor}', which the evaluation did not report "
                             f"(reported: {sorted(metrics)}); pass monitor=<one of them>")
        row = self.learner.evaluate(float(metrics[self.monitor]))
        values = scalars(self.learner, row)
        if self.trainer is not None:
            self.trainer.log(values)
        else:
            state.log_history.append({**values, "step": state.global_step})

    def on_train_end(self, args, state, control, **kw):
        self.training = False
        if self.learner is not None and self.output_dir is not None and state.is_world_process_zero:
            write_structures(self.learner, self.output_dir, self.budget, self.round_to)
