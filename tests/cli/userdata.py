"""Data a user's module hands the command (``--data tests.cli.userdata:loaders``): DataLoaders."""
import torch


def loaders(seed=0):
    """A learnable 4-class problem on 8x8 single-channel images, as DataLoaders."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(640, 1, 8, 8, generator=g)
    y = (x.flatten(1) @ torch.randn(64, 4, generator=g)).argmax(1)
    ds = lambda a, b: torch.utils.data.TensorDataset(a, b)  # noqa: E731
    shuffled = torch.Generator().manual_seed(seed)
    return {"train": torch.utils.data.DataLoader(ds(x[:512], y[:512]), batch_size=64, shuffle=True, generator=shuffled),
            "val": torch.utils.data.DataLoader(ds(x[512:576], y[512:576]), batch_size=64),
            "test": torch.utils.data.DataLoader(ds(x[576:], y[576:]), batch_size=64),
            "num_classes": 4, "epochs": 2}


def no_test():
    return {"train": [], "val": [], "num_classes": 4}
