"""Image-side hard negatives: a *twin* of a scene that makes its composition caption false.

Text-only hard negatives (:mod:`.negatives`) ask an image to prefer "a red circle left of a
blue star" over "a blue star left of a red circle"; the image encoder gets little pressure
from that, as a model can lower the loss by moving texts. A twin asks the converse: the same
caption must prefer its own image over a picture that differs *only* in the composition
(the NegCLIP/ARO idea from the image side), so the image encoder has to encode which object
is where and which colour belongs to which shape.

- relation and position captions: the scene mirrored (left/right captions horizontally,
  above/below and top/bottom vertically); every object keeps its look, every position flips;
- binding captions ("a red circle and a blue star"): the two named objects swap colours,
  repainted in place (pixel noise and everything else kept).

The twin's caption is the recomposed caption (arguments swapped, opposite side, colours
swapped), and both are checked with :func:`.negatives.truth`: the twin caption clearly true
for the twin and the original caption clearly false for it, else there is no twin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from refseg.data.shapes.negatives import (
    OPPOSITE,
    Caption,
    ListCaption,
    PositionCaption,
    RelationCaption,
    parse_caption,
    truth,
)
from refseg.data.shapes.scene import Scene

_HORIZONTAL = ("left", "right")


@dataclass(frozen=True)
class Twin:
    """A twin scene and its caption (true for it; the original caption is false for it)."""

    scene: Scene
    caption: str
    kind: str  # "mirror" or "swap-colors"


def mirror_scene(scene: Scene, horizontal: bool) -> Scene:
    """The scene flipped left-right (``horizontal``) or top-bottom: image, masks and object
    centres; shapes, colours and sizes unchanged."""
    axis = 1 if horizontal else 0
    width, height = scene.width, scene.height
    objects = tuple(
        replace(
            obj,
            center=(width - 1 - obj.center[0], obj.center[1])
            if horizontal
            else (obj.center[0], height - 1 - obj.center[1]),
            rotation=-obj.rotation,
        )
        for obj in scene.objects
    )
    return Scene(
        objects=objects,
        image=np.ascontiguousarray(np.flip(scene.image, axis=axis)),
        masks=np.ascontiguousarray(np.flip(scene.masks, axis=axis + 1)),
        full_areas=scene.full_areas.copy(),
        config=scene.config,
    )


def swap_colors(scene: Scene, i: int, j: int) -> Scene:
    """Objects ``i`` and ``j`` with their colours (names and painted RGB) exchanged: each
    one's visible pixels shift by the RGB difference, which keeps the pixel noise."""
    a, b = scene.objects[i], scene.objects[j]
    image = scene.image.astype(np.int16)
    for k, old, new in ((i, a.rgb, b.rgb), (j, b.rgb, a.rgb)):
        shift = np.subtract(new, old).astype(np.int16)
        image[scene.masks[k]] += shift
    objects = list(scene.objects)
    objects[i] = replace(a, color=b.color, rgb=b.rgb)
    objects[j] = replace(b, color=a.color, rgb=a.rgb)
    return Scene(
        objects=tuple(objects),
        image=np.clip(image, 0, 255).astype(np.uint8),
        masks=scene.masks,
        full_areas=scene.full_areas,
        config=scene.config,
    )


def _mirrored(caption: RelationCaption | PositionCaption, scene: Scene) -> tuple[Scene, Caption]:
    if isinstance(caption, RelationCaption):
        swapped = replace(caption, mentions=caption.mentions[::-1])
        return mirror_scene(scene, caption.relation in _HORIZONTAL), swapped
    opposite = replace(caption, side=OPPOSITE[caption.side], phrase=0)
    return mirror_scene(scene, caption.side in _HORIZONTAL), opposite


def _recolored(caption: ListCaption, scene: Scene) -> tuple[Scene, Caption] | None:
    """Colours of the two mentioned objects swapped, when the caption names exactly two
    single objects of different colours and each matches exactly one object."""
    if len(caption.mentions) != 2 or any(m.number != 1 for m in caption.mentions):
        return None
    first, second = caption.mentions
    if first.color is None or second.color is None or first.color == second.color:
        return None
    chosen = [m.filter.select(scene) for m in caption.mentions]
    if any(len(found) != 1 for found in chosen) or chosen[0] == chosen[1]:
        return None
    swapped = (replace(first, color=second.color), replace(second, color=first.color))
    return swap_colors(scene, chosen[0][0], chosen[1][0]), replace(caption, mentions=swapped)


def make_twin(caption: str | Caption, scene: Scene) -> Twin | None:
    """The twin of ``scene`` for a relation, position or two-object list caption, or ``None``
    (other captions, or the twin would not clearly flip the caption's truth)."""
    structure = parse_caption(caption) if isinstance(caption, str) else caption
    if isinstance(structure, RelationCaption | PositionCaption):
        twin_scene, twin_caption = _mirrored(structure, scene)
        kind = "mirror"
    elif isinstance(structure, ListCaption):
        made = _recolored(structure, scene)
        if made is None:
            return None
        (twin_scene, twin_caption), kind = made, "swap-colors"
    else:
        return None
    if truth(twin_caption, twin_scene) is not True or truth(structure, twin_scene) is not False:
        return None
    return Twin(twin_scene, twin_caption.text, kind)
