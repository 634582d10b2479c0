"""Structure JSON and table; explain's report."""
import json

import pytest
import torch

import netmorph
from netmorph.models import get_model
from tests.conftest import Chain, set_gammas


def test_structure_round_trips_through_json(tmp_path, x8):
    model = Chain()
    set_gammas(model.bn1, [0, 1, 0, 1, 1, 1, 1, 1])
    s = netmorph.GammaFlopsRegularizer(model, x8).structure()
    path = tmp_path / "structure.json"
    s.save(path)
    data = json.loads(path.read_text())
    assert data["widths"] == {"conv1": 6, "conv2": 4} and data["original"] == {"conv1": 8, "conv2": 4}
    loaded = netmorph.Structure.load(path)
    assert loaded == s and loaded.original == s.original
    table = loaded.table().splitlines()
    assert table[0].split() == ["layer", "original", "width", "kept"]
    assert table[2].split() == ["conv1", "8", "6", "75%"]
    assert table[-1].split() == ["total", "12", "10", "83%"]


def test_structure_accepts_ddp_prefix_and_refuses_bad_widths(tmp_path):
    s = netmorph.Structure({"module.layer1.conv": 5})
    assert s["layer1.conv"] == 5 and s["module.layer1.conv"] == 5 and list(s) == ["layer1.conv"]
    with pytest.raises(ValueError, match="non-negative integer"):
        netmorph.Structure({"conv": -1})
    with pytest.raises(ValueError, match="non-negative integer"):
        netmorph.Structure({"conv": 2.5})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        netmorph.Structure.load(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        netmorph.Structure.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'widths'"):
        netmorph.Structure.load(tmp_path / "other.json")


def test_explain_lists_groups_sources_frozen_reasons_and_shares():
    text = netmorph.explain(get_model("resnet20"), torch.randn(1, 3, 32, 32))
    assert text.startswith("CifarResNet: 81,626,368 FLOPs, 272,474 parameters, 14 channel groups")
    assert "FROZEN: reaches model input 0" in text and "FROZEN: reaches the model output" in text
    # the stage-1 residual group: stem + every block's second conv, tied by the adds
    assert "produced by: conv1, layer1.0.conv2, layer1.1.conv2, layer1.2.conv2" in text
    assert "alive by:    BatchNorm gamma of bn1, layer1.0.bn2" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("layer3.0.conv2"))
    assert row.split()[1:] == ["conv", "64", "4,718,592", "5.8", "36,864", "13.5"]


def test_explain_on_a_model_without_batchnorm_points_to_group_lasso():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    assert "no BatchNorm: use a GroupLasso regularizer" in netmorph.explain(model, torch.randn(1, 3, 8, 8))


def test_explain_names_each_tensor_a_reason_froze():
    # two unrelated tensors frozen for the same kind of reason are told apart by the tensor they are
    class TwoOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 1)
            self.b = torch.nn.Conv2d(3, 6, 1)

        def forward(self, x):
            return self.a(x), self.b(x)
    text = netmorph.explain(TwoOutputs(), torch.zeros(1, 3, 4, 4))
    line = next(l for l in text.splitlines() if l.startswith("  - reaches the model output"))
    assert "4 ch of a" in line and "6 ch of b" in line
