"""Where training runs and in what precision: batches follow the model's device, ``Recipe.amp`` (bf16
autocast, fp16 with a grad scaler whose skipped steps are not counted), ``Recipe.channels_last``, and
recording a model that lives on another device than its example inputs. Everything here runs on the
CPU; the CUDA run at the end needs a GPU."""
import dataclasses

import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from netmorph.train import Recipe, fit, grad_scaler, load_training_state, make_optimizer, train_epoch, training_state

NO_CUDA = "no CUDA device here: the GPU path (--device cuda, AMP on a GPU, channels_last) runs only where one is present"


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))


def blobs(n=256, seed=0):
    """Images whose class is whether their mean brightness is above zero: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, 8, 8, generator=g) * 0.5 + (y.float() * 2 - 1)[:, None, None, None] * 0.6
    return x, y


RECIPE = Recipe(epochs=3, batch_size=32, lr=0.05, crop_padding=0, flip=False)


def conv_dtypes(model):
    """The dtypes of the first conv's outputs and the memory formats of its inputs, as training sees them."""
    seen = {"out": set(), "channels_last_input": set()}

    def hook(module, args, out):
        seen["out"].add(out.dtype)
        seen["channels_last_input"].add(args[0].is_contiguous(memory_format=torch.channels_last)
                                        and not args[0].is_contiguous())
    model[0].register_forward_hook(hook)
    return seen


def test_bf16_autocast_runs_the_forward_pass_in_bf16_and_still_learns():
    model = net()
    seen = conv_dtypes(model)
    hist = fit(model, blobs(), blobs(128, 1), dataclasses.replace(RECIPE, amp="bf16"), log=lambda s: None)
    assert seen["out"] == {torch.bfloat16}                 # training and evaluation both under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())   # the weights stay fp32
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["val_acc"] >= 0.9


def test_fp16_steps_the_scaler_skips_are_not_counted_and_its_scale_is_checkpointed():
    model = net()
    recipe = dataclasses.replace(RECIPE, amp="fp16", epochs=1)
    opt = make_optimizer(model, recipe)
    scaler = grad_scaler(opt, recipe, torch.device("cpu"))
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0 ** 30})   # the scaled gradients overflow fp16
    scales, counted = [], []
    train_epoch(model, opt, blobs(1024), recipe, 0, torch.Generator().manual_seed(0),
                on_batch=lambda i, n, loss: scales.append(scaler.get_scale()),
                after_step=lambda step, lr: counted.append(step))
    skipped = [i for i, s in enumerate(scales) if s < (scales[i - 1] if i else 2.0 ** 30)]
    assert len(skipped) >= 3 and len(skipped) < len(scales)           # it overflowed, backed off, then trained
    assert counted == [i for i in range(len(scales)) if i not in skipped]
    state = training_state(model, opt, torch.Generator())
    assert state["scaler"]["scale"] == scales[-1]
    other = net()
    other_opt = make_optimizer(other, recipe)
    load_training_state(state, other, other_opt, torch.Generator())
    assert grad_scaler(other_opt, recipe, torch.device("cpu")).get_scale() == scales[-1]


def test_channels_last_trains_the_same_network_in_the_other_memory_format():
    plain, last = net(), net()
    seen = conv_dtypes(last)
    a = fit(plain, blobs(), blobs(128, 1), RECIPE, log=lambda s: None)
    b = fit(last, blobs(), blobs(128, 1), dataclasses.replace(RECIPE, channels_last=True), log=lambda s: None)
    assert last[0].weight.is_contiguous(memory_format=torch.channels_last) and not last[0].weight.is_contiguous()
    assert seen["channels_last_input"] == {True}
    for x, y in zip(a, b):          # the same arithmetic, other kernels: equal to float rounding
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
        assert y["val_acc"] == x["val_acc"]


def test_a_model_on_another_device_records_with_example_inputs_made_on_the_cpu():
    """The meta device stands in for a GPU: a model there, inputs on the CPU (as the data hold them)."""
    cpu = netmorph.models.get_model("resnet20")
    here = build_graph(cpu, torch.zeros(1, 3, 32, 32))
    there = build_graph(netmorph.models.get_model("resnet20").to("meta"), torch.zeros(1, 3, 32, 32))
    assert [g.width for g in there.groups] == [g.width for g in here.groups]
    assert [g.frozen for g in there.groups] == [g.frozen for g in here.groups]


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_morph_on_cuda_with_amp_learns_a_structure_and_returns_a_model_on_the_gpu():
    x, y = blobs(512)
    build = lambda: net().cuda()          # noqa: E731
    recipe = dataclasses.replace(RECIPE, amp="bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16",
                                 channels_last=True)
    result = netmorph.morph(build, (x, y), blobs(128, 1), torch.zeros(1, 2, 8, 8), budget=0.8, shrink=0.6,
                            recipe=recipe, log=lambda s: None)
    final = result["model"]
    assert next(final.parameters()).is_cuda
    assert netmorph.count_flops(final, torch.zeros(1, 2, 8, 8)) <= 0.8 * netmorph.count_flops(net(), torch.zeros(1, 2, 8, 8)) * 1.02


def test_channels_last_leaves_5d_weights_alone_and_prune_runs_on_the_models_device():
    """A Conv3d's 5-d weight cannot be channels-last (``nn.Module.to`` would raise): only 4-d tensors
    change. And the graph keeps its example inputs on the model's device, where prune runs the model
    (the meta device standing in for a GPU)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Flatten(2), nn.Conv1d(4, 8, 1), nn.AdaptiveAvgPool1d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    x, y = torch.randn(64, 1, 4, 4, 4), torch.randint(0, 2, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    fit(model, loader, loader, dataclasses.replace(RECIPE, epochs=1, channels_last=True), log=lambda s: None)
    assert model[0].weight.dim() == 5 and model[0].weight.is_contiguous()
    graph = build_graph(net().to("meta"), torch.zeros(1, 2, 8, 8))
    assert graph.example_inputs[0].device.type == "meta"
