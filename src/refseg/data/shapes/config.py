"""Configuration of the ShapesRef world: scene sampling, rendering and the referring margins.

ShapesRef is our own synthetic benchmark (no paper to cite); the values below were chosen so
that a tiny CLIP trained for minutes on CPU can learn the world while referring stays
non-trivial (repeated shapes and colours, occlusion, textured backgrounds).
"""

from __future__ import annotations

from dataclasses import dataclass

from refseg.errors import InputError

# Size classes as ``(name, low, high)`` of an object's full-shape side ``sqrt(area)``, in
# fractions of the image side. Neighbouring classes differ by an area ratio >= 1.5, the same
# margin the comparatives use, so "large" and "medium" never look alike.
DEFAULT_SIZE_CLASSES: tuple[tuple[str, float, float], ...] = (
    ("small", 0.080, 0.105),
    ("medium", 0.135, 0.170),
    ("large", 0.210, 0.270),
)


@dataclass(frozen=True)
class ShapesConfig:
    """How ShapesRef scenes are sampled and how expressions are judged unambiguous.

    Positions and margins are fractions of the image side so the world scales with
    ``image_size``.
    """

    image_size: int = 224  # CLIP's input resolution, so no resize is needed downstream
    min_objects: int = 2
    max_objects: int = 6
    size_classes: tuple[tuple[str, float, float], ...] = DEFAULT_SIZE_CLASSES
    max_rotation_deg: float = 20.0  # non-circles are rotated by up to this much either way
    min_visible_fraction: float = 0.5  # reject placements that hide > 50% of an earlier object
    placement_tries: int = 30  # tries to place one object before giving up on it
    scene_tries: int = 50  # scenes re-sampled before raising (never hit in practice)
    color_jitter: float = 14.0  # +- per RGB channel, per object
    pixel_noise: tuple[float, float] = (2.0, 7.0)  # range of the Gaussian noise std per image
    # Referring semantics (see programs.py).
    area_ratio: float = 1.5  # "biggest"/"smallest": winner's visible area vs every other
    position_margin: float = 0.12  # extremes and relations: clear gap, fraction of the side
    side_margin: float = 0.05  # "on the left": centroid at most 0.5 - side_margin from the edge

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise InputError(f"image_size must be >= 32 pixels; got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise InputError(
                f"need 1 <= min_objects <= max_objects; got {self.min_objects}, {self.max_objects}"
            )
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise InputError("min_visible_fraction must lie in (0, 1]")
        if self.area_ratio < 1.0 or self.position_margin < 0.0 or self.side_margin < 0.0:
            raise InputError("area_ratio must be >= 1 and the margins >= 0")
        if not self.size_classes:
            raise InputError("size_classes must not be empty")
        for name, low, high in self.size_classes:
            if not 0.0 < low <= high < 0.5:
                raise InputError(f"size class {name!r}: need 0 < low <= high < 0.5")

    @property
    def size_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.size_classes)
