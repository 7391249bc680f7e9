"""``clipseg`` as a dense :class:`~refseg.systems.DenseSystem` (contract B).

``refseg.load("clipseg")`` loads the shipped ``clipseg-shapes`` decoder (over the shipped
``shapes-vit`` CLIP, offline); ``model=`` takes any source :func:`load_clipseg` reads
(``clipseg-rd64-refined``, an HF directory, an official ``.pth`` with ``clip=``, refseg
files). Text prompts, one-shot visual prompts (``prompt_image`` + ``prompt_mask``), or both
mixed (``text_weight``). Logits are resized to the image with ``align_corners=True`` (the
official scorer's convention); the default threshold is the model's own (chosen on val for
``clipseg-shapes``, 0.3 -- the paper's -- for the published weights).

Query options: ``threshold``, ``template`` (``plain`` | ``fixed``), ``text_weight`` (weight
of the text when a text and a visual prompt are both given; default 0.5).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from refseg.clip.loaded import LoadedClip
from refseg.clipseg.load import load_clipseg, looks_like_clipseg
from refseg.clipseg.loaded import LoadedCLIPSeg, QueryState, mix_conditionals
from refseg.clipseg.prompts import VisualPromptConfig
from refseg.errors import InputError
from refseg.image_io import DEFAULT_MAX_PIXELS
from refseg.systems.base import DenseSystem

DEFAULT_MODEL = "clipseg-shapes"
DEFAULT_TEXT_WEIGHT = 0.5


class CLIPSegSystem(DenseSystem):
    """CLIPSeg behind the one system interface."""

    name: ClassVar[str] = "clipseg"
    supports_visual_prompts: ClassVar[bool] = True
    query_options: ClassVar[tuple[str, ...]] = ("template", "text_weight")
    align_corners: ClassVar[bool] = True

    def __init__(
        self,
        model: LoadedCLIPSeg,
        *,
        threshold: float | None = None,
        prompt_config: VisualPromptConfig | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(
            threshold=model.config.threshold if threshold is None else threshold,
            max_pixels=max_pixels,
        )
        self.model = model
        self.prompt_config = prompt_config or VisualPromptConfig()

    def encode_image(self, image: Image.Image) -> QueryState:
        return self.model.encode_query(image)

    def predict(
        self, image_state: QueryState, texts: Sequence[str], **options: Any
    ) -> torch.Tensor:
        template = options.pop("template", "plain")
        if template not in ("plain", "fixed"):
            raise InputError(f"template must be 'plain' or 'fixed'; got {template!r}")
        weight = options.pop("text_weight", None)
        prompt = options.pop("prompt", None)
        if options:
            raise InputError(f"unknown clipseg options: {', '.join(sorted(options))}")
        cond = self.model.text_conditionals(list(texts), template) if texts else None
        if prompt is not None:
            visual = self.model.visual_conditionals(
                [prompt.image], [prompt.mask], self.prompt_config
            )
            if cond is None:
                cond = visual
            else:
                w = DEFAULT_TEXT_WEIGHT if weight is None else float(weight)
                if not 0.0 <= w <= 1.0:
                    raise InputError(f"text_weight must be in [0, 1]; got {w}")
                cond = mix_conditionals(cond, visual.expand_as(cond), w)
        elif weight is not None:
            raise InputError("text_weight applies only with a visual prompt")
        assert cond is not None
        return self.model.decode(image_state, cond)

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            **super().describe(),
            "model": self.model.name,
            "extract_layers": list(config.decoder.extract_layers),
            "image_size": config.image_size,
            "refined": config.decoder.refined,
            "visual_prompt": {
                "darken": self.prompt_config.darken,
                "blur": self.prompt_config.blur,
                "crop": self.prompt_config.crop,
            },
            "device": str(self.model.device),
        }


def build_system(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    path: str | os.PathLike | None = None,
    clip: str | os.PathLike | LoadedClip | None = None,
    threshold: float | None = None,
    extract_layers: str | tuple[int, ...] | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> CLIPSegSystem:
    """``refseg.load("clipseg", model=..., clip=..., threshold=...)`` (``path=`` when
    ``refseg.load(PATH)`` recognised a CLIPSeg checkpoint)."""
    loaded = load_clipseg(
        path if path is not None else model,
        clip=clip,
        extract_layers=extract_layers,
        device=device,
        dtype=dtype,
    )
    return CLIPSegSystem(loaded, threshold=threshold, max_pixels=max_pixels)


def detect(path: Path) -> bool:
    """Whether ``refseg.load(path)`` should build CLIPSeg from ``path``."""
    return looks_like_clipseg(Path(path))
