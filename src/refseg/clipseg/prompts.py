"""CLIPSeg's prompts: text templates and the visual prompt engineering of the paper (§4.1).

Visual prompt engineering (paper Tab. 2; official ``evaluation_utils.img_preprocess`` with
``blur=3, bg_fac=0.1, center_context=0.1``), on a *normalised* support image ``x`` and its
mask ``m``:

1. ``x' = m * x + f * G(x) * (1 - m)``: the background darkened towards the mean colour
   (normalised 0) by ``f = 0.1`` and blurred by a 15x15 Gaussian (sigma 3, reflect-101
   border, as OpenCV's ``GaussianBlur``);
2. crop ``x'`` to the mask's box grown by 10 % of its size on each side (clipped to the
   image, ends truncated to integers as the official ``crop_mask``);
3. zero-pad to a centred square and resize to the model's input size (nearest).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refseg.errors import InputError

# The 9 templates of the official training code (a random one per phrase during training).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photograph of a {}.",
    "an image of a {}.",
    "{}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a bad photo of a {}.",
    "a photo of one {}.",
    "a photo of the {}.",
)
FIXED_TEMPLATE = TEMPLATES[0]
TEMPLATE_MODES = ("plain", "fixed", "random")


def apply_template(phrase: str, mode: str = "plain", rng: random.Random | None = None) -> str:
    """The text fed to CLIP: ``plain`` as given (the PhraseCut scorer's choice), ``fixed``
    in "a photo of a {}.", ``random`` in a random one of :data:`TEMPLATES` (training)."""
    if mode == "plain":
        return phrase
    if mode == "fixed":
        return FIXED_TEMPLATE.format(phrase)
    if mode == "random":
        return (rng or random).choice(TEMPLATES).format(phrase)
    raise InputError(f"template mode must be one of {TEMPLATE_MODES}; got {mode!r}")


@dataclass(frozen=True)
class VisualPromptConfig:
    """The engineering applied to a support image (defaults: the paper's best, Tab. 2).

    Attributes:
        darken: background factor f (1.0 leaves the background, 0.0 blacks it out).
        blur: blur the background with a ``blur_kernel`` square Gaussian of ``blur_sigma``.
        crop: crop to the mask box grown by ``context`` per side, pad square, resize.
        context: growth of the crop box per side, as a fraction of the box size.
    """

    darken: float = 0.1
    blur: bool = True
    blur_kernel: int = 15
    blur_sigma: float = 3.0
    crop: bool = True
    context: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.darken <= 1.0:
            raise InputError(f"darken must be in [0, 1]; got {self.darken}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise InputError(f"blur_kernel must be odd and positive; got {self.blur_kernel}")
        if self.blur_sigma <= 0:
            raise InputError(f"blur_sigma must be positive; got {self.blur_sigma}")
        if self.context < 0:
            raise InputError(f"context must be >= 0; got {self.context}")


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """1-D Gaussian weights summing to 1 (OpenCV's ``getGaussianKernel`` for sigma > 0)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(x**2) / (2 * sigma**2))
    return weights / weights.sum()


def gaussian_blur(pixels: torch.Tensor, size: int = 15, sigma: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur of ``[C, H, W]`` with a reflect-101 border (``dcb|abcd|cba``)."""
    pad = size // 2
    if min(pixels.shape[-2:]) <= pad:
        raise InputError(
            f"image of {tuple(pixels.shape[-2:])} pixels is too small for a {size}x{size} blur"
        )
    kernel = gaussian_kernel(size, sigma).to(pixels.dtype)
    channels = pixels.shape[0]
    x = F.pad(pixels[None], (pad, pad, pad, pad), mode="reflect")  # torch "reflect" = reflect-101
    x = F.conv2d(x, kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    x = F.conv2d(x, kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return x[0]


def crop_box(mask: torch.Tensor, context: float) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (ends exclusive) of the mask grown by ``context``."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise InputError("the prompt mask is empty: mark the example object in the mask")
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    height, width = bottom - top, right - left
    size_h, size_w = mask.shape
    return (
        int(max(0, top - context * height)),
        int(min(size_h, bottom + context * height)),
        int(max(0, left - context * width)),
        int(min(size_w, right + context * width)),
    )


def pad_to_square(pixels: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``[C, H, W]`` to a centred square (the extra pixel, if odd, right/bottom)."""
    height, width = pixels.shape[-2:]
    if height > width:
        left = (height - width) // 2
        return F.pad(pixels, (left, height - width - left, 0, 0))
    top = (width - height) // 2
    return F.pad(pixels, (0, 0, top, width - height - top))


def engineer_visual_prompt(
    pixels: torch.Tensor, mask: torch.Tensor, size: int, config: VisualPromptConfig | None = None
) -> torch.Tensor:
    """A normalised support image ``[3, H, W]`` and its mask ``[H, W]`` -> ``[3, size, size]``.

    See the module docstring for the steps; ``config`` switches each off or changes it.
    """
    config = config or VisualPromptConfig()
    if pixels.shape[-2:] != mask.shape:
        raise InputError(
            f"prompt mask {tuple(mask.shape)} and image {tuple(pixels.shape[-2:])} differ in size"
        )
    m = mask.to(pixels.dtype)[None]
    if not mask.any():
        raise InputError("the prompt mask is empty: mark the example object in the mask")
    background = (
        gaussian_blur(pixels, config.blur_kernel, config.blur_sigma) if config.blur else pixels
    )
    x = m * pixels + config.darken * background * (1 - m)
    if config.crop:
        top, bottom, left, right = crop_box(mask.bool(), config.context)
        x = pad_to_square(x[:, top:bottom, left:right])
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="nearest")[0]
    return x
