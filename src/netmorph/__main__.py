"""``python -m netmorph`` (and ``torchrun -m netmorph``) runs the ``netmorph`` command."""
from .cli import entry

entry()
