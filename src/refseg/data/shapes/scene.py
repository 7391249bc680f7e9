"""Sampling ShapesRef scenes: 2-6 coloured shapes on a textured background, with visible masks.

Objects are placed one by one; a placement is rejected when it would hide more than
``1 - min_visible_fraction`` of an earlier object, or overlap an object of the same colour
(the boundary between them would be invisible). Each scene draws its shapes and colours from
small per-scene pools, so repeats are common and referring needs more than one word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from refseg.data.shapes.config import ShapesConfig
from refseg.data.shapes.render import (
    COLOR_RGB,
    compose,
    place_outline,
    polygon_mask,
    render_background,
)
from refseg.data.shapes.words import COLORS, SHAPES
from refseg.errors import InputError

# Independent random streams per use, so dataset, training and probe scenes never coincide
# even for the same seed ("negatives" draws hard negatives for training pairs).
STREAMS: dict[str, int] = {"dataset": 0, "training": 1, "probe": 2, "negatives": 3}
_MAX_POOL = 4  # a scene uses at most this many distinct shapes (and colours)


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: its attributes and where it was drawn.

    ``center`` is the (x, y) pixel of the outline's bbox centre, ``scale`` the side of a
    square of equal area (pixels), ``rgb`` the colour actually painted (after jitter).
    """

    shape: str
    color: str
    size_name: str
    center: tuple[float, float]
    scale: float
    rotation: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene.

    Attributes:
        objects: in drawing order (later ones occlude earlier ones).
        image: ``uint8 [H, W, 3]``.
        masks: ``bool [N, H, W]`` visible pixels of each object.
        full_areas: ``int64 [N]`` pixel count of each object's unoccluded shape.
        config: the configuration it was sampled with (margins for the referring checker).
    """

    objects: tuple[ShapeObject, ...]
    image: np.ndarray
    masks: np.ndarray
    full_areas: np.ndarray
    config: ShapesConfig = field(default_factory=ShapesConfig)

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @cached_property
    def areas(self) -> np.ndarray:
        """``int64 [N]`` visible pixel counts."""
        return self.masks.reshape(len(self.objects), -1).sum(axis=1).astype(np.int64)

    @cached_property
    def centroids(self) -> np.ndarray:
        """``float64 [N, 2]`` (x, y) centroids of the visible pixels, as fractions of W and H."""
        ys, xs = np.mgrid[0 : self.height, 0 : self.width]
        flat = self.masks.reshape(len(self.objects), -1).astype(np.float64)
        areas = np.maximum(self.areas, 1).astype(np.float64)
        cx = flat @ xs.ravel().astype(np.float64) / areas / self.width
        cy = flat @ ys.ravel().astype(np.float64) / areas / self.height
        return np.stack([cx, cy], axis=1)

    def pil_image(self) -> Image.Image:
        return Image.fromarray(self.image)


def scene_rng(seed: int, index: int, stream: str = "dataset") -> np.random.Generator:
    """The generator for scene ``index`` of ``seed``: independent of how many are drawn."""
    if seed < 0 or index < 0:
        raise InputError(f"seed and index must be non-negative; got {seed}, {index}")
    return np.random.default_rng([STREAMS[stream], seed, index])


def _size_class(config: ShapesConfig, rng: np.random.Generator) -> tuple[str, float]:
    name, low, high = config.size_classes[int(rng.integers(len(config.size_classes)))]
    return name, float(rng.uniform(low, high)) * config.image_size


def _sample_object(
    rng: np.random.Generator,
    config: ShapesConfig,
    shapes: np.ndarray,
    colors: np.ndarray,
) -> tuple[ShapeObject, np.ndarray]:
    """One object fully inside the image and its full-shape mask ``bool [H, W]``."""
    size = config.image_size
    shape = str(shapes[int(rng.integers(len(shapes)))])
    color = str(colors[int(rng.integers(len(colors)))])
    size_name, scale = _size_class(config, rng)
    rotation = 0.0 if shape == "circle" else float(rng.uniform(-1, 1) * config.max_rotation_deg)
    outline = place_outline(shape, scale, rotation)
    low, high = -outline.min(axis=0), size - 1 - outline.max(axis=0)
    center = rng.uniform(low, np.maximum(high, low))
    jitter = rng.uniform(-config.color_jitter, config.color_jitter, size=3)
    rgb = tuple(int(v) for v in np.clip(np.rint(np.add(COLOR_RGB[color], jitter)), 0, 255))
    obj = ShapeObject(
        shape=shape,
        color=color,
        size_name=size_name,
        center=(float(center[0]), float(center[1])),
        scale=scale,
        rotation=rotation,
        rgb=rgb,  # type: ignore[arg-type]
    )
    return obj, polygon_mask(outline + center, size, size)


def _try_scene(rng: np.random.Generator, config: ShapesConfig) -> Scene | None:
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    pool = min(count, _MAX_POOL)
    shapes = rng.choice(SHAPES, size=int(rng.integers(1, pool + 1)), replace=False)
    colors = rng.choice(COLORS, size=int(rng.integers(1, pool + 1)), replace=False)
    objects: list[ShapeObject] = []
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    full_areas: list[int] = []
    for _ in range(count):
        for _ in range(config.placement_tries):
            obj, mask = _sample_object(rng, config, shapes, colors)
            uncovered = [v & ~mask for v in visible]
            same_color = [f for o, f in zip(objects, full, strict=True) if o.color == obj.color]
            if all(
                int(u.sum()) >= config.min_visible_fraction * area
                for u, area in zip(uncovered, full_areas, strict=True)
            ) and not any((mask & f).any() for f in same_color):
                objects.append(obj)
                full.append(mask)
                visible = [*uncovered, mask]
                full_areas.append(int(mask.sum()))
                break
    if len(objects) < config.min_objects:
        return None
    background = render_background(rng, config.image_size, config.image_size)
    noise = float(rng.uniform(*config.pixel_noise))
    image = compose(background, full, [o.rgb for o in objects], noise, rng)
    return Scene(
        objects=tuple(objects),
        image=image,
        masks=np.stack(visible),
        full_areas=np.array(full_areas, dtype=np.int64),
        config=config,
    )


def sample_scene(rng: np.random.Generator, config: ShapesConfig | None = None) -> Scene:
    """Sample and render one scene (deterministic for the generator's state)."""
    config = config or ShapesConfig()
    for _ in range(config.scene_tries):
        scene = _try_scene(rng, config)
        if scene is not None:
            return scene
    raise InputError(
        f"could not place {config.min_objects} objects in {config.scene_tries} tries; "
        "lower min_objects or the size classes"
    )
