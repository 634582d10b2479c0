"""``netmorph morph`` end to end on the built-in digits: the run directory, the other resources and
``--round-to``, resume after Ctrl-C (the same result as an uninterrupted run with the same seed), and
data-parallel training."""
import json
import subprocess
import sys

import pytest
import torch

import netmorph
from netmorph.cli.common import load_model
from netmorph.costs import count_cost
from netmorph.graph import build_graph

from .conftest import NEEDS_DIGITS, QUICK, ROOT, child_env, ctrl_c_at, run_cli, run_reload_code

FILES = ["config.json", "log.txt", "checkpoint.pt", "round1_learned_structure.json",
         "round1_expanded_structure.json", "final/structure.json", "final/model.pt", "final/model.onnx", "metrics.md",
         "metrics.json", "metrics.csv"]  # final/model.onnx: the onnx extra is part of the test extra
EXAMPLE = torch.zeros(1, 1, 8, 8)

pytest.importorskip("sklearn", reason=NEEDS_DIGITS)


def learned(out):
    return json.loads((out / "round1_learned_structure.json").read_text())["widths"]


def test_run_directory_holds_structures_model_metrics_and_pictures(straight_run):
    out = straight_run
    for name in FILES:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["models"]
    final = rows["final"]
    assert final["flops"] <= metrics["budget"] and final["flops"] == metrics["final_cost"]
    assert final["test_acc"] >= 0.5       # 3 epochs from scratch: 68% (chance: 10%; a broken init gave 21%)
    learned_row = rows["learned"]
    assert learned_row["flops"] == pytest.approx(metrics["rounds"][0]["learned_cost"])
    # latency: measured on a batch of 64 test images; the final network has ~ the original's FLOPs
    # (budget 100%), so the two measured times are of the same order on any machine
    assert {r["latency_batch"] for r in rows.values()} == {64}
    assert final["flops"] >= 0.9 * rows["original"]["flops"]
    assert 0.5 < final["latency_ms"] / rows["original"]["latency_ms"] < 2
    # the final model reloads exactly as metrics.md says, whose table shows the measured numbers
    text = (out / "metrics.md").read_text()
    (latency_line,) = [line for line in text.splitlines() if "measured CPU latency" in line]
    assert all(f"{r['latency_ms']:.2f}" in latency_line for r in rows.values())
    model = run_reload_code(text, out)
    assert netmorph.count_flops(model, EXAMPLE) == final["flops"]
    # every epoch's numbers, in metrics.csv and as TensorBoard scalars
    csv_rows = read_csv(out / "metrics.csv")
    reg_rows = [r for r in csv_rows if r["stage"] == "round 1: regularize"]
    assert [float(r["alive_cost"]) for r in reg_rows] == pytest.approx(metrics["rounds"][0]["cost_history"], rel=1e-5)
    assert [float(r["val_acc"]) for r in csv_rows if r["stage"] == "final training"] == \
        pytest.approx([h["val_acc"] for h in metrics["final_history"]], rel=1e-5)
    tb = scalars(out / "tensorboard")
    assert [v for _, v in tb["round 1: regularize/alive_cost"]] == pytest.approx(metrics["rounds"][0]["cost_history"])
    last_widths = {k[len("widths/"):]: v[-1][1] for k, v in tb.items() if k.startswith("widths/")}
    assert last_widths and all(w >= 1 for w in last_widths.values())
    pytest.importorskip("matplotlib", reason="pictures need matplotlib")
    for png in ("widths.png", "training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def read_csv(path) -> list[dict]:
    import csv
    with open(path) as fh:
        return list(csv.DictReader(fh))


def scalars(logdir) -> dict:
    """{tag: [(step, value), ...]} of the TensorBoard event files under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def changeable_layers(model) -> set:
    graph = build_graph(model, EXAMPLE)
    return {n for n, layer in graph.layers.items() if graph.groups[int(graph.group_of[layer.out[0]])].frozen is None}


def test_size_budget_with_widths_rounded_to_multiples_of_8(tmp_path):
    out = tmp_path / "run"
    assert run_cli("morph", *QUICK, "--resource", "size", "--budget", "60%", "--round-to", "8", "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    original = count_cost(load_model("tiny", 10, 1), EXAMPLE, "size")
    assert m["resource"] == "size" and m["original_cost"] == original
    assert m["budget"] == pytest.approx(0.6 * original)
    model = run_reload_code((out / "metrics.md").read_text(), out)
    size = count_cost(model, EXAMPLE, "size")                    # weights of the network as reloaded
    assert size == m["final_cost"] == m["models"]["final"]["size"] <= m["budget"]
    widths = json.loads((out / "final" / "structure.json").read_text())["widths"]
    changeable = changeable_layers(load_model("tiny", 10, 1))
    assert changeable == {"features.0.0", "features.1.0", "features.3.0", "features.4.conv1", "features.4.conv2"}
    assert all(widths[n] % 8 == 0 for n in changeable), widths
    assert widths["fc"] == 10                                      # the class outputs are frozen
    assert [widths[n] for n in sorted(changeable)] != [32, 64, 64, 64, 64]   # it did change them


def test_latency_budget_on_the_named_hardware(tmp_path):
    out = tmp_path / "run"
    assert run_cli("morph", *QUICK, "--resource", "latency:T4", "--budget", "70%", "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    tiny = load_model("tiny", 10, 1)
    t4, v100 = (count_cost(tiny, EXAMPLE, "latency", hw) for hw in ("T4", "V100"))
    assert t4 != pytest.approx(v100, rel=0.05)                    # the hardware name matters
    assert m["resource"] == "latency" and m["original_cost"] == pytest.approx(t4)
    assert m["budget"] == pytest.approx(0.7 * t4)
    model = run_reload_code((out / "metrics.md").read_text(), out)
    assert count_cost(model, EXAMPLE, "latency", "T4") == pytest.approx(m["final_cost"])
    assert m["final_cost"] == pytest.approx(m["models"]["final"]["latency"]) and m["final_cost"] <= m["budget"]
    assert "roofline latency (ns)" in (out / "metrics.md").read_text()


def test_ctrl_c_checkpoints_and_resume_gives_the_uninterrupted_result(straight_run, tmp_path):
    out = tmp_path / "run"
    # Ctrl-C once the first epoch is saved and training goes on
    err = ctrl_c_at(["morph", "--epochs", "3", "--batch-size", "128", "--no-baseline", "--out", out],
                    tmp_path / "stderr.txt", "checkpoint round 1: regularize")
    assert "Traceback" not in err and "--resume --out" in err
    assert not (out / "metrics.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["train"]["position"] is not None              # stopped mid-epoch, with the position saved
    assert state["stage"] == "final" or (state["stage"] == "regularize 0" and state["train"]["epoch"] >= 1)
    assert run_cli("morph", "--resume", "--out", out) == 0
    assert learned(out) == learned(straight_run)            # same seed, same structure
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((straight_run / "metrics.json").read_text())
    assert a["rounds"][0]["cost_history"] == b["rounds"][0]["cost_history"]
    assert a["rounds"][0]["strength_history"] == b["rounds"][0]["strength_history"]
    assert [h["val_acc"] for h in a["final_history"]] == [h["val_acc"] for h in b["final_history"]]
    # metrics.csv went on where it stopped: the same rows as the uninterrupted run's, none twice
    drop_time = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "seconds")} for r in rows]  # noqa: E731
    assert drop_time(read_csv(out / "metrics.csv")) == drop_time(read_csv(straight_run / "metrics.csv"))


def test_two_ddp_ranks_learn_the_same_structure_and_only_rank_0_writes(tmp_path):
    out, probe, cwd = tmp_path / "run", tmp_path / "probe", tmp_path / "cwd"
    probe.mkdir()
    cwd.mkdir()
    # --standalone: the rendezvous takes a free port of its own, so parallel runs never collide
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "cli" / "ddp_probe.py"), "morph", *QUICK, "--out", str(out)],
                          cwd=cwd, env=child_env(NETMORPH_PROBE_DIR=str(probe)), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = json.loads((out / "metrics.json").read_text())["ranks"]
    assert ranks["world_size"] == 2 and ranks["agree"]
    assert ranks["structures"][0] == ranks["structures"][1]
    assert ranks["structures"][0][0] == learned(out)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    # only rank 0 writes: rank 1 was given --out run.rank1, which never appeared, and wrote no file anywhere
    written = {r: json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert written[1] == []
    assert ["os.rename", str(out / "metrics.json.tmp"), str(out / "metrics.json")] in written[0]
    assert not (tmp_path / "run.rank1").exists() and list(cwd.iterdir()) == []
    expected = set(FILES) | {"widths.png", "training.png"}
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    events = {f for f in files if f.startswith("tensorboard/events.out.tfevents.")}
    assert files - events == expected and len(events) == 1          # one event file: rank 0's
    # and says things once: the console (both ranks' stderr) and log.txt
    log = (out / "log.txt").read_text()
    for text in (done.stderr, log):
        assert text.count("netmorph morph: tiny on digits") == 1
        assert text.count("run directory: ") == 1
        assert text.count("epoch 1/2: alive flops") == 1
