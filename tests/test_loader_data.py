"""morph() and fit() on data that does not fit in memory: a DataLoader over a dataset read lazily
from disk, one file per sample; an interrupted run resumes at the right batch."""
import numpy as np
import pytest
import torch

from netmorph.models import tiny_cnn
from netmorph.morph import morph
from netmorph.train import Interrupted, Recipe, evaluate, fit, steps_per_epoch

from .test_morph import problem


class OnDisk(torch.utils.data.Dataset):
    """Samples written as .npy files, read one at a time (counting the reads)."""

    def __init__(self, x, y, root):
        root.mkdir(parents=True, exist_ok=True)
        for i, (xi, yi) in enumerate(zip(x, y)):
            np.save(root / f"{i}.npy", np.concatenate([xi.numpy().ravel(), [float(yi)]]))
        self.root, self.n, self.shape, self.reads = root, len(x), tuple(x.shape[1:]), 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        a = np.load(self.root / f"{i}.npy")
        return torch.from_numpy(a[:-1]).float().reshape(self.shape), int(a[-1])


def loaders(tmp_path, seed=0):
    (x, y), (vx, vy) = problem()
    train = OnDisk(x, y, tmp_path / "train")
    g = torch.Generator().manual_seed(seed)
    return (torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=g),
            torch.utils.data.DataLoader(OnDisk(vx, vy, tmp_path / "val"), batch_size=128), x[:1], train)


RECIPE = Recipe(epochs=3, batch_size=64, lr=0.05)


def test_morph_learns_from_a_lazily_read_loader_and_resumes_at_the_right_batch(tmp_path):
    train, val, example, dataset = loaders(tmp_path)
    build = lambda: tiny_cnn(num_classes=4, width=0.5)          # noqa: E731
    kw = dict(budget="100%", shrink="60%", recipe=RECIPE, log=lambda s: None)
    straight = morph(build, train, val, example, **kw)
    assert dataset.reads == 2 * 3 * 768                        # regularize + final: 3 epochs each, read lazily
    assert straight["rounds"][0].reached_target
    calls = {"n": 0}

    def stop():                                                # mid-epoch 2 of the regularized run
        calls["n"] += 1
        return calls["n"] == 17
    train, val, example, dataset = loaders(tmp_path, seed=0)
    path = tmp_path / "state.pt"
    with pytest.raises(Interrupted):
        morph(build, train, val, example, checkpoint_path=path, stop=stop, **kw)
    torch.rand(1000)                                           # another process: the global generator elsewhere
    train.generator.manual_seed(123)                          # and the loader's own generator too
    steps = []
    resumed = morph(build, train, val, example, checkpoint_path=path, on_batch=lambda i, n, loss: steps.append(i),
                    **kw)
    assert steps[0] == 17 - 12 and len(steps) == 2 * 36 - 17  # it went on at the batch after the 17th
    assert straight["rounds"][0].cost_history == resumed["rounds"][0].cost_history
    assert dict(straight["structure"]) == dict(resumed["structure"])
    assert [h["val_acc"] for h in straight["final_history"]] == [h["val_acc"] for h in resumed["final_history"]]
    for (k, a), b in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), k


def test_fit_and_evaluate_take_loaders_and_say_what_they_need(tmp_path):
    train, val, example, _ = loaders(tmp_path)
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4, width=0.5)
    history = fit(model, train, val, Recipe(epochs=2, lr=0.05), log=lambda s: None)
    assert len(history) == 2 and history[-1]["val_acc"] == evaluate(model, val)
    assert steps_per_epoch(train, 9999) == 12
    with pytest.raises(ValueError, match="must have a length"):
        steps_per_epoch((batch for batch in train), 64)
    with pytest.raises(ValueError, match="pair \\(inputs, targets\\)"):
        evaluate(model, [{"x": example}])


def test_tas_search_takes_loaders_and_resumes_from_its_epoch_checkpoint():
    import netmorph
    from netmorph.models import resnet20
    from netmorph.tas import search
    example = torch.zeros(1, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 16, 16, generator=g), torch.randint(0, 4, (96,), generator=g)

    def run(state=None, stop=None, seeds=(1, 2), keep=None):
        torch.manual_seed(0)
        model = resnet20(num_classes=4).eval()
        tas = netmorph.TAS(model, example, target_flops=0.5 * netmorph.count_flops(model, example))
        loader = lambda a, b, s: torch.utils.data.DataLoader(  # noqa: E731
            torch.utils.data.TensorDataset(a, b), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(s))
        return search(tas, loader(x[:48], y[:48], seeds[0]), loader(x[48:64], y[48:64], seeds[1]), 3, batch_size=16,
                      log=lambda s: None, state=state, stop=stop, checkpoint=keep)

    straight = run()
    assert len(straight) == 3
    saved, calls = [], {"n": 0}

    def stop():                                    # in epoch 3 (3 steps an epoch)
        calls["n"] += 1
        return calls["n"] == 8
    with pytest.raises(Interrupted):
        run(stop=stop, keep=saved.append)
    torch.rand(100)                                # the global generator elsewhere, the loaders' own reseeded
    resumed = run(state=saved[-1], seeds=(7, 8))
    for a, b in zip(straight, resumed):
        assert (a["flops"], a["expected_flops"], a["loss_w"], a["loss_a"]) == \
            (b["flops"], b["expected_flops"], b["loss_w"], b["loss_a"])
    with pytest.raises(ValueError, match="both as"):
        search(None, (x, y), [(x, y)], 1)


def test_morph_resumed_at_an_epochs_end_goes_on_with_the_next_epochs_order(tmp_path):
    """Killed between epochs (the checkpoint of epoch 1 written, epoch 2 not begun), a run whose order
    comes from a sampler's own generator resumes with epoch 2's order, not epoch 1's again."""
    (x, y), (vx, vy) = problem()
    build = lambda: tiny_cnn(num_classes=4, width=0.5)          # noqa: E731
    kw = dict(budget="100%", shrink="60%", recipe=RECIPE)

    def data():                                                # as a script builds it, in every process
        sampler = torch.utils.data.RandomSampler(range(len(x)), generator=torch.Generator().manual_seed(0))
        return (torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, sampler=sampler),
                torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy), batch_size=128), x[:1])

    class Killed(Exception):
        pass

    def log(line):
        if line.startswith("epoch 2/"):                          # epoch 2 of the regularized run ended, unsaved
            raise Killed
    straight = morph(build, *data(), log=lambda s: None, **kw)
    with pytest.raises(Killed):
        morph(build, *data(), checkpoint_path=tmp_path / "state.pt", log=log, **kw)
    resumed = morph(build, *data(), checkpoint_path=tmp_path / "state.pt", log=lambda s: None, **kw)
    assert straight["rounds"][0].cost_history == resumed["rounds"][0].cost_history
    for (k, a), b in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), k
