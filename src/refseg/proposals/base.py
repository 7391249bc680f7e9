"""Mask proposals: a small container for a batch of masks and the generator interface.

A generator takes an RGB image and returns :class:`MaskProposals`. Generators are
registered by name so ``create_proposals("superpixel")`` or a file path picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from refseg.errors import InputError


@dataclass
class MaskProposals:
    """A batch of class-agnostic masks for one image.

    Attributes:
        masks: ``bool [N, H, W]`` at the image's resolution (N may be 0).
        scores: ``float32 [N]`` generator confidences, or ``None`` if it has none.
        categories: ``int64 [N]`` category ids (ground-truth proposals), or ``None``.
        ids: ``int64 [N]`` source ids (e.g. COCO annotation ids), or ``None``.
    """

    masks: np.ndarray
    scores: np.ndarray | None = None
    categories: np.ndarray | None = None
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W]; got shape {self.masks.shape}")
        n = self.masks.shape[0]
        for field in ("scores", "categories", "ids"):
            value = getattr(self, field)
            if value is not None:
                value = np.asarray(value, dtype=np.float32 if field == "scores" else np.int64)
                if value.shape != (n,):
                    raise ValueError(f"{field} must have shape ({n},); got {value.shape}")
                setattr(self, field, value)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def select(self, keep: np.ndarray | list[int]) -> MaskProposals:
        """The subset at ``keep`` (indices or a boolean vector), in that order."""
        keep = np.asarray(keep)

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[keep]

        return MaskProposals(
            self.masks[keep], pick(self.scores), pick(self.categories), pick(self.ids)
        )

    @classmethod
    def empty(cls, height: int, width: int) -> MaskProposals:
        """No proposals for an image of ``height x width``."""
        return cls(np.zeros((0, height, width), dtype=bool))


@runtime_checkable
class ProposalGenerator(Protocol):
    """Anything that turns an image into mask proposals.

    ``image_key`` identifies the image for generators that look masks up rather than
    compute them (file-based and ground-truth proposals): a COCO ``image_id`` or a file name.
    """

    name: str

    def __call__(self, image: Image.Image, *, image_key: Any = None) -> MaskProposals: ...


_REGISTRY: dict[str, Callable[..., ProposalGenerator]] = {}


def register_proposals(name: str) -> Callable[[Callable[..., ProposalGenerator]], Any]:
    """Class/function decorator: make a generator constructible by ``name``."""

    def decorate(factory: Callable[..., ProposalGenerator]) -> Any:
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_proposals() -> list[str]:
    """Names accepted by :func:`create_proposals` (a path to a JSON file is accepted too)."""
    _import_builtin_generators()
    return sorted(_REGISTRY)


def create_proposals(name: str, **kwargs: Any) -> ProposalGenerator:
    """Build a generator by registered name, or from a COCO-results JSON path.

    Raises:
        InputError: unknown name; the message lists the valid ones.
    """
    _import_builtin_generators()
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    if name.lower().endswith(".json"):
        return _REGISTRY["file"](path=name, **kwargs)
    from refseg.proposals.sam import SAM_CHECKPOINTS

    if name in SAM_CHECKPOINTS or Path(name).expanduser().is_dir():
        return _REGISTRY["sam"](model=name, **kwargs)  # a SAM by size, or a local checkpoint
    valid = ", ".join([*sorted(_REGISTRY), *SAM_CHECKPOINTS])
    raise InputError(
        f"unknown proposal generator {name!r}; choose one of: {valid}, a SAM checkpoint "
        "directory, or a path to a .json file"
    )


def _import_builtin_generators() -> None:
    """Import the built-in generator modules so their ``@register_proposals`` runs."""
    import importlib

    for module in ("superpixel", "from_file", "ground_truth", "sam", "auto"):
        try:
            importlib.import_module(f"refseg.proposals.{module}")
        except ModuleNotFoundError as exc:  # a module not written yet, or an optional extra
            if not (exc.name or "").startswith("refseg.proposals."):
                continue
