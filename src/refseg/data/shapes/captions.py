"""Captions for contrastive (CLIP-style) training on ShapesRef, and a streaming pair sampler.

Two kinds of pairs, mimicking the two branches of Global-Local CLIP:

- whole scene + a caption listing its objects or one relation between two of them;
- one object's masked crop (:func:`render_object_crop`) + a caption of that object.

Captions use the same lexicon as the referring expressions (:mod:`.words`), so a tokenizer
built from :func:`caption_vocabulary` covers both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import numpy as np
from PIL import Image

from refseg.data.shapes.config import ShapesConfig
from refseg.data.shapes.expressions import noun_phrase
from refseg.data.shapes.programs import SIDES, Filter, on_side, related_pairs
from refseg.data.shapes.render import render_object_crop
from refseg.data.shapes.scene import Scene, ShapeObject, sample_scene, scene_rng
from refseg.data.shapes.words import (
    CAPTION_PREFIXES,
    CONJUNCTION,
    NUMBER_WORDS,
    OBJECT_CAPTION_TEMPLATES,
    POSITION_PHRASES,
    RELATION_PHRASES,
    caption_vocabulary,
    with_article,
)
from refseg.errors import InputError

__all__ = [
    "COMPOSITION_KINDS",
    "TrainingPair",
    "caption_vocabulary",
    "composition_caption",
    "object_caption",
    "sample_training_pairs",
    "scene_captions",
    "training_pair",
]

_OBJECT_SIZE_PROB = 0.2  # size words are rare in crop captions: a resized crop hides size
_CROP_FRACTION = 0.5  # share of crop/caption pairs in the training stream


def _choice(options: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _join(phrases: list[str]) -> str:
    return f" {CONJUNCTION} ".join(phrases)


def _counted(shape: str, color: str, number: int, rng: np.random.Generator) -> str:
    flt = Filter(shape=shape, color=color)
    if number == 1:
        return with_article(noun_phrase(flt, rng))
    return f"{NUMBER_WORDS[number - 1]} {noun_phrase(flt, rng, plural_noun=True)}"


def _object_phrase(obj: ShapeObject, rng: np.random.Generator, with_size: bool) -> str:
    flt = Filter(shape=obj.shape, color=obj.color, size=obj.size_name if with_size else None)
    return with_article(noun_phrase(flt, rng))


def _placed(scene: Scene) -> list[tuple[int, str]]:
    """``(object index, side)`` of every object clearly in some half of the image."""
    return [(i, side) for i in range(len(scene)) for side in SIDES if on_side(scene, i, side)[0]]


def _position_text(
    scene: Scene, placed: list[tuple[int, str]], rng: np.random.Generator
) -> str:
    """ "a red circle on the left" for a random entry of ``placed`` (not empty)."""
    i, side = placed[int(rng.integers(len(placed)))]
    return f"{_object_phrase(scene.objects[i], rng, False)} {_choice(POSITION_PHRASES[side], rng)}"


def _position_caption(scene: Scene, rng: np.random.Generator) -> str | None:
    """:func:`_position_text` for a random object clearly in some half, ``None`` if none is."""
    placed = _placed(scene)
    return _position_text(scene, placed, rng) if placed else None


def _relation_caption(
    scene: Scene, pairs: list[tuple[int, int, str]], rng: np.random.Generator
) -> str:
    """ "a green star left of a yellow triangle" for a random clearly related pair of ``pairs``
    (:func:`related_pairs`); sizes only when colour and shape alone read the same ("a red star
    above a red star")."""
    i, j, relation = pairs[int(rng.integers(len(pairs)))]
    a, b = scene.objects[i], scene.objects[j]
    same = a.shape == b.shape and a.color == b.color
    target, anchor = _object_phrase(a, rng, same), _object_phrase(b, rng, same)
    return f"{target} {_choice(RELATION_PHRASES[relation], rng)} {anchor}"


def scene_captions(scene: Scene, rng: np.random.Generator, *, positions: bool = False) -> list[str]:
    """Whole-scene captions: objects grouped and counted, objects with sizes, a relation,
    and with ``positions`` one object's half of the image.

    E.g. "two red circles and a blue square", "a picture of a large red circle and a small
    blue square", "a green star left of a yellow triangle" (only when some pair is clearly
    related), "a red circle on the left" (only with ``positions``, when some object is
    clearly in one half). Object order is random. ``positions=False`` draws exactly what
    earlier versions drew from ``rng`` (the shipped models' training stream).
    """
    groups = Counter((obj.shape, obj.color) for obj in scene.objects)
    keys = list(groups)
    grouped = [_counted(*keys[i], groups[keys[i]], rng) for i in rng.permutation(len(keys))]
    sized = [_object_phrase(scene.objects[i], rng, True) for i in rng.permutation(len(scene))]
    captions = [_join(grouped), _join(sized)]
    pairs = related_pairs(scene)
    if pairs:
        captions.append(_relation_caption(scene, pairs, rng))
    position = _position_caption(scene, rng) if positions else None
    if position is not None:
        captions.append(position)
    return [_choice(CAPTION_PREFIXES, rng) + caption for caption in captions]


COMPOSITION_KINDS: tuple[str, ...] = ("relation", "binding", "position")


def composition_caption(scene: Scene, rng: np.random.Generator) -> str | None:
    """One caption of the kinds the composition probes ask (:mod:`refseg.eval.probe`), of a
    kind drawn uniformly among those the scene allows; ``None`` if it allows none.

    - relation: "a red circle left of a blue star" for a clearly related pair;
    - binding: "a red circle and a blue star", two objects of different colour *and* shape
      (else swapping their colours says the same), only two of the scene's objects;
    - position: "a red circle on the left".

    :func:`scene_captions` lists *all* objects and gives a relation one draw in four or five;
    these captions are what hard negatives (and twins, :mod:`.twins`) need to teach order.
    """
    objects = scene.objects
    relations = related_pairs(scene)
    bindable = [
        (i, j)
        for i in range(len(objects))
        for j in range(len(objects))
        if i != j and objects[i].color != objects[j].color and objects[i].shape != objects[j].shape
    ]
    placed = _placed(scene)
    found = (relations, bindable, placed)
    kinds = [k for k, some in zip(COMPOSITION_KINDS, found, strict=True) if some]
    if not kinds:
        return None
    kind = _choice(kinds, rng)
    if kind == "relation":
        text = _relation_caption(scene, relations, rng)
    elif kind == "binding":
        i, j = bindable[int(rng.integers(len(bindable)))]
        text = _join([_object_phrase(objects[k], rng, False) for k in (i, j)])
    else:
        text = _position_text(scene, placed, rng)
    return _choice(CAPTION_PREFIXES, rng) + text


def object_caption(obj: ShapeObject, rng: np.random.Generator) -> str:
    """Caption of one object for its crop: "a red circle", sometimes "a large red circle"."""
    phrase = _object_phrase(obj, rng, with_size=rng.random() < _OBJECT_SIZE_PROB)
    return _choice(OBJECT_CAPTION_TEMPLATES, rng).format(a=phrase)


@dataclass(frozen=True)
class TrainingPair:
    """One training pair and where it came from.

    ``crop`` is the index of the cropped object for a crop/object-caption pair, ``None`` for
    a whole-scene pair; ``scene`` lets a caption be checked against the picture (hard
    negatives, :mod:`.negatives`).
    """

    image: Image.Image
    caption: str
    scene: Scene
    crop: int | None


def _check_pair_options(crop_fraction: float, composition: float = 0.0) -> None:
    if not 0.0 <= crop_fraction <= 1.0:
        raise InputError(f"crop_fraction must lie in [0, 1]; got {crop_fraction}")
    if not 0.0 <= composition <= 1.0:
        raise InputError(f"composition must lie in [0, 1]; got {composition}")


def training_pair(
    seed: int,
    index: int,
    *,
    config: ShapesConfig | None = None,
    crop_fraction: float = _CROP_FRACTION,
    crop_size: int | None = None,
    positions: bool = False,
    composition: float = 0.0,
) -> TrainingPair:
    """Pair ``index`` of :func:`sample_training_pairs`, a pure function of ``(seed, index)``
    (for map-style datasets).

    ``composition``: share of scene pairs captioned by :func:`composition_caption` instead of
    :func:`scene_captions` (0 draws exactly what earlier versions drew).
    """
    config = config or ShapesConfig()
    _check_pair_options(crop_fraction, composition)
    rng = scene_rng(seed, index, stream="training")
    scene = sample_scene(rng, config)
    if rng.random() < crop_fraction:
        k = int(rng.integers(len(scene)))
        crop = render_object_crop(scene, k, crop_size or config.image_size)
        return TrainingPair(crop, object_caption(scene.objects[k], rng), scene, k)
    if composition and rng.random() < composition:
        caption = composition_caption(scene, rng)
        if caption is not None:
            return TrainingPair(scene.pil_image(), caption, scene, None)
    caption = _choice(scene_captions(scene, rng, positions=positions), rng)
    return TrainingPair(scene.pil_image(), caption, scene, None)


def sample_training_pairs(
    seed: int,
    n: int | None = None,
    *,
    config: ShapesConfig | None = None,
    crop_fraction: float = _CROP_FRACTION,
    crop_size: int | None = None,
    positions: bool = False,
) -> Iterator[tuple[Image.Image, str]]:
    """Stream ``(RGB image, caption)`` pairs, one fresh scene per pair; endless if ``n=None``.

    Each pair is a crop/object-caption pair with probability ``crop_fraction``, else a
    scene/scene-caption pair. Pair ``i`` depends only on ``(seed, i)`` (it is
    :func:`training_pair`), and the scenes come from the "training" random stream, so they
    never coincide with a dataset written by :func:`write_shapesref` with the same seed.
    Crops are ``crop_size`` square (default: the scene size). ``positions`` adds position
    captions to the scene captions drawn from (see :func:`scene_captions`).
    """
    if n is not None and n < 0:
        raise InputError(f"n must be >= 0 or None; got {n}")
    _check_pair_options(crop_fraction)
    indices = count() if n is None else range(n)
    for index in indices:
        pair = training_pair(
            seed,
            index,
            config=config,
            crop_fraction=crop_fraction,
            crop_size=crop_size,
            positions=positions,
        )
        yield pair.image, pair.caption
