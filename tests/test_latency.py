"""Measured latency: the device profile, what it predicts, and how expand and the regularizer use it.

Most tests use *synthetic* profiles (tables filled from a formula through the same file format), so
they check the logic exactly; two tests measure this machine, and compare only rankings and ratios
timed in the same rounds (absolute milliseconds belong to the benchmark).
"""
import json
import time

import numpy as np
import pytest
import torch

import netmorph
from netmorph.cli import main
from netmorph.costs import count_cost
from netmorph.expand import expand
from netmorph.graph import build_graph
from netmorph.latency import DeviceProfile, ProfileError, Table, device_key, layer_signature, parse_target, profile
from netmorph.models import resnet20, tiny_cnn
from netmorph.structure import Structure

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETMORPH_CACHE", str(tmp_path / "cache"))


def synthetic(model, x, seconds, batch=1, other=(1e-6, 1e-10)):
    """A profile whose layer tables hold ``seconds(n_in, n_out, signature)`` on the usual grid."""
    graph = build_graph(model, x)
    prof = DeviceProfile(device_key("cpu", batch=batch))
    for sig, ins, outs in prof.missing(graph):
        prof.tables[sig.key] = Table(ins, outs, [[seconds(a, b, sig) for b in outs] for a in ins])
    for kind in ("norm", "activation", "binary", "pool", "cat", "other"):
        prof.kinds[kind] = other
    return prof


def blocked(a, b, sig, block=16):
    """A device that works on blocks of 16 channels, and is slow on outputs that are not whole blocks."""
    pad = lambda w: -(-w // block) * block  # noqa: E731
    return 1e-9 * pad(a) * pad(b) * (1.0 if b % block == 0 else 1.8) + 2e-6


def test_predicted_time_is_the_sum_of_the_measured_layer_times_and_the_other_ops():
    model = resnet20()
    prof = synthetic(model, X, lambda a, b, s: 1e-6 * a * b, other=(0.0, 0.0))
    graph = build_graph(model, X)
    layers = [layer_signature(op) for op in graph.recording.ops]
    expected = sum(1e-6 * f[1] * f[2] for f in layers if f is not None)
    assert count_cost(model, X, "latency", prof) == pytest.approx(expected * 1e9, rel=1e-9)
    # an op kind with a fixed overhead adds it once per op of that kind that moves data
    prof.kinds["activation"] = (1e-3, 0.0)
    relus = sum(1 for op in graph.recording.ops if op.name == "relu")
    assert count_cost(model, X, "latency", prof) == pytest.approx((expected + 1e-3 * relus) * 1e9, rel=1e-9)


def test_a_width_costs_what_the_next_measured_width_costs_where_the_grid_is_dense():
    t = Table([1, 2, 4, 8, 15, 16, 24, 31, 32], [0], [[float(w)] for w in [1, 2, 4, 8, 15, 16, 24, 31, 32]])
    assert t.at(17, 0) == 24 and t.at(24, 0) == 24 and t.at(25, 0) == 31 and t.at(32, 0) == 32
    assert t.at(64, 0) == pytest.approx(64)              # beyond the grid: proportional
    assert t.at(0, 0) == 0
    sparse = Table([8, 64], [0], [[8.0], [64.0]])       # wide layers: rounded up to 8, then linear
    assert sparse.at(30, 0) == pytest.approx(32.0)


def test_profile_file_round_trips_and_reloads_fast(tmp_path):
    model = tiny_cnn(in_channels=3)
    prof = synthetic(model, X, blocked)
    path = prof.save(tmp_path / "p.json")
    t = time.perf_counter()
    again = DeviceProfile.load(path)
    assert time.perf_counter() - t < 1.0
    assert again.key == prof.key and again.tables.keys() == prof.tables.keys()
    assert count_cost(model, X, "latency", again) == count_cost(model, X, "latency", prof)
    data = json.loads(path.read_text())
    assert data["format"] == "netmorph-device-profile" and data["key"]["batch"] == 1


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(format="x"), "not a netmorph device profile"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: next(iter(d["layers"].values()))["seconds"].pop(), "malformed"),
    (lambda d: next(iter(d["layers"].values()))["seconds"][0].__setitem__(0, -1.0), "malformed"),
    (lambda d: d["kinds"].pop("other"), "'other'"),
    (lambda d: d["kinds"]["norm"].update(overhead_s=-1.0), "overhead_s"),
    (lambda d: d.update(calibration={"x": {"layers": float("nan"), "other": 1.0, "constant_s": 0.0}}), "layers"),
    (lambda d: d.update(layers=[]), "layers must be an object"),
    (lambda d: d["key"].pop("device"), "key.device"),
    (lambda d: next(iter(d["layers"].values())).update(ins=[0, 1]), "ins"),
])
def test_a_damaged_profile_file_is_refused_with_the_reason(tmp_path, damage, message):
    path = synthetic(tiny_cnn(in_channels=3), X, blocked).save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=message):
        DeviceProfile.load(path)
    path.write_text("{ not json")
    with pytest.raises(ProfileError, match="not readable JSON"):
        DeviceProfile.load(path)


def test_a_profile_without_this_networks_layers_names_the_layer_and_the_fix():
    prof = synthetic(tiny_cnn(in_channels=3), X, blocked)
    with pytest.raises(ProfileError, match=r"no timings for Conv2d layer .*netmorph profile"):
        count_cost(resnet20(), X, "latency", prof)


def test_rounding_is_the_multiple_the_device_is_fast_at():
    model = resnet20()
    graph = build_graph(model, X)
    r, per = synthetic(model, X, blocked).rounding(graph)
    assert r == 16 and per[16] == 1.0 and per[8] > 1.03 and per[1] > 1.03
    # a device whose kernels work on blocks of 8 is not rounded coarser than that
    eight, per = synthetic(model, X, lambda a, b, s: blocked(a, b, s, block=8)).rounding(graph)
    assert eight == 8 and per[1] > 1.03


def test_expand_with_a_profile_scans_a_non_monotone_cost_and_rounds_to_the_device():
    from netmorph.expand import widths_cost
    from netmorph.resize import group_targets
    model = resnet20()
    prof = synthetic(model, X, blocked)
    graph = build_graph(model, X)
    learned = Structure({n: max(1, l.width // 3) if n != "fc" else l.width for n, l in graph.layers.items()})
    full = count_cost(model, X, "latency", prof)
    out = expand(model, X, learned, 0.85 * full, "latency", prof)
    assert out.round_to == 16 and "multiples of 16" in out.rounding_note
    assert all(w % 16 == 0 for n, w in out.items() if n != "fc")
    built = netmorph.apply_structure(model, out, init="fresh", example_inputs=X)
    assert count_cost(built, X, "latency", prof) == pytest.approx(out.cost, rel=1e-9)
    assert out.cost <= 0.85 * full
    # no larger omega on a fine grid gives other widths that still fit (the cost is not monotone)
    named = group_targets(graph, learned)
    groups = {g: named.get(g, grp.width) for g, grp in enumerate(graph.groups) if grp.frozen is None}
    at = lambda omega: {g: max(16, int(round(omega * v / 16)) * 16) for g, v in groups.items()}  # noqa: E731
    for omega in np.linspace(out.omega, 4.0, 400)[1:]:
        assert at(omega) == at(out.omega) or widths_cost(graph, at(omega), "latency", prof) > 0.85 * full


def test_the_scan_finds_the_omega_a_bisection_misses_behind_a_bump():
    """Measured cost can rise and fall with omega (widths the kernels are slow at). A bisection stops
    below such a bump; the scan over every omega where a width changes does not."""
    from netmorph.expand import _bisect, _scan
    learned, budget = {0: 10}, 8.0
    width = lambda omega: max(1, round(omega * 10))  # noqa: E731
    cost = lambda omega: 100.0 if 4 <= width(omega) <= 6 else float(width(omega))  # noqa: E731
    assert width(_bisect(cost, budget)) < 4
    assert width(_scan(learned, 1, cost, budget)) == 8
    # with the original widths as the learned structure and the whole cost as budget, nothing changes
    model = resnet20()
    prof = synthetic(model, X, blocked)
    graph = build_graph(model, X)
    out = expand(model, X, Structure({n: l.width for n, l in graph.layers.items()}),
                 count_cost(model, X, "latency", prof), "latency", prof, round_to=8)
    assert dict(out) == {n: l.width for n, l in graph.layers.items()}


def test_the_regularizer_uses_a_monotone_surrogate_and_reports_the_measured_cost():
    torch.manual_seed(0)
    model = resnet20()
    prof = synthetic(model, X, blocked)
    reg = netmorph.GammaLatencyRegularizer(model, X, hardware=prof)
    alive = np.ones(reg.graph.n_channels, dtype=bool)
    w = reg.channel_weights(alive)
    assert np.all(w[reg.regularized] > 0)
    assert reg.cost() == pytest.approx(count_cost(model, X, "latency", prof))
    loss = reg.loss()
    loss.backward()
    assert loss.item() > 0


def test_measured_profile_ranks_random_structures_like_the_clock():
    """Measured on this machine: the profile's predicted times of random-width ResNet-20s, as ratios to
    the full network, must rank them like their measured times (interleaved rounds)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    prof = profile(resnet20(), X, "cpu", threads=threads, batch=8, progress=None)
    graph = build_graph(resnet20(), X)
    rng = np.random.default_rng(1)
    models = {"full": resnet20()}
    for i, scale in enumerate((0.25, 0.4, 0.55, 0.7, 0.85, 1.3)):
        widths = {}
        for grp in graph.groups:
            if grp.frozen is None:
                w = max(1, int(round(grp.width * scale * rng.uniform(0.85, 1.15))))
                widths.update({n: w for n in grp.producers if n in graph.layers})
        models[f"s{i}"] = netmorph.apply_structure(resnet20(), widths, example_inputs=X)
    from netmorph.cli.report import interleaved_times
    with torch.inference_mode():
        times = interleaved_times(models, torch.randn(8, 3, 32, 32), repeats=15)
    base = np.asarray(times["full"])
    measured = [float(np.median(np.asarray(times[k]) / base)) for k in models]
    predicted = [count_cost(m, X, "latency", prof) / count_cost(models["full"], X, "latency", prof)
                 for m in models.values()]
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = np.corrcoef(rank(measured), rank(predicted))[0, 1]
    assert rho >= 0.8, (measured, predicted)
    # and reloading from the cache measures nothing
    calls = []
    profile(resnet20(), X, "cpu", threads=threads, batch=8, progress=lambda *a: calls.append(a))
    assert calls == []


def test_parse_target_and_command_line_errors(capsys, tmp_path):
    assert parse_target("cpu") == {"device": "cpu", "batch": 1}
    assert parse_target("cpu@128") == {"device": "cpu", "batch": 128}
    assert parse_target("x.json") == {"path": "x.json"}
    with pytest.raises(ProfileError, match="whole number"):
        parse_target("cpu@many")
    assert main(["expand", "--model", "tiny", "--structure", str(tmp_path / "s.json"), "--budget", "50%",
                 "--resource", "latency:nowhere"]) == 2
    assert "latency:cpu" in capsys.readouterr().err
    assert main(["expand", "--model", "tiny", "--structure", str(tmp_path / "s.json"), "--budget", "50%",
                 "--resource", "latency:missing.json"]) == 2
    assert "does not exist" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["expand", "--model", "tiny", "--structure", str(tmp_path / "s.json"), "--budget", "50%",
                     "--resource", "latency:cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_profile_command_writes_a_file_expand_reads(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert main(["profile", "--model", "tiny", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fast width multiple" in text and str(out) in text
    prof = DeviceProfile.load(out)
    model = tiny_cnn()
    x = torch.zeros(1, 1, 8, 8)
    Structure({n: max(1, l.width // 2) if n != "fc" else l.width
               for n, l in build_graph(model, x).layers.items()}).save(tmp_path / "s.json")
    # the budget is the full network's time: at batch 1 the tiny net's fixed overhead (frozen layers, Python)
    # is most of it, so a budget below 100% can fall under that floor on a busy machine
    assert main(["expand", "--model", "tiny", "--structure", str(tmp_path / "s.json"), "--budget", "100%",
                 "--resource", f"latency:{out}", "--out", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "omega" in text and "rounded to multiples of" in text
    expanded = Structure.load(tmp_path / "e.json")
    full = count_cost(model, x, "latency", prof)
    built = netmorph.apply_structure(model, expanded, example_inputs=x)
    assert count_cost(built, x, "latency", prof) <= full


def test_morph_with_the_measured_cpu_latency_reports_prediction_next_to_measurement(tmp_path):
    out = tmp_path / "run"
    assert main(["morph", "--resource", "latency:cpu", "--budget", "95%", "--epochs", "1", "--batch-size", "128",
                 "--no-baseline", "--out", str(out)]) == 0
    text = (out / "metrics.md").read_text()
    assert "| predicted latency (ms, measured cpu" in text and "| measured CPU latency (ms, batch 1)" in text
    assert "Widths rounded to multiples of" in text
    rows = json.loads((out / "metrics.json").read_text())["models"]
    assert rows["final"]["latency"] <= 0.95 * rows["original"]["latency"] * 1.0001
    assert all(r["latency_ms"] > 0 for r in rows.values())
    # the profile goes with the run: --resume reads that file instead of measuring again
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["resource"] == f"latency:{(out / 'profile.json').resolve()}"
    assert DeviceProfile.load(out / "profile.json").key == device_key("cpu")
    assert (out / "final" / "model.onnx").exists()               # the onnx extra is part of the test extra
    assert rows["final"]["onnx_ms"] > 0 and "onnxruntime CPU latency" in text


def test_a_depthwise_conv_narrowed_to_one_channel_is_timed_as_one_conv_group():
    """apply_structure rebuilds a depthwise conv left with one channel as a 1 -> 1 dense conv; the profile
    times it as the depthwise signature at one group instead of refusing it."""
    from netmorph.models import get_model
    model = get_model("mobilenetv2")
    prof = synthetic(model, X, blocked)
    graph = build_graph(model, X)
    name = next(n for n, l in graph.layers.items() if l.module.groups > 1 and l.module.stride == (2, 2))
    narrow = netmorph.apply_structure(model, {name: 1}, example_inputs=X)
    assert count_cost(narrow, X, "latency", prof) < count_cost(model, X, "latency", prof)


def test_networks_with_the_same_layer_kinds_in_other_numbers_are_calibrated_apart():
    from netmorph.latency import network_key
    from netmorph.models import resnet56
    assert network_key(build_graph(resnet20(), X)) != network_key(build_graph(resnet56(), X))
    narrowed = netmorph.apply_structure(resnet20(), {"layer1.0.conv1": 5}, example_inputs=X)
    assert network_key(build_graph(narrowed, X)) == network_key(build_graph(resnet20(), X))


def test_a_removed_branch_costs_what_its_constant_output_stand_in_costs():
    """A layer whose every input was removed becomes a ConstantOutput, which still writes its output:
    the prediction from the channel graph (what expand uses) equals the cost of the pruned network."""
    from netmorph.expand import widths_cost
    from netmorph.resize import group_targets
    model = resnet20()
    prof = synthetic(model, X, blocked)
    structure = Structure({"layer2.1.conv1": 0, "layer3.2.conv1": 0})
    graph = build_graph(model, X)
    built = netmorph.apply_structure(model, structure, example_inputs=X)
    assert widths_cost(graph, group_targets(graph, structure), "latency", prof) == \
        pytest.approx(count_cost(built, X, "latency", prof), rel=1e-12)
