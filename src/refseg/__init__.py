"""refseg: referring image segmentation on CLIP.

Public face (imported lazily so ``import refseg`` stays cheap):

- :class:`refseg.Segmenter` — set an image once, segment many expressions.
- :func:`refseg.load_clip` — load a CLIP checkpoint into refseg's own model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from refseg.clip import load_clip
    from refseg.segmenter import Segmenter

__all__ = ["Segmenter", "load_clip", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from refseg.segmenter import Segmenter

        return Segmenter
    if name == "load_clip":
        from refseg.clip import load_clip

        return load_clip
    raise AttributeError(f"module 'refseg' has no attribute {name!r}")
