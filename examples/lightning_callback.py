"""Learn a network's structure in a PyTorch Lightning run with ``MorphNetCallback``.

Data: scikit-learn's bundled 8x8 digits; model: the built-in ``tiny`` CNN in a LightningModule. The
callback steers the alive FLOPs to 50%, logs them through the trainer's logger (here a CSV logger in
``lightning_logs/``) and writes the learned and expanded structures to ``structure/``.

    pip install 'netmorph[lightning]'
    python examples/lightning_callback.py [--epochs 12] [--out structure]
"""
from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn

import netmorph
from netmorph.datasets import load_digits
from netmorph.integrations.lightning import MorphNetCallback
from netmorph.models import tiny_cnn


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn(num_classes=10)

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", default="structure")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_digits()
    loader = lambda xy, shuffle: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*xy),  # noqa: E731
                                                             batch_size=64, shuffle=shuffle)
    module = Classifier()
    callback = MorphNetCallback(data.example, shrink="50%", monitor="val_acc", output_dir=args.out,
                                module=lambda m: m.net)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", callbacks=[callback],
                         logger=pl.loggers.CSVLogger("lightning_logs"), enable_checkpointing=False)
    trainer.fit(module, loader(data.train, True), loader(data.val, False))
    learner = callback.learner
    print(f"learned {learner.learned_cost / learner.original_cost:.0%} of the FLOPs; structures in {args.out}/")
    final = netmorph.apply_structure(tiny_cnn(num_classes=10),
                                     netmorph.Structure.load(f"{args.out}/expanded.json"), example_inputs=data.example)
    print(f"the expanded network: {netmorph.count_flops(final, data.example):,} FLOPs "
          f"(original {learner.original_cost:,.0f}); train it as you like")


if __name__ == "__main__":
    main()
