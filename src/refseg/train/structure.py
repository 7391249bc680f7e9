"""Structure supervision for the shapes CLIPs: one linear head, shared by both towers, that
reads *which* object is *where* from an embedding (issue #13).

Why: with hard negatives alone the contrastive gradient of a swapped caption ("a red circle
left of a blue star" vs "a blue star left of a red circle") cancels while both towers are
order-blind, and relation and binding probes stay at chance (``benchmarks/negclip_trials.md``,
trials 1-7). The head maps an embedding to, per colour x shape type, a presence logit and an
(x, y) position. Images are told where each of their objects lies; captions are told which
types they mention and, for a relation or position caption, an *order* on the head's
positions ("left of": the first type's x below the second's). Because the head is shared, a
text embedding can only satisfy the order through the same coordinates the image embedding
uses, so the two towers meet in a space where "A left of B" and "B left of A" differ.

Optionally (``patch_weight``) the head also names the object under every final patch token of
the image tower. Why: linear probes on the patch tokens of every shapes CLIP read colour but not
shape (``benchmarks/structure_checks.py patches``), because in a scene an object spans a patch
or two and only enlarged crops ever showed its outline; a pooled embedding cannot bind a shape
that no token carries.

Targets are pure functions of a scene or a caption string; :func:`structure_loss` is a pure
function of tensors. The head is a training device only: it is not saved with the CLIP.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refseg.data.shapes.negatives import (
    Mention,
    PositionCaption,
    RelationCaption,
    parse_caption,
)
from refseg.data.shapes.scene import Scene
from refseg.data.shapes.words import COLORS, SHAPES
from refseg.train.loop import move_fields

TYPES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
TYPE_INDEX: dict[tuple[str, str], int] = {t: i for i, t in enumerate(TYPES)}
# Relation words as (axis, whether the first mention comes first on it): x grows rightwards,
# y downwards, as in the image.
RELATION_ORDER: dict[str, tuple[int, bool]] = {
    "left": (0, True),
    "right": (0, False),
    "above": (1, True),
    "below": (1, False),
}
# Position words as (axis, sign): +1 means the coordinate lies above 0.5.
SIDE_ORDER: dict[str, tuple[int, int]] = {
    "left": (0, -1),
    "right": (0, 1),
    "top": (1, -1),
    "bottom": (1, 1),
}
MARGIN = 0.1  # an order holds by at least this fraction of the image
SHARPNESS = 20.0  # slope of the soft hinge (softplus) on an order
ORDER_SCALE = 0.2  # the hinge's weight: 0.43 at a gap of 0, 0.14 at MARGIN
COORD_WEIGHT = 4.0  # image positions against presence, so both start near loss 1
BACKGROUND = len(TYPES)  # patch class of a patch no object covers enough
MIN_COVER = 0.25  # an object names a patch when its visible pixels fill this much of it
IGNORE = -100  # patch label of images without targets (crops): cross entropy skips them


@dataclass(frozen=True)
class ImageTargets:
    """What a scene shows, per type of :data:`TYPES`.

    Attributes:
        present: ``float32 [T]``, 1 where at least one object has the type.
        coords: ``float32 [T, 2]``, (x, y) centroid as fractions of the width and height.
        located: ``bool [T]``, the type occurs exactly once (so its position is defined).
        patches: ``int64 [g * g]`` type of the object under each patch of a g x g grid
            (row-major, :data:`BACKGROUND` for none), or ``None`` when not asked for.
    """

    present: np.ndarray
    coords: np.ndarray
    located: np.ndarray
    patches: np.ndarray | None = None


@dataclass(frozen=True)
class TextTargets:
    """What a caption says, per type.

    Attributes:
        present: ``float32 [T]``, 1 for the types its fully named mentions have.
        weight: ``float32 [T]``, 0 for the types a partial mention ("a red shape") may mean
            (their presence is unknown), else 1.
        order: ``(first, second, axis)``: ``coords[first, axis] < coords[second, axis]``;
            ``(-1, -1, -1)`` for none.
        side: ``(type, axis, sign)``: ``sign * (coords[type, axis] - 0.5) > 0``;
            ``(-1, -1, 0)`` for none.
    """

    present: np.ndarray
    weight: np.ndarray
    order: tuple[int, int, int] = (-1, -1, -1)
    side: tuple[int, int, int] = (-1, -1, 0)


def scene_targets(scene: Scene, patch_grid: int | None = None) -> ImageTargets:
    """The presence and the centroid of every type in ``scene``; with ``patch_grid`` also
    the type under each patch (:func:`patch_types`)."""
    count = np.zeros(len(TYPES), dtype=np.int64)
    coords = np.zeros((len(TYPES), 2), dtype=np.float32)
    for obj, centroid in zip(scene.objects, scene.centroids, strict=True):
        index = TYPE_INDEX[(obj.color, obj.shape)]
        count[index] += 1
        coords[index] = centroid
    patches = None if patch_grid is None else patch_types(scene, patch_grid)
    return ImageTargets((count > 0).astype(np.float32), coords, count == 1, patches)


def patch_types(scene: Scene, grid: int) -> np.ndarray:
    """``int64 [grid * grid]``, row-major: for each cell of a ``grid x grid`` split of the
    scene (the patch grid of a model that squashes it), the type of the object whose visible
    pixels cover most of the cell if they cover at least :data:`MIN_COVER` of it, else
    :data:`BACKGROUND`."""
    if not 1 <= grid <= min(scene.height, scene.width):
        raise ValueError(f"a {scene.width}x{scene.height} scene has no {grid}x{grid} grid")
    rows = np.arange(grid + 1) * scene.height // grid  # cell i starts at floor(i H / grid)
    cols = np.arange(grid + 1) * scene.width // grid
    labels = np.full(grid * grid, BACKGROUND, dtype=np.int64)
    if not len(scene):
        return labels
    masks = scene.masks.astype(np.int64)
    cover = np.add.reduceat(np.add.reduceat(masks, rows[:-1], axis=1), cols[:-1], axis=2)
    cell_area = np.outer(np.diff(rows), np.diff(cols))  # [grid, grid]
    fraction = (cover / cell_area).reshape(len(scene), -1)  # [N, grid * grid]
    best = fraction.argmax(axis=0)
    kinds = np.array([TYPE_INDEX[(o.color, o.shape)] for o in scene.objects])
    covered = fraction.max(axis=0) >= MIN_COVER
    labels[covered] = kinds[best[covered]]
    return labels


def _type_of(mention: Mention) -> int | None:
    """The type index of a mention naming both colour and shape, else ``None``."""
    shape = mention.filter.shape
    return None if shape is None or mention.color is None else TYPE_INDEX[(mention.color, shape)]


def _possible_types(mention: Mention) -> list[int]:
    """Every type a mention may mean."""
    shape = mention.filter.shape
    return [
        i for i, (c, s) in enumerate(TYPES) if (mention.color in (None, c)) and (shape in (None, s))
    ]


def _read_only(targets: TextTargets) -> TextTargets:
    """``targets`` with its arrays locked: :func:`text_targets` hands one object to every
    caller of the same caption."""
    targets.present.flags.writeable = targets.weight.flags.writeable = False
    return targets


@functools.lru_cache(maxsize=65536)
def text_targets(caption: str) -> TextTargets:
    """The types a caption mentions and the order it states; a caption outside the ShapesRef
    grammar gets no target (all weights 0). Cached: the arrays are read-only."""
    parsed = parse_caption(caption)
    present = np.zeros(len(TYPES), dtype=np.float32)
    weight = np.ones(len(TYPES), dtype=np.float32)
    if parsed is None:
        return _read_only(TextTargets(present, np.zeros_like(weight)))
    types = []
    for mention in parsed.mentions:
        index = _type_of(mention)
        types.append(index)
        if index is None:
            weight[_possible_types(mention)] = 0.0
        else:
            present[index] = 1.0
    order, side = (-1, -1, -1), (-1, -1, 0)
    if isinstance(parsed, RelationCaption) and None not in types and types[0] != types[1]:
        axis, first_leads = RELATION_ORDER[parsed.relation]
        first, second = types if first_leads else types[::-1]
        order = (first, second, axis)
    if isinstance(parsed, PositionCaption) and types[0] is not None:
        axis, sign = SIDE_ORDER[parsed.side]
        side = (types[0], axis, sign)
    return _read_only(TextTargets(present, weight, order, side))


@dataclass
class StructureBatch:
    """Targets of a micro-batch, stacked: images (``has_targets`` is 0 for crops) and texts
    (captions, then the padded negatives, in the order they are encoded)."""

    image_present: torch.Tensor  # [B, T]
    image_coords: torch.Tensor  # [B, T, 2]
    image_located: torch.Tensor  # bool [B, T]
    has_targets: torch.Tensor  # bool [B]
    patch_types: torch.Tensor | None  # int64 [B, P], IGNORE for crops; None when not asked
    text_present: torch.Tensor  # [R, T]
    text_weight: torch.Tensor  # [R, T]
    order: torch.Tensor  # int64 [R, 3]
    side: torch.Tensor  # int64 [R, 3]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StructureBatch:
        """Every tensor on ``device``."""
        return move_fields(self, device, non_blocking)


def collate_structure(images: list[ImageTargets | None], texts: list[str]) -> StructureBatch:
    """Stack the targets of ``images`` (``None``: a crop, no target) and of ``texts``."""
    types = len(TYPES)
    empty = ImageTargets(
        np.zeros(types, np.float32), np.zeros((types, 2), np.float32), np.zeros(types, bool)
    )
    filled = [t if t is not None else empty for t in images]
    said = [text_targets(t) for t in texts]
    patches = None
    with_patches = [t.patches for t in images if t is not None and t.patches is not None]
    if with_patches:
        blank = np.full_like(with_patches[0], IGNORE)
        patches = torch.from_numpy(
            np.stack([blank if t is None or t.patches is None else t.patches for t in images])
        )
    return StructureBatch(
        image_present=torch.from_numpy(np.stack([t.present for t in filled])),
        image_coords=torch.from_numpy(np.stack([t.coords for t in filled])),
        image_located=torch.from_numpy(np.stack([t.located for t in filled])),
        has_targets=torch.tensor([t is not None for t in images]),
        patch_types=patches,
        text_present=torch.from_numpy(np.stack([t.present for t in said])),
        text_weight=torch.from_numpy(np.stack([t.weight for t in said])),
        order=torch.tensor([t.order for t in said], dtype=torch.long),
        side=torch.tensor([t.side for t in said], dtype=torch.long),
    )


class StructureHead(nn.Module):
    """Linear map of a unit embedding (scaled by sqrt(dim), so entries are O(1)) to a presence
    logit and a sigmoid (x, y) per type: ``[N, D] -> ([N, T], [N, T, 2])``. With
    ``patch_width`` also a linear classifier of final patch tokens (after ``ln_post``) into
    the types and :data:`BACKGROUND` (:meth:`classify_patches`)."""

    def __init__(self, embed_dim: int, patch_width: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, 3 * len(TYPES))
        self.patches = None if patch_width is None else nn.Linear(patch_width, len(TYPES) + 1)

    def classify_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, P, C]`` patch tokens -> ``[B, P, T + 1]`` logits."""
        if self.patches is None:
            raise ValueError("this head was built without a patch classifier (patch_width)")
        return self.patches(tokens)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        unit = F.normalize(embedding, dim=-1) * math.sqrt(embedding.shape[-1])
        out = self.proj(unit).view(embedding.shape[0], len(TYPES), 3)
        return out[..., 0], torch.sigmoid(out[..., 1:])


def soft_order(gap: torch.Tensor) -> torch.Tensor:
    """Loss of an order that should hold by :data:`MARGIN`, given ``gap`` (how far it holds,
    negative when violated): a softplus hinge, falling to ~0 past twice the margin."""
    return ORDER_SCALE * F.softplus(-(gap - MARGIN) * SHARPNESS)


def patch_loss(
    head: StructureHead, patch_tokens: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross entropy of the head's patch classes against ``labels`` (``[B, P]``,
    :data:`IGNORE` rows skipped), averaged over object patches and over background patches
    separately and the two means averaged (most patches are background; a plain mean is
    minimised by calling every patch background first). Metric: the accuracy on patches an
    object covers (``structure_patch_accuracy``; ``nan`` where none)."""
    logits = head.classify_patches(patch_tokens)
    on_objects = (labels != IGNORE) & (labels != BACKGROUND)
    parts = [on_objects, labels == BACKGROUND]
    found = [part for part in parts if part.any()]
    if not found:
        return logits.sum() * 0.0, {"structure_patch_accuracy": float("nan")}
    loss = sum(F.cross_entropy(logits[part], labels[part]) for part in found) / len(found)
    accuracy = float("nan")
    if on_objects.any():
        correct = logits.detach()[on_objects].argmax(dim=-1) == labels[on_objects]
        accuracy = float(correct.float().mean())
    return loss, {"structure_patch_accuracy": accuracy}


def structure_loss(
    head: StructureHead,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    targets: StructureBatch,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Image presence (BCE) and positions (MSE x :data:`COORD_WEIGHT`) of scenes, plus text
    presence (weighted BCE) and the stated orders (:func:`soft_order`). Metrics: the fraction
    of stated orders the text embeddings satisfy (``structure_order_accuracy``) and the mean
    distance of predicted to true object positions in image fractions
    (``structure_position_error``); ``nan`` where the batch has none.

    Args:
        image_features: ``[B, D]`` embeddings of the batch images.
        text_features: ``[R, D]`` embeddings of the texts ``targets`` was made from.
    """
    loss = image_features.new_zeros(())
    metrics = {"structure_order_accuracy": float("nan"), "structure_position_error": float("nan")}
    scenes = targets.has_targets
    if scenes.any():
        logits, coords = head(image_features[scenes])
        loss = loss + F.binary_cross_entropy_with_logits(logits, targets.image_present[scenes])
        located = targets.image_located[scenes]
        if located.any():
            error = (coords - targets.image_coords[scenes]).square().sum(dim=-1)
            loss = loss + COORD_WEIGHT * error[located].mean()
            metrics["structure_position_error"] = float(error[located].detach().sqrt().mean())
    logits, coords = head(text_features)
    weight = targets.text_weight
    if weight.sum() > 0:
        bce = F.binary_cross_entropy_with_logits(
            logits, targets.text_present, weight=weight, reduction="sum"
        )
        loss = loss + bce / weight.sum()
    gaps = []
    rows = (targets.order[:, 0] >= 0).nonzero().squeeze(1)
    if len(rows):
        first, second, axis = targets.order[rows].unbind(dim=1)
        gaps.append(coords[rows, second, axis] - coords[rows, first, axis])
    rows = (targets.side[:, 0] >= 0).nonzero().squeeze(1)
    if len(rows):
        kind, axis, sign = targets.side[rows].unbind(dim=1)
        gaps.append(sign.to(coords.dtype) * (coords[rows, kind, axis] - 0.5))
    if gaps:
        gap = torch.cat(gaps)
        loss = loss + soft_order(gap).mean()
        metrics["structure_order_accuracy"] = float((gap.detach() > 0).float().mean())
    return loss, metrics
