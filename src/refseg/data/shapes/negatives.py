"""Compositional hard negatives for ShapesRef captions, each checked FALSE for its scene.

NegCLIP (Yuksekgonul et al., ICLR 2023, "When and why vision-language models behave like
bags-of-words, and what to do about it", Sec. 4) adds to every caption a few texts with the
same words in another composition, so the model must read the order to tell them apart. Here
the three kinds ShapesRef needs:

- ``swap-attribute``: colours (or sizes) swapped between two objects of the caption,
  "a red circle and a blue star" -> "a blue circle and a red star";
- ``swap-relation``: the relation's arguments swapped, "a red circle left of a blue star"
  -> "a blue star left of a red circle";
- ``wrong-position``: the opposite relation or side, "... left of ..." -> "... right of ...",
  "a red circle on the left" -> "a red circle on the right".

Different text is not enough: with two red circles, "a blue star left of a red circle" may be
true too. Every candidate is therefore judged against the scene (:func:`truth`, built on the
same geometry as the referring programs, :mod:`.programs`) and kept only when it is clearly
false; a candidate meaning the same as the caption (:func:`meaning`, e.g. colours swapped
between two red objects) is a *tie* and never a negative.

Captions are parsed (:func:`parse_caption`) from the finite grammar of :mod:`.captions`
(its lexicon is :mod:`.words`) into :class:`ListCaption`, :class:`RelationCaption` or
:class:`PositionCaption`, so negatives keep the caption's wording (prefix, synonyms).

Typical use: :func:`sample_pairs_with_negatives` streams ``(image, caption, negatives)``;
by hand, for one training pair::

    pair = training_pair(seed, index, positions=True)
    negatives = hard_negatives(pair.caption, pair.scene, rng, limit=3) if pair.crop is None else []
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np
from PIL import Image

from refseg.data.shapes.captions import training_pair
from refseg.data.shapes.config import ShapesConfig
from refseg.data.shapes.programs import Filter, clearly_related, on_side, possibly_related
from refseg.data.shapes.scene import Scene, ShapeObject, scene_rng
from refseg.data.shapes.words import (
    CAPTION_PREFIXES,
    COLORS,
    CONJUNCTION,
    GENERIC_NOUNS,
    NUMBER_WORDS,
    OBJECT_CAPTION_TEMPLATES,
    POSITION_PHRASES,
    RELATION_PHRASES,
    SHAPE_NOUNS,
    SIZE_WORDS,
    plural,
    with_article,
)
from refseg.errors import InputError

NEGATIVE_KINDS: tuple[str, ...] = ("swap-attribute", "swap-relation", "wrong-position")
OPPOSITE: dict[str, str] = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "top": "bottom",
    "bottom": "top",
}


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Mention:
    """One object phrase as written: ``number`` objects, "[size] [colour] noun".

    ``size`` and ``noun`` keep their surface word ("big", "disk"); ``noun`` is singular.
    """

    number: int
    size: str | None
    color: str | None
    noun: str

    @property
    def filter(self) -> Filter:
        """The attributes the phrase names, in canonical words."""
        return Filter(
            shape=_NOUN_SHAPE[self.noun], color=self.color, size=_SIZE_NAME.get(self.size)
        )

    @property
    def text(self) -> str:
        noun = self.noun if self.number == 1 else plural(self.noun)
        phrase = " ".join(w for w in (self.size, self.color, noun) if w is not None)
        return (
            with_article(phrase)
            if self.number == 1
            else f"{NUMBER_WORDS[self.number - 1]} {phrase}"
        )


@dataclass(frozen=True)
class ListCaption:
    """ "a red circle and two blue stars": each mention names distinct objects."""

    prefix: str
    mentions: tuple[Mention, ...]

    @property
    def text(self) -> str:
        return self.prefix + f" {CONJUNCTION} ".join(m.text for m in self.mentions)


@dataclass(frozen=True)
class RelationCaption:
    """ "a red circle left of a blue star": ``mentions`` is ``(target, anchor)``.

    ``phrase`` indexes ``RELATION_PHRASES[relation]`` (the wording used).
    """

    prefix: str
    mentions: tuple[Mention, Mention]
    relation: str
    phrase: int = 0

    @property
    def text(self) -> str:
        target, anchor = self.mentions
        phrase = RELATION_PHRASES[self.relation][self.phrase]
        return f"{self.prefix}{target.text} {phrase} {anchor.text}"


@dataclass(frozen=True)
class PositionCaption:
    """ "a red circle on the left": some such object lies in that half of the image."""

    prefix: str
    mentions: tuple[Mention]
    side: str
    phrase: int = 0

    @property
    def text(self) -> str:
        return f"{self.prefix}{self.mentions[0].text} {POSITION_PHRASES[self.side][self.phrase]}"


Caption = ListCaption | RelationCaption | PositionCaption


@dataclass(frozen=True)
class Negative:
    """A hard negative: its text and which of :data:`NEGATIVE_KINDS` made it."""

    text: str
    kind: str


# --------------------------------------------------------------------------- lexicon tables

_NOUN_SHAPE: dict[str, str | None] = {
    **{noun: shape for shape, nouns in SHAPE_NOUNS.items() for noun in nouns},
    **dict.fromkeys(GENERIC_NOUNS),
}
_PLURAL_NOUN: dict[str, str] = {plural(noun): noun for noun in _NOUN_SHAPE}
_SIZE_NAME: dict[str | None, str] = {
    form: name for name, forms in SIZE_WORDS.items() for form in forms
}
_PREFIXES: tuple[str, ...] = tuple(
    sorted(
        {p for p in CAPTION_PREFIXES if p}
        | {t.split("{a}")[0] for t in OBJECT_CAPTION_TEMPLATES if t.split("{a}")[0]},
        key=len,
        reverse=True,
    )
)
# Phrases after the first mention, longest first ("on the left of" before "on the left").
_LINKS: tuple[tuple[tuple[str, ...], str, str, int], ...] = tuple(
    sorted(
        [
            (tuple(p.split()), "relation", name, i)
            for name, phrases in RELATION_PHRASES.items()
            for i, p in enumerate(phrases)
        ]
        + [
            (tuple(p.split()), "side", name, i)
            for name, phrases in POSITION_PHRASES.items()
            for i, p in enumerate(phrases)
        ],
        key=lambda link: len(link[0]),
        reverse=True,
    )
)


def mention_of(obj: ShapeObject, *, size: bool = False) -> Mention:
    """ "a [size] colour shape" for one object, in the canonical words."""
    return Mention(1, obj.size_name if size else None, obj.color, obj.shape)


# --------------------------------------------------------------------------- parsing


def _parse_mention(words: list[str], at: int) -> tuple[Mention, int] | None:
    if at >= len(words):
        return None
    first = words[at]
    if first in ("a", "an"):
        number = 1
    elif first in NUMBER_WORDS:
        number = NUMBER_WORDS.index(first) + 1
    else:
        return None
    at += 1
    size = color = None
    if at < len(words) and words[at] in _SIZE_NAME:
        size, at = words[at], at + 1
    if at < len(words) and words[at] in COLORS:
        color, at = words[at], at + 1
    if at >= len(words):
        return None
    noun = words[at] if number == 1 else _PLURAL_NOUN.get(words[at])
    if noun not in _NOUN_SHAPE:
        return None
    return Mention(number, size, color, noun), at + 1


def parse_caption(text: str) -> Caption | None:
    """The structure of a ShapesRef caption, or ``None`` if it is not one of the grammar's.

    ``parse_caption(t).text == t`` for every caption :mod:`.captions` writes (round trip).
    """
    prefix = next((p for p in _PREFIXES if text.startswith(p)), "")
    words = text[len(prefix) :].split()
    first = _parse_mention(words, 0)
    if first is None:
        return None
    mentions, at = [first[0]], first[1]
    while at < len(words) and words[at] == CONJUNCTION:
        parsed = _parse_mention(words, at + 1)
        if parsed is None:
            return None
        mentions.append(parsed[0])
        at = parsed[1]
    if at == len(words):
        return ListCaption(prefix, tuple(mentions))
    if len(mentions) != 1 or mentions[0].number != 1:
        return None
    for link, kind, name, index in _LINKS:
        if tuple(words[at : at + len(link)]) != link:
            continue
        rest = at + len(link)
        if kind == "side":
            return (
                PositionCaption(prefix, (mentions[0],), name, index) if rest == len(words) else None
            )
        anchor = _parse_mention(words, rest)
        if anchor is None or anchor[1] != len(words) or anchor[0].number != 1:
            return None
        return RelationCaption(prefix, (mentions[0], anchor[0]), name, index)
    return None


# --------------------------------------------------------------------------- truth


def _assignable(mentions: tuple[Mention, ...], scene: Scene, used: frozenset[int]) -> bool:
    """Distinct objects for every mention (``number`` each), none in ``used``."""
    if not mentions:
        return True
    head, rest = mentions[0], mentions[1:]
    matching = [i for i in head.filter.select(scene) if i not in used]
    return any(
        _assignable(rest, scene, used | frozenset(chosen))
        for chosen in combinations(matching, head.number)
    )


def truth(caption: Caption, scene: Scene) -> bool | None:
    """``True``: the caption clearly holds in the scene; ``False``: clearly not; ``None``:
    borderline (a relation or side within the margins of :class:`ShapesConfig`).

    Mentions are existential ("a red circle": at least one; "two red circles": at least two
    distinct ones), so a caption judged false is false under any stricter reading too.
    """
    if isinstance(caption, ListCaption):
        return _assignable(caption.mentions, scene, frozenset())
    if isinstance(caption, RelationCaption):
        target, anchor = (m.filter.select(scene) for m in caption.mentions)
        pairs = [(i, j) for i in target for j in anchor if i != j]
        if any(clearly_related(scene, i, j, caption.relation) for i, j in pairs):
            return True
        if any(possibly_related(scene, i, j, caption.relation) for i, j in pairs):
            return None
        return False
    if isinstance(caption, PositionCaption):
        sides = [on_side(scene, i, caption.side) for i in caption.mentions[0].filter.select(scene)]
        if any(clear for clear, _ in sides):
            return True
        return None if any(possible for _, possible in sides) else False
    raise InputError(f"not a ShapesRef caption: {caption!r}")


def _mention_key(mention: Mention) -> tuple[int, str, str, str]:
    flt = mention.filter
    return (mention.number, flt.shape or "", flt.color or "", flt.size or "")


def meaning(caption: Caption) -> tuple:
    """A key equal for captions that say the same thing in other words or order (synonyms,
    prefix, order of listed objects, "A left of B" = "B right of A")."""
    keys = tuple(_mention_key(m) for m in caption.mentions)
    if isinstance(caption, ListCaption):
        return ("list", tuple(sorted(keys)))
    if isinstance(caption, RelationCaption):
        if caption.relation in ("right", "below"):
            return ("relation", keys[1], OPPOSITE[caption.relation], keys[0])
        return ("relation", keys[0], caption.relation, keys[1])
    return ("position", keys[0], caption.side)


# --------------------------------------------------------------------------- negatives


def _swap(mentions: tuple[Mention, ...], i: int, j: int, field: str) -> tuple[Mention, ...]:
    a, b = mentions[i], mentions[j]
    swapped = list(mentions)
    swapped[i] = replace(a, **{field: getattr(b, field)})
    swapped[j] = replace(b, **{field: getattr(a, field)})
    return tuple(swapped)


def candidate_negatives(caption: Caption) -> list[tuple[Caption, str]]:
    """Every recomposition of the caption's words, with its kind (not yet checked)."""
    out: list[tuple[Caption, str]] = []
    if not isinstance(caption, PositionCaption):
        for i, j in combinations(range(len(caption.mentions)), 2):
            for field in ("color", "size"):
                a, b = getattr(caption.mentions[i], field), getattr(caption.mentions[j], field)
                if a is not None and b is not None and a != b:
                    mentions = _swap(caption.mentions, i, j, field)
                    out.append((replace(caption, mentions=mentions), "swap-attribute"))
    if isinstance(caption, RelationCaption):
        target, anchor = caption.mentions
        out.append((replace(caption, mentions=(anchor, target)), "swap-relation"))
        opposite = OPPOSITE[caption.relation]
        phrase = min(caption.phrase, len(RELATION_PHRASES[opposite]) - 1)
        out.append((replace(caption, relation=opposite, phrase=phrase), "wrong-position"))
    if isinstance(caption, PositionCaption):
        opposite = OPPOSITE[caption.side]
        phrase = min(caption.phrase, len(POSITION_PHRASES[opposite]) - 1)
        out.append((replace(caption, side=opposite, phrase=phrase), "wrong-position"))
    return out


def negative_captions(caption: Caption, scene: Scene) -> list[tuple[Caption, str]]:
    """The candidates that are clearly false for the scene and mean something other than the
    caption, one per meaning, in a fixed order."""
    seen = {meaning(caption)}
    out = []
    for candidate, kind in candidate_negatives(caption):
        key = meaning(candidate)
        if key not in seen and truth(candidate, scene) is False:
            seen.add(key)
            out.append((candidate, kind))
    return out


def hard_negatives(
    caption: str | Caption,
    scene: Scene,
    rng: np.random.Generator | None = None,
    limit: int | None = None,
) -> list[Negative]:
    """Hard negatives of a scene caption, each clearly false for ``scene``.

    Args:
        caption: caption text (parsed with :func:`parse_caption`) or structure. Text outside
            the grammar, and single-object captions (crops), give no negatives.
        rng: shuffles the negatives before ``limit`` applies; ``None`` keeps the fixed order.
        limit: at most this many.
    """
    structure = parse_caption(caption) if isinstance(caption, str) else caption
    if structure is None:
        return []
    found = [Negative(c.text, kind) for c, kind in negative_captions(structure, scene)]
    if rng is not None:
        found = [found[int(i)] for i in rng.permutation(len(found))]
    return found if limit is None else found[:limit]


def sample_pairs_with_negatives(
    seed: int,
    n: int,
    *,
    limit: int = 3,
    positions: bool = True,
    crop_fraction: float = 0.5,
    config: ShapesConfig | None = None,
) -> Iterator[tuple[Image.Image, str, list[str]]]:
    """``(image, caption, hard negative texts)`` for pairs ``0..n-1`` of
    :func:`~refseg.data.shapes.captions.training_pair` (a NegCLIP training stream).

    Scene pairs get up to ``limit`` negatives, drawn with the "negatives" random stream of
    ``(seed, index)`` so the pairs themselves are those of the plain stream; crops get none.
    """
    if n < 0 or limit < 0:
        raise InputError(f"n and limit must be >= 0; got {n}, {limit}")
    for index in range(n):
        pair = training_pair(
            seed, index, config=config, crop_fraction=crop_fraction, positions=positions
        )
        negatives: list[Negative] = []
        if pair.crop is None and limit:
            rng = scene_rng(seed, index, stream="negatives")
            negatives = hard_negatives(pair.caption, pair.scene, rng, limit)
        yield pair.image, pair.caption, [negative.text for negative in negatives]
