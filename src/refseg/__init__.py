"""refseg: referring image segmentation on CLIP.

Public face (imported lazily so ``import refseg`` stays cheap):

- :func:`refseg.load` — any system by name (``"global-local"``, ``"maskclip"``,
  ``"clipseg"``, ...): the same ``set_image`` / ``query`` flow for all (see
  :mod:`refseg.systems`).
- :func:`refseg.available_systems` — the names :func:`refseg.load` accepts.
- :class:`refseg.Segmenter` — Global-Local's engine: set an image once, segment many
  expressions.
- :func:`refseg.load_clip` — load a CLIP checkpoint into refseg's own model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from refseg.clip import load_clip
    from refseg.segmenter import Segmenter
    from refseg.systems import System, available_systems, load

__all__ = ["Segmenter", "System", "available_systems", "load", "load_clip", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from refseg.segmenter import Segmenter

        return Segmenter
    if name == "load_clip":
        from refseg.clip import load_clip

        return load_clip
    if name in ("load", "System", "available_systems"):
        import refseg.systems

        return getattr(refseg.systems, name)
    raise AttributeError(f"module 'refseg' has no attribute {name!r}")
