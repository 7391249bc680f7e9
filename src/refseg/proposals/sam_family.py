"""SAM-family models the automatic mask generator drives: what differs between them.

transformers gives ``SamModel`` and ``Sam2Model`` the same two calls the generator needs:
``get_image_embeddings(pixel_values)`` once per image, and
``forward(image_embeddings=..., input_points=..., input_labels=..., multimask_output=True)``
per batch of points, returning ``pred_masks [1, B, 3, h, w]`` and ``iou_scores [1, B, 3]``
(SAM 2's embeddings are a list of feature maps, passed back as they came). What differs is
described here: the model class, the ``config.json`` model types it reads, the input
geometry (:mod:`refseg.proposals.sam_input`) and the generator defaults of the family's
reference implementation. SAM 2 is used as an image model only (no video memory).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from refseg.errors import CheckpointFormatError, RefsegError
from refseg.proposals.sam_input import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    InputTransform,
    Sam2InputTransform,
    SamInputTransform,
)


@dataclass(frozen=True)
class SamFamily:
    """One SAM generation as the generator sees it.

    Attributes:
        name: the generator's name in results (``SegmentationResult.proposal_generator``).
        label: human name used in messages.
        model_class: transformers class that runs it.
        model_types: ``config.json`` ``model_type`` values it loads. The Hub's
            ``facebook/sam2.1-*`` repos hold ``sam2_video`` checkpoints; ``Sam2Model`` reads
            their image-model weights and transformers drops the video-memory ones.
        transform: input geometry class (built with the checkpoint's size and statistics).
        amg_defaults: :class:`~refseg.proposals.sam.SamProposalConfig` fields whose default
            differs in this family's reference generator.
    """

    name: str
    label: str
    model_class: str
    model_types: tuple[str, ...]
    transform: type[SamInputTransform] | type[Sam2InputTransform]
    amg_defaults: dict[str, Any] = field(default_factory=dict)

    def model_cls(self) -> type:
        """The transformers class; a clear error when transformers lacks it."""
        transformers = require_transformers()
        cls = getattr(transformers, self.model_class, None)
        if cls is None:
            raise RefsegError(
                f"{self.label} proposals need transformers' {self.model_class}, missing in "
                f"transformers {transformers.__version__}; upgrade transformers"
            )
        return cls


def require_transformers() -> Any:
    """The transformers module; RefsegError naming the extra when it is missing."""
    try:
        import transformers
    except ImportError as exc:
        raise RefsegError(
            f"SAM proposals need transformers ({exc}); install it with `pip install refseg[sam]`"
        ) from None
    return transformers


# Bounds on a checkpoint's square input side (SAM and SAM 2 use 1024).
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 64, 4096

SAM = SamFamily("sam", "SAM", "SamModel", ("sam",), SamInputTransform)
# sam2 ``automatic_mask_generator.py``: SAM2AutomaticMaskGenerator keeps SAM's defaults
# except pred_iou_thresh=0.8 (SAM: 0.88).
SAM2 = SamFamily(
    "sam2", "SAM 2", "Sam2Model", ("sam2", "sam2_video"), Sam2InputTransform,
    {"pred_iou_thresh": 0.8},
)
FAMILIES = (SAM, SAM2)


def family_for_model_type(model_type: Any) -> SamFamily | None:
    """The family that reads checkpoints of ``model_type``, or None."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def family_of(model: Any) -> SamFamily | None:
    """The family whose class ``model`` is an instance of, or None (imports transformers)."""
    transformers = require_transformers()
    for family in FAMILIES:
        cls = getattr(transformers, family.model_class, None)
        if cls is not None and isinstance(model, cls):
            return family
    return None


def input_transform(
    model: torch.nn.Module, family: SamFamily, folder: Path | None
) -> InputTransform:
    """The family's geometry at the model's input size, normalised with the checkpoint's
    ``preprocessor_config.json`` statistics when it has them (ImageNet's otherwise)."""
    size = model.config.prompt_encoder_config.image_size
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise CheckpointFormatError(
                f"{family.label} input must be square; config image_size={size}"
            )
        size = size[0]
    if not isinstance(size, int) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        # checked before any buffer of size x size is allocated
        raise CheckpointFormatError(
            f"{family.label} config image_size={size!r} is not an input size in "
            f"{MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} (released models use 1024)"
        )
    mean, std = SAM_PIXEL_MEAN, SAM_PIXEL_STD
    processor_file = folder / "preprocessor_config.json" if folder is not None else None
    if processor_file is not None and processor_file.is_file():
        try:
            processor = json.loads(processor_file.read_text())
            mean = _channel_stats(processor.get("image_mean", mean), positive=False)
            std = _channel_stats(processor.get("image_std", std), positive=True)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise CheckpointFormatError(f"cannot read {processor_file}: {exc}") from None
    return family.transform(input_size=size, pixel_mean=mean, pixel_std=std)


def _channel_stats(values: Any, positive: bool) -> tuple[float, float, float]:
    """Three finite per-channel numbers (``positive``: each > 0), else ValueError."""
    if not isinstance(values, list | tuple) or len(values) != 3:
        raise ValueError(f"expected 3 per-channel values; got {values!r}")
    stats = tuple(float(v) for v in values)
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in stats):
        raise ValueError(f"per-channel values must be finite{' and > 0' * positive}: {values!r}")
    return stats  # type: ignore[return-value]
