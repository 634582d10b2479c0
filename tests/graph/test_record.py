"""Recording a forward pass: no trace left, any output structure, clear errors."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import GraphRecordError, build_graph
from netmorph.models import resnet20


def test_recording_restores_mode_bn_statistics_and_rng():
    model = resnet20()
    model.train()
    model.layer1[0].eval()                       # a mixed state must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    x = torch.randn(2, 3, 32, 32)
    rng = torch.get_rng_state()
    build_graph(model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class TupleDictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head_a = nn.Conv2d(4, 2, 1)
        self.head_b = nn.Conv2d(4, 5, 1)

    def forward(self, x, y):
        h = torch.relu(self.bn(self.conv(x + y)))
        return {"a": self.head_a(h), "rest": (self.head_b(h), h.mean((2, 3)))}


def test_tuple_inputs_and_dict_outputs_are_recorded_and_outputs_frozen():
    model = TupleDictOut()
    graph = build_graph(model, (torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6)))
    # h.mean() is a model output: the 4 hidden channels reach it, so they are frozen too
    frozen = {g.producers[0]: g.frozen for g in graph.groups}
    assert "reaches the model output" in frozen["conv"]
    assert "reaches the model output" in frozen["head_a"]
    # the two inputs are added: one frozen group of 3 input channels
    assert frozen["input 0"] == "reaches model input 0"
    assert len([g for g in graph.groups if "input 1" in g.producers and "input 0" in g.producers]) == 1


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 8, 3))   # wrong input width

    def forward(self, x):
        return self.body(self.stem(x))


def test_a_model_that_fails_names_the_module_and_op():
    with pytest.raises(GraphRecordError) as err:
        build_graph(Broken(), torch.randn(1, 3, 16, 16))
    msg = str(err.value)
    assert "body.1" in msg and "Conv2d" in msg and "conv2d" in msg


def test_bad_example_inputs_are_refused_clearly():
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        build_graph(resnet20(), [1, 2, 3])
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        netmorph.count_flops(lambda x: x, torch.randn(1))


def test_data_dependent_control_flow_follows_the_branch_taken():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else self.b(x)      # fx and export fail here
    model = Branchy()
    x = torch.ones(1, 3, 5, 5)
    assert netmorph.count_flops(model, x) == 2 * 25 * 3 * 4
    assert netmorph.count_flops(model, -x) == 2 * 25 * 9 * 3 * 4
