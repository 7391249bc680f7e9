"""SAM-family automatic mask generation on transformers' ``SamModel`` and ``Sam2Model``.

Prompt the model with a regular grid of points, keep the confident and stable masks, and
remove duplicates with box NMS (Kirillov et al., "Segment Anything", ICCV 2023, Sec. 7.1 and
the ``SamAutomaticMaskGenerator`` of facebookresearch/segment-anything; SAM 2's
``SAM2AutomaticMaskGenerator`` is the same procedure). The image is encoded once; the points
go through the prompt encoder and mask decoder in batches. One loop serves SAM, SlimSAM and
SAM 2 (image model): what differs, the input geometry and the model class, is in
:mod:`refseg.proposals.sam_family` and :mod:`refseg.proposals.sam_input`.

transformers is imported only when a model is loaded (``pip install refseg[sam]``), so
``import refseg.proposals`` stays light. The preprocessing is our own (transformers' image
processors need torchvision).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from refseg import runtime
from refseg.clip.hub import hub_reachable
from refseg.errors import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    InputError,
)
from refseg.image_io import load_image
from refseg.proposals.amg import (
    box_nms,
    masks_to_boxes,
    point_grid,
    remove_small_regions,
    stability_score,
)
from refseg.proposals.base import MaskProposals, register_proposals
from refseg.proposals.sam_family import (
    FAMILIES,
    SamFamily,
    family_for_model_type,
    family_of,
    input_transform,
    require_transformers,
)
from refseg.proposals.sam_input import (  # noqa: F401  (SamInputTransform: public here too)
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    InputTransform,
    SamInputTransform,
    longest_side_size,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Sam2Model, SamModel

# Names a user can type -> Hugging Face Hub repositories (transformers format). The CLI's
# help texts (refseg.commands.options) list the same names; a test keeps them in step.
SAM_CHECKPOINTS: dict[str, str] = {
    "sam-vit-base": "facebook/sam-vit-base",
    "sam-vit-large": "facebook/sam-vit-large",
    "sam-vit-huge": "facebook/sam-vit-huge",
    # SlimSAM (Chen et al. 2023): SAM ViT-B pruned to 23% / 50% of its weights, same SamModel
    # code (Hub repos with config.json, model.safetensors, preprocessor_config.json).
    "slimsam-77": "Zigeng/SlimSAM-uniform-77",
    "slimsam-50": "Zigeng/SlimSAM-uniform-50",
    # SAM 2.1 image models (Ravi et al. 2024), transformers weights in Meta's repos (config
    # model_type sam2_video; Sam2Model reads the image part). transformers documents
    # Sam2Config's defaults as facebook/sam2.1-hiera-tiny's.
    "sam2.1-hiera-tiny": "facebook/sam2.1-hiera-tiny",
    "sam2.1-hiera-small": "facebook/sam2.1-hiera-small",
    "sam2.1-hiera-base-plus": "facebook/sam2.1-hiera-base-plus",
    "sam2.1-hiera-large": "facebook/sam2.1-hiera-large",
}

# Files fetched from the Hub: configs and safetensors weights (not the duplicate .bin/.h5).
_HUB_PATTERNS = ["*.json", "*.safetensors"]
_HUB_FALLBACK_PATTERNS = ["*.json", "pytorch_model*.bin"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Masks upscaled at a time: bounds the float buffer at chunk x input_size² values.
_UPSCALE_CHUNK = 32
# What the vision encoder returns: one map (SAM) or a list of maps (SAM 2).
Embeddings = torch.Tensor | list[torch.Tensor]


@dataclass
class SamProposalConfig:
    """Automatic mask generation settings.

    Defaults are those of segment-anything's ``SamAutomaticMaskGenerator.__init__``
    (points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
    stability_score_thresh=0.95, stability_score_offset=1.0, box_nms_thresh=0.7,
    min_mask_region_area=0) and ``Sam.mask_threshold=0.0``; ``max_proposals=100`` follows
    the paper's proposal budget (SPEC: up to 100 masks). One crop layer only (SAM's default
    ``crop_n_layers=0``): no multi-crop zoom-in. A SAM 2 generator built without a config
    starts from SAM 2's ``SAM2AutomaticMaskGenerator`` defaults instead (the same but
    pred_iou_thresh=0.8; :data:`refseg.proposals.sam_family.SAM2`).

    Attributes:
        points_per_side: the prompt grid is ``points_per_side`` x ``points_per_side``.
        points_per_batch: points decoded together (memory vs speed; no effect on results);
            None: chosen by timing the decoder on this machine (refseg.runtime; on CPU one
            point at a time ran 1.5x faster than 64).
        skip_covered_points: prompt reduction: do not decode a grid point that a mask
            already accepted (after the IoU, stability and non-empty filters) covers. Fewer
            decoder calls, not SAM's exact output (off by default).
        pred_iou_thresh: keep masks whose predicted IoU is greater; 0 disables the filter.
        stability_score_thresh: keep masks whose stability score is at least this; 0
            disables the filter.
        stability_score_offset: logit offset used by the stability score.
        box_nms_thresh: box IoU above which the lower-scored mask is dropped.
        min_mask_region_area: fill holes and drop islands smaller than this many pixels
            (at the image's resolution), then re-run NMS preferring unchanged masks; 0 skips.
        mask_threshold: logit threshold that binarises masks.
        max_proposals: keep at most this many masks, best predicted IoU first; None: all.
    """

    points_per_side: int = 32
    points_per_batch: int | None = None
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    mask_threshold: float = 0.0
    max_proposals: int | None = 100
    skip_covered_points: bool = False

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or (self.points_per_batch or 1) < 1:
            raise InputError(
                "points_per_side and points_per_batch must be >= 1; got "
                f"{self.points_per_side} and {self.points_per_batch}"
            )
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise InputError(f"box_nms_thresh must be in [0, 1]; got {self.box_nms_thresh}")
        if self.stability_score_offset < 0 or self.min_mask_region_area < 0:
            raise InputError("stability_score_offset and min_mask_region_area must be >= 0")
        if self.max_proposals is not None and self.max_proposals < 1:
            raise InputError(f"max_proposals must be >= 1 or None; got {self.max_proposals}")


@dataclass
class ProposalStats:
    """How many masks survived each step for one image (diagnostics and tests)."""

    points: int = 0
    decoded: int = 0  # points sent to the decoder
    skipped: int = 0  # points covered by an accepted mask (skip_covered_points)
    candidates: int = 0  # points x masks per point
    after_iou: int = 0
    after_stability: int = 0
    pre_nms: int = 0  # also non-empty
    after_nms: int = 0
    returned: int = 0


@dataclass
class _Candidates:
    """Masks kept so far: low-res logits ``[K, h, w]``, scores ``[K]``, boxes ``[K, 4]``."""

    logits: list[torch.Tensor] = dataclasses.field(default_factory=list)
    scores: list[torch.Tensor] = dataclasses.field(default_factory=list)
    boxes: list[torch.Tensor] = dataclasses.field(default_factory=list)

    def cat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.cat(self.logits), torch.cat(self.scores), torch.cat(self.boxes)


@register_proposals("sam")
class SamProposals:
    """Class-agnostic mask proposals from a SAM-family model prompted with a point grid.

    Args:
        model: a name in :data:`SAM_CHECKPOINTS` (``"sam-vit-base"``, ``"slimsam-77"``,
            ``"sam2.1-hiera-tiny"``, ...; downloaded into the Hugging Face cache on first
            use), another Hub repo id, a directory written by ``save_pretrained`` of a
            ``SamModel`` or ``Sam2Model`` (or a ``sam2_video`` checkpoint), or such a model.
        device: where to run; default CUDA if available, else CPU (a given model stays
            where it is unless ``device`` is set).
        config: generation settings (default: the model family's reference defaults, see
            :class:`SamProposalConfig`); keyword ``overrides`` replace single fields.
        cache_dir: Hugging Face cache to use instead of the default.

    Raises:
        InputError: an unknown option in ``overrides``.
        CheckpointNotFoundError: unknown name, or not cached and cannot be downloaded.
        CheckpointFormatError: the directory is not a readable transformers SAM checkpoint.
        RefsegError: transformers is not installed.
    """

    name = "sam"

    def __init__(
        self,
        model: str | os.PathLike | SamModel | Sam2Model = "sam-vit-base",
        *,
        device: str | torch.device | None = None,
        config: SamProposalConfig | None = None,
        cache_dir: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> None:
        _with_overrides(config or SamProposalConfig(), overrides)  # bad options: before loading
        self.model, self.transform, self.family = load_sam_model(
            model, device=device, cache_dir=cache_dir
        )
        self.name = self.family.name  # "sam" or "sam2": which family made the masks
        base = config or SamProposalConfig(**self.family.amg_defaults)
        self.config = _with_overrides(base, overrides)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __call__(self, image: Image.Image, *, image_key: Any = None) -> MaskProposals:
        """Proposals for ``image`` (``image_key`` is unused: SAM looks only at pixels)."""
        return self.generate(image)[0]

    @torch.inference_mode()
    def generate(self, image: Image.Image) -> tuple[MaskProposals, ProposalStats]:
        """Proposals and per-step survivor counts.

        Returns:
            ``MaskProposals`` with ``bool [N, H, W]`` masks at the image's resolution and
            ``float32 [N]`` predicted-IoU scores in decreasing order, and the counts.
        """
        image = load_image(image)
        height, width = image.height, image.width
        cfg = self.config
        stats = ProposalStats()
        embeddings = self._embed(image)

        points = point_grid(cfg.points_per_side) * torch.tensor([width, height])
        stats.points = points.shape[0]
        prompts = self.transform.points_to_input(points, height, width).to(self.device)
        # Statistics are taken at the image's resolution as in SAM, or at the resized
        # input's when the image is larger, which bounds memory for big photos.
        work_size = (height, width)
        if max(height, width) > self.transform.input_size:
            work_size = longest_side_size(height, width, self.transform.input_size)

        kept = _Candidates()
        # Prompt reduction: the union of accepted masks at work_size, and each point's pixel.
        covered = torch.zeros(work_size, dtype=torch.bool) if cfg.skip_covered_points else None
        scale = torch.tensor([work_size[1] / width, work_size[0] / height])
        pixel = (points * scale).long()
        pixel[:, 0].clamp_(0, work_size[1] - 1)
        pixel[:, 1].clamp_(0, work_size[0] - 1)
        tuner = None
        if cfg.points_per_batch is None:
            key = runtime.model_key(self.model, self.device, self.dtype)
            tuner = runtime.chunk_tuner(f"sam-decoder|{key}")
            tuner.start_call(len(prompts))
        start = 0
        while start < len(prompts):
            size = cfg.points_per_batch or tuner.next_size(len(prompts) - start)
            index = torch.arange(start, min(start + size, len(prompts)))
            start += size
            if covered is not None:
                free = ~covered[pixel[index, 1], pixel[index, 0]]
                stats.skipped += int((~free).sum())
                index = index[free]
                if len(index) == 0:
                    continue
            begin = time.process_time()
            logits, scores = self._decode(embeddings, prompts[index])
            if tuner is not None:
                tuner.record(size, len(index), time.process_time() - begin)
            stats.decoded += len(index)
            stats.candidates += scores.shape[0]
            accepted = self._filter_batch(logits, scores, (height, width), work_size, kept, stats)
            if covered is not None and accepted is not None:
                covered |= accepted.cpu()
        if stats.pre_nms == 0:
            return MaskProposals.empty(height, width), stats

        logits, scores, boxes = kept.cat()
        order = box_nms(boxes.cpu(), scores.cpu(), cfg.box_nms_thresh).to(logits.device)
        stats.after_nms = order.shape[0]
        masks = self._masks_at(logits[order], (height, width))
        scores = scores[order]
        if cfg.min_mask_region_area > 0:
            masks, scores = self._clean_regions(masks, scores)
        if cfg.max_proposals is not None:
            masks, scores = masks[: cfg.max_proposals], scores[: cfg.max_proposals]
        stats.returned = masks.shape[0]
        proposals = MaskProposals(masks.cpu().numpy(), scores.cpu().numpy())
        return proposals, stats

    def _embed(self, image: Image.Image) -> Embeddings:
        """The image's embedding from the vision encoder: SAM's ``[1, C, h, w]``, SAM 2's
        list of feature maps (high resolution first); passed to :meth:`_decode` as is."""
        pixels = self.transform.pixel_values(image).to(self.device, self.dtype)
        return self.model.get_image_embeddings(pixels)

    def _decode(
        self, embeddings: Embeddings, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Three masks per point prompt (the same call for SAM and SAM 2).

        Args:
            points: ``float [B, 2]`` ``(x, y)`` in the model input frame's pixels.

        Returns:
            ``float32 [B*3, h, w]`` low-res logits and ``float32 [B*3]`` predicted IoUs.
        """
        count = points.shape[0]
        labels = torch.ones((1, count, 1), dtype=torch.long, device=points.device)
        output = self.model(
            image_embeddings=embeddings,
            input_points=points[None, :, None, :].to(self.dtype),
            input_labels=labels,
            multimask_output=True,
        )
        logits = output.pred_masks[0].flatten(0, 1).to(torch.float32)
        return logits, output.iou_scores[0].flatten().to(torch.float32)

    def _filter_batch(
        self,
        logits: torch.Tensor,
        scores: torch.Tensor,
        image_size: tuple[int, int],
        work_size: tuple[int, int],
        kept: _Candidates,
        stats: ProposalStats,
    ) -> torch.Tensor | None:
        """Apply the IoU, stability and non-empty filters; append survivors to ``kept``.

        Returns the union ``bool [h, w]`` (at ``work_size``) of the survivors, or None.
        """
        union = None
        cfg = self.config
        if cfg.pred_iou_thresh > 0:
            keep = scores > cfg.pred_iou_thresh
            logits, scores = logits[keep], scores[keep]
        stats.after_iou += scores.shape[0]
        for start in range(0, scores.shape[0], _UPSCALE_CHUNK):
            low_res = logits[start : start + _UPSCALE_CHUNK]
            chunk_scores = scores[start : start + _UPSCALE_CHUNK]
            full = self.transform.logits_to_image(low_res, image_size, work_size)
            if cfg.stability_score_thresh > 0:
                stable = (
                    stability_score(full, cfg.mask_threshold, cfg.stability_score_offset)
                    >= cfg.stability_score_thresh
                )
                low_res, chunk_scores, full = low_res[stable], chunk_scores[stable], full[stable]
            stats.after_stability += chunk_scores.shape[0]
            masks = full > cfg.mask_threshold
            non_empty = masks.flatten(1).any(dim=1)
            stats.pre_nms += int(non_empty.sum())
            kept.logits.append(low_res[non_empty])
            kept.scores.append(chunk_scores[non_empty])
            kept.boxes.append(masks_to_boxes(masks[non_empty]))
            if non_empty.any():
                chunk_union = masks[non_empty].any(dim=0)
                union = chunk_union if union is None else union | chunk_union
        return union

    def _masks_at(self, logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``bool [N, H, W]`` masks at the image's resolution from low-res logits."""
        chunks = [
            self.transform.logits_to_image(logits[i : i + _UPSCALE_CHUNK], image_size, image_size)
            > self.config.mask_threshold
            for i in range(0, logits.shape[0], _UPSCALE_CHUNK)
        ]
        return torch.cat(chunks) if chunks else torch.zeros((0, *image_size), dtype=torch.bool)

    def _clean_regions(
        self, masks: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Remove small holes/islands, then NMS again preferring masks that did not change.

        ``masks`` come sorted by score; the result is too.
        """
        cleaned, unchanged = [], []
        for mask in masks.cpu().numpy():
            new = remove_small_regions(mask, self.config.min_mask_region_area)
            cleaned.append(new)
            unchanged.append(bool(np.array_equal(new, mask)))
        cleaned_masks = torch.from_numpy(np.stack(cleaned)).to(masks.device)
        # Rank: unchanged masks first, then by score (already sorted) -> decreasing priority.
        rank = torch.tensor([not u for u in unchanged], dtype=torch.float32) * len(unchanged)
        priority = -(rank + torch.arange(len(unchanged), dtype=torch.float32))
        keep = box_nms(masks_to_boxes(cleaned_masks.cpu()), priority, self.config.box_nms_thresh)
        keep = torch.sort(keep).values.to(masks.device)  # back to score order
        return cleaned_masks[keep], scores[keep]


def _with_overrides(config: SamProposalConfig, overrides: dict[str, Any]) -> SamProposalConfig:
    """``config`` with ``overrides`` applied; unknown names raise InputError."""
    fields = {field.name for field in dataclasses.fields(SamProposalConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(
            f"unknown SAM option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    return dataclasses.replace(config, **overrides)


# ---------------------------------------------------------------- checkpoint loading


def load_sam_model(
    model: str | os.PathLike | SamModel | Sam2Model,
    *,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[SamModel | Sam2Model, InputTransform, SamFamily]:
    """An eval-mode model, its input geometry/normalisation and its family.

    The family comes from the model's class, or from ``config.json``'s ``model_type`` for a
    checkpoint. See :class:`SamProposals` for what ``model`` may be and what is raised.
    """
    require_transformers()  # before any download
    if isinstance(model, torch.nn.Module):
        family = family_of(model)
        if family is None:
            raise InputError(
                f"model must be a SAM name, a directory, a SamModel or a Sam2Model; got "
                f"{type(model).__name__}"
            )
        loaded, folder = model, None
        if device is not None:
            loaded = loaded.to(device)
    elif isinstance(model, str | os.PathLike):
        folder = resolve_sam_checkpoint(model, cache_dir=cache_dir)
        family = _checkpoint_family(folder)
        loaded = _from_pretrained(family.model_cls(), folder)
        loaded = loaded.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        raise InputError(
            "model must be a SAM name, a directory, a SamModel or a Sam2Model; got "
            f"{type(model).__name__}"
        )
    return loaded.eval(), input_transform(loaded, family, folder), family


def resolve_sam_checkpoint(
    model: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Directory holding a transformers SAM checkpoint for a name, repo id or path.

    A local directory wins; then the names in :data:`SAM_CHECKPOINTS` and ``owner/name``
    Hub ids are looked up in the Hugging Face cache and downloaded only if missing (never
    when ``HF_HUB_OFFLINE`` is set).
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return _check_checkpoint_dir(path)
    if path.is_file():
        raise CheckpointFormatError(
            f"{text} is a file; SAM proposals need a transformers checkpoint directory "
            "(config.json + model.safetensors, as written by SamModel.save_pretrained) or one "
            f"of: {', '.join(SAM_CHECKPOINTS)}. Original segment-anything .pth files are not read."
        )
    repo_id = SAM_CHECKPOINTS.get(text, text if _REPO_ID.match(text) else None)
    if repo_id is None:
        raise CheckpointNotFoundError(
            f"unknown SAM checkpoint {text!r}: not a directory, a known name "
            f"({', '.join(SAM_CHECKPOINTS)}) or a Hub repo id 'owner/name'"
        )
    return _check_checkpoint_dir(_hub_snapshot(repo_id, cache_dir))


def cached_sam_checkpoint(
    model: str = "sam-vit-base", *, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """The cached checkpoint directory of a named SAM, or ``None``; never downloads."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = SAM_CHECKPOINTS.get(model, model)
    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    try:
        folder = Path(
            snapshot_download(
                repo_id, cache_dir=cache, allow_patterns=_HUB_PATTERNS, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None
    return folder if _weights_files(folder) else None


def _hub_snapshot(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    """The cached snapshot of ``repo_id``, downloading it when allowed and needed."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    try:
        folder = Path(
            snapshot_download(
                repo_id, cache_dir=cache, allow_patterns=_HUB_PATTERNS, local_files_only=True
            )
        )
        if _weights_files(folder):
            return folder
    except LocalEntryNotFoundError:
        pass
    except ValueError as exc:  # malformed repo id
        raise CheckpointNotFoundError(f"invalid SAM checkpoint name {repo_id!r}: {exc}") from None
    if _hub_offline() or not hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else "the Hub cannot be reached"
        raise CheckpointNotFoundError(
            f"SAM checkpoint {repo_id!r} is not in the Hugging Face cache ({cache}) and "
            f"{reason}. On a machine with internet run `hf download {repo_id}` and copy the "
            "cache (HF_HOME) here, or pass a directory saved by SamModel.save_pretrained "
            "(`--proposals DIR`)."
        )
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=_HUB_PATTERNS))
        if not _weights_files(folder):
            folder = Path(
                snapshot_download(repo_id, cache_dir=cache, allow_patterns=_HUB_FALLBACK_PATTERNS)
            )
    except (OSError, ValueError) as exc:  # hub errors, connection failures, bad ids
        raise CheckpointNotFoundError(
            f"could not download SAM checkpoint {repo_id!r} into {cache}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Check the name and your network, or pass a local checkpoint directory."
        ) from None
    return folder


def _hub_offline() -> bool:
    """True when huggingface_hub is in offline mode (its constant or the live env var)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def _weights_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))


def _model_type(folder: Path) -> Any:
    """``model_type`` of ``folder/config.json``; a clear error when there is none."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointNotFoundError(
            f"no config.json in {folder}; expected a directory written by "
            "SamModel.save_pretrained or Sam2Model.save_pretrained (or a name such as "
            "'sam-vit-base')"
        )
    try:
        return json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"cannot read {config_file}: {exc}") from None


def _checkpoint_family(folder: Path) -> SamFamily:
    """The SAM family that reads the checkpoint in ``folder``."""
    model_type = _model_type(folder)
    family = family_for_model_type(model_type)
    if family is None:
        known = ", ".join(repr(t) for f in FAMILIES for t in f.model_types)
        raise CheckpointFormatError(
            f"{folder} holds a {model_type!r} model, not SAM (config.json model_type one of "
            f"{known})"
        )
    return family


def _check_checkpoint_dir(folder: Path) -> Path:
    """``folder`` if it holds a SAM-family config and weights; a clear error otherwise."""
    _checkpoint_family(folder)
    if not _weights_files(folder):
        raise CheckpointNotFoundError(
            f"no weights (*.safetensors or pytorch_model*.bin) in {folder}"
        )
    return folder


def _from_pretrained(sam_class: type, folder: Path) -> SamModel | Sam2Model:
    """Load weights strictly: any missing, unexpected or mis-shaped key is an error."""
    try:
        model, info = sam_class.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointFormatError(f"cannot load SAM from {folder}: {exc}") from None
    problems = {
        kind: list(info.get(kind) or [])
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        details = "; ".join(f"{kind}: {keys[:5]}" for kind, keys in problems.items())
        raise CheckpointFormatError(f"SAM checkpoint in {folder} does not match: {details}")
    return model
