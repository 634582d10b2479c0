"""Learn a network's structure in a Hugging Face ``Trainer`` run with ``MorphNetCallback``.

The Trainer's defaults: AdamW, a linearly decaying learning rate; here gradient accumulation and an
evaluation every 20 steps too. Data: scikit-learn's bundled 8x8 digits; model: the built-in ``tiny``
CNN, called the Trainer's way (keyword inputs, a dict with the loss). The callback logs the alive cost
through ``trainer.log`` and writes the structures to ``structure/``.

    pip install 'netmorph[hf]'
    python examples/hf_trainer_callback.py [--epochs 12] [--out structure]
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from netmorph.datasets import load_digits
from netmorph.integrations.transformers import MorphNetCallback
from netmorph.models import tiny_cnn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn(num_classes=10)

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Rows(torch.utils.data.Dataset):
    def __init__(self, xy):
        self.x, self.y = xy

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", default="structure")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_digits()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=32, gradient_accumulation_steps=2,
                                  num_train_epochs=args.epochs, learning_rate=3e-3, eval_strategy="steps",
                                  eval_steps=20, logging_steps=20, save_strategy="no", report_to=[], use_cpu=True,
                                  disable_tqdm=True)
        trainer = Trainer(model=Model(), args=targs, train_dataset=Rows(data.train), eval_dataset=Rows(data.val))
        callback = MorphNetCallback.attach(trainer, data.example, shrink="50%", monitor="eval_loss", mode="min",
                                           output_dir=args.out)
        trainer.train()
    learner = callback.learner
    print(f"learned {learner.learned_cost / learner.original_cost:.0%} of the FLOPs "
          f"({'in' if learner.reached_target else 'not in'} the target band); structures in {args.out}/")


if __name__ == "__main__":
    main()
