"""Named points where a supervising test can make the process die at once, with no chance to clean up.

Set ``NETMORPH_KILL_AT=NAME`` (or ``NAME:N``, the N-th time this process reaches it; default the
first; ``...@R``: only on the distributed rank R) and the process sends itself ``SIGKILL`` at that
point, as a scheduler or the out-of-memory killer would (``NETMORPH_KILL_SIGNAL=STOP`` sends
``SIGSTOP`` instead: a hung process). Unset (always, outside tests) every point is one dictionary
lookup. The points:

- ``step``: after a training step, its optimizer and proximal steps done (any stage);
- ``checkpoint-write``: half-way through writing a checkpoint's bytes (:func:`netmorph.morph.save_atomic`);
- ``stage NAME``: as the training stage ``NAME`` begins (``stage final training``, ``stage TAS search``;
  the names the command prints after ``==``).
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "NETMORPH_KILL_AT"
_hits: Counter = Counter()


def point(name: str) -> None:
    """Die here (``SIGKILL``) if ``NETMORPH_KILL_AT`` names this point and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    spec, at, only = spec.partition("@")
    if at and only.strip() != os.environ.get("RANK", "0"):
        return
    want, sep, nth = spec.rpartition(":")
    if not (sep and nth.strip().isdigit()):
        want, nth = spec, "1"
    if want.strip() != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("NETMORPH_KILL_SIGNAL", "KILL").upper()))
