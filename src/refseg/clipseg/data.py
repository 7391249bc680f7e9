"""CLIPSeg training samples from any referring dataset (refer layout or PhraseCut).

One sample per (referent, expression) of a split, built as the official PhraseCut loader
does (SPEC §2, "Training"), each a pure function of ``(seed, index)``:

- PC+ negatives: with ``negative_prob`` the phrase is swapped for one that does not occur on
  the image and the target mask is emptied;
- a random square crop of side ``min(H, W)`` holding object pixels on more than
  ``min_object_fraction`` of it (``crop_tries`` tries; the best one otherwise); image
  bilinear, mask nearest, to the model's input size;
- a visual support: another sample (on another image) with the same phrase, and the text
  weight ``w ~ U(0, text_weight_max)`` of the mixed conditional ``w t + (1 - w) s``; ``w = 1``
  when the phrase occurs nowhere else;
- the phrase put in a random one of the 9 templates (``template="random"``).

The support is returned as an index; :meth:`SegmentationSamples.support_pixels` engineers
it (visual prompt engineering, :mod:`refseg.clipseg.prompts`) when its embedding is needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.clip.config import PreprocessConfig
from refseg.clip.preprocess import normalize
from refseg.clipseg.prompts import (
    TEMPLATE_MODES,
    VisualPromptConfig,
    apply_template,
    engineer_visual_prompt,
)
from refseg.data.refer import ImageDataset, ImageSample
from refseg.errors import DatasetError, InputError


@dataclass(frozen=True)
class SampleConfig:
    """How training samples are drawn (defaults: the official PhraseCut+ settings)."""

    image_size: int = 352
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    negative_prob: float = 0.2
    min_object_fraction: float = 0.05
    crop_tries: int = 50
    visual_support: bool = True
    text_weight_max: float = 0.5
    template: str = "random"
    seed: int = 0
    # The dataset is ``variants`` copies of the samples, each with its own random draws
    # (negative, crop, support, weight, template), so long runs do not repeat them.
    variants: int = 1
    target_cache: int = 100_000  # memoised target masks (uint8 S x S each)

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative_prob < 1.0:
            raise InputError(f"negative_prob must be in [0, 1); got {self.negative_prob}")
        if not 0.0 <= self.text_weight_max <= 1.0:
            raise InputError(f"text_weight_max must be in [0, 1]; got {self.text_weight_max}")
        if self.variants < 1:
            raise InputError(f"variants must be >= 1; got {self.variants}")
        if self.template not in TEMPLATE_MODES:
            raise InputError(f"template must be one of {TEMPLATE_MODES}; got {self.template!r}")


@dataclass(frozen=True)
class _Item:
    image: int  # index into the image list
    referent: int  # index into that image's referents
    phrase: str


def _key(phrase: str) -> str:
    return " ".join(phrase.lower().split())


class SegmentationSamples(torch.utils.data.Dataset):
    """Map-style dataset of CLIPSeg training samples (dicts; see :meth:`__getitem__`)."""

    def __init__(
        self,
        dataset: ImageDataset,
        config: SampleConfig,
        prompt: VisualPromptConfig | None = None,
    ) -> None:
        self.config = config
        self.prompt = prompt or VisualPromptConfig()
        self.images: list[ImageSample] = list(dataset)
        self.items: list[_Item] = [
            _Item(i, r, expression.text)
            for i, image in enumerate(self.images)
            for r, referent in enumerate(image.referents)
            for expression in referent.sentences
        ]
        if not self.items:
            raise DatasetError(f"{dataset.name} {dataset.split} holds no expressions")
        self._by_phrase: dict[str, list[int]] = {}
        for index, item in enumerate(self.items):
            self._by_phrase.setdefault(_key(item.phrase), []).append(index)
        self._phrases = sorted(self._by_phrase)
        self._image_phrases: dict[int, set[str]] = {}
        for item in self.items:
            self._image_phrases.setdefault(item.image, set()).add(_key(item.phrase))
        self._targets: dict[tuple[int, ...], torch.Tensor] = {}
        self._pixels = PreprocessConfig(
            image_size=config.image_size, mean=config.mean, std=config.std
        )

    def __len__(self) -> int:
        return len(self.items) * self.config.variants

    # -- pieces ---------------------------------------------------------------------------

    def _mask(self, item: _Item) -> np.ndarray:
        source = self.images[item.image].referents[item.referent].mask_source
        return np.asarray(source() if callable(source) else source, dtype=bool)  # not cached

    def _crop(self, mask: np.ndarray, rng: random.Random, negative: bool) -> tuple[int, int, int]:
        """``(top, left, side)`` of the square crop."""
        height, width = mask.shape
        side = min(height, width)
        if height == width:
            return 0, 0, side
        best, best_count = (0, 0), -1
        for _ in range(self.config.crop_tries):
            top, left = rng.randint(0, height - side), rng.randint(0, width - side)
            if negative:
                return top, left, side
            count = int(mask[top : top + side, left : left + side].sum())
            if count > self.config.min_object_fraction * side * side:
                return top, left, side
            if count > best_count:
                best, best_count = (top, left), count
        return best[0], best[1], side

    def _pixels_of(self, image: Image.Image, box: tuple[int, int, int] | None) -> torch.Tensor:
        """Normalised ``[3, S, S]`` of the crop ``box`` (``None``: the whole image, squashed)."""
        size = self.config.image_size
        if box is not None:
            top, left, side = box
            image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        return normalize(np.asarray(image), self._pixels)

    def _mask_of(self, mask: np.ndarray, box: tuple[int, int, int] | None) -> torch.Tensor:
        """Float 0/1 ``[S, S]`` of the crop ``box`` (nearest), as :meth:`_pixels_of`."""
        if box is not None:
            top, left, side = box
            mask = mask[top : top + side, left : left + side]
        size = self.config.image_size
        values = torch.from_numpy(mask.astype(np.float32))[None, None]
        return F.interpolate(values, size=(size, size), mode="nearest")[0, 0]

    def _support(self, image: int, phrase: str, rng: random.Random) -> int:
        """A sample with ``phrase`` on another image than ``image``, or -1."""
        candidates = [
            j for j in self._by_phrase.get(_key(phrase), ()) if self.items[j].image != image
        ]
        return rng.choice(candidates) if candidates else -1

    def referent_key(self, index: int) -> tuple[int, int]:
        """(image, referent) of sample ``index``: samples with equal keys share a support."""
        item = self.items[index % len(self.items)]
        return item.image, item.referent

    def support_pixels(self, index: int) -> torch.Tensor:
        """The engineered support image ``[3, S, S]`` of sample ``index`` (whole image,
        squashed, as a user's example image at inference)."""
        item = self.items[index % len(self.items)]
        image = self.images[item.image].load_image()
        target = self._mask_of(self._mask(item), None) > 0.5
        pixels = self._pixels_of(image, None)
        return engineer_visual_prompt(pixels, target, self.config.image_size, self.prompt)

    def _negative_phrase(self, image: int, rng: random.Random) -> str | None:
        """A phrase of the split that does not occur on ``image`` (PC+), or None."""
        on_image = self._image_phrases[image]
        for _ in range(20):
            other = rng.choice(self._phrases)
            if other not in on_image:
                return self.items[self._by_phrase[other][0]].phrase
        return None

    # -- samples --------------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``mask [S,S]`` (float 0/1), ``text`` (templated), ``support`` (sample index or
        -1), ``text_weight``, ``query_key`` (image index and crop box; see
        :meth:`query_pixels`)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = random.Random(f"{self.config.seed}:{index}")
        item = self.items[index % len(self.items)]
        phrase, negative = item.phrase, False
        if rng.random() < self.config.negative_prob:
            swapped = self._negative_phrase(item.image, rng)
            if swapped is not None:
                phrase, negative = swapped, True
        mask = self._mask(item)  # the crop keeps object pixels of the true phrase's target
        box = self._crop(mask, rng, negative)
        support = self._support(item.image, phrase, rng) if self.config.visual_support else -1
        weight = rng.uniform(0.0, self.config.text_weight_max) if support >= 0 else 1.0
        return {
            "mask": self._target(item, box, negative),
            "text": apply_template(phrase, self.config.template, rng),
            "support": support,
            "text_weight": weight,
            "query_key": (item.image, *box),
        }

    def _target(self, item: _Item, box: tuple[int, int, int], negative: bool) -> torch.Tensor:
        """The mask of ``item`` in crop ``box`` at the input size (memoised: decoding and
        resizing cost more than a decoder step on small models)."""
        key = (item.image, item.referent, *box)
        cached = self._targets.get(key)
        if cached is None:
            cached = self._mask_of(self._mask(item), box).to(torch.uint8)
            if len(self._targets) < self.config.target_cache:
                self._targets[key] = cached
        target = cached.float()
        return torch.zeros_like(target) if negative else target

    def query_pixels(self, key: tuple[int, ...]) -> torch.Tensor:
        """Normalised ``[3, S, S]`` query of a sample's ``query_key`` (image index, crop box).

        Samples carry the key rather than the pixels: the CLIP is frozen, so a trainer that
        memoises its activations by key loads an image only the first time it is seen."""
        image, top, left, side = (int(v) for v in key)
        return self._pixels_of(self.images[image].load_image(), (top, left, side))


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; texts, supports and keys stay lists."""
    return {
        "mask": torch.stack([s["mask"] for s in samples]),
        "text_weight": torch.tensor([s["text_weight"] for s in samples], dtype=torch.float32),
        "text": [s["text"] for s in samples],
        "support": [s["support"] for s in samples],
        "query_key": [s["query_key"] for s in samples],
    }
