"""What can a reader that is blind to part of an expression reach on ShapesRef? The ceilings of
referring segmentation with ground-truth proposals, per expression kind (issue #13).

A *colour + shape reader* sees which objects have the colour and shape an expression names
and nothing else (no size, no position, no relation, no comparison); given a perfect one, the
best it can do is pick uniformly among the matching objects, so its expected accuracy is the
mean of ``1 / matches``. A *colour + shape + size class reader* also sees "big" / "small".
With ground-truth proposals, a method scores IoU 1 or about 0, so its mIoU is comparable to
these accuracies: a method at the first ceiling reads colour and shape perfectly and nothing
more; to pass it, it must read position, size or relations.

    refseg data shapes DATA --seed 1 --images 500     # the dataset of shapesref.md
    python benchmarks/shapesref_ceilings.py DATA [--split test] [--out benchmarks/shapesref.md]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench_utils import splice_section

from refseg.data.refer import in_split, load_json, load_refs
from refseg.errors import DatasetError

READERS = {"colour + shape": False, "colour + shape + size class": True}


def matches(
    annotation: dict[str, Any], wanted: dict[str, Any], shapes: dict[int, str], with_size: bool
) -> bool:
    """Whether an object has the colour, shape (and size class) the filter names."""
    return (
        wanted.get("shape") in (None, shapes[annotation["category_id"]])
        and wanted.get("color") in (None, annotation["color"])
        and (not with_size or wanted.get("size") in (None, annotation["size_name"]))
    )


def read_dataset(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The refs (safe unpickler) and ``instances.json`` of a ShapesRef folder."""
    return load_refs(folder / "refs(unc).p"), load_json(folder / "instances.json")


def describe(instances: dict[str, Any]) -> str:
    """The command that wrote the dataset, from its ``info`` (seed and image count)."""
    info = instances.get("info")
    info = info if isinstance(info, dict) else {}
    return (
        f"refseg data shapes DATA --seed {info.get('seed', '?')} --images {info.get('images', '?')}"
    )


def ceilings(
    refs: list[dict[str, Any]], instances: dict[str, Any], split: str
) -> dict[str, dict[str, tuple[float, int]]]:
    """Per reader, per expression kind (and ``all``): expected accuracy (%) and count."""
    shapes = {c["id"]: c["name"] for c in instances["categories"]}
    objects: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in instances["annotations"]:
        objects[annotation["image_id"]].append(annotation)
    table = {}
    for reader, with_size in READERS.items():
        chances: dict[str, list[float]] = defaultdict(list)
        for ref in refs:
            if not in_split(ref["split"], split):
                continue
            for sentence in ref["sentences"]:
                program = sentence["program"]
                wanted = program["filter"]
                found = [matches(a, wanted, shapes, with_size) for a in objects[ref["image_id"]]]
                chance = 1.0 / sum(found)  # the referent always matches its own filter
                chances[program["kind"]].append(chance)
                chances["all"].append(chance)
        table[reader] = {k: (100.0 * sum(v) / len(v), len(v)) for k, v in sorted(chances.items())}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder holding shapesref/")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, help="also write the table as a section of this file")
    args = parser.parse_args()
    try:
        refs, instances = read_dataset(args.data / "shapesref")
        table = ceilings(refs, instances, args.split)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise SystemExit(
            f"{args.data}: not a ShapesRef dataset written by `refseg data shapes` "
            f"(expressions need their programs): {exc!r}"
        ) from None
    except DatasetError as exc:
        raise SystemExit(str(exc)) from None
    if not table["colour + shape"]:
        raise SystemExit(f"{args.data}: no expressions in split {args.split!r}")
    counts = table["colour + shape"]
    lines = [
        f"Expected accuracy (%) of a perfect reader blind to the rest of the expression, on "
        f"the {args.split} split of `{describe(instances)}` "
        "(`python benchmarks/shapesref_ceilings.py DATA`): it "
        "picks uniformly among the objects with the colour and shape (and size class) the "
        "expression names. With GT proposals a method's mIoU compares with these: at the "
        "first row it reads colour and shape and nothing else.",
        "",
        "| reader | " + " | ".join(f"{k} ({counts[k][1]})" for k in counts) + " |",
        "|---|" + "---:|" * len(counts),
    ]
    for reader, row in table.items():
        lines.append(f"| {reader} | " + " | ".join(f"{row[k][0]:.1f}" for k in counts) + " |")
    print("\n".join(lines))
    if args.out is not None:
        splice_section(args.out, "ceilings", "\n".join(lines))


if __name__ == "__main__":
    main()
