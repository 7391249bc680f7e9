"""Referring expressions for ShapesRef: enumerate programs, keep the unambiguous ones, word them.

For each object and each kind (attribute, comparative, absolute, relational) we enumerate the
programs built from the object's own attributes, keep those :func:`is_unambiguous` accepts,
pick one (preferring programs whose attributes alone would be ambiguous, so position and size
matter) and render it with a random template. Kinds without a valid program are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from refseg.data.shapes.programs import (
    MEASURES,
    RELATIONS,
    SIDES,
    AbsoluteProgram,
    AttributeProgram,
    ComparativeProgram,
    Filter,
    Program,
    RelationalProgram,
    clearly_related,
    is_unambiguous,
    resolve,
)
from refseg.data.shapes.scene import Scene, ShapeObject
from refseg.data.shapes.words import (
    ABSOLUTE_TEMPLATES,
    COMPARATIVE_WORDS,
    GENERIC_NOUNS,
    PAIR_TEMPLATES,
    RELATION_PHRASES,
    SHAPE_NOUNS,
    SIZE_WORDS,
    SUPERLATIVE_TEMPLATES,
    SUPERLATIVE_WORDS,
    plural,
)

_ARTICLE_PROB = 0.8  # RefCOCO-style expressions often drop "the"
_PAIR_PROB = 0.5  # with exactly two candidates, "the bigger ..." instead of "the biggest ..."
# Anchor descriptions tried in order; the first that picks the anchor alone is used.
_ANCHOR_KEYS: tuple[tuple[str, ...], ...] = (
    ("shape", "color"),
    ("shape",),
    ("shape", "size"),
    ("shape", "color", "size"),
    ("color",),
    ("color", "size"),
)


@dataclass(frozen=True)
class Expression:
    """A referring expression: its text, its kind and the program it was generated from."""

    text: str
    kind: str
    program: Program


def _filter_of(obj: ShapeObject, keys: tuple[str, ...]) -> Filter:
    values = {"shape": obj.shape, "color": obj.color, "size": obj.size_name}
    return Filter(**{key: values[key] for key in keys})


def _subsets(keys: tuple[str, ...], empty: bool) -> list[tuple[str, ...]]:
    sizes = range(0 if empty else 1, len(keys) + 1)
    return [combo for n in sizes for combo in combinations(keys, n)]


def _anchor_filter(scene: Scene, index: int) -> Filter | None:
    obj = scene.objects[index]
    for keys in _ANCHOR_KEYS:
        candidate = _filter_of(obj, keys)
        if candidate.select(scene) == [index]:
            return candidate
    return None


def candidate_programs(scene: Scene, index: int) -> dict[str, list[Program]]:
    """Programs of each kind built from object ``index``'s attributes (not all valid).

    Relational programs are limited to relations the object clearly has to its anchor.
    """
    obj = scene.objects[index]
    described = _subsets(("shape", "color", "size"), empty=False)
    attribute: list[Program] = [AttributeProgram(_filter_of(obj, k)) for k in described]
    plain = [_filter_of(obj, k) for k in _subsets(("shape", "color"), empty=True)]
    comparative: list[Program] = [ComparativeProgram(f, m) for f in plain for m in MEASURES]
    absolute: list[Program] = [AbsoluteProgram(f, s) for f in plain for s in SIDES]
    relational: list[Program] = []
    for other in range(len(scene.objects)):
        if other == index:
            continue
        # Only relations the referent clearly has to this anchor: the rest are never valid.
        relations = [r for r in RELATIONS if clearly_related(scene, index, other, r)]
        anchor = _anchor_filter(scene, other) if relations else None
        if anchor is not None:
            relational += [RelationalProgram(f, r, anchor) for f in plain for r in relations]
    return {
        "attribute": attribute,
        "comparative": comparative,
        "absolute": absolute,
        "relational": relational,
    }


def valid_programs(scene: Scene, index: int) -> dict[str, list[Program]]:
    """The candidate programs that refer to object ``index`` unambiguously, by kind."""
    return {
        kind: [p for p in programs if is_unambiguous(p, scene, index)]
        for kind, programs in candidate_programs(scene, index).items()
    }


def _pick(programs: list[Program], scene: Scene, rng: np.random.Generator) -> Program:
    """A random program, preferring ones whose filter alone does not identify the referent.

    (Attribute programs always identify it, so among them the choice is uniform.)
    """
    needed = [p for p in programs if resolve(AttributeProgram(p.filter), scene) is None]
    pool = needed or programs
    return pool[int(rng.integers(len(pool)))]


def _choice(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def noun_phrase(flt: Filter, rng: np.random.Generator, *, plural_noun: bool = False) -> str:
    """Bare noun phrase of a filter: "[size] [colour] noun", e.g. "big red circle"."""
    words = []
    if flt.size is not None:
        words.append(_choice(SIZE_WORDS[flt.size], rng))
    if flt.color is not None:
        words.append(flt.color)
    noun = _choice(SHAPE_NOUNS[flt.shape] if flt.shape else GENERIC_NOUNS, rng)
    words.append(plural(noun) if plural_noun else noun)
    return " ".join(words)


def _definite(phrase: str, rng: np.random.Generator) -> str:
    return f"the {phrase}" if rng.random() < _ARTICLE_PROB else phrase


def verbalize(program: Program, scene: Scene, rng: np.random.Generator) -> str:
    """English for a program, with a random template and synonyms (lowercase, no punctuation)."""
    if isinstance(program, AttributeProgram):
        return _definite(noun_phrase(program.filter, rng), rng)
    if isinstance(program, ComparativeProgram):
        pair = len(program.filter.select(scene)) == 2 and rng.random() < _PAIR_PROB
        words = COMPARATIVE_WORDS if pair else SUPERLATIVE_WORDS
        template = _choice(PAIR_TEMPLATES if pair else SUPERLATIVE_TEMPLATES, rng)
        return template.format(
            w=_choice(words[program.measure], rng),
            n=noun_phrase(program.filter, rng),
            p=noun_phrase(program.filter, rng, plural_noun=True),
        )
    if isinstance(program, AbsoluteProgram):
        template = _choice(ABSOLUTE_TEMPLATES[program.side], rng)
        return template.format(n=noun_phrase(program.filter, rng))
    if isinstance(program, RelationalProgram):
        target = _definite(noun_phrase(program.filter, rng), rng)
        phrase = _choice(RELATION_PHRASES[program.relation], rng)
        return f"{target} {phrase} the {noun_phrase(program.anchor, rng)}"
    raise TypeError(f"not a ShapesRef program: {program!r}")


def referring_expressions(
    scene: Scene, index: int, rng: np.random.Generator, per_kind: int = 1
) -> list[Expression]:
    """Up to ``per_kind`` unambiguous expressions of each kind for object ``index``.

    Kinds come in the order attribute, comparative, absolute, relational; texts are distinct.
    """
    expressions: list[Expression] = []
    seen: set[str] = set()
    for kind, programs in valid_programs(scene, index).items():
        remaining = list(programs)
        for _ in range(min(per_kind, len(remaining))):
            program = _pick(remaining, scene, rng)
            remaining.remove(program)
            text = verbalize(program, scene, rng)
            if text not in seen:
                seen.add(text)
                expressions.append(Expression(text=text, kind=kind, program=program))
    return expressions
