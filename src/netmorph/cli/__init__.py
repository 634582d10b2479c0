"""The ``netmorph`` command: ``morph``, ``tas``, ``explain``, ``prune``, ``expand``.

Bad input ends with one line, ``netmorph: error: ...``, naming the problem and the fix, and exit
code 2 (1 when training itself fails, e.g. a NaN loss; 130 after Ctrl-C, with a checkpoint saved).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import dist
from ..graph import GraphRecordError
from . import morph_cmd, tas_cmd, tools_cmd
from .common import UsageError, say, unlock_out, version


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump): ``netmorph morph: error: ... (see --help)``."""

    def error(self, message):
        if message.endswith("expected one argument"):
            message += " (a value starting with '-' goes after '=', like --budget=-5%)"
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="netmorph", description="Learn the channel structure of a PyTorch network "
                                "under a FLOPs, size or latency budget (MorphNet, TAS).")
    p.add_argument("--version", action="version", version=f"netmorph {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    morph_cmd.add_parser(sub)
    tas_cmd.add_parser(sub)
    tools_cmd.add_parsers(sub)
    return p


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    ok = False
    try:
        dist.setup()
        code = args.run(args)
        ok = code == 0
        return code
    except UsageError as exc:
        print(f"netmorph: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, GraphRecordError) as exc:
        print(f"netmorph: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        _mark_failed(args, exc)
        print(f"netmorph: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:                 # a full disk, a lost mount: the last complete checkpoint is kept
        out = getattr(args, "out", None)
        resumable = out and getattr(args, "command", None) in ("morph", "tas") and (Path(out) / "config.json").exists()
        then = (f"; free space (or fix the disk) and continue with: netmorph {args.command} --resume --out {out}"
                if resumable else "")
        print(f"netmorph: error: {_one_line(exc)}{then}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if not dist.lost_peer(exc):
            raise
        out = getattr(args, "out", None)
        print(f"netmorph: error: rank {dist.rank()} lost the other ranks ({_one_line(exc)[:300]}): one of them hung "
              f"or died; the last checkpoint is kept: continue with: torchrun ... -m netmorph {args.command} "
              f"--resume --out {out}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f"netmorph {args.command} --resume --out {out}" if out else "--resume"
        say(f"interrupted; the last checkpoint (end of the previous epoch) is kept: continue with {where}")
        return 130
    finally:
        unlock_out()
        dist.finish(ok)


def _mark_failed(args, exc) -> None:
    out = getattr(args, "out", None)
    if out and dist.is_main():
        from pathlib import Path
        path = Path(out)
        if path.is_dir():
            (path / "FAILED.txt").write_text(f"{_one_line(exc)}\n")


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
