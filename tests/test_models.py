"""Tests for the reference networks in ``netmorph.models``."""

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from netmorph.models import (
    MODELS,
    BasicBlock,
    cifar_resnet,
    get_model,
    mobilenetv2,
    resnet20,
    resnet56,
    tiny_cnn,
    vgg11,
)

EXPECTED_NAMES = {"resnet20", "resnet56", "mobilenetv2", "vgg11", "inception", "densenet",
                  "senet", "tiny"}


def _input_for(name: str, batch: int = 2) -> torch.Tensor:
    if name == "tiny":
        return torch.randn(batch, 1, 8, 8)
    return torch.randn(batch, 3, 32, 32)


def _conv_out_channels(model: nn.Module) -> list:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def test_registry_names():
    assert set(MODELS) == EXPECTED_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_forward_train_and_eval(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=7)
    x = _input_for(name)
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_resnet20_flops_and_params():
    # MACs at batch 1, 3x32x32 input:
    #   stem      32*32 * 3*16*9                        =    442,368
    #   stage 1   6 convs * 32*32 * 16*16*9             = 14,155,776
    #   stage 2   16*16 * 16*32*9 (first conv)          =  1,179,648
    #             5 convs * 16*16 * 32*32*9             = 11,796,480
    #             shortcut 16*16 * 16*32                =    131,072
    #   stage 3   8*8 * 32*64*9 (first conv)            =  1,179,648
    #             5 convs * 8*8 * 64*64*9               = 11,796,480
    #             shortcut 8*8 * 32*64                  =    131,072
    #   fc        64*10                                 =        640
    #   total                                           = 40,813,184 MACs
    # FlopCounterMode counts 2 FLOPs per MAC -> 81,626,368 FLOPs.
    model = resnet20()
    flops = _flops(model, torch.randn(1, 3, 32, 32))
    assert flops == pytest.approx(81.6e6, rel=0.01)
    assert flops == 2 * 40_813_184
    assert sum(p.numel() for p in model.parameters()) == 272_474


def test_resnet56_structure():
    model = resnet56()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27
    assert sum(p.numel() for p in model.parameters()) == 855_770
    assert _flops(model, torch.randn(1, 3, 32, 32)) == 251_495_680


def test_resnet_depth_validation():
    with pytest.raises(ValueError):
        cifar_resnet(21)
    assert len([m for m in cifar_resnet(8).modules() if isinstance(m, BasicBlock)]) == 3


def test_resnet_shortcuts():
    model = resnet20()
    projections = [b for b in model.modules()
                   if isinstance(b, BasicBlock) and not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 2  # first block of stages 2 and 3


def test_resnet_block_reuses_relu_module():
    block = resnet20().layer1[0]
    calls = []
    block.relu.register_forward_hook(lambda *args: calls.append(1))
    block(torch.randn(1, 16, 8, 8))
    assert len(calls) == 2


def test_width_multiplier_changes_channels():
    assert resnet20(width=0.5).fc.in_features == 32
    assert resnet20(width=2.0).fc.in_features == 128
    assert max(_conv_out_channels(vgg11(width=0.5))) == 256
    assert vgg11(width=0.5).classifier[0].in_features == 256 * 4
    assert tiny_cnn(width=0.5).fc.in_features == 32
    # MobileNetV2 channels stay multiples of 8.
    assert all(c % 8 == 0 for c in _conv_out_channels(mobilenetv2(width=0.5)))
    for name in EXPECTED_NAMES:
        base = _conv_out_channels(get_model(name))
        half = _conv_out_channels(get_model(name, width=0.5))
        assert sum(half) < sum(base), name
        x = _input_for(name)
        assert get_model(name, width=0.5)(x).shape == (2, 10)


def test_mobilenetv2_depthwise_and_residuals():
    model = mobilenetv2()
    depthwise = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    assert len(depthwise) == 17
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[-1].out_channels == 1280


def test_get_model_unknown_name():
    with pytest.raises(ValueError) as info:
        get_model("resnet18")
    message = str(info.value)
    assert "resnet18" in message
    for name in EXPECTED_NAMES:
        assert name in message


def test_tiny_in_channels():
    model = tiny_cnn(num_classes=3, in_channels=3)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
