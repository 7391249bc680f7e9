"""The ShapesRef lexicon: attribute names, synonyms and sentence templates, as data.

Every word a caption or expression can contain comes from this module, so
:func:`caption_vocabulary` can list them all for a word-level tokenizer. Texts are lowercase,
words separated by single spaces, no punctuation. Templates use ``{n}`` for a bare noun
phrase ("red circle"), ``{a}``/``{b}`` for phrases with their article.
"""

from __future__ import annotations

import re

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "heart")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white")

# Nouns a category may be called; the first is the category's own name.
SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "hexagon": ("hexagon",),
    "cross": ("cross",),
    "heart": ("heart",),
}
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object")  # when the category is not named
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium",),
    "large": ("large", "big"),
}

# Comparatives: superlative forms, and the forms used when exactly two objects compete.
SUPERLATIVE_WORDS: dict[str, tuple[str, ...]] = {
    "biggest": ("biggest", "largest"),
    "smallest": ("smallest", "tiniest"),
}
COMPARATIVE_WORDS: dict[str, tuple[str, ...]] = {
    "biggest": ("bigger", "larger"),
    "smallest": ("smaller",),
}
SUPERLATIVE_TEMPLATES: tuple[str, ...] = ("the {w} {n}",)
PAIR_TEMPLATES: tuple[str, ...] = ("the {w} {n}", "the {w} of the two {p}")  # {p}: plural

# Absolute position: the extreme object on one side of the image.
ABSOLUTE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {n} on the left", "the leftmost {n}", "the left {n}", "{n} on the left"),
    # no "the right {n}": "the right triangle" means something else
    "right": ("the {n} on the right", "the rightmost {n}", "{n} on the right"),
    "top": ("the {n} at the top", "the topmost {n}", "the top {n}", "{n} at the top"),
    "bottom": ("the {n} at the bottom", "the bottom {n}", "the lowest {n}", "{n} at the bottom"),
}

# Relations: "<target> <phrase> <anchor>", the target being left of / above ... the anchor.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}

# Position captions: "<object> <phrase>", the object lying in that half of the image.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
}

# Whole-scene captions.
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six")
CAPTION_PREFIXES: tuple[str, ...] = ("", "a picture of ", "an image of ", "a scene with ")
OBJECT_CAPTION_TEMPLATES: tuple[str, ...] = ("{a}", "a picture of {a}", "an image of {a}")
CONJUNCTION = "and"

_PLACEHOLDER = re.compile(r"\{[a-z]\}")
_VOWELS = "aeiou"


def plural(noun: str) -> str:
    """English plural of one of our nouns ("cross" -> "crosses", "box" -> "boxes")."""
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def with_article(phrase: str) -> str:
    """``a``/``an`` plus the phrase ("an orange star")."""
    return ("an " if phrase[0] in _VOWELS else "a ") + phrase


def template_words(template: str) -> list[str]:
    """The literal words of a template, placeholders removed."""
    return _PLACEHOLDER.sub(" ", template).split()


def caption_vocabulary() -> list[str]:
    """Every word that captions and referring expressions can use, sorted.

    Meant for building a word-level tokenizer for the tiny CLIP trained on ShapesRef.
    """
    words: set[str] = {"a", "an", "the", CONJUNCTION, *COLORS, *NUMBER_WORDS, *GENERIC_NOUNS}
    nouns = [noun for nouns in SHAPE_NOUNS.values() for noun in nouns] + list(GENERIC_NOUNS)
    words.update(nouns)
    words.update(plural(noun) for noun in nouns)
    for table in (SIZE_WORDS, SUPERLATIVE_WORDS, COMPARATIVE_WORDS):
        words.update(word for forms in table.values() for form in forms for word in form.split())
    templates = [
        *SUPERLATIVE_TEMPLATES,
        *PAIR_TEMPLATES,
        *CAPTION_PREFIXES,
        *OBJECT_CAPTION_TEMPLATES,
        *(t for forms in ABSOLUTE_TEMPLATES.values() for t in forms),
        *(t for forms in RELATION_PHRASES.values() for t in forms),
        *(t for forms in POSITION_PHRASES.values() for t in forms),
    ]
    for template in templates:
        words.update(template_words(template))
    return sorted(words)
