"""The README's Python blocks of "Using it" run as written (with a two-batch ``loader`` standing in for
the user's data), and what their comments promise holds."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(after: str, count: int) -> list[str]:
    text = README.read_text()
    text = text[text.index(after):]
    return re.findall(r"```python\n(.*?)```", text, re.S)[:count]


def test_the_using_it_blocks_run_as_written(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    scope = {"loader": loader}
    for block in python_blocks("## Using it", 2):
        exec(compile(block, str(README), "exec"), scope)            # noqa: S102 - our own README
    netmorph, model, example = scope["netmorph"], scope["model"], scope["example"]
    assert netmorph.count_flops(scope["resnet20"](), example) == 81_626_368          # as its comment says
    assert netmorph.count_params(scope["resnet20"]()) == 272_474
    assert netmorph.count_flops(scope["small"], example) == scope["reg"].cost()
    assert scope["big"].cost <= netmorph.count_flops(model, example) and scope["big"].omega >= 1
    assert scope["narrow"].layer1[0].conv1.out_channels == 8


def test_the_morphnet_loop_and_tas_block_runs_as_written(one_thread, tmp_path, monkeypatch):
    # declared setup: small CIFAR-shaped tensors, ResNet-20 as the user's model, a trained model to search
    import netmorph
    from netmorph.models import resnet20
    monkeypatch.chdir(tmp_path)                                    # morph.pt is written here
    g = torch.Generator().manual_seed(0)
    data = lambda n: (torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    torch.manual_seed(0)
    scope = {"netmorph": netmorph, "build": resnet20, "train": data(64), "val": data(32),
             "example": torch.zeros(1, 3, 32, 32), "trained_model": resnet20().eval(),
             "train_half_a": data(32), "train_half_b": data(32)}
    (block,) = python_blocks("### The MorphNet loop and TAS from Python", 1)
    exec(compile(block, str(README), "exec"), scope)                # noqa: S102 - our own README
    out, tas, student = scope["out"], scope["tas"], scope["student"]
    assert (tmp_path / "morph.pt").exists() and out["final_cost"] <= netmorph.count_flops(resnet20(), scope["example"])
    assert len(scope["history"]) == 4 and 0 <= scope["history"][-1]["decided"] <= 1
    assert netmorph.count_flops(student, scope["example"]) == tas.flops()          # the derived network


def test_the_reload_block_runs_as_written(one_thread, tmp_path, monkeypatch):
    # declared setup: what a run leaves in runs/r20/final (a narrowed ResNet-20's structure and weights)
    import netmorph
    from netmorph.models import resnet20
    monkeypatch.chdir(tmp_path)
    x = torch.zeros(1, 3, 32, 32)
    torch.manual_seed(0)
    small = netmorph.apply_structure(resnet20(), {"layer1.0.conv1": 8, "layer3.2.conv1": 40}, example_inputs=x)
    final = tmp_path / "runs" / "r20" / "final"
    final.mkdir(parents=True)
    structure = netmorph.Structure({n: m.out_channels for n, m in small.named_modules() if isinstance(m, torch.nn.Conv2d)},
                                   input_shapes=[list(x.shape)])
    structure.save(final / "structure.json")
    torch.save(small.state_dict(), final / "model.pt")
    text = README.read_text()
    block = re.findall(r"```python\n(.*?)```", text[text.index("Reload the final model"):], re.S)[0]
    scope = {"netmorph": netmorph}
    exec(compile(block, str(README), "exec"), scope)                # noqa: S102 - our own README
    model = scope["model"].eval()
    assert model.layer1[0].conv1.out_channels == 8 and model.layer3[2].conv1.out_channels == 40
    with torch.no_grad():
        assert torch.equal(model(torch.ones(2, 3, 32, 32)), small.eval()(torch.ones(2, 3, 32, 32)))


def block_after(heading: str, index: int = 0) -> str:
    text = README.read_text()
    return re.findall(r"```python\n(.*?)```", text[text.index(heading):], re.S)[index]


def digits_like(n, g):
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_the_training_code_blocks_run_as_written(one_thread, tmp_path, monkeypatch):
    # declared setup: the user's tiny CNN, optimizer, data loader and validation function; for Lightning
    # a LightningModule and loaders, for the Trainer a model in its calling convention and datasets
    import netmorph
    from netmorph.models import tiny_cnn
    from netmorph.train import evaluate
    monkeypatch.chdir(tmp_path)                                   # structure/ is written here
    g = torch.Generator().manual_seed(0)
    x, y = digits_like(256, g)
    vx, vy = digits_like(64, g)
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4, width=0.5)
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    scope = {"model": model, "example": x[:1], "loader": loader, "epochs": 6,
             "opt": torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
             "validate": lambda m: evaluate(m, vx, vy)}
    exec(compile(block_after("## Use it in your training code", 0), str(README), "exec"), scope)  # noqa: S102
    learner, final = scope["learner"], scope["final"]
    assert learner.state["steps"] == 6 * 8 and len(learner.history) == 6
    assert netmorph.count_flops(final, x[:1]) == learner.expanded("100%").cost <= netmorph.count_flops(model, x[:1])

    from .integrations.test_lightning import Module, pl
    train_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy), batch_size=64)
    scope = {"netmorph": netmorph, "example": x[:1], "epochs": 2, "module": Module(),
             "train_loader": train_loader, "val_loader": val_loader}
    exec(compile(block_after("## Use it in your training code", 1), str(README), "exec"), scope)  # noqa: S102
    assert scope["callback"].learner.state["steps"] == 2 * 8
    assert (tmp_path / "structure" / "learned.json").exists() and (tmp_path / "structure" / "history.json").exists()

    import transformers
    from .integrations.test_transformers_trainer import Net, Rows
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=32,
                                          num_train_epochs=2, eval_strategy="epoch", save_strategy="no",
                                          report_to=[], use_cpu=True, disable_tqdm=True)
    (tmp_path / "structure" / "learned.json").unlink()
    scope = {"model": Net(), "args": args, "train_set": Rows(x, y), "val_set": Rows(vx, vy), "example": x[:1]}
    exec(compile(block_after("## Use it in your training code", 2), str(README), "exec"), scope)  # noqa: S102
    assert scope["trainer"].state.global_step == 2 * 8
    assert (tmp_path / "structure" / "learned.json").exists()
