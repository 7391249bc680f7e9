"""``Segmenter``: the Global-Local system -- set an image once, ask many questions.

It is the ``global-local`` :class:`~refseg.systems.System` (``refseg.load("global-local",
...)`` builds one through :meth:`Segmenter.from_pretrained`); ``method=`` picks the
proposal-scoring method (Global-Local itself or a baseline).

    seg = Segmenter.from_pretrained(clip="ViT-B/32", proposals="sam")
    seg.set_image(Image.open("photo.jpg"))
    for result in seg.query(["the man in the red shirt", "the car on the left"]):
        result.save_overlay(image, "overlay.png")

Proposals and the configured method's visual features are computed in ``set_image``, once
per image, and reused by all its expressions; features another method or hyper-parameter
value needs are computed on first use and cached too. Text features are cached per sentence.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any, ClassVar

import numpy as np
import torch

from refseg import runtime
from refseg.clip import LoadedClip, load_clip
from refseg.clip.backend import backend_record, text_encoder
from refseg.clip.recommended import recommended_defaults
from refseg.errors import CheckpointFormatError, InputError, OptionError
from refseg.image_io import DEFAULT_MAX_PIXELS, ImageSource, cap_pixels, load_image
from refseg.masks import resize_masks
from refseg.methods import GlobalLocalConfig, ImageContext, TextBatch, resolve_method
from refseg.methods.pixels import prepare_pixels
from refseg.proposals import MaskProposals, ProposalGenerator, create_proposals
from refseg.results import SegmentationResult
from refseg.systems.base import System, check_texts
from refseg.text import PhraseExtractor

__all__ = ["DEFAULT_MAX_PIXELS", "Segmenter"]

# Sentences whose CLIP text features are kept between queries.
TEXT_CACHE_SIZE = 4096


class Segmenter(System):
    """Referring segmentation with a CLIP, a proposal generator and a method.

    Query options: ``method``, ``alpha``, ``beta``, ``k``, ``pixels`` (``None``: the configured
    value).

    Args:
        clip: a loaded CLIP (see :func:`refseg.clip.load_clip`).
        proposals: a generator, or ``None`` to pass proposals to :meth:`set_image` yourself.
        method: a registered method name (see :func:`refseg.methods.available_methods`).
        config: alpha, beta, k, normalisation and pixel preset (paper defaults).
        phrases: target noun phrase extractor; default auto-detects a spaCy pipeline.
        max_pixels: downscale larger images to this many pixels.
        value_sources: who chose each configured value (``user``, ``model``, ``dataset``,
            ``default``), reported by :meth:`describe`; :meth:`from_pretrained` fills it.
    """

    name: ClassVar[str] = "global-local"
    dense: ClassVar[bool] = False
    query_options: ClassVar[tuple[str, ...]] = ("method", "alpha", "beta", "k", "pixels")

    def __init__(
        self,
        clip: LoadedClip,
        proposals: ProposalGenerator | None = None,
        method: str = "global-local",
        config: GlobalLocalConfig | None = None,
        phrases: PhraseExtractor | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        value_sources: dict[str, str] | None = None,
    ) -> None:
        self.clip = clip
        self.value_sources = dict(value_sources or {})
        self.proposals = proposals
        self.method = method
        self.config = config or GlobalLocalConfig()
        resolve_method(method, self.config)  # fail early on an unknown name
        # The reference returns the whole sentence when no chunk holds the root noun.
        self.phrases = phrases or PhraseExtractor(fallback="sentence")
        self.max_pixels = max_pixels
        self.context: ImageContext | None = None
        self._text_cache: OrderedDict[str, tuple[str, str, torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )

    @classmethod
    def from_pretrained(
        cls,
        clip: str | os.PathLike = "ViT-B/32",
        proposals: str | ProposalGenerator | None = "auto",
        method: str = "global-local",
        *,
        alpha: float | None = None,
        beta: float | None = None,
        k: int | None = None,
        normalization: str | None = None,
        pixels: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        spacy_pipeline: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        proposal_options: dict[str, Any] | None = None,
        value_sources: dict[str, str] | None = None,
    ) -> Segmenter:
        """Build from names: a CLIP name or path, a proposal generator name or JSON file.

        ``proposals="auto"`` uses a cached SAM-family model sized for the device when
        transformers is installed (:mod:`refseg.proposals.auto`), else the weight-free
        superpixel generator. A parameter left ``None``
        takes the CLIP's recommended value (its ``recommended.json``, see
        :mod:`refseg.clip.recommended`; the shipped shapes models: alpha 0.5, pixels clean),
        else the paper's default. ``value_sources`` names who chose values given here
        (default ``"user"``; eval passes ``{"alpha": "dataset"}`` for the paper's
        per-dataset alpha).
        """
        values = {
            "alpha": alpha,
            "beta": beta,
            "k": k,
            "normalization": normalization,
            "pixels": pixels,
        }
        recommended = (
            recommended_defaults(clip, cls.name) if isinstance(clip, str | os.PathLike) else {}
        )
        unknown = sorted(set(recommended) - set(values))
        if unknown:
            raise CheckpointFormatError(
                f"{clip}: recommended.json names {', '.join(unknown)}; the {cls.name} system "
                f"takes {', '.join(values)}"
            )
        sources = {}
        for key, value in values.items():
            if value is not None:
                sources[key] = (value_sources or {}).get(key, "user")
            elif key in recommended:
                values[key] = recommended[key]
                sources[key] = "model"
            else:
                sources[key] = "default"
        try:
            config = replace(
                GlobalLocalConfig(), **{k_: v for k_, v in values.items() if v is not None}
            )
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        loaded = load_clip(clip, device=device, dtype=dtype)
        generator = (
            create_proposals(proposals, **(proposal_options or {}))
            if isinstance(proposals, str)
            else proposals
        )
        phrases = PhraseExtractor(spacy_pipeline, fallback="sentence")
        return cls(loaded, generator, method, config, phrases, max_pixels, sources)

    # ----------------------------------------------------------------- image side
    @torch.inference_mode()
    def set_image(
        self,
        image: ImageSource,
        *,
        image_key: Any = None,
        proposals: MaskProposals | None = None,
    ) -> ImageContext:
        """Load ``image``, generate its proposals, compute its visual features, and keep
        it for :meth:`query`.

        The visual features computed here are those the configured method needs with the
        configured parameters (Global-Local: the global features for ``k`` and the local
        crops' features; a zero-weight branch is skipped). A query with another ``k``,
        ``pixels`` preset or a method that needs other features computes those on its first
        use and caches them for the image. Text features and the spaCy pipeline (loaded once
        per process; :meth:`warm_up` loads it now) are the query's work.

        Args:
            image: path, bytes, PIL image or array (any mode; converted to RGB).
            image_key: id or file name for generators that look masks up (file, gt).
            proposals: masks to use instead of running the generator; their size must be
                the image's (original) size.
        """
        rgb = load_image(image)
        original_size = (rgb.height, rgb.width)
        working, _ = cap_pixels(rgb, self.max_pixels)
        working_size = (working.height, working.width)
        generator = "given"
        if proposals is None:
            if self.proposals is None:
                raise InputError("no proposal generator configured: pass proposals= to set_image")
            proposals = self.proposals(working, image_key=image_key)
            generator = getattr(self.proposals, "name", None) or type(self.proposals).__name__
        if proposals.image_size not in (working_size, original_size):
            raise InputError(
                f"proposal masks are {proposals.image_size}; the image is {original_size}"
            )
        if proposals.image_size != working_size:
            proposals = replace(proposals, masks=resize_masks(proposals.masks, working_size))
        if len(proposals) == 0:
            warnings.warn("no mask proposals for this image: results will be empty", stacklevel=2)
        preset = self.config.pixels
        pixels, crop_source = prepare_pixels(self.clip, working, preset)
        self.context = ImageContext(
            working,
            original_size,
            pixels,
            proposals,
            key=image_key,
            pixel_preset=preset,
            crop_source=crop_source,
            generator=generator,
        )
        chosen, config = resolve_method(self.method, self.config)
        chosen.prepare(self.clip, self.context, config)
        return self.context

    @staticmethod
    def _use_pixels(clip: LoadedClip, context: ImageContext, preset: str) -> None:
        """Re-prepare the context's pixels for another preset; its features are dropped."""
        context.pixels, context.crop_source = prepare_pixels(clip, context.image, preset)
        context.pixel_preset = preset
        context.cache.clear()

    # ------------------------------------------------------------------ text side
    def _encode_texts(self, texts: Sequence[str]) -> TextBatch:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            normalised = [self.phrases.normalise(t) for t in missing]
            phrases = self.phrases.batch(missing)
            phrases = [p or n for p, n in zip(phrases, normalised, strict=True)]
            for text, norm in zip(missing, normalised, strict=True):
                if self.clip.tokenizer.truncated(norm):
                    warnings.warn(
                        f"expression longer than CLIP's {self.clip.tokenizer.context_length} "
                        f"tokens was truncated: {text[:60]!r}...",
                        stacklevel=3,
                    )
            tokens = self.clip.tokenize([*normalised, *phrases])
            _, encode = text_encoder(self.clip, tokens)  # auto: may measure on these tokens
            features = encode(tokens)
            for i, text in enumerate(missing):
                self._text_cache[text] = (
                    normalised[i],
                    phrases[i],
                    features[i],
                    features[len(missing) + i],
                )
        for text in texts:
            self._text_cache.move_to_end(text)
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        entries = [self._text_cache[t] for t in texts]
        return TextBatch(
            texts=list(texts),
            phrases=[e[1] for e in entries],
            sentence_features=torch.stack([e[2] for e in entries]),
            phrase_features=torch.stack([e[3] for e in entries]),
        )

    def check_k(self, k: int | None) -> None:
        """Refuse an explicit ``k`` deeper than the ViT (the methods would clamp it silently;
        ResNets have no blocks to mask and ignore ``k``).

        Raises:
            InputError: ``k`` above the number of vision transformer blocks.
        """
        depth = getattr(self.clip.model.visual, "num_blocks", None)
        if k is not None and depth is not None and k > depth:
            raise InputError(
                f"k={k} but this CLIP's vision transformer has only {depth} blocks; "
                f"pass k in 1..{depth}"
            )

    # -------------------------------------------------------------------- queries
    @torch.inference_mode()
    def scores(
        self,
        texts: Sequence[str],
        *,
        method: str | None = None,
        **params: Any,
    ) -> tuple[torch.Tensor, TextBatch]:
        """Raw ``[T, N]`` scores of the current image's proposals (and the encoded texts)."""
        context = self._require_context()
        texts = check_texts(texts)
        try:
            config = replace(self.config, **{k: v for k, v in params.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise OptionError(str(exc)) from None
        chosen, config = resolve_method(method or self.method, config)
        if config.pixels != context.pixel_preset:
            with context.timed("pixels"):
                self._use_pixels(self.clip, context, config.pixels)
        self.check_k(params.get("k"))
        with context.timed("text"):
            text = self._encode_texts(texts)
        return chosen.scores(self.clip, context, text, config).float().cpu(), text

    def query_batch(self, texts: list[str], **options: Any) -> list[SegmentationResult]:
        """Segment each expression in the current image (see :meth:`set_image`); use
        :meth:`query` (one string -> one result, a list -> a list).

        Options: ``method``, ``alpha``, ``beta``, ``k``, ``pixels`` override the configured
        values.
        """
        self.check_options(options)
        method = options.pop("method", None)
        scores, text = self.scores(texts, method=method, **options)
        context = self._require_context()
        return [
            self._result(context, text.texts[i], text.phrases[i], scores[i], method or self.method)
            for i in range(len(text.texts))
        ]

    # ------------------------------------------------------------ System metadata
    def query_params(self, **options: Any) -> dict[str, Any]:
        """The effective :class:`GlobalLocalConfig` (``alpha``, ``beta``, ``k``, ...) for
        these query options, after the method's pinned values."""
        self.check_options(options)
        method = options.pop("method", None) or self.method
        try:
            wanted = replace(self.config, **{k: v for k, v in options.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise OptionError(str(exc)) from None
        _, effective = resolve_method(method, wanted)
        return asdict(effective)

    def describe(self) -> dict[str, Any]:
        """System, method, CLIP, proposals, noun-phrase pipeline, pixel cap, parameters."""
        return {
            "system": self.name,
            "method": self.method,
            "clip": self.clip.name,
            "proposals": getattr(self.proposals, "name", None),
            "phrases": getattr(self.phrases, "pipeline_name", None),
            "max_pixels": self.max_pixels,
            **self.query_params(),
            # Process-wide (refseg.runtime): recorded so a resume cannot mix fp32 and bf16;
            # the backend as run ("auto: onnx" once auto has chosen for both towers).
            "precision": runtime.settings().precision,
            "backend": backend_record(self.clip),
            "value_sources": dict(self.value_sources),
            "device": str(self.clip.device),
        }

    def stage_timings(self) -> dict[str, float]:
        return dict(self.context.timings) if self.context is not None else {}

    def warm_up(self) -> None:
        load = getattr(self.phrases, "load", None)
        if load is not None:
            load()  # the parse pipeline now, not during the first request

    def image_state(self) -> ImageContext | None:
        return self.context

    def restore_image_state(self, state: ImageContext) -> None:
        self.context = state

    def _require_context(self) -> ImageContext:
        if self.context is None:
            raise InputError("no image set: call set_image(image) first")
        return self.context

    @staticmethod
    def _result(
        context: ImageContext, text: str, phrase: str, scores: torch.Tensor, method: str
    ) -> SegmentationResult:
        values = scores.numpy().astype(np.float32)
        proposals = context.proposals
        if len(proposals) == 0:
            index, score = None, None
            mask = np.zeros(context.original_size, dtype=bool)
            ranking = np.zeros(0, dtype=np.int64)
        else:
            ranking = np.argsort(-values, kind="stable")
            index = int(ranking[0])
            score = float(values[index])
            mask = resize_masks(proposals.masks[index], context.original_size)
        return SegmentationResult(
            text=text,
            phrase=phrase,
            mask=mask,
            score=score,
            index=index,
            ranking=ranking,
            scores=values,
            proposals=proposals,
            original_size=context.original_size,
            method=method,
            proposal_generator=context.generator,
        )
