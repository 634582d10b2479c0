"""The run report's warning when the saved resource did not turn into saved CPU time."""
from netmorph.cli.report import speed_note


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
