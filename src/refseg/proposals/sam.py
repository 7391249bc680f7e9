"""SAM automatic mask generation on transformers' ``SamModel``.

Prompt SAM with a regular grid of points, keep the confident and stable masks, and remove
duplicates with box NMS (Kirillov et al., "Segment Anything", ICCV 2023, Sec. 7.1 and the
``SamAutomaticMaskGenerator`` of facebookresearch/segment-anything). The image is encoded
once; the points go through the prompt encoder and mask decoder in batches.

transformers is imported only when a model is loaded (``pip install refseg[sam]``), so
``import refseg.proposals`` stays light. The preprocessing is our own (transformers' default
SAM image processor needs torchvision): resize the longest side to the model's input size,
normalise, pad bottom/right; low-resolution logits go back through the same steps reversed.
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
    RefsegError,
)
from refseg.image_io import load_image
from refseg.masks import soft_resize
from refseg.proposals.amg import (
    box_nms,
    masks_to_boxes,
    point_grid,
    remove_small_regions,
    stability_score,
)
from refseg.proposals.base import MaskProposals, register_proposals

if TYPE_CHECKING:  # pragma: no cover
    from transformers import SamModel

# Names a user can type -> Hugging Face Hub repositories (transformers format).
SAM_CHECKPOINTS: dict[str, str] = {
    "sam-vit-base": "facebook/sam-vit-base",
    "sam-vit-large": "facebook/sam-vit-large",
    "sam-vit-huge": "facebook/sam-vit-huge",
    # SlimSAM (Chen et al. 2023): SAM ViT-B pruned to 23% / 50% of its weights, same SamModel
    # code (Hub repos with config.json, model.safetensors, preprocessor_config.json).
    "slimsam-77": "Zigeng/SlimSAM-uniform-77",
    "slimsam-50": "Zigeng/SlimSAM-uniform-50",
}

# SAM normalises with the ImageNet statistics (segment-anything ``modeling/sam.py``:
# pixel_mean 123.675, 116.28, 103.53 and pixel_std 58.395, 57.12, 57.375 on 0-255), here on
# the 0-1 scale as in the Hub repos' ``preprocessor_config.json``.
SAM_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM_PIXEL_STD = (0.229, 0.224, 0.225)

# Files fetched from the Hub: configs and safetensors weights (not the duplicate .bin/.h5).
_HUB_PATTERNS = ["*.json", "*.safetensors"]
_HUB_FALLBACK_PATTERNS = ["*.json", "pytorch_model*.bin"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Masks upscaled at a time: bounds the float buffer at chunk x input_size² values.
_UPSCALE_CHUNK = 32


@dataclass
class SamProposalConfig:
    """Automatic mask generation settings.

    Defaults are those of segment-anything's ``SamAutomaticMaskGenerator.__init__``
    (points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
    stability_score_thresh=0.95, stability_score_offset=1.0, box_nms_thresh=0.7,
    min_mask_region_area=0) and ``Sam.mask_threshold=0.0``; ``max_proposals=100`` follows
    the paper's proposal budget (SPEC: up to 100 masks). One crop layer only (SAM's default
    ``crop_n_layers=0``): no multi-crop zoom-in.

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


@dataclass(frozen=True)
class SamInputTransform:
    """SAM's input geometry: longest side resized to ``input_size``, padded to a square.

    Attributes:
        input_size: side of the square the vision encoder takes (1024 for released SAMs).
        pixel_mean, pixel_std: RGB normalisation on the 0-1 scale.
    """

    input_size: int = 1024
    pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the image inside the padded input (longest side = input_size)."""
        scale = self.input_size / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """``float32 [1, 3, S, S]`` normalised, zero-padded input for an RGB image."""
        height, width = image.height, image.width
        new_h, new_w = self.resized_size(height, width)
        resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)
        mean = torch.tensor(self.pixel_mean, dtype=torch.float32)
        std = torch.tensor(self.pixel_std, dtype=torch.float32)
        normalised = ((pixels - mean) / std).permute(2, 0, 1)  # [3, h, w]
        padded = torch.zeros((1, 3, self.input_size, self.input_size), dtype=torch.float32)
        padded[0, :, :new_h, :new_w] = normalised
        return padded

    def points_to_input(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Map ``float [N, 2]`` ``(x, y)`` image pixels to the resized input's pixels."""
        new_h, new_w = self.resized_size(height, width)
        scale = torch.tensor([new_w / width, new_h / height], dtype=points.dtype)
        return points * scale.to(points.device)

    def logits_to_image(
        self, logits: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-resolution mask logits back onto the image.

        Upscale to the padded input, crop the padding, resize to ``out_size``.

        Args:
            logits: ``float [N, h, w]`` decoder output (256x256 for released SAMs).
            image_size: ``(height, width)`` of the original image.
            out_size: ``(height, width)`` to return; usually ``image_size``.

        Returns:
            ``float32 [N, *out_size]`` logits.
        """
        new_h, new_w = self.resized_size(*image_size)
        full = soft_resize(logits, (self.input_size, self.input_size))
        return soft_resize(full[:, :new_h, :new_w], out_size)


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
    """Class-agnostic mask proposals from SAM prompted with a point grid.

    Args:
        model: ``"sam-vit-base"``, ``"sam-vit-large"``, ``"sam-vit-huge"`` (downloaded from
            ``facebook/sam-vit-*`` into the Hugging Face cache), another Hub repo id, a
            directory written by ``SamModel.save_pretrained``, or a ``SamModel``.
        device: where to run; default CUDA if available, else CPU (a given ``SamModel``
            stays where it is unless ``device`` is set).
        config: generation settings; keyword ``overrides`` replace single fields.
        cache_dir: Hugging Face cache to use instead of the default.

    Raises:
        CheckpointNotFoundError: unknown name, or not cached and cannot be downloaded.
        CheckpointFormatError: the directory is not a readable transformers SAM checkpoint.
        RefsegError: transformers is not installed.
    """

    name = "sam"

    def __init__(
        self,
        model: str | os.PathLike | SamModel = "sam-vit-base",
        *,
        device: str | torch.device | None = None,
        config: SamProposalConfig | None = None,
        cache_dir: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> None:
        self.config = _with_overrides(config or SamProposalConfig(), overrides)
        self.model, self.transform = load_sam_model(model, device=device, cache_dir=cache_dir)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
            work_size = self.transform.resized_size(height, width)

        kept = _Candidates()
        # Prompt reduction: the union of accepted masks at work_size, and each point's pixel.
        covered = torch.zeros(work_size, dtype=torch.bool) if cfg.skip_covered_points else None
        scale = torch.tensor([work_size[1] / width, work_size[0] / height])
        pixel = (points * scale).long()
        pixel[:, 0].clamp_(0, work_size[1] - 1)
        pixel[:, 1].clamp_(0, work_size[0] - 1)
        tuner = None
        if cfg.points_per_batch is None:
            key = runtime.model_key(self.model, self.device, embeddings.dtype)
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

    def _embed(self, image: Image.Image) -> torch.Tensor:
        """``[1, C, h, w]`` image embedding from the vision encoder."""
        dtype = next(self.model.parameters()).dtype
        pixels = self.transform.pixel_values(image).to(self.device, dtype)
        return self.model.get_image_embeddings(pixels)

    def _decode(
        self, embeddings: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Three masks per point prompt.

        Args:
            points: ``float [B, 2]`` ``(x, y)`` in the resized input's pixels.

        Returns:
            ``float32 [B*3, h, w]`` low-res logits and ``float32 [B*3]`` predicted IoUs.
        """
        count = points.shape[0]
        labels = torch.ones((1, count, 1), dtype=torch.long, device=points.device)
        output = self.model(
            image_embeddings=embeddings,
            input_points=points[None, :, None, :].to(embeddings.dtype),
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
    model: str | os.PathLike | SamModel,
    *,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[SamModel, SamInputTransform]:
    """An eval-mode ``SamModel`` and the input geometry/normalisation that goes with it.

    See :class:`SamProposals` for what ``model`` may be and what is raised.
    """
    sam_class = _sam_model_class()
    if isinstance(model, sam_class):
        loaded, folder = model, None
        if device is not None:
            loaded = loaded.to(device)
    elif isinstance(model, str | os.PathLike):
        folder = resolve_sam_checkpoint(model, cache_dir=cache_dir)
        loaded = _from_pretrained(sam_class, folder)
        loaded = loaded.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        raise InputError(
            f"model must be a SAM name, a directory or a SamModel; got {type(model).__name__}"
        )
    return loaded.eval(), _input_transform(loaded, folder)


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


def _check_checkpoint_dir(folder: Path) -> Path:
    """``folder`` if it holds a SAM config and weights; a clear error otherwise."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointNotFoundError(
            f"no config.json in {folder}; expected a directory written by "
            "SamModel.save_pretrained (or a name such as 'sam-vit-base')"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"cannot read {config_file}: {exc}") from None
    if model_type != "sam":
        raise CheckpointFormatError(
            f"{folder} holds a {model_type!r} model, not SAM (config.json model_type 'sam')"
        )
    if not _weights_files(folder):
        raise CheckpointNotFoundError(
            f"no weights (*.safetensors or pytorch_model*.bin) in {folder}"
        )
    return folder


def _sam_model_class() -> type:
    try:
        from transformers import SamModel
    except ImportError as exc:
        raise RefsegError(
            f"SAM proposals need transformers ({exc}); install it with `pip install refseg[sam]`"
        ) from None
    return SamModel


def _from_pretrained(sam_class: type, folder: Path) -> SamModel:
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


def _input_transform(model: SamModel, folder: Path | None) -> SamInputTransform:
    """Input size from the model's config; normalisation from preprocessor_config.json."""
    size = model.config.vision_config.image_size
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise CheckpointFormatError(f"SAM input must be square; config image_size={size}")
        size = size[0]
    mean, std = SAM_PIXEL_MEAN, SAM_PIXEL_STD
    processor_file = folder / "preprocessor_config.json" if folder is not None else None
    if processor_file is not None and processor_file.is_file():
        try:
            processor = json.loads(processor_file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointFormatError(f"cannot read {processor_file}: {exc}") from None
        mean = tuple(float(v) for v in processor.get("image_mean", mean))
        std = tuple(float(v) for v in processor.get("image_std", std))
    return SamInputTransform(input_size=int(size), pixel_mean=mean, pixel_std=std)
