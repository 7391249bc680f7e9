"""Semantic programs behind referring expressions, and the checker that they pick one object.

Every expression is generated from a program; the checker evaluates the program against the
scene (never the English). Each program has two readings:

- *clear* matches: objects the description fits beyond doubt (with the margins of
  :class:`ShapesConfig`);
- *possible* matches: objects a listener might still take it to mean (a superset).

A program is unambiguous for object ``i`` when both sets are exactly ``{i}``: the referent
fits clearly and nothing else fits even loosely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from refseg.data.shapes.scene import Scene, ShapeObject
from refseg.errors import InputError

Kind = Literal["attribute", "comparative", "absolute", "relational"]
KINDS: tuple[str, ...] = ("attribute", "comparative", "absolute", "relational")
MEASURES: tuple[str, ...] = ("biggest", "smallest")
SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")

# Unit direction (x, y) in image coordinates (y down) of each side / relation.
_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "top": (0.0, -1.0),
    "bottom": (0.0, 1.0),
    "above": (0.0, -1.0),
    "below": (0.0, 1.0),
}


@dataclass(frozen=True)
class Filter:
    """Attribute constraints; ``None`` means unconstrained ("shape" / "object")."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return (
            (self.shape is None or obj.shape == self.shape)
            and (self.color is None or obj.color == self.color)
            and (self.size is None or obj.size_name == self.size)
        )

    def select(self, scene: Scene) -> list[int]:
        return [i for i, obj in enumerate(scene.objects) if self.matches(obj)]

    @property
    def is_empty(self) -> bool:
        return self.shape is None and self.color is None and self.size is None


@dataclass(frozen=True)
class AttributeProgram:
    """ "the large red circle": every object passing the filter."""

    kind: ClassVar[str] = "attribute"
    filter: Filter


@dataclass(frozen=True)
class ComparativeProgram:
    """ "the biggest red shape": extreme visible area among >= 2 filtered objects."""

    kind: ClassVar[str] = "comparative"
    filter: Filter
    measure: str  # one of MEASURES


@dataclass(frozen=True)
class AbsoluteProgram:
    """ "the circle on the left": extreme position among filtered objects, on that side."""

    kind: ClassVar[str] = "absolute"
    filter: Filter
    side: str  # one of SIDES


@dataclass(frozen=True)
class RelationalProgram:
    """ "the circle left of the blue star": filtered objects on one side of the anchor.

    ``anchor`` must select exactly one object by itself.
    """

    kind: ClassVar[str] = "relational"
    filter: Filter
    relation: str  # one of RELATIONS
    anchor: Filter


Program = AttributeProgram | ComparativeProgram | AbsoluteProgram | RelationalProgram
_PROGRAM_TYPES: dict[str, type] = {
    cls.kind: cls
    for cls in (AttributeProgram, ComparativeProgram, AbsoluteProgram, RelationalProgram)
}


def program_to_dict(program: Program) -> dict[str, Any]:
    """Plain-dict form (pickle/JSON safe, no refseg classes): ``{"kind": ..., fields...}``."""
    return {"kind": program.kind, **asdict(program)}


def program_from_dict(data: dict[str, Any]) -> Program:
    """Inverse of :func:`program_to_dict`."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in _PROGRAM_TYPES:
        raise InputError(f"unknown program kind {kind!r}; expected one of {', '.join(KINDS)}")
    for name in ("filter", "anchor"):
        if name in fields:
            fields[name] = Filter(**fields[name])
    return _PROGRAM_TYPES[kind](**fields)


def _along(scene: Scene, direction: str) -> list[float]:
    """Centroid coordinate of every object along a direction (fraction of the image side).

    Plain Python floats: scenes hold at most a handful of objects, where numpy's per-call
    overhead dominates.
    """
    dx, dy = _DIRECTIONS[direction]
    return [dx * x + dy * y for x, y in scene.centroids.tolist()]


def _across(scene: Scene, direction: str) -> list[float]:
    dx, dy = _DIRECTIONS[direction]
    return [dx * y - dy * x for x, y in scene.centroids.tolist()]


def _comparative(scene: Scene, program: ComparativeProgram) -> tuple[list[int], list[int]]:
    candidates = program.filter.select(scene)
    if len(candidates) < 2:  # "the biggest" presupposes something to compare with
        return [], []
    ratio = scene.config.area_ratio
    areas = [float(a) for a in scene.areas[candidates]]
    if program.measure == "biggest":
        close = [a * ratio > max(areas) for a in areas]
    elif program.measure == "smallest":
        close = [a < ratio * min(areas) for a in areas]
    else:
        raise InputError(f"unknown measure {program.measure!r}; expected one of {MEASURES}")
    possible = [c for c, keep in zip(candidates, close, strict=True) if keep]
    return (possible if len(possible) == 1 else []), possible


def _absolute(scene: Scene, program: AbsoluteProgram) -> tuple[list[int], list[int]]:
    if program.side not in SIDES:
        raise InputError(f"unknown side {program.side!r}; expected one of {SIDES}")
    candidates = program.filter.select(scene)
    if not candidates:
        return [], []
    # Distance from the named edge: 0 at the edge, 1 at the opposite one.
    offset = 1.0 if program.side in ("right", "bottom") else 0.0
    along = _along(scene, program.side)
    depth = [offset - along[c] for c in candidates]
    nearest = min(depth)
    margin = scene.config.position_margin
    possible = [c for c, d in zip(candidates, depth, strict=True) if d < nearest + margin]
    on_side = nearest <= 0.5 - scene.config.side_margin
    clear = possible if len(possible) == 1 and on_side else []
    return clear, possible


def _relational(scene: Scene, program: RelationalProgram) -> tuple[list[int], list[int]]:
    if program.relation not in RELATIONS:
        raise InputError(f"unknown relation {program.relation!r}; expected one of {RELATIONS}")
    candidates = program.filter.select(scene)
    anchors = program.anchor.select(scene)
    if len(anchors) != 1:  # an ambiguous anchor leaves every candidate possible
        return [], candidates
    anchor = anchors[0]
    candidates = [c for c in candidates if c != anchor]
    along = _along(scene, program.relation)
    possible = [c for c in candidates if along[c] > along[anchor]]
    clear = [c for c in possible if clearly_related(scene, c, anchor, program.relation)]
    return clear, possible


def evaluate(program: Program, scene: Scene) -> tuple[list[int], list[int]]:
    """``(clear, possible)`` object indices the program picks in the scene (see module doc)."""
    if isinstance(program, AttributeProgram):
        matches = program.filter.select(scene)
        return matches, matches
    if isinstance(program, ComparativeProgram):
        return _comparative(scene, program)
    if isinstance(program, AbsoluteProgram):
        return _absolute(scene, program)
    if isinstance(program, RelationalProgram):
        return _relational(scene, program)
    raise InputError(f"not a ShapesRef program: {program!r}")


def resolve(program: Program, scene: Scene) -> int | None:
    """The one object the program refers to, or ``None`` if it is ambiguous or empty."""
    clear, possible = evaluate(program, scene)
    if len(clear) == 1 and possible == clear:
        return clear[0]
    return None


def is_unambiguous(program: Program, scene: Scene, index: int) -> bool:
    """True when the program refers to object ``index`` and to nothing else."""
    return resolve(program, scene) == index


def clearly_related(scene: Scene, i: int, j: int, relation: str) -> bool:
    """Object ``i`` lies clearly ``relation`` (left/right/above/below) of object ``j``."""
    along, across = _along(scene, relation), _across(scene, relation)
    gain = along[i] - along[j]
    return gain >= scene.config.position_margin and gain >= abs(across[i] - across[j])


def possibly_related(scene: Scene, i: int, j: int, relation: str) -> bool:
    """Object ``i`` lies even slightly ``relation`` of object ``j`` (the *possible* reading).

    A relation that is not even possible is clearly false: what caption negatives need.
    """
    along = _along(scene, relation)
    return along[i] > along[j]


def on_side(scene: Scene, i: int, side: str) -> tuple[bool, bool]:
    """``(clear, possible)``: object ``i`` lies in the ``side`` half of the image.

    Clear: its centroid is at most ``0.5 - side_margin`` from that edge (as "on the left" in
    :class:`AbsoluteProgram`). Possible: it is not clearly in the opposite half.
    """
    if side not in SIDES:
        raise InputError(f"unknown side {side!r}; expected one of {SIDES}")
    offset = 1.0 if side in ("right", "bottom") else 0.0
    depth = offset - _along(scene, side)[i]  # 0 at the named edge, 1 at the opposite one
    margin = scene.config.side_margin
    return depth <= 0.5 - margin, depth < 0.5 + margin


def related_pairs(scene: Scene) -> list[tuple[int, int, str]]:
    """Every ``(i, j, relation)`` with object ``i`` clearly ``relation`` of object ``j``."""
    count = len(scene.objects)
    return [
        (i, j, relation)
        for i in range(count)
        for j in range(count)
        for relation in RELATIONS
        if i != j and clearly_related(scene, i, j, relation)
    ]
