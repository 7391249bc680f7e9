"""Input geometry of SAM-family models: image -> model input, points in, low-res logits out.

The two families frame an image differently, and everything else in automatic mask
generation is shared (:mod:`refseg.proposals.sam`):

- SAM (segment-anything ``utils/transforms.py``, ``modeling/sam.py``): resize the longest
  side to the input size keeping the aspect ratio, pad bottom/right to a square; masks go
  back through the padded square, the padding is cropped, then resized to the image.
- SAM 2 (sam2 ``utils/transforms.py``, ``SAM2Transforms``): resize the image to the square
  input *without* keeping the aspect ratio (``Resize((1024, 1024))`` on the float tensor,
  antialiased), no padding; a point ``(x, y)`` goes to ``(x / w * S, y / h * S)``; low-res
  masks are resized straight to the image (``postprocess_masks``: bilinear,
  ``align_corners=False``).

Both normalise with the ImageNet statistics. Our own code: transformers' image processors
need torchvision, which refseg does not depend on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.masks import soft_resize

# ImageNet statistics on the 0-1 scale (segment-anything ``modeling/sam.py`` pixel_mean
# 123.675, 116.28, 103.53 and pixel_std 58.395, 57.12, 57.375 on 0-255; sam2's
# ``SAM2Transforms`` the same values on 0-1), as in the Hub repos' preprocessor_config.json.
SAM_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM_PIXEL_STD = (0.229, 0.224, 0.225)


class InputTransform(Protocol):
    """What the mask generator needs to know about a model's input frame."""

    input_size: int

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """``float32 [1, 3, S, S]`` normalised model input for an RGB image."""
        ...

    def points_to_input(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``float [N, 2]`` ``(x, y)`` image pixels -> pixels of the ``S x S`` input frame."""
        ...

    def logits_to_image(
        self, logits: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int]
    ) -> torch.Tensor:
        """``float [N, h, w]`` low-res logits -> ``float32 [N, *out_size]`` over the image."""
        ...


def longest_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """``(h, w)`` of an image scaled so that its longest side is ``side`` (rounded as SAM)."""
    scale = side / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _normalise(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """``float [..., 3, H, W]`` on 0-1 -> ``(pixels - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (pixels - mean_t) / std_t


@dataclass(frozen=True)
class SamInputTransform:
    """SAM's input geometry: longest side resized to ``input_size``, padded to a square.

    Attributes:
        input_size: side of the square the vision encoder takes (1024 for released SAMs).
        pixel_mean, pixel_std: RGB normalisation on the 0-1 scale.
    """

    input_size: int = 1024
    pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the image inside the padded input (longest side = input_size)."""
        return longest_side_size(height, width, self.input_size)

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """``float32 [1, 3, S, S]`` normalised, zero-padded input for an RGB image."""
        new_h, new_w = self.resized_size(image.height, image.width)
        resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)
        normalised = _normalise(pixels.permute(2, 0, 1), self.pixel_mean, self.pixel_std)
        padded = torch.zeros((1, 3, self.input_size, self.input_size), dtype=torch.float32)
        padded[0, :, :new_h, :new_w] = normalised
        return padded

    def points_to_input(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Map ``float [N, 2]`` ``(x, y)`` image pixels to the resized input's pixels."""
        new_h, new_w = self.resized_size(height, width)
        scale = torch.tensor([new_w / width, new_h / height], dtype=points.dtype)
        return points * scale.to(points.device)

    def logits_to_image(
        self, logits: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-resolution mask logits back onto the image.

        Upscale to the padded input, crop the padding, resize to ``out_size``.

        Args:
            logits: ``float [N, h, w]`` decoder output (256x256 for released SAMs).
            image_size: ``(height, width)`` of the original image.
            out_size: ``(height, width)`` to return; usually ``image_size``.

        Returns:
            ``float32 [N, *out_size]`` logits.
        """
        new_h, new_w = self.resized_size(*image_size)
        full = soft_resize(logits, (self.input_size, self.input_size))
        return soft_resize(full[:, :new_h, :new_w], out_size)


@dataclass(frozen=True)
class Sam2InputTransform:
    """SAM 2's input geometry: the image stretched to the ``input_size`` square, no padding.

    Attributes:
        input_size: side of the square (1024 for the released SAM 2 / 2.1 models).
        pixel_mean, pixel_std: RGB normalisation on the 0-1 scale.
    """

    input_size: int = 1024
    pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """``float32 [1, 3, S, S]``: the 0-1 image resized (bilinear, antialiased), normalised."""
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        pixels = pixels.permute(2, 0, 1)[None]  # [1, 3, H, W]
        size = (self.input_size, self.input_size)
        resized = F.interpolate(
            pixels, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        return _normalise(resized, self.pixel_mean, self.pixel_std).contiguous()

    def points_to_input(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Map ``float [N, 2]`` ``(x, y)`` image pixels to the square input's pixels."""
        scale = torch.tensor(
            [self.input_size / width, self.input_size / height], dtype=points.dtype
        )
        return points * scale.to(points.device)

    def logits_to_image(
        self, logits: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-resolution logits ``float [N, h, w]`` (the whole square) resized to
        ``out_size``: the square covers the whole image, so nothing is cropped."""
        return soft_resize(logits, out_size)
