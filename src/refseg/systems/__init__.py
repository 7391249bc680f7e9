"""One interface for every system: :class:`System`, :class:`DenseSystem` and the registry.

See :mod:`refseg.systems.base` for the API. ``refseg.load(name, **kwargs)`` is
:func:`load`.
"""

from refseg.systems.base import (
    DenseSystem,
    System,
    VisualPrompt,
    available_systems,
    load,
    register_system,
)

__all__ = [
    "DenseSystem",
    "System",
    "VisualPrompt",
    "available_systems",
    "load",
    "register_system",
]
