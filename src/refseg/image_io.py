"""The one image loader: any path, bytes or array in, an 8-bit RGB ``PIL.Image`` out.

Handles the modes people actually upload (RGBA, LA, palette, greyscale, 16-bit and float
greyscale, CMYK, 1-bit), applies EXIF orientation, and can cap the pixel count.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refseg.errors import ImageError

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

# Images above this many pixels are downscaled before proposals and features; results are
# mapped back to the original size. 2048 x 2048 keeps SAM and the crops affordable.
DEFAULT_MAX_PIXELS = 2048 * 2048
# Refuse to even decode images beyond this many pixels (Pillow's bomb check is 2x its limit).
DECODE_PIXEL_LIMIT = 400_000_000


def load_image(source: ImageSource) -> Image.Image:
    """Load ``source`` as an 8-bit RGB image.

    Args:
        source: a file path, encoded image bytes, a PIL image, or an ``uint8``/float array
            of shape ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``.

    Raises:
        ImageError: the file is missing, unreadable, corrupt or of an unsupported kind.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _array_to_image(source)
    else:
        image = _open(source)
    return to_rgb(image)


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    if isinstance(source, bytes):
        name, stream = "uploaded image", io.BytesIO(source)
        if not source:
            raise ImageError("the uploaded image is empty (0 bytes)")
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ImageError(f"image not found: {name}")
        stream = path.open("rb")
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = DECODE_PIXEL_LIMIT // 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to decode safely: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read {name}: not a valid image file ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
        if not isinstance(source, bytes):
            stream.close()
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not lose an otherwise readable image
        return image


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"image array must be [H, W], [H, W, 3] or [H, W, 4]; got {array.shape}")
    if array.dtype != np.uint8:
        array = _to_uint8(array.astype(np.float64))
    return Image.fromarray(array)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale a numeric array to 0..255 using its own range (16-bit, float, int32 images)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if 0.0 <= low and high <= 1.0:
        low, high = 0.0, 1.0
    elif 0.0 <= low and high <= 255.0:
        low, high = 0.0, 255.0
    elif 0.0 <= low and high <= 65535.0:
        low, high = 0.0, 65535.0
    scale = (high - low) or 1.0
    scaled = np.nan_to_num((values - low) / scale, nan=0.0)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float64)))
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert an image of mode {image.mode!r} to RGB: {exc}") from None


def cap_pixels(image: Image.Image, max_pixels: int | None) -> tuple[Image.Image, float]:
    """Downscale ``image`` so that width*height <= ``max_pixels``; returns (image, scale).

    ``scale`` is new_size / old_size (1.0 when nothing changed). Map masks back to the
    original size with :func:`refseg.masks.resize_masks`. A downscale is announced with a
    :class:`UserWarning` (the CLI prints it as one ``refseg: warning:`` line), so that a
    user knows the work was done at a lower resolution.
    """
    width, height = image.size
    if max_pixels is None or width * height <= max_pixels:
        return image, 1.0
    scale = (max_pixels / float(width * height)) ** 0.5
    new_size = (max(1, int(width * scale)), max(1, int(height * scale)))
    warnings.warn(
        f"the {width}x{height} image is processed at {new_size[0]}x{new_size[1]} (over "
        f"{max_pixels} pixels: --max-pixels / max_pixels); masks are returned at "
        f"{width}x{height}",
        stacklevel=2,
    )
    return image.resize(new_size, Image.Resampling.BILINEAR), new_size[0] / width
