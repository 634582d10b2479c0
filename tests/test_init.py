"""``init="fresh"`` draws every parameter the way the model initializes itself, at the new widths."""
import math

import pytest
import torch
from torch import nn

import netmorph
from netmorph.init import fitted_laws
from netmorph.models import resnet20


def std_within(t: torch.Tensor, expected: float, sigmas: float = 5.0) -> bool:
    """The sample std of ``t`` is ``expected`` within sampling noise (relative error ~ 1/sqrt(2n))."""
    return abs(t.std().item() / expected - 1) <= sigmas / math.sqrt(2 * t.numel())


def test_resnet20_fresh_convs_follow_kaiming_fan_out_at_their_new_widths():
    torch.manual_seed(0)
    model, x = resnet20(), torch.zeros(1, 3, 32, 32)
    with torch.no_grad():                          # a trained model's state must not leak into "fresh"
        model.bn1.running_mean.fill_(3.0)
    fresh = netmorph.apply_structure(model, {"conv1": 24, "layer1.0.conv1": 8, "layer3.0.conv1": 96}, init="fresh",
                                     example_inputs=x, init_reference=resnet20())
    for name, m in fresh.named_modules():
        if isinstance(m, nn.Conv2d):               # kaiming_normal_(mode="fan_out", relu): std sqrt(2 / fan_out)
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert std_within(m.weight, math.sqrt(2 / fan_out)), name
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
    assert fresh.conv1.out_channels == 24 and fresh.layer1[0].conv1.out_channels == 8
    # the old behaviour (PyTorch's default law) is clearly distinguishable: sqrt(1 / (3 fan_in))
    w = fresh.layer1[0].conv1.weight
    assert not std_within(w, math.sqrt(1 / (3 * 24 * 9)))
    # the classifier keeps PyTorch's default: uniform within 1 / sqrt(fan_in) (the law's gain is fitted to
    # one sampled layer of 640 values, hence the 5% slack on the bound)
    fc = fresh.fc.weight
    assert fc.abs().max() <= 1.05 / math.sqrt(fc.shape[1]) and std_within(fc, 1 / math.sqrt(3 * fc.shape[1]), 6)


@pytest.mark.parametrize("zero_init_residual", [False, True])
def test_torchvision_resnet18_constants_and_fans_are_reproduced(zero_init_residual):
    tvm = pytest.importorskip("torchvision.models", reason="torchvision not installed: pip install -e '.[vision]'")
    torch.manual_seed(0)
    model, x = tvm.resnet18(zero_init_residual=zero_init_residual), torch.zeros(1, 3, 64, 64)
    fresh = netmorph.apply_structure(model, {"layer1.0.conv1": 32, "layer4.1.conv1": 200}, init="fresh",
                                     example_inputs=x)
    last_gamma = 0.0 if zero_init_residual else 1.0
    for block in [*fresh.layer1, *fresh.layer4]:
        assert torch.all(block.bn2.weight == last_gamma) and torch.all(block.bn1.weight == 1)
    for m in (fresh.layer1[0].conv1, fresh.layer4[1].conv1, fresh.layer4[1].conv2):
        assert std_within(m.weight, math.sqrt(2 / (m.out_channels * 9)))
    assert fresh.layer4[1].conv1.out_channels == 200


class UserNet(nn.Module):
    """A user's model with its own init: Xavier-uniform convs, biases of 0.1, normal(0, 0.02) head."""

    def __init__(self, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 8, 1)
        self.head = nn.Linear(8, 5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.1)
        nn.init.normal_(self.head.weight, 0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(self.conv3(x).mean((2, 3)))


def test_a_user_init_is_reproduced_or_given_explicitly():
    torch.manual_seed(0)
    model, x = UserNet(), torch.zeros(1, 3, 8, 8)
    laws = fitted_laws(model)
    assert laws[nn.Conv2d, "weight"].mode == "fan_avg" and laws[nn.Conv2d, "weight"].shape == "uniform"
    fresh = netmorph.apply_structure(model, {"conv1": 40, "conv2": 24}, init="fresh", example_inputs=x)
    for m in (fresh.conv1, fresh.conv2, fresh.conv3):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        bound = math.sqrt(6 / (fan_in + fan_out))               # xavier_uniform at the new fans
        assert m.weight.abs().max() <= 1.05 * bound and std_within(m.weight, bound / math.sqrt(3), 6)
        assert torch.all(m.bias == 0.1)
    assert fresh.conv1.out_channels == 40 and fresh.conv2.in_channels == 40
    assert std_within(fresh.head.weight, 0.02, 8) and torch.all(fresh.head.bias == 0)
    # a function of the new model: the user's own init, applied as given
    def mine(new):
        for m in new.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.constant_(m.weight, 0.5)
    own = netmorph.apply_structure(model, {"conv1": 40}, init=mine, example_inputs=x)
    assert torch.all(own.conv1.weight == 0.5) and own.conv1.weight.shape[0] == 40
    with pytest.raises(ValueError, match="init must be"):
        netmorph.apply_structure(model, {"conv1": 40}, init="random", example_inputs=x)


def test_fresh_init_is_reproducible_under_the_same_seed():
    model, x = resnet20(), torch.zeros(1, 3, 32, 32)
    nets = []
    for _ in range(2):
        torch.manual_seed(7)
        nets.append(netmorph.apply_structure(model, {"conv1": 24}, init="fresh", example_inputs=x))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
