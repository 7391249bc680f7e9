"""Fresh ShapesRef training pairs rendered on the fly, each with its hard negatives
(the NegCLIP recipe of issue #13, for :class:`refseg.train.contrastive.ContrastiveTask`).

Sample ``i`` is pair ``i`` of :func:`refseg.data.shapes.captions.training_pair` (a pure
function of ``(seed, i)``), squashed to the model's input size, with up to ``negatives``
hard negatives drawn with the "negatives" random stream of ``(seed, i)``
(:func:`refseg.data.shapes.negatives.hard_negatives`; crops get none). A pool of pre-rendered
pairs repeats after ``pool_size / batch_size`` steps; here every step sees new scenes, so a
model cannot memorise captions and must read the picture.

Under several processes every rank gathers the negatives of the global batch, and gathers
need equal shapes: :func:`pad_negatives` pads every pair to exactly ``negatives`` texts with
its own caption, marked invalid, and the loss drops invalid rows after gathering.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from refseg.clip.preprocess import resize_for_clip
from refseg.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from refseg.data.shapes.scene import Scene
    from refseg.train.structure import ImageTargets

MAX_NEGATIVES = 8  # no ShapesRef caption has more distinct recompositions in practice


@dataclass(frozen=True)
class FreshSample:
    """One rendered pair: ``uint8 [S, S, 3]`` image, caption, its hard negative texts; with
    twins also the scene's twin (:mod:`refseg.data.shapes.twins`) as a pair of its own, which
    joins the same batch (so each is the other's image-side hard negative)."""

    image: torch.Tensor
    caption: str
    negatives: tuple[str, ...]
    twin: FreshSample | None = None
    # what the scene shows, for the structure head (refseg.train.structure); None for crops
    # or when not asked for
    targets: ImageTargets | None = None

    def pairs(self) -> list[FreshSample]:
        """This pair, then its twin if any (what a batch holds)."""
        return [self] if self.twin is None else [self, self.twin]


class FreshPairs(torch.utils.data.Dataset):
    """Map-style dataset of ``size`` fresh pairs; sample ``i`` depends on ``(seed, i)`` only.

    Args:
        seed: seed of the "training" (pairs) and "negatives" random streams.
        size: samples (a run uses ``steps x batch_size`` of them).
        image_size: side the images are squashed to (the model's input).
        negatives: at most this many hard negatives per pair (0: none).
        positions: scene captions may say where an object lies ("... on the left").
        crop_fraction: share of single-object crop pairs (these have no negatives).
        composition: share of scene pairs with a relation, two-object or position caption
            (:func:`refseg.data.shapes.captions.composition_caption`).
        twins: scene pairs whose caption allows it come with a twin scene for which the
            caption is false (the batch grows by one pair per twin).
        max_objects: at most this many objects per scene (``None``: ShapesRef's 6); fewer
            make every caption's objects easier to find (a curriculum's first stage).
        structure: scene samples carry their :class:`refseg.train.structure.ImageTargets`.
        patch_grid: with ``structure``, the targets also name the type under each patch of
            this ``g x g`` grid (the image tower's).
    """

    def __init__(
        self,
        seed: int,
        size: int,
        image_size: int,
        *,
        negatives: int = 3,
        positions: bool = True,
        crop_fraction: float = 0.25,
        composition: float = 0.0,
        twins: bool = False,
        max_objects: int | None = None,
        structure: bool = False,
        patch_grid: int | None = None,
    ) -> None:
        from refseg.data.shapes.config import ShapesConfig

        if size < 1 or image_size < 1 or not 0 <= negatives <= MAX_NEGATIVES:
            raise InputError(
                f"fresh pairs need size >= 1, image_size >= 1 and 0 <= negatives <= "
                f"{MAX_NEGATIVES}; got {size}, {image_size}, {negatives}"
            )
        if not 0.0 <= crop_fraction <= 1.0:
            raise InputError(f"crop_fraction must lie in [0, 1]; got {crop_fraction}")
        if not 0.0 <= composition <= 1.0:
            raise InputError(f"composition must lie in [0, 1]; got {composition}")
        self.composition, self.twins, self.structure = composition, twins, structure
        self.patch_grid = patch_grid
        self.scenes = ShapesConfig() if max_objects is None else ShapesConfig(
            min_objects=min(2, max_objects), max_objects=max_objects
        )
        self.seed, self.size, self.image_size = seed, size, image_size
        self.negatives, self.positions, self.crop_fraction = negatives, positions, crop_fraction

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> FreshSample:
        from refseg.data.shapes.captions import training_pair
        from refseg.data.shapes.scene import scene_rng
        from refseg.data.shapes.twins import make_twin

        if not 0 <= index < self.size:
            raise IndexError(index)
        pair = training_pair(
            self.seed,
            index,
            crop_fraction=self.crop_fraction,
            positions=self.positions,
            composition=self.composition,
            config=self.scenes,
        )
        rng = scene_rng(self.seed, index, stream="negatives")
        scene = pair.scene if pair.crop is None else None
        sample = self._sample(pair.image, pair.caption, scene, rng)
        made = make_twin(pair.caption, pair.scene) if scene is not None and self.twins else None
        if made is None:
            return sample
        twin = self._sample(made.scene.pil_image(), made.caption, made.scene, rng)
        return dataclasses.replace(sample, twin=twin)

    def _sample(
        self, image: Image.Image, caption: str, scene: Scene | None, rng: np.random.Generator
    ) -> FreshSample:
        """The model-sized image, the caption and its negatives (none without a scene)."""
        from refseg.data.shapes.negatives import hard_negatives

        found = []
        if scene is not None and self.negatives:
            found = hard_negatives(caption, scene, rng, self.negatives)
        resized = resize_for_clip(image.convert("RGB"), self.image_size, "squash")
        pixels = torch.from_numpy(np.array(resized, dtype=np.uint8))
        targets = None
        if scene is not None and self.structure:
            from refseg.train.structure import scene_targets

            targets = scene_targets(scene, self.patch_grid)
        return FreshSample(pixels, caption, tuple(n.text for n in found), targets=targets)

    def texts(self, count: int) -> Iterator[str]:
        """Captions and negatives of the first ``count`` samples (a tokenizer's corpus)."""
        for index in range(min(count, self.size)):
            for sample in self[index].pairs():
                yield sample.caption
                yield from sample.negatives

    def pair_source(self, seed: int, n: int) -> Iterator[tuple[object, str]]:
        """``(image, caption)`` of the same distribution for another seed: the held-out pool
        (:data:`refseg.train.contrastive.PairSource`)."""
        from refseg.data.shapes.captions import sample_training_pairs

        return sample_training_pairs(
            seed, n, crop_fraction=self.crop_fraction, positions=self.positions
        )


def pad_negatives(
    caption: str, negatives: tuple[str, ...], count: int
) -> tuple[list[str], list[bool]]:
    """Exactly ``count`` texts: the negatives, then the caption itself as padding; and which
    are real negatives (padding is dropped from the loss after gathering)."""
    if len(negatives) > count:
        raise ValueError(f"{len(negatives)} negatives do not fit in {count}")
    padding = count - len(negatives)
    return [*negatives, *[caption] * padding], [True] * len(negatives) + [False] * padding
