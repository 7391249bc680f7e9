"""The model side of ``refseg serve``: one shared :class:`~refseg.systems.System` (any
system: Global-Local, a dense one, ...), a lock, an image cache.

Nothing here knows about HTTP, so the behaviour that matters (uploads checked before any
model work, visual work reused across requests for the same image, one request at a time
on the model, deadlines) is testable without a server; :mod:`refseg.serve.app` maps the
exceptions below to status codes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from refseg.errors import ImageError, InputError, RefsegError
from refseg.image_io import load_image
from refseg.methods import available_methods
from refseg.results import SegmentationResult
from refseg.systems import System, VisualPrompt

log = logging.getLogger("refseg.serve")


class UnsupportedImageError(ImageError):
    """The upload is not in any image format Pillow can identify (HTTP 415)."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the server accepts (HTTP 413)."""


class DeadlineExceededError(RefsegError):
    """The request's time budget ran out, waiting for the model or using it (HTTP 504)."""


class NotReadyError(RefsegError):
    """The model is still loading, or failed to load (HTTP 503)."""


def decode_upload(data: bytes, max_image_pixels: int) -> Image.Image:
    """Uploaded bytes -> RGB image, checking the size in the header before decoding pixels.

    Raises:
        ImageError: empty or corrupt data.
        UnsupportedImageError: not an image format Pillow knows.
        ImageTooLargeError: more than ``max_image_pixels`` pixels.
    """
    if not data:
        raise ImageError("the uploaded image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image is too large to decode: {exc}") from None
    except UnidentifiedImageError:
        if _known_signature(data):
            raise ImageError(
                "the uploaded image is corrupt: its format is known but its contents cannot be read"
            ) from None
        raise UnsupportedImageError(
            "the upload is not an image format refseg can read: send a PNG, JPEG, WebP, BMP, "
            "GIF or TIFF file"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read the uploaded image: {exc}") from None
    width, height = header.size
    if width * height > max_image_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels); this server "
            f"accepts at most {max_image_pixels / 1e6:.0f} megapixels: downscale it first"
        )
    return load_image(data)


def _known_signature(data: bytes) -> bool:
    """Whether ``data`` starts like a format Pillow supports (so it is corrupt, not foreign)."""
    Image.init()
    prefix = data[:16]
    for _factory, accept in Image.OPEN.values():
        try:
            if accept is not None and accept(prefix):
                return True
        except Exception:  # a plugin's check on a short prefix
            continue
    return False


def state_nbytes(state: Any) -> int:
    """Bytes an image state keeps alive: every array, tensor and image reachable from it
    (through attributes, dicts, lists and tuples), each counted once."""
    total, seen, stack = 0, set(), [state]
    while stack:
        item = stack.pop()
        if id(item) in seen or item is None or isinstance(item, (str, bytes, int, float)):
            continue
        if isinstance(item, torch.nn.Module):  # shared weights, not the image's
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            total += int(item.nbytes)
        elif torch.is_tensor(item):
            total += int(item.nelement() * item.element_size())
        elif isinstance(item, Image.Image):
            total += item.width * item.height * len(item.getbands())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return total


class ContextCache:
    """LRU of image states (``System.image_state()``) keyed by the SHA-256 of the uploaded
    bytes, bounded both in entries and in bytes (:func:`state_nbytes`).

    A state holds what the system computed for the image (Global-Local: its proposals and
    every visual feature so far), so a hit skips the proposal generator and the image
    encoder. A state larger than ``max_bytes`` on its own is not kept. Thread-safe.
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached states (as measured when last stored)."""
        with self._lock:
            return sum(self._sizes.values())

    def get(self, key: str) -> Any | None:
        with self._lock:
            context = self._items.get(key)
            if context is not None:
                self._items.move_to_end(key)
            return context

    def put(self, key: str, context: Any) -> None:
        """Store (or re-measure, after its features grew) ``context``; evict the oldest."""
        size = state_nbytes(context)
        with self._lock:
            self._items.pop(key, None)
            self._sizes.pop(key, None)
            if self.max_bytes is not None and size > self.max_bytes:
                return
            self._items[key] = context
            self._sizes[key] = size
            while len(self._items) > self.capacity or (
                self.max_bytes is not None and sum(self._sizes.values()) > self.max_bytes
            ):
                oldest, _ = self._items.popitem(last=False)
                del self._sizes[oldest]

    def count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1


@dataclass(frozen=True)
class Outcome:
    """What one request produced: a result per expression and facts about the image."""

    results: list[SegmentationResult]
    digest: str  # SHA-256 hex of the uploaded bytes
    width: int  # original image size
    height: int
    cached: bool  # the image's visual work came from the cache
    seconds: float  # time spent in :meth:`SegmentService.run`


class SegmentService:
    """One :class:`~refseg.systems.System` shared by all requests, used by one thread at a
    time.

    Args:
        segmenter: a ready system, or ``None`` until :meth:`load` provides one.
        cache_size: images whose states are kept (Global-Local's hold proposal masks).
        cache_bytes: most bytes the kept states may hold together (``None``: no bound).
        max_image_pixels: larger uploads are refused before decoding.
    """

    def __init__(
        self,
        segmenter: System | None = None,
        *,
        cache_size: int = 8,
        cache_bytes: int | None = None,
        max_image_pixels: int = 100_000_000,
    ) -> None:
        self._segmenter = segmenter
        self.state = "ready" if segmenter is not None else "loading"
        self.error: str | None = None
        self.cache = ContextCache(cache_size, cache_bytes)
        self.max_image_pixels = max_image_pixels
        self._model_lock = threading.Lock()
        self._loader: threading.Thread | None = None

    def load(self, loader: Callable[[], System]) -> None:
        """Call ``loader`` (blocking) and become ready, or record why it failed."""
        try:
            segmenter = loader()
        except Exception as exc:  # reported by /health; the server stays up to say so
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed")
            return
        self._segmenter, self.state = segmenter, "ready"
        log.info("model ready: %s", describe_model(segmenter))

    def load_in_background(self, loader: Callable[[], System]) -> None:
        """Start :meth:`load` in a daemon thread (once; later calls do nothing)."""
        with self._model_lock:
            if self._loader is None and self._segmenter is None:
                self._loader = threading.Thread(
                    target=self.load, args=(loader,), name="refseg-load", daemon=True
                )
                self._loader.start()

    def require_segmenter(self) -> System:
        """The system, or :class:`NotReadyError` while there is none."""
        if self._segmenter is None:
            why = f"failed to load ({self.error})" if self.error else "is still loading"
            raise NotReadyError(f"the model {why}: retry later or check the server log")
        return self._segmenter

    def describe(self) -> dict[str, Any]:
        """Status, system, model, device, default method and proposal generator, whether
        it is dense and takes visual prompts, its settings, cache counters."""
        info: dict[str, Any] = {
            "status": self.state,
            "system": None,
            "dense": None,
            "visual_prompts": None,
            "settings": None,
            "model": None,
            "device": None,
            "method": None,
            "proposals": None,
            "methods": [],
            "error": self.error,
            "cache": {
                "entries": len(self.cache),
                "capacity": self.cache.capacity,
                "bytes": self.cache.nbytes,
                "max_bytes": self.cache.max_bytes,
                "hits": self.cache.hits,
                "misses": self.cache.misses,
            },
        }
        if self._segmenter is not None:
            system = self._segmenter
            described = system.describe()
            info.update(
                system=system.name,
                dense=system.dense,
                visual_prompts=system.supports_visual_prompts,
                settings=described,
                model=described.get("clip"),
                device=described.get("device"),
                method=described.get("method"),
                proposals=described.get("proposals"),
                methods=sorted(available_methods()) if "method" in described else [],
            )
        return info

    @contextmanager
    def _model(self, deadline: float) -> Iterator[System]:
        """Hold the model lock, waiting no later than ``deadline`` (``time.monotonic``)."""
        segmenter = self.require_segmenter()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._model_lock.acquire(timeout=remaining):
            raise DeadlineExceededError("timed out waiting for the model (the server is busy)")
        try:
            yield segmenter
        finally:
            self._model_lock.release()

    def run(
        self,
        data: bytes,
        texts: Sequence[str],
        *,
        deadline: float,
        prompt_image: bytes | None = None,
        prompt_mask: bytes | None = None,
        **options: Any,
    ) -> Outcome:
        """Segment every expression in the uploaded image ``data`` (encoded bytes).

        The image is decoded outside the model lock; its state is looked up by hash, so
        the proposal generator and the image encoder run once per distinct image.

        Args:
            prompt_image, prompt_mask: an example of the object (encoded images; both or
                neither), for systems that take visual prompts.
            options: query options (``None`` values are left out), e.g. ``method``,
                ``alpha`` (Global-Local) or ``threshold`` (dense systems).

        Raises:
            ImageError (and subclasses): bad upload. InputError: bad text or parameter,
                or a visual prompt for a system that takes none.
            DeadlineExceededError: ``deadline`` passed before the work was done.
            NotReadyError: no model yet.
        """
        start = time.monotonic()
        system = self.require_segmenter()  # fail fast while loading, before decoding
        options = {key: value for key, value in options.items() if value is not None}
        if (prompt_image is None) != (prompt_mask is None):
            raise InputError("a visual prompt needs both an example image and its mask")
        if prompt_image is not None and prompt_mask is not None:
            system.check_options({"prompt": True})  # refuse before decoding anything
            options["prompt"] = VisualPrompt.build(
                decode_upload(prompt_image, self.max_image_pixels),
                decode_upload(prompt_mask, self.max_image_pixels),
            )
        system.check_options(options)
        digest = hashlib.sha256(data).hexdigest()
        context = self.cache.get(digest)
        image = None if context is not None else decode_upload(data, self.max_image_pixels)
        with self._model(deadline) as system:
            context = context or self.cache.get(digest)  # another request may have made it
            cached = context is not None
            self.cache.count(cached)
            if context is None:
                system.set_image(image)
                del image  # the system keeps the working copy it needs
                context = system.image_state()
                if context is not None:
                    self.cache.put(digest, context)
                if time.monotonic() > deadline:  # kept in the cache: a retry will be quick
                    raise DeadlineExceededError("timed out while computing the image features")
            else:
                system.restore_image_state(context)
            try:
                results = system.query(list(texts), **options)
            finally:
                if context is not None:  # re-measured: the query may have added features
                    self.cache.put(digest, context)
        if not cached:
            release_free_memory()
        height, width = results[0].original_size
        return Outcome(results, digest, width, height, cached, time.monotonic() - start)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them per thread arena otherwise, and
    the server's resident size would creep up with every large image it has seen)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def describe_model(system: System) -> str:
    """One line naming the system and its settings (for logs)."""
    settings = ", ".join(f"{k} {v!r}" for k, v in system.describe().items() if k != "system")
    return f"{system.name}: {settings}"
