"""The run report: measured latency (interleaved timing) and the warning when the saved resource did
not turn into saved CPU time."""
import numpy as np
import torch
from torch import nn

from netmorph.cli.report import interleaved_times, measure_latency, speed_note


class Recorder(nn.Module):
    """``inner``, appending ``name`` to ``calls`` at every forward."""

    def __init__(self, name, inner, calls):
        super().__init__()
        self.name, self.inner, self.calls = name, inner, calls

    def forward(self, x):
        self.calls.append((self.name, self.training))
        return self.inner(x)


class Twice(nn.Module):
    """The same layers applied twice: exactly twice the work."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(self.inner(x))


def test_interleaved_times_runs_every_model_once_per_round_in_eval_mode():
    calls = []
    models = {n: Recorder(n, nn.Identity(), calls).train() for n in ("a", "b", "c")}
    times = interleaved_times(models, torch.zeros(1), repeats=4, warmup=2)
    assert [name for name, _ in calls] == ["a", "b", "c"] * 6          # 2 warm-up rounds + 4 timed ones
    assert not any(training for _, training in calls)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}


def test_twice_the_work_measures_about_twice_the_time():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())       # ~2-5 ms per call here
    x = torch.randn(8, 32, 32, 32)
    times = interleaved_times({"once": layer, "twice": Twice(layer)}, x, repeats=30)
    once, twice = np.array(times["once"]), np.array(times["twice"])
    # the fast end of each series is the work itself; a busy machine only adds time on top
    # (bounds loose enough for a machine busy with other work, which stretches single calls)
    ratio = twice.min() / once.min()
    assert 1.2 < ratio < 4, ratio
    ms = measure_latency({"once": layer, "twice": Twice(layer)}, x, repeats=30)     # what metrics.json reports
    assert ms["twice"] > 1.1 * ms["once"], ms


def rows(flops, ms, size=None):
    out = {"original": {"flops": 100.0, "latency_ms": 10.0, "size": 1000.0}}
    out["final"] = {"flops": flops, "latency_ms": ms, "size": size}
    return out


def test_half_the_flops_at_nearly_the_same_time_is_reported_with_both_ratios():
    note = speed_note(rows(50.0, 9.3), "flops")
    assert note.startswith("Note: on this CPU the final network takes 93% of the original's measured time for 50% "
                           "of its FLOPs") and "--round-to 8" in note


def test_time_that_follows_the_resource_within_the_slack_gives_no_note():
    assert speed_note(rows(50.0, 6.4), "flops") is None              # 64% vs 50%: within 15 points
    assert speed_note(rows(100.0, 11.0), "flops") is None
    assert speed_note(rows(50.0, 6.6), "flops") == speed_note(rows(50.0, 6.6), "flops", slack=0.15)
    assert speed_note(rows(50.0, 6.6), "flops", slack=0.2) is None


def test_the_chosen_resource_is_compared_and_missing_numbers_give_no_note():
    assert "model size" in speed_note(rows(100.0, 9.0, size=500.0), "size")    # 90% of the time for 50% size
    assert speed_note(rows(50.0, 9.0), "size") is None                       # the row has no size
    assert speed_note({"original": {"flops": 1.0, "latency_ms": 1.0}}, "flops") is None
