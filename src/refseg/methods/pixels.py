"""How an image becomes the pixels Global-Local CLIP feeds to CLIP: two named presets.

``reference`` (the default) is what the authors' evaluation code (Zero-shot-RIS,
``Our_method_with_free_solo.py`` with its ``ReferDataset``) does, step by step:

1. the image's shorter side is resized to 800 with PIL bilinear (longer side
   ``int(800 * long / short)``; an image whose shorter side is already 800 is kept);
2. ``/255`` and ImageNet mean/std normalisation (not CLIP's statistics);
3. global input: that tensor resized to ``S x S`` (bilinear, ``align_corners=False``,
   no antialiasing: torchvision 0.11's tensor resize);
4. local crops: the 800-px tensor is resized back to the masks' resolution (the
   original image size, where FreeSOLO returns its masks; bilinear, no antialiasing);
   outside each mask the value is ImageNet's mean ``[0.485, 0.456, 0.406]`` *in
   normalised units* (the code adds the mean to the normalised tensor, so the fill is
   not zero); the crop box is FreeSOLO's (:func:`freesolo_box`), and the crop is resized
   to ``S x S`` (bilinear, no antialiasing).

``clean`` is refseg's own pipeline: CLIP's mean/std, the image squashed to ``S x S`` with
PIL bicubic, pixels outside the mask set to CLIP's mean (0 after normalising), the mask's
tight bounding box, PIL bicubic resize. It is what CLIP was trained to see.

All resizes of tensors are done with ``torch.nn.functional.interpolate`` (no torchvision).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.clip.config import PreprocessConfig
from refseg.clip.preprocess import mean_color, normalize
from refseg.masks import mask_bbox

if TYPE_CHECKING:
    from refseg.clip.loaded import LoadedClip
    from refseg.methods.base import ImageContext

PIXEL_PRESETS = ("reference", "clean")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_SHORT_SIDE = 800


def short_side_size(width: int, height: int, short: int = REFERENCE_SHORT_SIDE) -> tuple[int, int]:
    """``(width, height)`` with the shorter side ``short``, the longer one truncated to int."""
    if min(width, height) == short:
        return width, height
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def reference_image_tensor(image: Image.Image) -> torch.Tensor:
    """Step 1-2: ``float32 [3, H', W']``, shorter side 800, ImageNet-normalised."""
    rgb = image.convert("RGB")
    size = short_side_size(*rgb.size)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def resize_tensor(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[..., C, H, W]`` to ``size = (h, w)``, no antialiasing."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    batch = pixels if pixels.dim() == 4 else pixels[None]
    out = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=False)
    return out if pixels.dim() == 4 else out[0]


def reference_global_input(big: torch.Tensor, size: int) -> torch.Tensor:
    """Step 3: ``[1, 3, S, S]`` from the 800-px tensor."""
    return resize_tensor(big, (size, size))[None]


def freesolo_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """FreeSOLO's box ``(x1, y1, x2, y2)`` of a mask, as integers; ``None`` when empty.

    FreeSOLO does not take the tight box. Per axis it projects the mask (a row or column
    is covered when any pixel in it is), takes the centre of mass of the covered indices
    and the count of covered rows/columns, and spans centre +- count / 2. The authors' code
    then truncates the float box toward zero. For a solid mask this drops the last row and
    column; for a mask in pieces the box can miss parts of it. A box that would be empty
    (a mask one pixel wide in the first column) is widened to one pixel: the reference
    would fail there.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y1, y2 = _span(rows)
    x1, x2 = _span(cols)
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def _span(covered: np.ndarray) -> tuple[int, int]:
    centre = covered.astype(np.float32).mean(dtype=np.float32)
    half = np.float32(0.5) * np.float32(covered.size)
    return int(centre - half), int(centre + half)


def reference_crops(big: torch.Tensor, masks: np.ndarray, size: int) -> torch.Tensor:
    """Step 4: ``[N, 3, S, S]`` local inputs from the 800-px tensor and masks ``[N, H, W]``."""
    if len(masks) == 0:
        return torch.zeros((0, 3, size, size))
    source = resize_tensor(big, tuple(masks.shape[-2:]))
    fill = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    crops = []
    for mask in masks:
        box = freesolo_box(mask)
        if box is None:  # an empty proposal: all fill
            crops.append(fill.expand(3, size, size).clone())
            continue
        x1, y1, x2, y2 = box
        inside = torch.from_numpy(mask[y1:y2, x1:x2].astype(np.float32))
        region = source[:, y1:y2, x1:x2] * inside + (1.0 - inside) * fill
        crops.append(resize_tensor(region, (size, size)))
    return torch.stack(crops)


def masked_crops(image: Image.Image, masks: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """Local-context inputs of the ``clean`` pixel preset: ``[N, 3, S, S]`` float32.

    Each crop is the image with pixels outside the mask set to the normalisation mean (so
    they become 0 after normalising), cropped to the mask's bounding box and resized to
    ``S x S`` (PIL bicubic; the aspect is not kept, as in the reference).
    """
    array = np.asarray(image.convert("RGB"))
    fill = np.array(mean_color(config), dtype=np.uint8)
    size = config.image_size
    crops = []
    for mask in masks:
        box = mask_bbox(mask)
        if box is None:  # an empty proposal: an all-mean crop
            crops.append(np.broadcast_to(fill, (size, size, 3)))
            continue
        x, y, w, h = box
        region = np.where(mask[y : y + h, x : x + w, None], array[y : y + h, x : x + w], fill)
        crop = Image.fromarray(np.ascontiguousarray(region)).resize(
            (size, size), Image.Resampling.BICUBIC
        )
        crops.append(np.asarray(crop))
    if not crops:
        return torch.zeros((0, 3, size, size))
    return torch.stack([normalize(c, config) for c in crops])


def check_preset(name: str) -> str:
    """``name`` if it is a pixel preset; ``ValueError`` otherwise."""
    if name not in PIXEL_PRESETS:
        raise ValueError(f"pixels must be one of {PIXEL_PRESETS}; got {name!r}")
    return name


def prepare_pixels(
    clip: LoadedClip, image: Image.Image, preset: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global input ``[1, 3, S, S]`` and the crop source (``reference`` only) of ``image``."""
    size = clip.config.preprocess.image_size
    if check_preset(preset) == "clean":
        return clip.preprocess(image, mode="squash")[None], None
    big = reference_image_tensor(image)
    return reference_global_input(big, size), big


def local_inputs(clip: LoadedClip, context: ImageContext) -> torch.Tensor:
    """The local-context crops ``[N, 3, S, S]`` of the context's proposals, per its preset."""
    masks = context.proposals.masks
    if context.pixel_preset == "reference":
        if context.crop_source is None:
            raise ValueError("a reference-preset context needs its crop_source")
        return reference_crops(context.crop_source, masks, clip.config.preprocess.image_size)
    return masked_crops(context.image, masks, clip.config.preprocess)
