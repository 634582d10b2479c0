"""The end of a run: measured latency, the metrics table and the pictures.

Latency is *measured*: the networks run one after another, interleaved, on the same batch of test
images on this CPU (eval mode, no grad, after a warm-up), and each one's median wall time is
reported, so machine noise hits all of them alike. Pictures need matplotlib (``pip install
'netmorph[cli]'``); without it the run says so in ``metrics.md`` and still finishes.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..costs import count_cost, count_flops, count_params
from ..train import evaluate, is_loader


@torch.no_grad()
def interleaved_times(models: dict, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """Seconds of each model's forward pass on ``x`` in every round; every round runs every model once
    (eval mode), so a slow moment of the machine hits all of them alike."""
    for m in models.values():
        m.eval()
    times = {k: [] for k in models}
    for i in range(warmup + repeats):
        for name, m in models.items():
            t = time.perf_counter()
            m(x)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself when it is on the CPU, else a CPU copy: latency is measured, and ONNX exported,
    on this machine's CPU whatever device trained the model."""
    import copy
    from ..train import device_of
    if device_of(model).type == "cpu":
        return model
    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)


def measure_latency(models: dict, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """Median milliseconds of one forward pass of each model on ``x``, interleaved."""
    return {k: 1000 * float(np.median(v)) for k, v in interleaved_times(models, x, repeats, warmup).items()}


def examples(data) -> int:
    """How many examples ``data`` holds: ``(x, y)`` tensors, or a loader (counted by going through it)."""
    return len(data[1]) if not is_loader(data) else sum(len(targets) for _, targets in data)


def first_images(split, batch: int) -> torch.Tensor:
    """The first ``batch`` inputs of a data split (``(x, y)`` tensors or folder images, or a loader of
    ``(inputs, targets)`` batches); a smaller test set is repeated up to the batch."""
    if is_loader(split):
        taken, n = [], 0
        for inputs, _ in split:
            taken.append(inputs)
            n += len(inputs)
            if n >= batch:
                break
        images = torch.cat(taken)
    else:
        images = split[0]
    images = images[:min(len(images), batch)]          # a tensor (folder images are read here)
    if len(images) < batch:
        images = images.repeat((batch + len(images) - 1) // len(images), *[1] * (images.dim() - 1))
    return images[:batch]


def metrics(models: dict, test, example, resource: str, hardware, batch: int = 64) -> dict:
    """Accuracy, FLOPs, parameters, the chosen resource and measured latency of every model. With a
    measured CPU profile as the resource, latency is measured at the profile's batch and threads, so
    the predicted and measured rows are comparable."""
    from ..latency import DeviceProfile
    threads = torch.get_num_threads()
    here = isinstance(hardware, DeviceProfile) and hardware.key["device"] == "cpu" and hardware.is_here()
    if here:
        batch = hardware.key["batch"]
        torch.set_num_threads(hardware.key["threads"] or threads)
    xb = first_images(test, batch)
    try:
        latency = measure_latency({k: on_cpu(m) for k, m in models.items()}, xb)
    finally:
        torch.set_num_threads(threads)
    out, n_test = {}, examples(test)
    for name, m in models.items():
        row = {"test_acc": evaluate(m, test), "test_n": n_test, "flops": count_flops(m, example), "params": count_params(m),
               "latency_ms": latency[name], "latency_batch": len(xb)}
        if resource != "flops":
            row[resource] = count_cost(m, example, resource, hardware)
        if isinstance(hardware, DeviceProfile):
            row["latency_profile"] = hardware.name if here else f"{hardware.name}, not this machine"
            row["profile_here"] = here
        out[name] = row
    return out


def onnx_files(models: dict, rows: dict, out, data, hardware=None) -> str | None:
    """Write the final network to ``out/final/model.onnx`` (when ``onnx`` is installed), check it in
    onnxruntime, and add every network's onnxruntime latency to ``rows`` (same batch as PyTorch's,
    interleaved). Returns a line for metrics.md, or None when the extra is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    batch = rows[next(iter(rows))]["latency_batch"]
    x = first_images(data.test, batch)
    try:
        return _onnx_files({k: on_cpu(m) for k, m in models.items()}, rows, out, x, hardware)
    except Exception as exc:  # noqa: BLE001 - a deployment check must not lose the run's report
        return f"ONNX: the export or its check in onnxruntime failed ({type(exc).__name__}: {exc})."


def _onnx_files(models, rows, out, x, hardware) -> str:
    import onnxruntime as ort
    import tempfile
    from ..export import ExportError, check_onnx, export_onnx
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            path = out / "final" / "model.onnx" if name == "final" else Path(tmp) / f"{name}.onnx"
            try:
                export_onnx(m, x[:2], path)
            except ExportError as e:
                if name == "final":
                    return f"ONNX export of the final network failed: {e}"
                continue
            options = ort.SessionOptions()
            threads = getattr(hardware, "key", {}).get("threads") or torch.get_num_threads()
            options.intra_op_num_threads = threads
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        diff = check_onnx(models["final"], out / "final" / "model.onnx", x[:4])
        feed = x.numpy()
        times = {k: [] for k in sessions}
        for i in range(3 + 20):
            for name, sess in sessions.items():
                t = time.perf_counter()
                sess.run(None, {sess.get_inputs()[0].name: feed})
                if i >= 3:
                    times[name].append(time.perf_counter() - t)
    for name, v in times.items():
        rows[name]["onnx_ms"] = 1000 * float(np.median(v))
    return (f"final/model.onnx: the final network as ONNX (dynamic batch); onnxruntime's outputs differ from "
            f"PyTorch's by at most {diff:.2g}.")


def speed_note(rows: dict, resource: str, model: str = "final", slack: float = 0.15) -> str | None:
    """A warning when ``model`` saved much less measured CPU time than it saved of ``resource``.

    Both are ratios to the first row; the warning is given when the time ratio exceeds the resource
    ratio by more than ``slack`` (latency measured on a shared machine moves by several percent).
    """
    first, row = rows[next(iter(rows))], rows.get(model)
    if row is None or not first.get(resource) or not first.get("latency_ms") or row.get(resource) is None:
        return None
    cost, time_ = row[resource] / first[resource], row["latency_ms"] / first["latency_ms"]
    if time_ <= cost + slack:
        return None
    what = {"flops": "FLOPs", "size": "model size", "latency": "roofline latency"}[resource]
    if "latency_profile" in row:
        if not row.get("profile_here"):
            return None                 # a profile of another device: this CPU's time is not what it predicts
        return (f"Note: the {model} network measured {time_:.0%} of the original's time where the device profile "
                f"predicted {cost:.0%}. The machine may have been busy while the profile or this report was "
                "measured; `netmorph profile` on an idle machine measures it again (the cache is "
                "~/.cache/netmorph/profiles, or $NETMORPH_CACHE/profiles).")
    return (f"Note: on this CPU the {model} network takes {time_:.0%} of the original's measured time for "
            f"{cost:.0%} of its {what}: {what} is not CPU time here. Widths that are not multiples of 8 run "
            "slowly on CPUs: rerun with --resource latency:cpu (the time measured here, widths rounded to what this "
            "CPU is fast at; docs/latency.md) or --round-to 8 (on CIFAR-10 the same MorphNet structure went from "
            "96% to 51% of the original's time that way, see docs/benchmarks.md).")


def table(rows: dict, resource: str) -> str:
    """A markdown table, one column per model, ratios against the first."""
    names = list(rows)
    first = rows[names[0]]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def line(label, key, fmt, ratio=True):
        cells = []
        for n in names:
            v = rows[n].get(key)
            if v is None:
                cells.append("-")
                continue
            cell = fmt(v)
            if ratio and n != names[0] and first.get(key):
                cell += f" ({v / first[key]:.0%})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    line("test accuracy", "test_acc", lambda v: f"{v:.2%}", ratio=False)
    line("FLOPs (batch 1)", "flops", lambda v: f"{v:,.0f}")
    line("parameters", "params", lambda v: f"{v:,.0f}")
    if resource == "size":
        line("model size (weights)", "size", lambda v: f"{v:,.0f}")
    if resource == "latency" and "latency_profile" in first:
        line(f"predicted latency (ms, {first['latency_profile']})", "latency", lambda v: f"{v / 1e6:.2f}")
    elif resource == "latency":
        line("roofline latency (ns)", "latency", lambda v: f"{v:,.0f}")
    batch = rows[names[0]]["latency_batch"]
    line(f"measured CPU latency (ms, batch {batch})", "latency_ms", lambda v: f"{v:.2f}")
    if any("onnx_ms" in r for r in rows.values()):
        line(f"onnxruntime CPU latency (ms, batch {batch})", "onnx_ms", lambda v: f"{v:.2f}")
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _accuracy_axes(ax) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("accuracy")
    ax.legend(fontsize=8)


def _save(plt, fig, path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_widths(path, original: dict, columns: dict) -> bool:
    """Per-layer output widths, one bar per structure (MorphNet's Figure 1)."""
    plt = _pyplot()
    if plt is None:
        return False
    layers = list(original)
    series = {"original": [original[n] for n in layers]}
    series.update({k: [v.get(n, 0) for n in layers] for k, v in columns.items()})
    x = np.arange(len(layers))
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=name)
    ax.set_xticks(x, layers, rotation=90, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title("widths per layer")
    ax.legend()
    return _save(plt, fig, path)


def plot_training(path, rounds: list, final_history: list, baseline_history: list | None,
                  original_cost: float, shrink_targets: list, resource: str) -> bool:
    """Alive cost (fraction of the original) and validation accuracy over the epochs of every stage."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r, (info, target) in enumerate(zip(rounds, shrink_targets)):
        epochs = np.arange(1, len(info.cost_history) + 1)
        a.plot(epochs, np.asarray(info.cost_history) / original_cost, marker=".", label=f"round {r + 1} alive")
        a.axhspan(0.98 * target / original_cost, 1.02 * target / original_cost, color=f"C{r}", alpha=0.15,
                  label=f"round {r + 1} target band (98-102%)")
        a.axhline(target / original_cost, ls="--", lw=0.8, color=f"C{r}")
        b.plot(epochs, info.val_history, marker=".", label=f"round {r + 1} (regularized)")
    if final_history:
        b.plot([h["epoch"] for h in final_history], [h["val_acc"] for h in final_history], marker=".", label="final")
    if baseline_history:
        b.plot([h["epoch"] for h in baseline_history], [h["val_acc"] for h in baseline_history], marker=".",
               label="original (baseline)")
    a.set_xlabel("epoch")
    a.set_ylabel(f"alive {resource} / original")
    a.set_title("cost while regularizing")
    a.legend(fontsize=8)
    _accuracy_axes(b)
    return _save(plt, fig, path)


def plot_search(path, search_history: list, teacher_history: list | None, kd_history: list, target: float,
                full: float) -> bool:
    """TAS: argmax and expected FLOPs over the search epochs against the target band; how decided the
    distributions are (share with top-1 >= 0.5, mean entropy over uniform's); validation accuracy of
    the teacher and of the distilled network."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, (a, c, b) = plt.subplots(1, 3, figsize=(14, 4))
    epochs = [h["epoch"] for h in search_history]
    a.plot(epochs, [h["flops"] / full for h in search_history], marker=".", label="argmax architecture")
    a.plot(epochs, [h["expected_flops"] / full for h in search_history], marker=".", label="expected")
    a.axhline(target / full, ls="--", lw=0.8, color="k", label="target")
    a.set_xlabel("search epoch")
    a.set_ylabel("FLOPs / original")
    a.set_title("FLOPs while searching")
    a.legend(fontsize=8)
    if search_history and all("decided" in h for h in search_history):
        c.plot(epochs, [h["decided"] for h in search_history], marker=".", label="share with top-1 >= 0.5")
        c.plot(epochs, [h["entropy"] for h in search_history], marker=".", label="mean entropy / uniform's")
        c.plot(epochs, [h["margin"] for h in search_history], marker=".", label="mean top-1 - top-2")
        c.axhline(0.8, ls="--", lw=0.8, color="k")
        c.set_ylim(-0.02, 1.02)
        c.legend(fontsize=8)
    c.set_xlabel("search epoch")
    c.set_title("width and depth distributions")
    if teacher_history:
        b.plot([h["epoch"] for h in teacher_history], [h["val_acc"] for h in teacher_history], marker=".",
               label="teacher (original)")
    b.plot([h["epoch"] for h in kd_history], [h["val_acc"] for h in kd_history], marker=".", label="found, distilled")
    _accuracy_axes(b)
    return _save(plt, fig, path)
