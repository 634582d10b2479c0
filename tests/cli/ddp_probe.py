"""``python -m netmorph`` for one torchrun rank, with a record of what that rank writes.

Used by the test that under ``torchrun`` only rank 0 writes. Two checks:

- every rank but 0 gets ``--out DIR.rank<r>`` instead of ``--out DIR``, so anything it writes into its
  run directory (including files torch writes from C++) would make that directory appear;
- an audit hook records every file the rank opens for writing, renames or removes, and every directory
  it creates, anywhere, from the moment ``netmorph`` is imported to the end of the run; the list goes
  to ``$NETMORPH_PROBE_DIR/rank<r>.json``.

Usage: ``torchrun --nproc_per_node=2 tests/cli/ddp_probe.py morph ... --out DIR``.
"""
import json
import os
import sys

RANK = int(os.environ.get("RANK", "0"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes: list = []
recording = True


def audit(event, args):
    if not recording:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS:
            writes.append(["open", os.fsdecode(path)])
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.symlink", "os.link"):
        writes.append([event, *(os.fsdecode(a) for a in args if isinstance(a, (str, bytes, os.PathLike)))])


def main() -> int:
    global recording
    argv = sys.argv[1:]
    if RANK and "--out" in argv:
        i = argv.index("--out") + 1
        argv[i] = f"{argv[i]}.rank{RANK}"
    # imported first: the libraries' own set-up writes (a temp-dir probe, torch's compile-cache
    # directory, made when the optimizer's first step imports torch._dynamo) are not the run's
    import torch._dynamo  # noqa: F401
    from netmorph.cli import main as netmorph_main
    sys.addaudithook(audit)
    try:
        return netmorph_main(argv)
    finally:
        recording = False
        with open(os.path.join(os.environ["NETMORPH_PROBE_DIR"], f"rank{RANK}.json"), "w") as fh:
            json.dump(writes, fh)


if __name__ == "__main__":
    sys.exit(main())
