"""What every ``netmorph`` subcommand shares: turning flags into models, resources and budgets,
the run directory, Ctrl-C handling and progress output. Bad input raises :class:`UsageError` with
one line naming the problem and the fix; ``netmorph.cli.main`` prints it and exits non-zero."""
from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .. import dist, faults
from ..costs import HARDWARE, get_hardware
from ..morph import save_atomic
from ..safeload import load_state_dict, load_torch
from ..userfn import import_function
from ..train import (fit, load_training_state, loader_rng_state, make_optimizer, set_loader_rng_state, steps_per_epoch,
                     training_state)
from ..models import MODELS

#: the input each built-in network was designed for (C, H, W)
BUILTIN_INPUT = {"tiny": (1, 8, 8)}
DEFAULT_INPUT = (3, 32, 32)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def version() -> str:
    """The installed distribution's version (``importlib.metadata``), else ``netmorph.__version__`` (a source
    tree on ``PYTHONPATH``, never installed): what ``netmorph --version`` prints."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed
    try:
        return installed("netmorph")
    except PackageNotFoundError:
        from .. import __version__
        return __version__


# -- where training runs ---------------------------------------------------------------------------
def resolve_device(text: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a usage
    error for a device this machine does not have. Under torchrun each rank trains on its own GPU
    (``cuda:LOCAL_RANK``), or all on the CPU."""
    text = (text or "auto").strip()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text}: netmorph trains on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: this machine has no CUDA device torch can use "
                             f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if dist.active():
            if device.index is not None:
                raise UsageError(f"--device {text} under torchrun: each rank takes the GPU of its LOCAL_RANK; give "
                                 "--device cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
            device = torch.device("cuda", dist.local_rank())
            if device.index >= torch.cuda.device_count():
                raise UsageError(f"torchrun started more ranks on this machine than it has GPUs "
                                 f"({torch.cuda.device_count()}); use --nproc_per_node={torch.cuda.device_count()}")
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


def resolve_amp(text: str, device: torch.device) -> str:
    """``--amp``: ``auto`` is bf16 on a GPU that has it, else fp16 (with a grad scaler) on a GPU, and
    off on the CPU (bf16 autocast on a CPU is slower than fp32 for these networks)."""
    if text != "auto":
        return text
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def resolve_channels_last(text: str, device: torch.device) -> bool:
    """``--channels-last``: ``auto`` is on for a GPU (tensor-core convolutions want it), off on the CPU."""
    return device.type == "cuda" if text == "auto" else text == "on"


def cpu_state(model: nn.Module) -> dict:
    """The model's state dict on the CPU, contiguous: what ``final/model.pt`` holds, loadable anywhere."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def parse_resource(text: str) -> tuple[str, str | None]:
    """``flops``, ``size``, ``latency``, ``latency:HW`` (a roofline of :data:`~netmorph.costs.HARDWARE`),
    ``latency:cpu``, ``latency:cpu@BATCH``, ``latency:cuda`` (measured here) or ``latency:FILE.json``
    (a profile measured elsewhere) -> (resource, hardware spec or None). Measured specs become a
    profile in :func:`resolve_hardware`, once the model is known."""
    from ..latency import ProfileError, parse_target
    kind, _, hw = text.partition(":")
    if kind not in ("flops", "size", "latency"):
        raise UsageError(f"unknown --resource {text!r}: use flops, size, latency:cpu, latency:cuda, "
                         f"latency:PROFILE.json or latency:HW (a roofline, HW one of {', '.join(HARDWARE)})")
    if hw and kind != "latency":
        raise UsageError(f"--resource {text!r}: only latency takes a device (latency:{hw})")
    if kind == "latency":
        hw = hw or "V100"
        try:
            get_hardware(hw)
        except ValueError:
            target = None
            try:
                target = parse_target(hw)
            except ProfileError as e:
                raise UsageError(str(e)) from None
            if "path" in target and not (hw.endswith(".json") or os.path.exists(hw)):
                raise UsageError(f"unknown hardware {hw!r} in --resource {text}: use latency:cpu (measured on this "
                                 f"machine), latency:cuda, latency:PROFILE.json, or a roofline: {', '.join(HARDWARE)}")
    return kind, hw or None


def resolve_hardware(resource: str, hw: str | None, model: nn.Module, example):
    """The hardware :func:`parse_resource` named: a roofline name stays a name; ``cpu``/``cuda``/a file
    becomes a measured :class:`~netmorph.latency.DeviceProfile` (measured now, or read from the cache)."""
    if resource != "latency" or hw is None:
        return hw
    try:
        return get_hardware(hw)
    except ValueError:
        pass
    from ..latency import DeviceProfile, ProfileError, resolve
    try:
        # under torchrun rank 0 measures (ranks timing at once on one machine would disturb each other and
        # disagree) and every rank uses its numbers, so every decision made from them is the same
        return DeviceProfile.from_dict(dist.from_main(lambda: resolve(hw, model, example).to_dict()),
                                       f"latency:{hw}")
    except ProfileError as e:
        raise UsageError(str(e)) from None


def parse_amount(text: str, what: str, below_100: bool = False):
    """``50%``, a fraction (<= 2) or an absolute number, as given to ``morph.absolute``; checked > 0."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number: give a percentage like 50% or a number") from None
    if not value > 0 or value != value:
        raise UsageError(f"{what} must be greater than 0, got {text!r}")
    if below_100 and t.endswith("%") and value >= 1:
        raise UsageError(f"{what} {text!r} must be below 100%: the network shrinks to it before expanding")
    if below_100 and not t.endswith("%") and value >= 1 and value <= 2:
        raise UsageError(f"{what} {text!r} must be below 1 (a fraction of the cost) or an absolute cost")
    return t if t.endswith("%") else value


def positive_int(text: str) -> int:
    """argparse type for counts that must be >= 1 (epochs, rounds)."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text} (use at least 1)")
    return value


def _accepts(fn, name: str, through_kwargs: bool = True) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or (through_kwargs and any(p.kind is p.VAR_KEYWORD for p in params.values()))


def load_model(spec: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """A built-in name (``resnet20``...) or ``module:function`` (called with ``num_classes`` /
    ``in_channels`` if it takes them); the current directory is importable."""
    fn, kwargs = _builder(spec, num_classes, in_channels)
    try:
        model = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"--model {spec}: calling it failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def reload_code(spec: str, num_classes: int | None, in_channels: int | None, directory: str = "final") -> list[str]:
    """Python lines that rebuild a saved network of ``--model spec`` with :func:`netmorph.load`."""
    _, kwargs = _builder(spec, num_classes, in_channels)
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    if ":" not in spec:
        return ["import netmorph", f"model = netmorph.load(netmorph.models.get_model({spec!r}{', ' if args else ''}"
                f"{args}), {directory!r})"]
    module, _, function = spec.partition(":")
    return ["import netmorph", f"import {module}", f"model = netmorph.load({module}.{function}({args}), {directory!r})"]


def _builder(spec: str, num_classes, in_channels):
    """The function ``--model spec`` names and the keyword arguments it will be called with."""
    if ":" not in spec:
        if spec not in MODELS:
            raise UsageError(f"unknown model {spec!r}: use a built-in ({', '.join(sorted(MODELS))}) or "
                             "module:function returning your nn.Module")
        fn = MODELS[spec]
    else:
        try:
            fn = import_function(spec, "--model")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    kwargs = {}
    if num_classes is not None and _accepts(fn, "num_classes"):
        kwargs["num_classes"] = num_classes
    if in_channels is not None and _accepts(fn, "in_channels", through_kwargs=False):
        kwargs["in_channels"] = in_channels
    return fn, kwargs


def input_shape(spec: str, text: str | None) -> tuple[int, ...]:
    """``--input-shape C,H,W`` or the built-in model's own input."""
    if text:
        try:
            shape = tuple(int(v) for v in text.split(","))
        except ValueError:
            shape = ()
        if not shape or any(v < 1 for v in shape):
            raise UsageError(f"--input-shape {text!r}: give positive sizes without the batch, like 3,32,32")
        return shape
    if ":" in spec:
        raise UsageError(f"--model {spec}: say what it takes with --input-shape C,H,W (batch excluded)")
    return BUILTIN_INPUT.get(spec, DEFAULT_INPUT)


# -- files the user hands us, and the run's own ----------------------------------------------------
TRUST_HELP = ("unpickle --checkpoint/--teacher in full (needed only for a file holding Python objects of your "
              "own beside the weights): do this only for a file you made yourself, since a crafted file runs "
              "any code it carries")


def user_state_dict(path: str, flag: str, model: nn.Module, trust: bool = False, model_name: str = "") -> dict:
    """The state dict in a file the user names with ``flag`` (a state_dict, a netmorph or Lightning
    checkpoint, ``.safetensors``), loaded without running code unless ``trust``; fitted to ``model``,
    and, with ``model_name``, checked to load into it (a usage error naming ``--model`` if not)."""
    try:
        state = load_state_dict(path, model, what=flag, trust=trust, trust_flag="--trust-checkpoint")
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if model_name:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UsageError(f"{flag} {path} does not fit --model {model_name}: {str(exc).splitlines()[0]}") from None
    return state


def load_run_file(path: Path, what: str = "the run's checkpoint"):
    """One of the run directory's own torch files (``checkpoint.pt``, ``search.pt``, ...), loaded
    as plain data; ``None`` when it does not exist yet."""
    if not path.exists():
        return None
    try:
        return load_torch(path, what, redo=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- the run directory ------------------------------------------------------------------------------
COMPLETE = "metrics.json"       # written last: a run directory without it is not finished


def prepare_out(out: str | None, command: str, model: str, resume: bool) -> Path:
    """The run directory: new (refused if it exists) or, with ``--resume``, an unfinished one."""
    if out is None:
        if resume:
            raise UsageError("--resume needs --out DIR: the run directory to continue")
        out = os.path.join("runs", f"{command}-{model.replace(':', '.').replace('/', '.')}-"
                                   f"{time.strftime('%Y%m%d-%H%M%S')}")
    path = Path(out)
    if resume:
        if not (path / "config.json").exists():
            raise UsageError(f"--resume: {path} is not a netmorph run directory (no config.json); start a new run "
                             "without --resume")
        if (path / COMPLETE).exists():
            raise UsageError(f"--resume: the run in {path} is already finished ({COMPLETE} exists)")
    elif path.exists() and any(p.name != ".lock" for p in path.iterdir()):   # a run killed at its very start
        raise UsageError(f"run directory {path} already exists: continue it with --resume or choose another --out")
    return path


_LOCKS: list = []


def lock_out(path: Path) -> None:
    """Hold an exclusive lock on the run directory ``path`` (its ``.lock`` file, with this process's
    id) until the process ends; a usage error if another live process holds it. The operating system
    drops the lock when its holder dies, however it dies, so a killed run's directory can be resumed
    at once. Rank 0 only; on systems without ``fcntl`` (Windows) no lock is taken."""
    if not dist.is_main():
        return
    try:
        import fcntl
    except ImportError:
        return
    fh = open(path / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise UsageError(f"{path} is in use by another netmorph run (process {holder}): wait for it to finish, or "
                         "stop it and continue with --resume; or choose another --out") from None
    if (path / COMPLETE).exists():           # the run it waited on finished in the meantime
        fh.close()
        raise UsageError(f"--resume: the run in {path} is already finished ({COMPLETE} exists)")
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _LOCKS.append(fh)


def unlock_out() -> None:
    """Release the run directory's lock (at the end of the command; a dead process's goes by itself).
    A finished run's directory (``metrics.json`` written) loses its ``.lock`` file too."""
    while _LOCKS:
        fh = _LOCKS.pop()
        path = Path(fh.name)
        if (path.parent / COMPLETE).exists():
            path.unlink(missing_ok=True)
        fh.close()


def read_config(path: Path) -> dict:
    """The run directory's ``config.json``; a usage error naming it if it is damaged."""
    try:
        saved = json.loads((path / "config.json").read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
            raise ValueError("no 'args' object")
        return saved
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--resume: {path / 'config.json'} is damaged ({exc}); it holds the run's flags: start a "
                         "new run, or restore the file") from None


def write_json(path: Path, data) -> None:
    if dist.is_main():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)


# -- Ctrl-C -----------------------------------------------------------------------------------------
class StopFlag:
    """The first Ctrl-C asks training to stop at the next step (it checkpoints there); a second
    one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            say("Ctrl-C: stopping after this step and saving a checkpoint (press again to quit at once)")
        self._old = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)

    def __call__(self) -> bool:
        return self.requested


# -- output -----------------------------------------------------------------------------------------
_LOG: list[Path] = []


def say(message: str) -> None:
    """A line for the user (rank 0 only), also appended to the run's log.txt once it exists."""
    if not dist.is_main():
        return
    print(message, file=sys.stderr, flush=True)
    for path in _LOG:
        with open(path, "a") as fh:
            fh.write(message + "\n")


def log_to(path: Path) -> None:
    _LOG.clear()
    _LOG.append(path)


class MetricsLog:
    """Every epoch's numbers, as ``metrics.csv`` in the run directory (always) and as TensorBoard scalars
    in ``tensorboard/`` when ``tensorboard`` is installed (``tensorboard --logdir RUN/tensorboard``).

    A row is a stage name and a dict: numbers become columns (``stage``, ``epoch``, ``loss``,
    ``val_acc``, ``alive_cost``, ``alive_fraction``, ``strength``, ...; the CSV's columns are fixed, a
    number with no column goes to TensorBoard only) and ``widths`` (alive output channels per layer)
    become the scalars ``widths/LAYER``. Rows append: a resumed run goes on where the file ends (an
    interrupted epoch wrote nothing; a row is written after its epoch's checkpoint, so a run killed in
    between misses that row rather than repeating it). Only rank 0 writes.
    """

    COLUMNS = ("time", "stage", "epoch", "loss", "val_acc", "alive_cost", "alive_fraction", "strength", "revived",
               "tau", "flops", "expected_flops", "decided", "seconds")

    def __init__(self, out: Path):
        self.path = out / "metrics.csv"
        self.writer = None
        self.step = 0
        if self.path.exists():
            with open(self.path) as fh:
                self.step = sum(1 for _ in fh) - 1
        if not dist.is_main():
            return
        if not self.path.exists():
            self.path.write_text(",".join(self.COLUMNS) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:          # tensorboard is optional: metrics.csv has the same numbers
            return
        self.writer = SummaryWriter(str(out / "tensorboard"))

    def __call__(self, stage: str, row: dict) -> None:
        if not dist.is_main():
            return
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        line = {"time": f"{time.time():.0f}", "stage": stage, **{k: f"{v:.6g}" for k, v in values.items()}}
        with open(self.path, "a") as fh:
            fh.write(",".join(str(line.get(c, "")).replace(",", ";") for c in self.COLUMNS) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if k != "epoch":
                    self.writer.add_scalar(f"{stage}/{k}", v, self.step)
            for layer, width in (row.get("widths") or {}).items():
                self.writer.add_scalar(f"widths/{layer}", width, self.step)
            self.writer.flush()
        self.step += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


READY_FD = "NETMORPH_READY_FD"


def notify(event: str) -> None:
    """Write the line ``event`` to the file descriptor named by the environment variable
    ``NETMORPH_READY_FD`` (rank 0 only; nothing when it is unset, and nothing if the reader is gone).

    For a process that supervises a run (a test, a job scheduler), so it can wait for a moment of the
    run instead of polling files: it passes the write end of a pipe, e.g. ``subprocess.Popen(...,
    pass_fds=[w], env={..., "NETMORPH_READY_FD": str(w)})``, and reads lines from the other end. The
    one event is ``checkpoint STAGE`` (see :class:`Progress`): an epoch of the training stage STAGE
    has ended, its checkpoint is on disk and training goes on under the Ctrl-C handler, so a SIGINT
    sent from now on stops at the next step, saves and exits with code 130.
    """
    fd = os.environ.get(READY_FD)
    if not fd or not dist.is_main():
        return
    try:
        os.write(int(fd), f"{event}\n".encode())
    except (OSError, ValueError):
        pass


class Progress:
    """A progress bar per training stage when ``rich`` is installed and stderr is a terminal;
    in any case one line per epoch (loss, validation accuracy, alive cost) in the log.

    Every stage saves a checkpoint at the end of each epoch, before the next epoch's first step, so
    the first step of every epoch after a stage's first one calls :func:`notify` with
    ``checkpoint STAGE``."""

    def __init__(self, metrics: MetricsLog | None = None):
        self.bar = None
        self.task = None
        self.stage_name = None
        self.stage_steps = 0
        self.metrics = metrics
        if sys.stderr.isatty() and dist.is_main():
            try:
                from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn
                self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]}"),
                                        TimeRemainingColumn(), transient=False)
            except ImportError:
                self.bar = None

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        if self.metrics is not None:
            self.metrics.close()

    def epoch(self, row: dict, stage: str | None = None) -> None:
        """An epoch of ``stage`` (default: the current stage) ended with the numbers in ``row``."""
        if self.metrics is not None:
            self.metrics(stage or self.stage_name or "", row)

    def stage(self, name: str, epochs: int, steps_per_epoch: int) -> None:
        faults.point(f"stage {name}")
        say(f"== {name} ({epochs} epochs)")
        self.stage_name, self.stage_steps = name, 0
        if self.bar is not None:
            self.task = self.bar.add_task(name, total=epochs * steps_per_epoch, loss="-")

    def step(self, i: int, n: int, loss: float) -> None:
        if i == 0 and self.stage_steps:          # a later epoch began: the one before is checkpointed
            notify(f"checkpoint {self.stage_name}")
        self.stage_steps += 1
        faults.point("step")
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, loss=f"{loss:.3f}")


# -- training stages shared by the commands ------------------------------------------------------
def train_resumable(model, data, recipe, ckpt: Path, label: str, stop, progress, train=fit) -> list:
    """``train(model, data.train, data.val, recipe, ...)`` (``fit`` or a wrapper of it), saved to
    ``ckpt`` after every epoch and on Ctrl-C, continued from it when it exists; returns the history."""
    opt, gen = make_optimizer(model, recipe), torch.Generator().manual_seed(recipe.seed)
    saved = load_run_file(ckpt)
    if saved is not None:
        load_training_state(saved, model, opt, gen, recipe)
        set_loader_rng_state(data.train, saved.get("data_rng"))
        if saved["epoch"] >= recipe.epochs and saved["position"] is None:
            return saved["history"]

    def keep(epoch, opt, gen, hist, position=None):
        if dist.is_main():
            save_atomic({**training_state(model, opt, gen), "epoch": epoch, "history": hist, "position": position,
                         "data_rng": loader_rng_state(data.train)}, ckpt)
    progress.stage(label, recipe.epochs - (saved["epoch"] if saved else 0),
                   steps_per_epoch(data.train, recipe.batch_size))
    return train(model, data.train, data.val, recipe, log=lambda s: say(f"  {label}: {s}"), checkpoint=keep,
                 start_epoch=saved["epoch"] if saved else 0, opt=opt, generator=gen, on_batch=progress.step,
                 position=saved["position"] if saved else None, stop=stop,
                 history=saved["history"] if saved else None, on_epoch=progress.epoch)


def train_baseline(build, data, recipe, out: Path, stop, progress) -> tuple:
    """The original network, trained with the same recipe (resumable from ``baseline.pt``)."""
    torch.manual_seed(recipe.seed)
    model = build()
    return model, train_resumable(model, data, recipe, out / "baseline.pt", "original network (baseline)", stop,
                                  progress)
