"""One interface for every referring-segmentation system, and the registry that names them.

Every system -- proposal-based Global-Local, dense CLIPSeg, RISCLIP, MaskCLIP -- is used the
same way, so that eval, serve and the CLI never branch on which one they hold::

    import refseg
    system = refseg.load("global-local", clip="shapes-vit", proposals="superpixel")
    system = refseg.load("maskclip", clip="shapes-vit", threshold=0.5)
    system.set_image("photo.jpg")                 # computed once per image
    for result in system.query(["the red car", "the man on the left"]):
        result.save_mask("mask.png")             # SegmentationResult, whatever the system
    system.describe()                            # settings, recorded by eval and reports

The API (contract B of the project):

- :class:`System` -- ``name``, ``dense``, ``set_image(image, *, image_key=None,
  proposals=None)``, ``query(texts, **options)``: one :class:`SegmentationResult` for one
  string, a list (one per text, in order) for a list of strings; ``segment(image, texts,
  **options)`` (the same rule) and ``describe() -> dict``. Subclasses implement
  ``query_batch(texts: list[str], **options) -> list[SegmentationResult]``.
- Proposal systems (``dense = False``) rank mask proposals; ``proposals=`` in ``set_image``
  overrides their generator (eval passes ground-truth masks that way).
- Dense systems (``dense = True``) build on :class:`DenseSystem`: they predict logits on a
  grid; the result's ``probability`` is ``sigmoid`` of the logits resized (bilinear) to the
  image's original size, ``mask = probability > threshold``, and the proposal fields are
  empty. ``threshold`` is a constructor option and a per-query option.
- Visual prompts (CLIPSeg one-shot): ``query(texts, prompt_image=PIL, prompt_mask=bool [H, W])``
  or ``query(texts, prompt=VisualPrompt(...))``. With an empty ``texts`` and a prompt, the
  result list has one entry, for the prompt alone (its ``text`` is ``""``). Systems that do
  not support visual prompts (``supports_visual_prompts = False``) raise
  :class:`~refseg.errors.InputError` -- a one-line user error in the CLI and serve.
- ``image_state()`` / ``restore_image_state(state)`` let serve keep many images' work.
- ``query_params(**options)`` gives the effective query parameters (eval's ``params``
  and sweep checks); ``stage_timings()`` the seconds per stage for the current image.
- Unknown query options raise :class:`~refseg.errors.InputError` naming the accepted ones
  (``query_options`` lists a system's option names).
- Registry: :func:`register_system` (a factory or a lazy ``"module:attribute"`` string),
  :func:`available_systems`, :func:`load` (``refseg.load``) by name, or by path when a
  registered ``detect(path)`` claims the path. Built-in names: ``global-local``,
  ``maskclip``, and -- when their packages are installed -- ``clipseg``
  (``refseg.clipseg:build_system``) and ``risclip`` (``refseg.risclip.system:build_system``).
  A factory takes keyword arguments only and returns a ready :class:`System`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.errors import InputError
from refseg.image_io import DEFAULT_MAX_PIXELS, ImageSource, cap_pixels, load_image
from refseg.proposals.base import MaskProposals
from refseg.results import SegmentationResult

# Visual-prompt option names accepted by query() (besides ``prompt``).
PROMPT_OPTIONS = ("prompt", "prompt_image", "prompt_mask")


# ------------------------------------------------------------------------ visual prompts
@dataclass(frozen=True)
class VisualPrompt:
    """An example of what to segment: a support image and the object's mask in it.

    Attributes:
        image: RGB support image.
        mask: bool ``[H, W]`` at the support image's size, not empty.
    """

    image: Image.Image
    mask: np.ndarray

    @classmethod
    def build(cls, image: ImageSource, mask: ImageSource | np.ndarray) -> VisualPrompt:
        """Load and check a support image and mask (a path, bytes, PIL image or array).

        The object is: True / non-zero in a 2-D array; pixels > 127 (of the first channel)
        in a mask image given as a file, bytes or PIL image.
        """
        rgb = load_image(image)
        if isinstance(mask, np.ndarray) and mask.ndim == 2:
            binary = mask.astype(bool)
        else:
            values = np.asarray(load_image(mask))[..., 0]
            binary = values > 127
        if binary.ndim != 2 or binary.shape != (rgb.height, rgb.width):
            raise InputError(
                f"the prompt mask is {tuple(binary.shape)}; the prompt image is "
                f"{(rgb.height, rgb.width)}: give a mask of the same size"
            )
        if not binary.any():
            raise InputError("the prompt mask is empty: mark the example object in white")
        return cls(rgb, binary)


def pop_visual_prompt(options: dict[str, Any]) -> VisualPrompt | None:
    """Take ``prompt`` or ``prompt_image`` + ``prompt_mask`` out of ``options`` (or ``None``)."""
    prompt = options.pop("prompt", None)
    image = options.pop("prompt_image", None)
    mask = options.pop("prompt_mask", None)
    if prompt is not None:
        if image is not None or mask is not None:
            raise InputError("give either prompt= or prompt_image= with prompt_mask=, not both")
        if not isinstance(prompt, VisualPrompt):
            raise InputError("prompt= must be a refseg.systems.VisualPrompt")
        return prompt
    if image is None and mask is None:
        return None
    if image is None or mask is None:
        raise InputError("a visual prompt needs both an example image and its mask")
    return VisualPrompt.build(image, mask)


def check_texts(texts: str | Sequence[str], *, allow_empty: bool = False) -> list[str]:
    """``texts`` as a list of non-empty strings (an empty list only if ``allow_empty``)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts and not allow_empty:
        raise InputError("no expression given")
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise InputError("an expression is empty: describe the object to segment")
    return texts


# -------------------------------------------------------------------------------- System
class System(ABC):
    """A referring-segmentation system: set an image once, query it with many expressions."""

    name: ClassVar[str] = ""
    dense: ClassVar[bool] = False
    supports_visual_prompts: ClassVar[bool] = False
    # Names of the options query() accepts besides visual prompts (documented per system).
    query_options: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def set_image(
        self, image: ImageSource, *, image_key: Any = None, proposals: MaskProposals | None = None
    ) -> None:
        """Load ``image`` and compute everything its queries share.

        Args:
            image: path, bytes, PIL image or array (any mode; converted to RGB).
            image_key: id or file name for proposal generators that look masks up.
            proposals: masks at the image's size to rank instead of generated ones
                (proposal systems); dense systems ignore them.
        """

    @overload
    def query(self, texts: str, **options: Any) -> SegmentationResult: ...

    @overload
    def query(self, texts: Sequence[str], **options: Any) -> list[SegmentationResult]: ...

    def query(
        self, texts: str | Sequence[str], **options: Any
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment expressions in the current image: one string gives one result, a list
        of strings a list of results (one per text, in order; ``[]`` with a visual prompt
        gives the prompt's single result in a list)."""
        if isinstance(texts, str):
            return self.query_batch([texts], **options)[0]
        return self.query_batch(list(texts), **options)

    @abstractmethod
    def query_batch(self, texts: list[str], **options: Any) -> list[SegmentationResult]:
        """One result per expression for the current image (what :meth:`query` returns
        for a list); subclasses implement this."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (``system`` name first) recorded in eval configs and reports.

        A ``device`` entry, when present, is informational (a run may resume elsewhere).
        """

    def query_params(self, **options: Any) -> dict[str, Any]:
        """The query parameters in effect with these ``options`` (defaults filled in).

        Eval records them as the run's ``params`` and validates sweep points with them; a
        bad value or unknown option raises :class:`~refseg.errors.InputError`. A value that
        differs from the one asked for means the system pins it (sweeping it is useless).
        """
        self.check_options(options)
        return {}

    def stage_timings(self) -> dict[str, float]:
        """Seconds spent per stage on the current image so far (for eval's timing report)."""
        return {}

    def warm_up(self) -> None:
        """Load what the system loads lazily (serve calls it before taking requests)."""
        return None

    def image_state(self) -> Any:
        """What :meth:`set_image` computed for the current image, as an opaque object that
        :meth:`restore_image_state` takes back (serve's per-image cache); ``None`` when the
        system cannot share it (then every request sets the image again)."""
        return None

    def restore_image_state(self, state: Any) -> None:
        """Make ``state`` (from :meth:`image_state`) the current image again."""
        raise NotImplementedError(f"{type(self).__name__} does not restore image states")

    def segment(self, image: ImageSource, texts: str | Sequence[str], **options: Any) -> Any:
        """:meth:`set_image` then :meth:`query`; one result for a string, a list otherwise."""
        self.set_image(
            image,
            image_key=options.pop("image_key", None),
            proposals=options.pop("proposals", None),
        )
        return self.query(texts, **options)

    # ---------------------------------------------------------------- option helpers
    def accepted_options(self) -> tuple[str, ...]:
        """Names of the options :meth:`query` takes besides visual prompts."""
        return tuple(self.query_options)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse options this system does not take, with a message naming those it does."""
        prompts = [k for k in options if k in PROMPT_OPTIONS and options[k] is not None]
        if prompts and not self.supports_visual_prompts:
            raise InputError(
                f"the {self.name} system does not take visual prompts (an example image and "
                f"mask); use a system that does, such as clipseg"
            )
        accepted = self.accepted_options()
        unknown = sorted(k for k in options if k not in accepted and k not in PROMPT_OPTIONS)
        if unknown:
            raise InputError(
                f"the {self.name} system has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(accepted) or 'none'}"
            )


# --------------------------------------------------------------------------- DenseSystem
class DenseSystem(System):
    """A system that predicts a map per expression; no proposals.

    Subclasses supply :meth:`encode_image` (run once per image, cached) and :meth:`predict`
    (logits at any resolution). This class loads the image, caps its pixel count, caches the
    image state of the last few images (by content), resizes the logits bilinearly to the
    image's original size, applies the sigmoid and the threshold, and builds the results.

    Args:
        threshold: probability above which a pixel is in the mask (per-query override:
            ``query(..., threshold=t)``). Each system documents its default.
        max_pixels: downscale larger images to this many pixels before encoding.
        image_cache_size: image states kept (a repeated image is not encoded again).
    """

    dense: ClassVar[bool] = True
    # Resize convention of the logits (CLIPSeg's scorer uses align_corners=True).
    align_corners: ClassVar[bool] = False

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        image_cache_size: int = 4,
    ) -> None:
        self.threshold = check_threshold(threshold)
        if max_pixels is not None and max_pixels < 1:
            raise InputError(f"max_pixels must be positive; got {max_pixels}")
        self.max_pixels = max_pixels
        self.image_cache_size = max(1, int(image_cache_size))
        self._states: OrderedDict[str, Any] = OrderedDict()
        self._current: tuple[str, tuple[int, int]] | None = None
        self._last: tuple[Any, list[np.ndarray]] | None = None
        self._timings: dict[str, float] = {}

    # ------------------------------------------------------------ subclass contract
    @abstractmethod
    def encode_image(self, image: Image.Image) -> Any:
        """Everything the queries of ``image`` (RGB, already size-capped) share."""

    @abstractmethod
    def predict(self, image_state: Any, texts: Sequence[str], **options: Any) -> torch.Tensor:
        """Logits ``[T, h, w]`` (any ``h, w``), one map per text.

        With a visual prompt (``options["prompt"]``, a :class:`VisualPrompt`, only when
        ``supports_visual_prompts``) and no texts, return one map for the prompt alone.
        """

    # ----------------------------------------------------------------- System API
    @torch.inference_mode()
    def set_image(
        self, image: ImageSource, *, image_key: Any = None, proposals: MaskProposals | None = None
    ) -> None:
        rgb = load_image(image)
        original_size = (rgb.height, rgb.width)
        working, _ = cap_pixels(rgb, self.max_pixels)
        digest = _image_digest(working)
        self._timings = {}
        if digest in self._states:
            self._states.move_to_end(digest)
        else:
            start = time.perf_counter()
            self._states[digest] = self.encode_image(working)
            self._timings["encode"] = time.perf_counter() - start
            while len(self._states) > self.image_cache_size:
                self._states.popitem(last=False)
        self._current = (digest, original_size)

    @torch.inference_mode()
    def query_batch(self, texts: list[str], **options: Any) -> list[SegmentationResult]:
        if self._current is None:
            raise InputError("no image set: call set_image(image) first")
        digest, size = self._current
        threshold = self.query_params(**options)["threshold"]
        options.pop("threshold", None)
        prompt = pop_visual_prompt(options)
        texts = check_texts(texts, allow_empty=prompt is not None)
        # The maps of the last query are kept, so that thresholds (a sweep) reuse them.
        key = None if prompt is not None else (digest, tuple(texts), _freeze(options))
        if key is not None and self._last is not None and self._last[0] == key:
            maps = self._last[1]
        else:
            if prompt is not None:
                options["prompt"] = prompt
            start = time.perf_counter()
            logits = self.predict(self._states[digest], texts, **options)
            expected = max(len(texts), 1)
            if logits.ndim != 3 or logits.shape[0] != expected:
                raise RuntimeError(
                    f"{type(self).__name__}.predict returned {tuple(logits.shape)}; "
                    f"expected [{expected}, h, w]"
                )
            maps = [self.probability(logits[i], size) for i in range(expected)]
            self._timings["predict"] = self._timings.get("predict", 0.0) + (
                time.perf_counter() - start
            )
            self._last = (key, maps) if key is not None else None
        labels = texts or [""]
        return [self._result(label, p, threshold) for label, p in zip(labels, maps, strict=True)]

    def query_params(self, **options: Any) -> dict[str, Any]:
        """``{"threshold": ...}``: the query's threshold, else the system's."""
        self.check_options(options)
        chosen = options.get("threshold")
        return {"threshold": self.threshold if chosen is None else check_threshold(chosen)}

    def accepted_options(self) -> tuple[str, ...]:
        """``threshold`` and the subclass's :attr:`query_options`."""
        return ("threshold", *(k for k in self.query_options if k != "threshold"))

    def stage_timings(self) -> dict[str, float]:
        return dict(self._timings)

    def image_state(self) -> Any:
        if self._current is None:
            return None
        digest, size = self._current
        return digest, size, self._states[digest]

    def restore_image_state(self, state: Any) -> None:
        digest, size, encoded = state
        self._states[digest] = encoded
        self._states.move_to_end(digest)
        while len(self._states) > self.image_cache_size:
            self._states.popitem(last=False)
        self._current = (digest, size)
        self._timings = {}

    def probability(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Logits ``[h, w]`` -> ``float32 [H, W]`` probabilities at ``size`` (bilinear)."""
        values = logits.detach().float()[None, None]
        if tuple(values.shape[-2:]) != tuple(size):
            values = F.interpolate(
                values, size=size, mode="bilinear", align_corners=self.align_corners
            )
        return torch.sigmoid(values[0, 0]).cpu().numpy().astype(np.float32, copy=False)

    def _result(self, text: str, probability: np.ndarray, threshold: float) -> SegmentationResult:
        height, width = probability.shape
        return SegmentationResult(
            text=text,
            phrase=text,
            mask=probability > threshold,
            score=float(probability.max()),
            index=None,
            ranking=np.zeros(0, dtype=np.int64),
            scores=np.zeros(0, dtype=np.float32),
            proposals=MaskProposals.empty(height, width),
            original_size=(height, width),
            method=self.name,
            probability=probability,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "system": self.name,
            "dense": True,
            "threshold": self.threshold,
            "max_pixels": self.max_pixels,
        }


def _freeze(options: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable key of query options (by ``repr``: options are plain values)."""
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def check_threshold(value: Any) -> float:
    """A probability threshold in [0, 1) as a float, or an :class:`InputError`."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a number in [0, 1); got {value!r}") from None
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"threshold must be in [0, 1); got {threshold}")
    return threshold


def _image_digest(image: Image.Image) -> str:
    """Content key of an RGB image: its size and a hash of its pixels."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.width}x{image.height}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class SystemEntry:
    """A registered system: how to build it, a one-line help, and an optional path test."""

    name: str
    factory: Callable[..., System] | str  # a callable, or "module:attribute" imported on use
    help: str
    detect: Callable[[Path], bool] | str | None = None

    def _resolve(self, target: Callable[..., Any] | str) -> Callable[..., Any]:
        if not isinstance(target, str):
            return target
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise InputError(
                    f"system {self.name!r} is not available in this installation "
                    f"({module_name} is missing)"
                ) from None
            raise
        target = module
        for part in attribute.split("."):
            target = getattr(target, part)
        return target

    def claims(self, path: Path) -> bool:
        """True if this system's ``detect`` recognises ``path`` (False if not installed)."""
        if self.detect is None:
            return False
        try:
            return bool(self._resolve(self.detect)(path))
        except InputError:
            return False

    def build(self, **kwargs: Any) -> System:
        factory = self._resolve(self.factory)
        check_factory_options(self.name, factory, kwargs)
        system = factory(**kwargs)
        if not isinstance(system, System):
            raise TypeError(f"the factory of {self.name!r} returned {type(system).__name__}")
        return system


def _keyword_names(factory: Callable[..., Any]) -> list[str] | None:
    """Keyword arguments ``factory`` takes; ``None`` when it takes any (``**kwargs``) or has
    no signature to inspect."""
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword]


def check_factory_options(
    name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]
) -> None:
    """Refuse keyword arguments ``factory`` does not take, naming those it does (a user
    passed an option of another system, e.g. ``--alpha`` to a dense system)."""
    accepted = _keyword_names(factory)
    if accepted is None:
        return
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        raise InputError(
            f"the {name} system does not take {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted)}"
        )


_SYSTEMS: dict[str, SystemEntry] = {}


def register_system(
    name: str,
    factory: Callable[..., System] | str,
    help: str,
    *,
    detect: Callable[[Path], bool] | str | None = None,
) -> None:
    """Make a system loadable by ``name``.

    Args:
        name: the name users type (``--system NAME``, ``refseg.load(NAME)``).
        factory: keyword arguments -> :class:`System`; or ``"module:attribute"`` to import
            only when the system is loaded (keeps ``import refseg`` and ``--help`` cheap).
        help: one line for listings.
        detect: ``path -> bool`` (or ``"module:attribute"``): True if ``refseg.load(path)``
            should build this system from ``path`` (the factory then gets ``path=path``).
    """
    _SYSTEMS[name] = SystemEntry(name, factory, help, detect)


def _register_builtins() -> None:
    if "global-local" in _SYSTEMS:
        return
    register_system(
        "global-local",
        "refseg.segmenter:Segmenter.from_pretrained",
        "zero-shot Global-Local CLIP: ranks mask proposals (Yu et al., CVPR 2023)",
    )
    register_system(
        "maskclip",
        "refseg.systems.maskclip:build_system",
        "zero-shot MaskCLIP dense grounding: patch-sentence cosine (RISCLIP's untrained baseline)",
    )
    register_system(
        "clipseg",
        "refseg.clipseg:build_system",
        "CLIPSeg: frozen CLIP + small decoder; text or example-image prompts",
        detect="refseg.clipseg.system:detect",
    )
    register_system(
        "risclip",
        "refseg.risclip.system:build_system",
        "RISCLIP: frozen CLIP with adapters and cross-modal modules, trained for RIS",
    )


def factory_options(system: str | os.PathLike) -> tuple[str, ...]:
    """The keyword arguments the factory of registered ``system`` takes (``()`` when the
    name is not registered, the system is not installed, or its factory takes anything)."""
    _register_builtins()
    entry = _SYSTEMS.get(os.fspath(system))
    if entry is None:
        return ()
    try:
        names = _keyword_names(entry._resolve(entry.factory))
    except InputError:
        return ()
    return tuple(names or ())


def available_systems() -> dict[str, str]:
    """Registered system names with their one-line help."""
    _register_builtins()
    return {name: entry.help for name, entry in sorted(_SYSTEMS.items())}


def load(system: str | os.PathLike = "global-local", **kwargs: Any) -> System:
    """Build a system by registered name, or from a path a registered system recognises.

    ``kwargs`` go to the system's factory (e.g. ``clip=``, ``proposals=``, ``threshold=``,
    ``device=``); each system documents its own.

    Raises:
        InputError: unknown name or unrecognised path; the message lists the names.
    """
    _register_builtins()
    key = os.fspath(system)
    if key in _SYSTEMS:
        return _SYSTEMS[key].build(**kwargs)
    path = Path(key)
    if path.exists():
        for entry in _SYSTEMS.values():
            if entry.claims(path):
                return entry.build(path=path, **kwargs)
    names = ", ".join(sorted(_SYSTEMS))
    raise InputError(f"unknown system {key!r}; choose one of: {names}")
