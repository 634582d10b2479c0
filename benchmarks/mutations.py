"""Mutation check: does a small, plausible bug make at least one test fail?

Each mutation names one file of ``src/``, an exact snippet that must occur there exactly once (the
script refuses to run otherwise, so a mutation never silently stops applying), its replacement, and
a few fast tests most likely to catch it. Every mutation runs in a fresh copy of ``src/`` and
``tests/`` (a snapshot taken once at the start; the checkout is never touched) with ``PYTHONPATH``
pointing at the copy, and a guard plugin stops the run unless ``netmorph`` is imported from that copy.
Before the mutations, the unmutated snapshot runs the union of all selections once: every test must
pass, or the table means nothing.

Run: ``python benchmarks/mutations.py [--list] [--only NAME ...] [--timeout S]`` from anywhere (test
dependencies installed). A full run rewrites the "mutations" section of docs/benchmarks.md;
``--only`` prints its rows without touching the docs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str                 # under src/netmorph/
    find: str                 # must occur exactly once
    replace: str
    tests: tuple[str, ...]    # pytest node ids (relative to the checkout)
    k: str | None = None      # optional -k expression applied to ``tests``
    note: str = ""            # for a survivor: why it is harmless, or which test is missing


T = "tests/"
MUTATIONS = [
    Mutation("silencing off", "regularizers.py",
             "        if dead.any():\n            self.zero_channels(dead)",
             "        if False:\n            self.zero_channels(dead)",
             (T + "test_regularizers.py::test_proximal_step_makes_dead_channels_exactly_zero_where_plain_sgd_hovers",
              T + "test_prune.py::test_regularize_train_prune_reports_the_real_output_change",
              T + "test_morph.py::test_strength_controller_reaches_the_shrink_target_without_a_given_strength"),
             note="Missing assertion (also survives test_regularizers/prune/morph/warm_start.py): after the proximal "
                  "steps of test_prune.py::test_regularize_train_prune_reports_the_real_output_change, every BN channel "
                  "with gamma 0 has beta 0 and pruning is exact (netmorph_report.max_abs_change < 1e-5). Mutated: 71 "
                  "dead channels keep their beta, change 1e-2 (unmutated 6e-8)."),
    Mutation("augmentation off", "train.py",
             "xb = augment(x[idx], recipe.crop_padding, recipe.flip, generator)", "xb = x[idx]",
             (T + "test_tas.py::test_distill_trains_the_student_against_the_teacher_on_the_same_augmented_batches",),
             note="Missing assertion: the test's 'augmented, not raw' check compares each batch with x[:8], but batches "
                  "are drawn in random order, so raw batches pass. Assert instead that no student batch consists only "
                  "of rows of x (a row survives crop 4 + flip untouched with probability 1/162)."),
    Mutation("interleaved timing constant", "cli/report.py",
             "times[name].append(time.perf_counter() - t)", "times[name].append(1e-3)",
             (T + "cli/test_report.py",)),
    Mutation("controller step 1", "morph.py", "step: float = 1.5,", "step: float = 1.0,",
             (T + "test_morph.py::test_strength_controller_reaches_the_shrink_target_without_a_given_strength",)),
    Mutation("controller checks once an epoch", "morph.py", "check = max(1, steps // checks)", "check = steps",
             (T + "test_controller.py::test_from_trained_weights_a_first_strength_ten_times_short_is_caught_up_within"
              "_the_epochs",)),
    Mutation("floor bisection without halving", "regularizers.py", "lo, hi = 0.5, 1.0", "lo, hi = 0.0, 1.0",
             (T + "test_controller.py::test_a_strength_a_million_times_too_large_still_moves_the_network_only_down_"
              "to_the_floor",)),
    Mutation("checkpoint written in place", "morph.py", 'tmp = path.with_name(path.name + ".tmp")\n    buf',
             "tmp = path\n    buf",
             (T + "cli/test_faults.py::test_morph_killed_anywhere_resumes_to_exactly_the_uninterrupted_run",)),
    Mutation("global generator not restored on resume", "train.py",
             '    if "torch_rng" in state:\n        torch.set_rng_state(state["torch_rng"])',
             '    if False:\n        torch.set_rng_state(state["torch_rng"])',
             (T + "test_morph.py::test_a_model_with_dropout_resumes_to_the_uninterrupted_result[40]",)),
    Mutation("no run-directory lock", "cli/common.py", "        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)",
             "        pass",
             (T + "cli/test_faults.py::test_morph_killed_anywhere_resumes_to_exactly_the_uninterrupted_run",)),
    Mutation("uneven group scaled like an even one", "resize.py",
             "        if orders is not None and graph.covers_unevenly(mine, g):",
             "        if False and graph.covers_unevenly(mine, g):",
             (T + "test_apply_structure.py::test_a_concat_into_a_grouped_conv_is_pruned_channel_by_channel_and_refused_by_width",)),
    Mutation("morph regularizes groups no width describes", "morph.py",
             "    if widths:\n        reg.keep_uneven()", "    if False:\n        reg.keep_uneven()",
             (T + "test_morph.py::test_morph_keeps_a_group_no_width_can_describe_whole_and_still_ends_at_the_budget",)),
    Mutation("expand scales a group no width describes", "expand.py",
             "    pinned = set(graph.uneven())", "    pinned = set()",
             (T + "test_morph.py::test_morph_keeps_a_group_no_width_can_describe_whole_and_still_ends_at_the_budget",)),
    Mutation("prune without constant folding", "surgery.py",
             "            elif shift.abs().max() > 0:\n                _fold(new, graph, name, shift)",
             "            elif False:\n                _fold(new, graph, name, shift)",
             (T + "test_prune.py::test_trained_network_folds_the_constants_and_reports_the_real_change",)),
    Mutation("expand omega 2% short", "expand.py",
             "    widths = scaled(lo)",
             "    lo *= 0.98\n    widths = scaled(lo)",
             (T + "test_expand.py::test_expanded_structure_costs_what_the_built_network_costs_and_omega_is_maximal"
                  "[flops-resnet20]",
              T + "test_expand.py::test_same_cost_budget_grows_the_learned_structure_beyond_omega_1")),
    Mutation("gumbel sampling -> argmax", "tas/gumbel.py",
             "    g = gumbel_noise(logits.shape, generator, logits.device, logits.dtype)",
             "    g = torch.zeros_like(logits)",
             (T + "test_tas.py::test_gumbel_top2_samples_two_distinct_candidates_with_the_right_frequencies",)),
    Mutation("KD without T^2", "tas/kd.py", "alpha * T * T * kl", "alpha * kl",
             (T + "test_tas.py::test_kd_loss_matches_a_hand_computed_value",)),
    # graph rules
    Mutation("cat: inputs stacked in reverse", "graph/rules/cat.py",
             "np.concatenate([getattr(p, f) for p in full])", "np.concatenate([getattr(p, f) for p in full[::-1]])",
             (T + "graph/rules/test_binary_cat.py::test_cat_stacks_channels_without_tying_the_inputs",
              T + "test_prune.py::test_each_rule_prunes_exactly[0-9]")),
    Mutation("grouped conv: groups not tied", "graph/rules/conv.py", "    if g > 1:\n        for k in range(g):",
             "    if False:\n        for k in range(g):",
             (T + "graph/rules/test_conv.py::test_grouped_conv_changes_in_whole_groups",
              T + "graph/rules/test_conv.py::test_depthwise_with_multiplier_ties_input_i_to_outputs_2i_2i_plus_1")),
    Mutation("add: operands not tied", "graph/rules/binary.py",
             "        b.tie(first.elems, s.elems)", "        pass",
             (T + "graph/rules/test_binary_cat.py::test_residual_add_ties_channels_and_takes_the_max_gamma",
              T + "test_prune.py::test_each_rule_prunes_exactly[0-6]")),
    Mutation("threshold >= instead of >", "regularizers.py",
             "alive = (values > self.threshold).numpy() | ~self.regularized",
             "alive = (values >= self.threshold).numpy() | ~self.regularized",
             (T + "graph/rules/test_conv.py::test_threshold_is_strict",)),
    # costs and regularizer weights
    Mutation("conv FLOPs without the factor 2", "graph/rules/conv.py", "2.0 * rows * kernel,", "rows * kernel,",
             (T + "test_costs.py::test_resnet20_is_81_6_mflops_at_batch_1",
              T + "graph/rules/test_conv.py::test_plain_conv_cost_and_regularizer_by_hand")),
    Mutation("conv FLOPs without the kernel size", "graph/rules/conv.py", "2.0 * rows * kernel,", "2.0 * rows,",
             (T + "test_costs.py::test_resnet20_is_81_6_mflops_at_batch_1",
              T + "graph/rules/test_conv.py::test_plain_conv_cost_and_regularizer_by_hand")),
    Mutation("linear FLOPs without the factor 2", "graph/rules/linear.py",
             "2.0 * float(np.prod(x.shape[:-1]))", "float(np.prod(x.shape[:-1]))",
             (T + "test_costs.py::test_resnet20_is_81_6_mflops_at_batch_1",)),
    Mutation("latency roofline max -> sum", "costs.py",
             "np.maximum(compute, memory).sum()", "(compute + memory).sum()",
             (T + "test_costs.py::test_latency_roofline_by_hand",)),
    Mutation("regularizer weight: alive_in for alive_out", "regularizers.py",
             "weights=(coef * a_out)[p.in_seg]", "weights=(coef * a_in)[p.in_seg]",
             (T + "graph/rules/test_conv.py::test_plain_conv_cost_and_regularizer_by_hand",)),
    # structures
    Mutation("structure load drops the original widths", "structure.py",
             'data.get("original") or None', "None",
             (T + "test_structure_explain.py::test_structure_round_trips_through_json",)),
    Mutation("apply_structure keeps the least important", "resize.py",
             "np.argsort(-values[chans], kind=\"stable\")", "np.argsort(values[chans], kind=\"stable\")",
             (T + "test_apply_structure.py::test_narrowing_by_importance_keeps_the_alive_channels_like_prune[tiny]",
              T + "test_apply_structure.py::test_narrowing_by_importance_keeps_the_alive_channels_like_prune"
                  "[resnet20]")),
    # safe loading
    Mutation("torch.load with weights_only=False", "safeload.py",
             "weights_only=not trust)", "weights_only=False)",
             (T + "test_safeload.py::test_a_torch_file_that_would_run_code_is_refused_by_name",)),
    Mutation("data unpickler accepts any global", "safeload.py",
             '        raise _Refused(f"{module}.{name}")', "        return super().find_class(module, name)",
             (T + "test_safeload.py::test_cifar_batches_are_read_without_running_code",)),
    # resume, the command
    Mutation("resume restarts the interrupted round", "morph.py",
             'resume = state["train"] if state["stage"] == f"regularize {r}" else None', "resume = None",
             (T + "test_morph.py::test_interrupted_two_round_morph_resumes_to_the_uninterrupted_result",
              T + "test_safeload.py::test_morph_refuses_a_crafted_checkpoint_to_resume_from"),
             note="Same result (the restarted round replays the same seeded steps), but the interrupted round's work "
                  "is redone. Missing assertion in the test: the resumed morph makes 108 - 52 = 56 steps (count "
                  "on_batch calls); mutated: 72. The command's resume test would need the same check."),
    Mutation("command: budget check skipped", "cli/morph_cmd.py",
             "    check_budget(build, data.example, budget_abs, resource, hardware)\n", "",
             (T + "cli/test_bad_input.py::test_bad_input_is_one_line_and_leaves_no_run_directory"
                  "[absolute budget below smallest]",
              T + "cli/test_bad_input.py::test_bad_input_is_one_line_and_leaves_no_run_directory"
                  "[unreachable budget]")),
    Mutation("command: usage error exits 1", "cli/__init__.py",
             '    except UsageError as exc:\n        print(f"netmorph: error: {_one_line(exc)}", file=sys.stderr)\n'
             "        return 2",
             '    except UsageError as exc:\n        print(f"netmorph: error: {_one_line(exc)}", file=sys.stderr)\n'
             "        return 1",
             (T + "cli/test_bad_input.py::test_existing_directory_needs_resume_and_resume_needs_a_run",)),
    # data splits
    Mutation("CIFAR validation overlaps training", "data.py",
             "val, tr = perm[:val_size], perm[val_size:]", "val, tr = perm[-val_size:], perm[val_size:]",
             (T + "test_train_data.py::test_cifar_loader_reads_python_batches_and_holds_out_validation",
              T + "cli/test_data_sources.py::test_cifar_npz_pair"),
             note="Missing assertion in test_cifar_loader_reads_python_batches_and_holds_out_validation (shapes only): "
                  "its 100 random training images are distinct, so assert no val image equals a train image (train "
                  "and val together are the 100)."),
    Mutation("digits validation overlaps training", "datasets.py",
             "    test, val, train = _split(_by_class(y), (0.2, 0.08, 0.72), seed)\n",
             "    test, val, train = _split(_by_class(y), (0.2, 0.08, 0.72), seed)\n    val = train[:len(val)]\n",
             (T + "cli/test_data_sources.py::test_digits_are_split_by_class_without_overlap",),
             note="Missing assertion: despite its name the test checks sizes and classes, not overlap. The 1797 digit "
                  "images are all distinct: assert no val or test image equals a train image, and val and test are "
                  "disjoint."),
]

GUARD = '''"""pytest plugin: stop at once unless netmorph comes from the mutated copy."""
import os
from pathlib import Path

import pytest


def pytest_sessionstart(session):
    import netmorph
    got, want = Path(netmorph.__file__).resolve(), Path(os.environ["MUTATIONS_SRC"]).resolve()
    Path(os.environ["MUTATIONS_SEEN"]).write_text(str(got))
    if want not in got.parents:
        pytest.exit(f"netmorph imported from {got}, not from the copy in {want}", returncode=4)
'''


def check(mutations, src: Path) -> list[str]:
    """Every mutation's snippet occurs exactly once and its result compiles; problems as lines."""
    problems = []
    for m in mutations:
        path = src / "netmorph" / m.file
        if not path.is_file():
            problems.append(f"{m.name}: file src/netmorph/{m.file} does not exist")
            continue
        text = path.read_text()
        n = text.count(m.find)
        if n != 1:
            problems.append(f"{m.name}: snippet found {n} times in src/netmorph/{m.file} (must be exactly once): "
                            f"{m.find!r}")
            continue
        try:
            compile(text.replace(m.find, m.replace), str(path), "exec")
        except SyntaxError as exc:
            problems.append(f"{m.name}: the mutated src/netmorph/{m.file} does not compile: {exc}")
    names = [m.name for m in mutations]
    problems += [f"duplicate mutation name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    return problems


def snapshot(dest: Path) -> None:
    """Copy the checkout's src/, tests/ and pyproject.toml (the pytest settings) into ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "runs")
    dest.mkdir(parents=True)
    for d in ("src", "tests"):
        shutil.copytree(ROOT / d, dest / d, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def pytest_run(copy: Path, work: Path, args: list[str], timeout: float, threads: int) -> tuple[str, float, str]:
    """Run pytest in ``copy``; returns (status, seconds, detail): status "passed", "failed", "timeout" or "error"."""
    seen = work / "seen.txt"
    seen.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy / "src"), str(work)]), PYTHONDONTWRITEBYTECODE="1",
               MUTATIONS_SRC=str(copy / "src"), MUTATIONS_SEEN=str(seen),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "--no-header", "-p", "no:cacheprovider",
           "-p", "mutation_guard", "-o", "addopts=", *args]
    t = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)        # the group of the pytest we started (and its children)
        proc.communicate()
        return "timeout", time.monotonic() - t, f"no result within {timeout:.0f} s"
    seconds = time.monotonic() - t
    where = seen.read_text() if seen.exists() else "(guard did not run)"
    if proc.returncode == 4 or not where.startswith(str(copy / "src")):
        return "error", seconds, f"netmorph was not imported from the copy: {where}"
    if proc.returncode == 0:
        return "passed", seconds, where
    first = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", out, re.M)     # node ids may hold spaces
    if proc.returncode == 1 and first:
        return "failed", seconds, first.group(1)
    tail = " | ".join(out.strip().splitlines()[-3:])
    if first:                                      # collection error (exit code 2): the mutation broke an import
        return "failed", seconds, f"{first.group(1)} (collection error)"
    return "error", seconds, f"pytest exit code {proc.returncode}: {tail}"


def selection(m: Mutation) -> list[str]:
    return [*m.tests, *(["-k", m.k] if m.k else [])]


def union_args(mutations) -> list[str]:
    """The node ids of every selection (one pytest call can take only one -k, so those are expanded)."""
    ids: list[str] = []
    for m in mutations:
        for t in m.tests:
            if t not in ids:
                ids.append(t)
    if any(m.k for m in mutations):
        raise SystemExit("the sanity run cannot join -k selections; give node ids")   # none use -k today
    return ids


def short(node: str) -> str:
    return node[len(T):] if node.startswith(T) else node


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests, then stop")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per pytest run (default 300)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the test runs (default 1)")
    ap.add_argument("--no-sanity", action="store_true", help="skip the unmutated run (only with --only)")
    args = ap.parse_args()

    chosen = MUTATIONS
    if args.only:
        unknown = [n for n in args.only if n not in {m.name for m in MUTATIONS}]
        if unknown:
            ap.error(f"unknown mutation(s) {unknown}; see --list")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.no_sanity and not args.only:
        ap.error("--no-sanity goes with --only (a full run always checks the unmutated tests first)")
    if args.list:
        for problem in check(chosen, ROOT / "src"):
            print(f"DOES NOT APPLY to the checkout: {problem}")
        for m in chosen:
            print(f"{m.name}  [src/netmorph/{m.file}]\n    " + "\n    ".join(map(short, m.tests))
                  + (f"\n    -k {m.k}" if m.k else ""))
        return 0

    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="netmorph-mutations-"))
    try:
        pristine = work / "pristine"
        snapshot(pristine)                                 # one snapshot: the checkout may change meanwhile
        problems = check(chosen, pristine / "src")
        if problems:
            print("mutations that no longer apply (fix their snippets):\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        (work / "mutation_guard.py").write_text(GUARD)
        shared = ROOT.parent / "shared"                    # tests look for ../shared/data beside the checkout
        if shared.is_dir():
            (work / "shared").symlink_to(shared)

        sanity = "skipped (--no-sanity)"
        sane = True
        if not args.no_sanity:
            ids = union_args(chosen)
            status, secs, detail = pytest_run(pristine, work, ids, args.timeout * 3, args.threads)
            sane = status == "passed"
            sanity = (f"the unmutated copy passes all {len(ids)} selected tests ({secs:.0f} s; netmorph imported "
                      f"from the copy)" if sane else f"**the unmutated copy does not pass: {status}, {detail}** "
                      f"({secs:.0f} s): the table below is meaningless until that is fixed")
            print(f"sanity: {sanity}", flush=True)

        rows, killed = [], 0
        for m in chosen:
            copy = work / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(pristine, copy, symlinks=True)
            path = copy / "src" / "netmorph" / m.file
            path.write_text(path.read_text().replace(m.find, m.replace))
            status, secs, detail = pytest_run(copy, work, selection(m), args.timeout, args.threads)
            result = {"failed": f"killed by `{short(detail)}`", "passed": "SURVIVED",
                      "timeout": f"killed (timeout: {detail})", "error": f"ERROR: {detail}"}[status]
            killed += status in ("failed", "timeout")
            tests = "<br>".join(f"`{short(t)}`" for t in m.tests) + (f" -k `{m.k}`" if m.k else "")
            rows.append(f"| {cell(m.name)} | `{m.file}` | {tests} | {cell(result)} | {secs:.0f} | "
                        f"{cell(m.note) if status != 'failed' else ''} |")
            print(f"{m.name}: {result} ({secs:.0f} s)", flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = time.monotonic() - start
    table = "\n".join(["| mutation | file (src/netmorph/) | tests run | result | s | notes |",
                       "|---|---|---|---|---:|---|", *rows])
    body = (f"Each mutation is a small bug put into a fresh copy of the source; the tests named beside it run on "
            f"the copy (stopping at the first failure). Sanity check: {sanity}.\n\n{table}\n\n"
            f"{killed} of {len(rows)} mutations killed, {len(rows) - killed} survived; {total:.0f} s in all.")
    print("\n" + body)
    if not args.only:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from report import write_section
        write_section("mutations", "Mutation check: each small bug fails a test",
                      "python benchmarks/mutations.py", body)
    return 0 if sane else 1


if __name__ == "__main__":
    sys.exit(main())
