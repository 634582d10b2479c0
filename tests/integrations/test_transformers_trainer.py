"""The Hugging Face Trainer callback: AdamW with a linearly decaying rate (the Trainer's default),
evaluation every few steps, gradient accumulation; the structure is learned at the target."""
import json

import pytest
import torch
from torch import nn

import netmorph
from netmorph.models import tiny_cnn
from netmorph.structure import Structure

from ..test_morph import problem

transformers = pytest.importorskip("transformers", reason="the Trainer callback needs transformers (pip install .[hf])")
pytest.importorskip("accelerate", reason="the Trainer needs accelerate (pip install .[hf])")
from netmorph.integrations.transformers import MorphNetCallback  # noqa: E402


class Net(nn.Module):
    """A vision model in the Trainer's calling convention: keyword inputs, a dict with the loss."""

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn(num_classes=4, width=0.5)

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def test_the_callback_learns_a_structure_at_the_target_with_adamw_and_a_decaying_rate(tmp_path):
    torch.manual_seed(0)
    (x, y), (vx, vy) = problem()
    model = Net()
    example = torch.randn(1, 1, 8, 8)
    full = netmorph.count_flops(model, example)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, gradient_accumulation_steps=2,
        num_train_epochs=8, learning_rate=3e-3, weight_decay=0.01, eval_strategy="steps", eval_steps=12,
        logging_steps=12, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(x, y), eval_dataset=Rows(vx, vy))
    with pytest.warns(UserWarning, match="weight_decay > 0"):
        # the Trainer decays every weight but biases and norms: BatchNorm gammas are "norm" weights it spares,
        # tiny_cnn's are named bn*, which the Trainer does not recognise, so netmorph reports them
        cb = MorphNetCallback.attach(trainer, example, shrink="50%", output_dir=tmp_path / "structure")
        trainer.train()
    learner = cb.learner
    assert learner.state["steps"] == trainer.state.global_step == 8 * len(x) // 32
    assert learner.state["pull_rate"] == pytest.approx(3e-3)
    assert learner.reached_target and 0.98 * 0.5 * full <= learner.learned_cost <= 1.02 * 0.5 * full, learner.history
    # logged through the trainer: in its log history, once per evaluation
    logged = [r["netmorph/alive_cost"] for r in trainer.state.log_history if "netmorph/alive_cost" in r]
    assert logged == [r["cost"] for r in learner.history] and len(logged) == 8 * len(x) // 32 // 12
    learned = Structure.load(tmp_path / "structure" / "learned.json")
    assert learned.to_dict() == learner.learned.to_dict()
    history = json.loads((tmp_path / "structure" / "history.json").read_text())
    assert history["reached_target"] and len(history["evaluations"]) == len(logged)


def test_sharded_training_is_refused_by_name():
    cb = MorphNetCallback(torch.randn(1, 1, 8, 8))
    args = type("Args", (), {"deepspeed": "ds_config.json", "fsdp": ""})()
    with pytest.raises(ValueError, match="sharded training \\(deepspeed\\)"):
        cb.on_train_begin(args, None, None, model=Net())


def test_a_resumed_trainer_resumes_the_learner_from_its_checkpoint(tmp_path):
    (x, y), (vx, vy) = problem()

    def trainer_for(out):
        torch.manual_seed(0)
        args = transformers.TrainingArguments(
            output_dir=str(out), per_device_train_batch_size=32, max_steps=48, learning_rate=0.05,
            optim="sgd", lr_scheduler_type="constant", eval_strategy="steps", eval_steps=12, save_strategy="steps",
            save_steps=24, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=Net(), args=args, train_dataset=Rows(x, y), eval_dataset=Rows(vx, vy))
        return trainer, MorphNetCallback.attach(trainer, torch.randn(1, 1, 8, 8), shrink="50%")

    straight, cb = trainer_for(tmp_path / "a")
    straight.train()
    assert (tmp_path / "a" / "checkpoint-24" / "netmorph_learner.pt").exists()
    resumed, cb2 = trainer_for(tmp_path / "a")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-24"))
    # it went on from step 24 with the history saved there: the same rows as the straight run
    assert cb2.learner.state["steps"] == cb.learner.state["steps"] == 48
    assert [r["steps"] for r in cb2.learner.history] == [r["steps"] for r in cb.learner.history] == [12, 24, 36, 48]
    assert [r["cost"] for r in cb2.learner.history][:2] == [r["cost"] for r in cb.learner.history][:2]
    # evaluating after training does not move the pick
    picked = cb2.learner.state["best"]["evaluation"]
    resumed.evaluate()
    assert len(cb2.learner.history) == 4 and cb2.learner.state["best"]["evaluation"] == picked
