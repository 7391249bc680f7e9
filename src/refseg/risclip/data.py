"""Training samples for RISCLIP: one (image, expression, mask) per item of a refer dataset.

Images and masks go through CLIP's own resize (:func:`refseg.clip.preprocess`), so the
target sits exactly on the pixels the model sees. Item ``i`` is a pure function of ``i``
(no augmentation: [D] no flips, since expressions say left/right).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from refseg.clip.config import PreprocessConfig
from refseg.clip.preprocess import normalize, resize_for_clip
from refseg.clip.tokenizer import ClipTokenizer
from refseg.data import ImageDataset
from refseg.errors import InputError

RESIZE_MODE = "squash"  # the whole image, aspect ignored: a crop would cut referents off


def image_pixels(image: Image.Image, size: int, preprocess: PreprocessConfig) -> torch.Tensor:
    """RGB image -> ``float32 [3, size, size]`` (squashed, CLIP-normalised)."""
    return normalize(
        np.asarray(resize_for_clip(image.convert("RGB"), size, RESIZE_MODE)), preprocess
    )


def resize_mask_for_clip(mask: np.ndarray, size: int) -> np.ndarray:
    """``bool [H, W]`` -> ``bool [size, size]`` through the same geometry as the image."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(resize_for_clip(image, size, RESIZE_MODE)) >= 128


class ExpressionSamples(Dataset):
    """Map-style dataset of ``{"pixels", "tokens", "mask", "sent_id"}`` dicts.

    Args:
        dataset: a refer-layout split (:func:`refseg.data.open_dataset`).
        tokenizer: the CLIP's tokenizer.
        preprocess: the CLIP's normalisation; ``image_size`` overrides its size (RISCLIP
            runs CLIP at its own input size).
        limit: keep only the first ``limit`` expressions (None: all).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        tokenizer: ClipTokenizer,
        preprocess: PreprocessConfig,
        image_size: int,
        limit: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.size = image_size
        self.items: list[tuple[int, int, int]] = []
        for i, sample in enumerate(dataset):
            for r, referent in enumerate(sample.referents):
                self.items.extend((i, r, s) for s in range(len(referent.sentences)))
        if limit is not None:
            self.items = self.items[:limit]
        if not self.items:
            raise InputError(f"{dataset.name} {dataset.split} has no expressions to train on")
        self._image_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, image_index: int) -> torch.Tensor:
        """The preprocessed image ``float32 [3, S, S]`` (cached per image)."""
        if image_index not in self._image_cache:
            image = self.dataset[image_index].load_image()
            self._image_cache[image_index] = image_pixels(image, self.size, self.preprocess)
        return self._image_cache[image_index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, r, s = self.items[index]
        referent = self.dataset[image_index].referents[r]
        sentence = referent.sentences[s]
        mask = resize_mask_for_clip(referent.mask, self.size)
        return {
            "pixels": self.pixels(image_index),
            "tokens": self.tokenizer(sentence.text)[0],
            "mask": torch.from_numpy(mask),
            "sent_id": sentence.sent_id,
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch (``mask`` as float32)."""
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "tokens": torch.stack([s["tokens"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]).float(),
        "sent_id": torch.tensor([s["sent_id"] for s in samples]),
    }
