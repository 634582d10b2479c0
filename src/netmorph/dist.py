"""The few ``torch.distributed`` facts training needs, all no-ops in a single process.

Under ``torchrun --nproc_per_node=N`` every rank runs the same code: :func:`setup` joins the process
group (gloo; with GPUs, NCCL for CUDA tensors and gloo for the CPU ones), :func:`wrap` puts the model in
DistributedDataParallel for the training steps, and the helpers below keep every decision that
depends on a measured number (validation accuracy, a loss, Ctrl-C) identical on all ranks, so
every rank learns the same structure. Only rank 0 writes files (:func:`is_main`).
"""
from __future__ import annotations

import datetime
import math
import os

import torch
import torch.distributed as td


#: seconds a rank waits for the others in one collective before the run stops with an error
#: (``NETMORPH_DIST_TIMEOUT``; torch's default is 30 minutes): every training step holds a collective,
#: so a rank that hangs or dies is noticed within this time
TIMEOUT_ENV, TIMEOUT_DEFAULT = "NETMORPH_DIST_TIMEOUT", 60.0
#: how long the other ranks wait at the end while rank 0 writes the report (tests and measures models)
REPORT_WAIT = datetime.timedelta(hours=2)


def setup() -> None:
    """Join the process group torchrun describes in the environment (nothing without it), with a
    collective timeout of ``NETMORPH_DIST_TIMEOUT`` seconds (default 60)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        # with GPUs, gradients (CUDA tensors) go through NCCL and the few CPU numbers below through gloo
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        text = os.environ.get(TIMEOUT_ENV, str(TIMEOUT_DEFAULT))
        try:
            seconds = float(text)
        except ValueError:
            seconds = float("nan")
        if not (math.isfinite(seconds) and 0 < seconds < 1e6):
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
        td.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
        global _END
        # the end-of-run wait, while rank 0 writes the report, needs a timeout of its own: a collective's
        # timeout is the group's, on every rank (monitored_barrier's applies to rank 0 only)
        _END = td.new_group(backend="gloo", timeout=REPORT_WAIT)


_END = None


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank hung, died or left."""
    if not active() or not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return isinstance(exc, getattr(td, "DistBackendError", ())) or any(
        w in text for w in ("timed out", "timeout", "connection closed", "connection reset", "gloo", "nccl"))


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    return td.get_rank() if active() else 0


def world_size() -> int:
    return td.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    td.all_reduce(t)
    return float(t.item()) / td.get_world_size()


def any_true(flag: bool) -> bool:
    """True on every rank if it is true on any."""
    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    td.all_reduce(t)
    return bool(t.item() > 0)


def from_main(fn):
    """``fn()`` computed on rank 0 only and sent to every rank (a picklable value; an exception raised on
    rank 0 is raised on every rank, as a RuntimeError with its message elsewhere). Without
    torch.distributed, ``fn()``."""
    if not active():
        return fn()
    box = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            box[0] = ("error", exc)
    td.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when running under torch.distributed, else itself."""
    if not active():
        return model
    device = next(iter(model.parameters()), torch.empty(0)).device
    if device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return torch.nn.parallel.DistributedDataParallel(model)


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``): the GPU it trains on."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if active():
        td.barrier()


def finish(ok: bool) -> None:
    """Leave the process group. After a run that succeeded every rank first waits for the others (rank
    0 writes the report last), so no rank exits while another still talks to it, which can abort the
    late one; after a failure there is no wait, as the other ranks may never arrive."""
    if active():
        if ok:
            td.barrier(group=_END)
        td.destroy_process_group()
