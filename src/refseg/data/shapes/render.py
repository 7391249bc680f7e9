"""Drawing ShapesRef: shape outlines, full-shape masks, textured backgrounds, object crops.

Pure functions of their arguments (randomness comes in through an explicit
``numpy.random.Generator``), so a scene re-renders to the same bytes.
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from refseg.data.shapes.words import COLORS, SHAPES
from refseg.errors import InputError
from refseg.masks import mask_bbox

if TYPE_CHECKING:  # pragma: no cover
    from refseg.data.shapes.scene import Scene

# Base RGB of each colour name; objects get a small per-object jitter on top.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 35),
    "purple": (145, 55, 190),
    "orange": (245, 135, 25),
    "white": (240, 240, 240),
}
assert tuple(COLOR_RGB) == COLORS, "every colour name needs an RGB value"

# Fill outside the object in crops: CLIP's normalisation mean (0.481, 0.458, 0.408) * 255,
# so masked-out pixels become ~0 after CLIP normalisation (Global-Local CLIP, local branch).
CROP_FILL: tuple[int, int, int] = (122, 116, 104)

_STAR_INNER_RADIUS = 0.45  # inner/outer radius of the five-pointed star
_CROSS_HALF_WIDTH = 0.32  # half the arm width of the cross, outer radius 1
_CURVE_POINTS = 48  # vertices used for the circle and the heart


def _regular(count: int, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(count) / count)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    points = _regular(10, -90.0)
    points[1::2] *= _STAR_INNER_RADIUS
    return points


def _cross() -> np.ndarray:
    w = _CROSS_HALF_WIDTH
    return np.array(
        [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
         (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)],
        dtype=np.float64,
    )  # fmt: skip


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, _CURVE_POINTS, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)  # image coordinates: y grows downwards, lobes on top


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@cache
def unit_outline(shape: str) -> np.ndarray:
    """Outline of ``shape`` as ``float64 [K, 2]`` (x, y) vertices: area 1, bbox centred on 0.

    Scaling by ``s`` gives a polygon of area ``s**2``, so sizes compare across categories.
    """
    builders = {
        "circle": lambda: _regular(_CURVE_POINTS, 0.0),
        "square": lambda: _regular(4, 45.0),
        "triangle": lambda: _regular(3, -90.0),
        "star": _star,
        "hexagon": lambda: _regular(6, 0.0),
        "cross": _cross,
        "heart": _heart,
    }
    if shape not in builders:
        raise InputError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    points = builders[shape]()
    points = points - (points.min(axis=0) + points.max(axis=0)) / 2.0
    points = points / math.sqrt(_polygon_area(points))
    points.setflags(write=False)
    return points


def place_outline(shape: str, scale: float, rotation_deg: float) -> np.ndarray:
    """Outline scaled to area ``scale**2`` and rotated, still centred on 0: ``float64 [K, 2]``."""
    theta = math.radians(rotation_deg)
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    return unit_outline(shape) @ rot * scale


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Filled polygon ``float [K, 2]`` (x, y pixel coordinates) as a ``bool [H, W]`` mask."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=255)
    return np.asarray(canvas) > 0


@cache
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every pixel, ``float32 [H, W]`` each (read-only, cached)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-saturation textured background, ``float32 [H, W, 3]`` in 0..255.

    A linear gradient between two greyish tints plus smooth colour blobs (both built on a
    coarse grid and upsampled bilinearly, which keeps the gradient linear), and half the time
    faint stripes: enough texture that objects cannot be found by thresholding.
    """
    grid = int(rng.integers(3, 8))
    ends = rng.uniform(60.0, 170.0, size=(2, 1)) + rng.uniform(-18.0, 18.0, size=(2, 3))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    gy, gx = np.mgrid[0:grid, 0:grid] / (grid - 1)
    ramp = gx * math.cos(angle) + gy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    coarse = ends[0] + (ends[1] - ends[0]) * ramp[..., None]
    coarse += rng.normal(0.0, rng.uniform(6.0, 18.0), size=(grid, grid, 3))
    coarse_image = Image.fromarray(np.clip(np.rint(coarse), 0, 255).astype(np.uint8))
    image = np.asarray(coarse_image.resize((width, height), Image.BILINEAR), dtype=np.float32)

    if rng.random() < 0.5:
        ys, xs = _pixel_grid(height, width)
        amplitude = rng.uniform(4.0, 12.0)
        period = rng.uniform(8.0, 40.0)
        phi = rng.uniform(0.0, math.pi)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        arg = (xs * math.cos(phi) + ys * math.sin(phi)) * np.float32(2.0 * math.pi / period)
        image = image + (np.float32(amplitude) * np.sin(arg + np.float32(phase)))[..., None]
    return image


def compose(
    background: np.ndarray,
    full_masks: list[np.ndarray],
    colors: list[tuple[int, int, int]],
    noise_std: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Paint flat-coloured objects in order (later ones on top), add pixel noise.

    Args:
        background: ``float32 [H, W, 3]`` in 0..255.
        full_masks: one ``bool [H, W]`` full-shape mask per object, in drawing order.
        colors: one RGB per object.
        noise_std: standard deviation of the (uniform) pixel noise added everywhere.
    Returns:
        ``uint8 [H, W, 3]`` image.
    """
    canvas = Image.fromarray(np.clip(np.rint(background), 0, 255).astype(np.uint8))
    for mask, color in zip(full_masks, colors, strict=True):
        canvas.paste(tuple(color), None, Image.fromarray(mask))
    # Uniform noise of the requested std: cheaper to draw than Gaussian, looks the same.
    spread = np.float32(2.0 * math.sqrt(3.0) * noise_std)
    noise = (rng.random(size=background.shape, dtype=np.float32) - np.float32(0.5)) * spread
    image = np.asarray(canvas, dtype=np.float32) + noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_object_crop(scene: Scene, index: int, size: int = 224) -> Image.Image:
    """The object's visible pixels on :data:`CROP_FILL`, cropped to its bbox, resized.

    Mimics the local branch of Global-Local CLIP (mask, crop to the bounding box, resize to
    the square CLIP input; the aspect ratio is not kept). Returns an RGB ``size x size`` image.
    """
    if not 0 <= index < len(scene.objects):
        raise InputError(f"object index {index} out of range for {len(scene.objects)} objects")
    if size < 1:
        raise InputError(f"crop size must be positive; got {size}")
    mask = scene.masks[index]
    box = mask_bbox(mask)
    if box is None:  # cannot happen for sampled scenes: every object keeps >= half its pixels
        raise InputError(f"object {index} has no visible pixels")
    x, y, w, h = box
    pixels = np.where(mask[..., None], scene.image, np.array(CROP_FILL, dtype=np.uint8))
    crop = Image.fromarray(np.ascontiguousarray(pixels[y : y + h, x : x + w]))
    return crop.resize((size, size), Image.BICUBIC)
