"""Write ShapesRef in the ``refer`` layout read by the evaluation harness.

::

    OUT_DIR/shapesref/refs(unc).p      pickle: list of ref dicts (refer toolkit keys)
    OUT_DIR/shapesref/instances.json   COCO: info, images, annotations, categories
    OUT_DIR/shapesref/images/<file>.png

Objects are written as COCO polygons (:mod:`refseg.data.shapes.polygons`), as RefCOCO's
non-crowd objects are, so the refer API's ``getMask`` and the loaders built on it read
ShapesRef; the ground truth is what those polygons rasterise to (they reproduce the
rendered visible masks). ``area`` and ``bbox`` are those of the rasterised polygons.

Image ``i`` depends only on ``(seed, i)``, so a larger dataset extends a smaller one. Splits
are per image, from the image index (80/10/10). The pickle and JSON are written last, via a
temporary file and a rename, so their presence means the images are complete.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from refseg.data.shapes.config import ShapesConfig
from refseg.data.shapes.expressions import Expression, referring_expressions
from refseg.data.shapes.polygons import mask_to_polygons, polygons_mask
from refseg.data.shapes.programs import program_to_dict
from refseg.data.shapes.scene import Scene, sample_scene, scene_rng
from refseg.data.shapes.words import SHAPES
from refseg.errors import InputError
from refseg.fileio import write_atomic
from refseg.masks import mask_bbox

DATASET_NAME = "shapesref"
SPLIT_BY = "unc"  # refs file name "refs(unc).p", as RefCOCO's
# Split of image i is SPLIT_PATTERN[i % 10]: 80/10/10, and even 3 images cover every split.
SPLIT_PATTERN: tuple[str, ...] = ("train", "val", "test") + ("train",) * 7
PICKLE_PROTOCOL = 4  # fixed, so the bytes do not change with the Python version's default
SUPERCATEGORY = "shape"
PNG_LEVEL = 1  # pixel noise makes PNGs barely compressible: level 1 is ~1.5x faster than 6, +10%


@dataclass(frozen=True)
class ShapesRefSummary:
    """What :func:`write_shapesref` wrote."""

    root: Path
    images: int
    annotations: int
    refs: int
    sentences: int
    splits: dict[str, int]  # images per split
    kinds: dict[str, int]  # sentences per expression kind


def split_of(index: int) -> str:
    """Split ("train"/"val"/"test") of image ``index``."""
    return SPLIT_PATTERN[index % len(SPLIT_PATTERN)]


def category_id(shape: str) -> int:
    """COCO category id of a shape (1-based, in :data:`SHAPES` order)."""
    return SHAPES.index(shape) + 1


def image_file_name(index: int) -> str:
    return f"{DATASET_NAME}_{index:06d}.png"


def generate_image(
    seed: int, index: int, config: ShapesConfig | None = None
) -> tuple[Scene, list[list[Expression]]]:
    """Scene ``index`` of ``seed`` and the referring expressions of each of its objects."""
    rng = scene_rng(seed, index, stream="dataset")
    scene = sample_scene(rng, config)
    return scene, [referring_expressions(scene, k, rng) for k in range(len(scene))]


def write_shapesref(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    images: int = 1000,
    config: ShapesConfig | None = None,
    progress: bool = False,
) -> ShapesRefSummary:
    """Generate ``images`` scenes and write them under ``out_dir/shapesref`` (refer layout).

    Existing files of the same names are overwritten; other files are left alone.
    ``progress`` shows a tqdm bar on stderr.
    """
    if images < 1:
        raise InputError(f"--images must be at least 1; got {images}")
    if seed < 0:
        raise InputError(f"--seed must be non-negative; got {seed}")
    config = config or ShapesConfig()
    root = Path(out_dir) / DATASET_NAME
    image_dir = root / "images"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {image_dir}: {exc}; choose a writable OUT_DIR") from exc

    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    kinds: Counter[str] = Counter()
    sentence_count = 0
    for index in tqdm(range(images), desc=DATASET_NAME, unit="img", disable=not progress):
        scene, expressions = generate_image(seed, index, config)
        image_id, file_name, split = index + 1, image_file_name(index), split_of(index)
        scene.pil_image().save(image_dir / file_name, format="PNG", compress_level=PNG_LEVEL)
        coco_images.append(
            {"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width}
        )
        for k, (obj, sentences) in enumerate(zip(scene.objects, expressions, strict=True)):
            ann_id = len(annotations) + 1
            polygons = mask_to_polygons(scene.masks[k])
            mask = polygons_mask(polygons, scene.height, scene.width)
            x, y, w, h = mask_bbox(mask)  # type: ignore[misc]  # never empty
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category_id(obj.shape),
                    "segmentation": polygons,
                    "area": int(mask.sum()),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                    "color": obj.color,
                    "size_name": obj.size_name,
                }
            )
            if not sentences:
                continue
            ref_id = len(refs) + 1
            sents = []
            for expression in sentences:
                sentence_count += 1
                kinds[expression.kind] += 1
                sents.append(
                    {
                        "sent_id": sentence_count,
                        "sent": expression.text,
                        "raw": expression.text,
                        "tokens": expression.text.split(),
                        "kind": expression.kind,
                        "program": program_to_dict(expression.program),
                    }
                )
            refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "split": split,
                    "category_id": category_id(obj.shape),
                    "file_name": file_name,
                    "sent_ids": [s["sent_id"] for s in sents],
                    "sentences": sents,
                }
            )

    instances = {
        "info": {
            "description": "ShapesRef: synthetic referring expressions over coloured shapes",
            "seed": seed,
            "images": images,
            "config": asdict(config),
        },
        "images": coco_images,
        "annotations": annotations,
        "categories": [
            {"id": category_id(s), "name": s, "supercategory": SUPERCATEGORY} for s in SHAPES
        ],
    }
    write_atomic(root / "instances.json", json.dumps(instances).encode("utf-8"))
    write_atomic(root / f"refs({SPLIT_BY}).p", pickle.dumps(refs, protocol=PICKLE_PROTOCOL))
    return ShapesRefSummary(
        root=root,
        images=images,
        annotations=len(annotations),
        refs=len(refs),
        sentences=sentence_count,
        splits=dict(Counter(split_of(i) for i in range(images))),
        kinds=dict(kinds),
    )
