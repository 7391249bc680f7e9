"""What a segmentation method is: given one image's cached context and a batch of encoded
expressions, score every proposal. Methods are registered by name."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from refseg.clip.loaded import LoadedClip
from refseg.errors import OptionError
from refseg.methods.global_local import GlobalLocalConfig
from refseg.proposals.base import MaskProposals


@dataclass
class ImageContext:
    """Everything computed once per image and shared by all its expressions.

    Attributes:
        image: the RGB image methods see (downscaled if it exceeded the pixel cap).
        original_size: ``(height, width)`` of the image as given; results are mapped back.
        pixels: ``float32 [1, 3, S, S]`` the whole image preprocessed for CLIP (squashed),
            as the pixel preset ``pixel_preset`` prepares it (see refseg.methods.pixels).
        proposals: masks at ``image``'s resolution.
        cache: method-specific visual features, keyed by what they depend on.
        timings: seconds spent per stage (``trunk``, ``global``, ``local``, ...).
        pixel_preset: ``"reference"`` or ``"clean"``: how ``pixels`` and the local crops
            are prepared.
        crop_source: the ``reference`` preset's 800-px ImageNet-normalised image
            ``[3, H', W']``, from which its local crops are cut; ``None`` for ``clean``.
        generator: name of the proposal generator that ran, ``"given"`` for masks passed
            in (reported in each result).
    """

    image: Image.Image
    original_size: tuple[int, int]
    pixels: torch.Tensor
    proposals: MaskProposals
    cache: dict[Any, torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    key: Any = None
    pixel_preset: str = "clean"
    crop_source: torch.Tensor | None = None
    generator: str | None = None

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def cached(self, key: Any, compute: Callable[[], torch.Tensor], stage: str) -> torch.Tensor:
        """``cache[key]``, computing (and timing under ``stage``) on first use."""
        if key not in self.cache:
            with self.timed(stage):
                self.cache[key] = compute()
        return self.cache[key]


@dataclass
class TextBatch:
    """Expressions encoded once: raw CLIP text features of sentences and target phrases."""

    texts: list[str]
    phrases: list[str]
    sentence_features: torch.Tensor  # [T, D], not normalised
    phrase_features: torch.Tensor  # [T, D], not normalised


class Method(ABC):
    """A way to score N proposals for T expressions with CLIP."""

    name: str = ""

    @abstractmethod
    def scores(
        self, clip: LoadedClip, context: ImageContext, text: TextBatch, params: GlobalLocalConfig
    ) -> torch.Tensor:
        """``[T, N]`` scores; higher is better."""

    def prepare(self, clip: LoadedClip, context: ImageContext, params: GlobalLocalConfig) -> None:
        """Compute (into ``context.cache``) the visual features :meth:`scores` will need with
        ``params``, so that ``set_image`` does the image's work up front. Default: nothing
        (such a method computes its visual features in its first :meth:`scores` call)."""
        return None


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: a factory and the hyper-parameters it pins."""

    factory: Callable[[], Method]
    overrides: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str, factory: Callable[[], Method], summary: str = "", **overrides: Any
) -> None:
    """Make a method reachable by ``name``; ``overrides`` pin hyper-parameters (e.g. alpha=1)."""
    _METHODS[name] = MethodSpec(factory, dict(overrides), summary)


def available_methods() -> dict[str, str]:
    """Registered method names with one-line summaries."""
    import refseg.methods  # noqa: F401  (registers the built-in methods)

    return {name: spec.summary for name, spec in sorted(_METHODS.items())}


def resolve_method(name: str, params: GlobalLocalConfig) -> tuple[Method, GlobalLocalConfig]:
    """The method called ``name`` and ``params`` with its pinned values applied."""
    import refseg.methods  # noqa: F401

    if name not in _METHODS:
        valid = ", ".join(sorted(_METHODS))
        raise OptionError(f"unknown method {name!r}; choose one of: {valid}")
    spec = _METHODS[name]
    return spec.factory(), replace(params, **spec.overrides)
