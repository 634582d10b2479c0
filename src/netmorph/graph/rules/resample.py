"""Spatial resampling (``interpolate``, ``pad``) and ``pixel_shuffle`` / ``pixel_unshuffle``.

Grouping rules:
- ``interpolate`` and spatial ``pad`` act on each channel separately: output channel i is input
  channel i. Padding *the channel axis* adds hard-coded channels (a CIFAR "option A" shortcut):
  the rule declines, and the channels are frozen.
- ``pixel_shuffle(r)`` builds output channel c from the r*r input channels ``[c*r*r, (c+1)*r*r)``:
  those are tied, so the layer before changes in blocks of r*r. ``pixel_unshuffle(r)`` spreads input
  channel c over outputs ``[c*r*r, (c+1)*r*r)``, which carry c's element r*r times.
"""
from __future__ import annotations

import numpy as np

NAMES = ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pad",
         "pixel_shuffle", "pixel_unshuffle")


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or len(op.outputs) != 1:
        return False
    out = op.outputs[0]
    if op.name == "pad":
        pad = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("pad")
        covered = len(pad) // 2                          # pads the last `covered` axes
        if s.cdim >= len(x.shape) - covered and any(pad[2 * (len(x.shape) - 1 - s.cdim) + k] for k in (0, 1)):
            return False
        b.set(out, s)
    elif op.name in ("pixel_shuffle", "pixel_unshuffle"):
        if s.cdim != len(x.shape) - 3:
            return False
        r = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("upscale_factor", op.kwargs.get("downscale_factor"))
        block = r * r
        if op.name == "pixel_shuffle":
            for c in range(out.shape[s.cdim]):
                b.tie_all(s.elems[c * block:(c + 1) * block])
            b.set(out, s.take(np.arange(0, len(s.elems), block)))
        else:
            b.set(out, s.take(np.repeat(np.arange(len(s.elems)), block)))
    else:
        if s.cdim != 1 or out.shape[:2] != x.shape[:2]:
            return False
        b.set(out, s)
    b.memory([x, out])
    return True
