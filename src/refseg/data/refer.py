"""RefCOCO / RefCOCO+ / RefCOCOg (and anything else in the ``refer`` layout) as plain iterables.

A dataset yields one :class:`ImageSample` per image, holding every referent of the split
on that image and every expression of each referent: an evaluator computes the visual
features of an image once and shares them across all its expressions.

Layout (from the ``refer`` toolkit)::

    <root>/<name>/refs(<split_by>).p   pickle: list of refs {ref_id, ann_id, image_id, split,
                                       category_id, sentences: [{sent_id, sent, raw, ...}]}
    <root>/<name>/instances.json       COCO images / annotations / categories
    <images>/COCO_train2014_*.jpg      COCO train2014 (see IMAGE_DIR_CANDIDATES)
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from refseg.errors import DatasetError
from refseg.image_io import DECODE_PIXEL_LIMIT, load_image
from refseg.masks import MaskFormatError, decode_segmentation

README_HINT = 'see the "Datasets" section of the README (ShapesRef: refseg data shapes ROOT)'
# Most list items + dict entries the latin-1 text repair of a refs pickle walks (RefCOCOg's
# refs hold a few million).
MAX_REPAIR_ITEMS = 50_000_000
# Largest mask drawn for an ``images`` record: the largest image refseg opens.
MAX_MASK_PIXELS = DECODE_PIXEL_LIMIT // 2

# The split scheme ("splitBy") each dataset was published with (refer toolkit README).
DEFAULT_SPLIT_BY: dict[str, str] = {
    "refcoco": "unc",
    "refcoco+": "unc",
    "refcocog": "umd",  # Nagaraja et al.; "google" (Mao et al.) has no test split
    "shapesref": "unc",
}

# Official splits per (dataset, split_by); other combinations accept what the file holds.
KNOWN_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}

# The refer API's getRefIds puts refs marked with this split in both testA and testB.
SHARED_TEST_SPLIT = "testAB"


def in_split(ref_split: Any, split: str) -> bool:
    """Whether a ref whose ``split`` field is ``ref_split`` belongs to ``split``, as the
    refer API decides: exact match, and ``testAB`` refs count in testA and in testB."""
    return ref_split == split or (ref_split == SHARED_TEST_SPLIT and split in ("testA", "testB"))


# Where the images are looked for, relative to the dataset root, after an explicit image_dir.
IMAGE_DIR_CANDIDATES: tuple[str, ...] = (
    "{name}/images",
    "images/mscoco/images/train2014",  # the refer toolkit's own layout
    "images/train2014",
    "train2014",
    "images",
)


@dataclass(frozen=True)
class Expression:
    """One referring expression.

    Attributes:
        sent_id: unique id within the dataset; predictions files are keyed by it.
        text: the expression as written (refer's ``raw``, which the reference code used).
        kind: an optional label for per-group metrics (e.g. spatial / attribute).
        normalized: refer's lower-cased, tokenised ``sent``, when the dataset has one.
    """

    sent_id: int
    text: str
    kind: str | None = None
    normalized: str | None = None


@dataclass(eq=False)
class Referent:
    """One target object and the expressions that describe it.

    ``mask`` (``bool [H, W]`` at the image's resolution) is decoded on first access and
    cached, so iterating a dataset costs no decoding until a mask is used.
    ``mask_source`` is either that array or a zero-argument function returning it.
    """

    ref_id: int
    ann_id: int
    category_id: int
    sentences: list[Expression]
    mask_source: np.ndarray | Callable[[], np.ndarray] = field(repr=False)
    category_name: str | None = None
    task_id: str | None = None  # the dataset's own string id (PhraseCut), if it has one
    _mask: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def mask(self) -> np.ndarray:
        """The target mask ``bool [H, W]``."""
        if self._mask is None:
            source = self.mask_source
            self._mask = np.asarray(source() if callable(source) else source, dtype=bool)
        return self._mask


@dataclass(eq=False)
class ImageSample:
    """One image with all the split's referents on it."""

    image_id: int
    file_name: str
    image_path: Path
    height: int
    width: int
    referents: list[Referent]

    def load_image(self) -> Image.Image:
        """The image as 8-bit RGB.

        Raises:
            DatasetError: the image file is missing (the images were not downloaded or the
                image directory is wrong).
        """
        if not self.image_path.is_file():
            raise DatasetError(
                f"image not found: {self.image_path}; download the images or pass the "
                f"directory that holds them (--images / image_dir) ({README_HINT})"
            )
        return load_image(self.image_path)

    def expressions(self) -> Iterator[tuple[Referent, Expression]]:
        """Every ``(referent, expression)`` pair on this image."""
        for referent in self.referents:
            for sentence in referent.sentences:
                yield referent, sentence


class ExpressionItem(NamedTuple):
    """One expression with the referent and image it belongs to."""

    image: ImageSample
    referent: Referent
    expression: Expression


class ImageDataset:
    """Shared behaviour of the datasets: a sequence of images and a flat view of expressions.

    Subclasses implement :meth:`_image_ids`, :meth:`_build` and :attr:`num_expressions`.
    Samples are built on access, so their cached masks are freed with them.
    """

    name: str
    split: str

    def __len__(self) -> int:
        """Number of images in the split."""
        return len(self._image_ids())

    def __getitem__(self, index: int) -> ImageSample:
        return self._build(self._image_ids()[index])

    def __iter__(self) -> Iterator[ImageSample]:
        for image_id in self._image_ids():
            yield self._build(image_id)

    def expressions(self) -> Iterator[ExpressionItem]:
        """Every expression of the split, image by image."""
        for image in self:
            for referent, expression in image.expressions():
                yield ExpressionItem(image, referent, expression)

    def fingerprint(self) -> str:
        """SHA-256 of what the split's scores depend on: every image's id, file name and size,
        and every referent's ids, category and expressions, in iteration order. A resumed
        evaluation compares it, so a dataset regenerated at the same path is noticed.
        :class:`ReferDataset` hashes its annotations (segmentations included) as well."""
        digest = hashlib.sha256()
        for image in self:
            referents = [
                [r.ref_id, r.ann_id, r.category_id, [[e.sent_id, e.text] for e in r.sentences]]
                for r in image.referents
            ]
            update_digest(digest, [image.image_id, image.file_name, image.height, image.width,
                                   referents])  # fmt: skip
        return digest.hexdigest()

    def sent_ids(self) -> list[int]:
        """All expression ids of the split, in iteration order."""
        return [item.expression.sent_id for item in self.expressions()]

    @property
    def num_expressions(self) -> int:
        raise NotImplementedError

    def _image_ids(self) -> Sequence[int]:
        raise NotImplementedError

    def _build(self, image_id: int) -> ImageSample:
        raise NotImplementedError


class ReferDataset(ImageDataset):
    """A split of a dataset in the ``refer`` layout, iterated image by image.

    Args:
        root: the refer data root (the folder holding ``refcoco/``, ``refcocog/``...).
        name: ``refcoco``, ``refcoco+``, ``refcocog``, ``shapesref`` or any other folder.
        split: e.g. ``val``, ``testA``; checked against the official splits.
        split_by: ``unc``, ``umd``, ``google``...; defaults per :data:`DEFAULT_SPLIT_BY`,
            or the only ``refs(*).p`` present for other names.
        image_dir: where the images are; default: the first existing of
            :data:`IMAGE_DIR_CANDIDATES` under ``root``.

    Raises:
        DatasetError: a file is missing or malformed, or the split does not exist.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        name: str,
        split: str,
        split_by: str | None = None,
        image_dir: str | os.PathLike | None = None,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.split = split
        folder = self.root / name
        if not folder.is_dir():
            raise DatasetError(
                f"dataset folder not found: {folder}; expected <root>/{name}/ with "
                f"refs(<split_by>).p and instances.json ({README_HINT})"
            )
        self.split_by = split_by or _default_split_by(folder, name)
        refs = load_refs(folder / f"refs({self.split_by}).p")
        instances = load_json(folder / "instances.json")
        self._check_split(refs)
        self.image_dir = _resolve_image_dir(self.root, name, image_dir)
        self._index(refs, instances)

    # -- loading -------------------------------------------------------------------------

    def _check_split(self, refs: list[dict[str, Any]]) -> None:
        known = KNOWN_SPLITS.get((self.name.lower(), self.split_by))
        valid = known or tuple(sorted({str(ref.get("split")) for ref in refs}))
        if self.split not in valid:
            raise DatasetError(
                f"{self.name} ({self.split_by}) has no split {self.split!r}; "
                f"valid splits: {', '.join(valid)}"
            )

    def _index(self, refs: list[dict[str, Any]], instances: dict[str, Any]) -> None:
        try:
            images = {int(img["id"]): img for img in instances["images"]}
            annotations = {int(ann["id"]): ann for ann in instances["annotations"]}
            categories = {int(c["id"]): str(c["name"]) for c in instances.get("categories", [])}
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{self.root / self.name / 'instances.json'} is not a COCO instances file "
                f"(missing or bad field {exc}); {README_HINT}"
            ) from None
        self._images: dict[int, dict[str, Any]] = {}
        self._refs_by_image: dict[int, list[dict[str, Any]]] = {}
        self._annotations: dict[int, dict[str, Any]] = {}
        self._categories = categories
        for ref in refs:
            if not in_split(ref.get("split"), self.split):
                continue
            ref_id = ref.get("ref_id")
            try:
                image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"ref {ref_id} lacks image_id / ann_id; {README_HINT}") from None
            if image_id not in images:
                raise DatasetError(f"ref {ref_id}: image {image_id} is not in instances.json")
            if ann_id not in annotations:
                raise DatasetError(f"ref {ref_id}: annotation {ann_id} is not in instances.json")
            self._images[image_id] = images[image_id]
            self._annotations[ann_id] = annotations[ann_id]
            self._refs_by_image.setdefault(image_id, []).append(ref)
        self._order = list(self._refs_by_image)  # first appearance in the refs file
        self._num_expressions = sum(
            len(ref.get("sentences", ())) for refs in self._refs_by_image.values() for ref in refs
        )

    # -- access --------------------------------------------------------------------------

    @property
    def num_expressions(self) -> int:
        """Number of expressions in the split."""
        return self._num_expressions

    @property
    def categories(self) -> dict[int, str]:
        """COCO category id -> name."""
        return dict(self._categories)

    def _image_ids(self) -> Sequence[int]:
        return self._order

    def fingerprint(self) -> str:
        """SHA-256 of the split's ``images`` records, refs and annotations (segmentations
        included), as read from the files, in iteration order."""
        digest = hashlib.sha256()
        for image_id in self._order:
            refs = self._refs_by_image[image_id]
            annotations = [self._annotations[int(ref["ann_id"])] for ref in refs]
            update_digest(digest, [self._images[image_id], refs, annotations])
        return digest.hexdigest()

    def _build(self, image_id: int) -> ImageSample:
        image = self._images[image_id]
        height, width = _declared_size(image)
        referents = [self._referent(ref, height, width) for ref in self._refs_by_image[image_id]]
        file_name = str(image["file_name"])
        return ImageSample(
            image_id, file_name, self.image_dir / file_name, height, width, referents
        )

    def _referent(self, ref: dict[str, Any], height: int, width: int) -> Referent:
        annotation = self._annotations[int(ref["ann_id"])]
        segmentation = annotation.get("segmentation")
        if segmentation is None:
            raise DatasetError(f"annotation {annotation.get('id')} has no segmentation")
        category_id = int(ref.get("category_id", annotation.get("category_id", -1)))

        def decode() -> np.ndarray:
            try:
                return decode_segmentation(segmentation, height, width)
            except MaskFormatError as exc:
                raise DatasetError(
                    f"annotation {annotation.get('id')} in instances.json: {exc}"
                ) from None

        return Referent(
            ref_id=int(ref["ref_id"]),
            ann_id=int(ref["ann_id"]),
            category_id=category_id,
            sentences=[_expression(sentence, ref) for sentence in ref.get("sentences", ())],
            mask_source=decode,
            category_name=self._categories.get(category_id),
        )


def _declared_size(image: dict[str, Any]) -> tuple[int, int]:
    """``(height, width)`` of an ``images`` record, refused unless an image could be that big
    (masks are drawn at this size before any image is read)."""
    height, width = image.get("height"), image.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise DatasetError(
            f"image {image.get('id')} in instances.json needs positive integer height and "
            f"width; got {height!r} x {width!r}"
        )
    if height * width > MAX_MASK_PIXELS:
        raise DatasetError(
            f"image {image.get('id')} in instances.json declares {width} x {height} pixels, "
            f"more than refseg decodes ({MAX_MASK_PIXELS}); the file is corrupt"
        )
    return height, width


def update_digest(digest: Any, value: Any, max_items: int = MAX_REPAIR_ITEMS) -> None:
    """Feed a plain value (dicts, lists, strings, numbers: what JSON and refs pickles hold) to
    ``digest`` in a canonical byte form. Iterative, and a container met again is fed as a
    back-reference, so deep nesting, shared references and cycles all cost linear work.

    Raises:
        DatasetError: more than ``max_items`` items.
    """
    seen: dict[int, int] = {}
    stack: list[Any] = [value]
    items = 0
    while stack:
        item = stack.pop()
        items += 1
        if items > max_items:
            raise DatasetError(f"a dataset record holds more than {max_items} items")
        if isinstance(item, (list, tuple, dict)):
            if id(item) in seen:
                digest.update(b"@%d;" % seen[id(item)])
                continue
            seen[id(item)] = len(seen)
            is_dict = isinstance(item, dict)
            children = [v for pair in item.items() for v in pair] if is_dict else list(item)
            digest.update(b"%s%d;" % (b"{" if is_dict else b"[", len(item)))
            stack.extend(reversed(children))
        elif isinstance(item, str):
            data = item.encode("utf-8", "surrogatepass")
            digest.update(b"s%d:" % len(data) + data)
        else:  # numbers, booleans, None (and bytes from old pickles)
            digest.update(f"{type(item).__name__}:{item!r};".encode())


def _expression(sentence: dict[str, Any], ref: dict[str, Any]) -> Expression:
    try:
        sent_id = int(sentence["sent_id"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"ref {ref.get('ref_id')}: a sentence has no sent_id") from None
    normalized = sentence.get("sent")
    text = sentence.get("raw") or normalized
    if not isinstance(text, str):
        raise DatasetError(f"sentence {sent_id} has no text ('raw' or 'sent')")
    kind = sentence.get("kind")
    return Expression(sent_id, text, None if kind is None else str(kind), normalized)


def _default_split_by(folder: Path, name: str) -> str:
    if name.lower() in DEFAULT_SPLIT_BY:
        return DEFAULT_SPLIT_BY[name.lower()]
    found = sorted(p.name[len("refs(") : -len(").p")] for p in folder.glob("refs(*).p"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"no refs(<split_by>).p file in {folder} ({README_HINT})")
    raise DatasetError(
        f"{folder} has several split schemes ({', '.join(found)}); choose one with split_by"
    )


def load_refs(path: Path) -> list[dict[str, Any]]:
    """Load a refs pickle safely (plain containers only); Python 2 pickles decode as latin-1."""
    if not path.is_file():
        raise DatasetError(f"missing dataset file: {path} ({README_HINT})")
    try:
        refs = _unpickle(path, encoding="ASCII")
    except UnicodeDecodeError:
        # The published pickles were written by Python 2, whose str holds UTF-8 bytes.
        refs = _repair_text(_unpickle(path, encoding="latin1"))
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise DatasetError(f"{path} does not hold a list of refs; {README_HINT}")
    return refs


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every class: refs pickles hold only dicts, lists, strings and numbers."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a refs file")


def _unpickle(path: Path, encoding: str) -> Any:
    try:
        with path.open("rb") as f:
            return _PlainUnpickler(f, encoding=encoding).load()
    except UnicodeDecodeError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read {path}: {exc} ({README_HINT})") from None


def _repair_text(root: Any, max_items: int = MAX_REPAIR_ITEMS) -> Any:
    """Undo latin-1 decoding of Python 2 UTF-8 byte strings (``'cafÃ©'`` -> ``'café'``).

    Each list and dict is repaired once (memoised by ``id``), so a pickle whose containers
    share references (a few hundred bytes can describe 2**40 leaves) costs time linear in
    its size, and the result shares the same way. Iterative: nesting depth is no limit.

    Raises:
        DatasetError: more than ``max_items`` list items and dict entries.
    """
    repaired: dict[int, Any] = {}
    pending: list[tuple[Any, Any]] = []

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return value.encode("latin1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                return value
        if isinstance(value, (list, dict)):
            if id(value) not in repaired:
                repaired[id(value)] = [] if isinstance(value, list) else {}
                pending.append((value, repaired[id(value)]))
            return repaired[id(value)]
        return value

    result = convert(root)
    items = 0
    while pending:
        original, copy = pending.pop()
        items += len(original)
        if items > max_items:
            raise DatasetError(
                f"refs pickle holds more than {max_items} items; not a refs file ({README_HINT})"
            )
        if isinstance(original, list):
            copy.extend(convert(v) for v in original)
        else:
            for key, value in original.items():
                copy[convert(key)] = convert(value)
    return result


def load_json(path: Path) -> Any:
    """Parse a dataset JSON file; :class:`DatasetError` when missing or invalid."""
    if not path.is_file():
        raise DatasetError(f"missing dataset file: {path} ({README_HINT})")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); {README_HINT}") from None
    except RecursionError:
        raise DatasetError(f"{path} is nested too deeply to be a dataset file") from None


def _resolve_image_dir(root: Path, name: str, image_dir: str | os.PathLike | None) -> Path:
    """The explicit directory, else the first existing candidate, else the first candidate.

    A missing image directory is not an error here: scoring needs only masks. Loading an
    image from it raises :class:`DatasetError`.
    """
    if image_dir is not None:
        path = Path(image_dir)
        if not path.is_dir():
            raise DatasetError(f"image directory not found: {path}")
        return path
    candidates = [root / pattern.format(name=name) for pattern in IMAGE_DIR_CANDIDATES]
    return next((path for path in candidates if path.is_dir()), candidates[0])
