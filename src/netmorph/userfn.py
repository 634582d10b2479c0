"""``module:function`` specs: the functions a user names on the command line (``--model``, ``--data``)."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable


def import_function(spec: str, flag: str) -> Callable:
    """The function ``module:function`` names, the current directory importable (as it is for a user
    running the command there). Raises ValueError naming ``flag`` and what to fix."""
    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise ValueError(f"{flag} {spec}: cannot import module {mod_name!r} ({type(exc).__name__}: {exc}); run from "
                         "the directory that holds it or add it to PYTHONPATH") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{flag} {spec}: module {mod_name!r} has no function {fn_name!r}")
    return fn
