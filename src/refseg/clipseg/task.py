"""``refseg train clipseg``: the CLIPSeg decoder trained on the shared loop (contract A).

Official recipe (SPEC §2, appendix; ``experiments/phrasecut.yaml``): CLIP frozen, BCE on
logits, AdamW lr 1e-3 with cosine decay to 1e-4 and no warm-up, batch 64, random templates,
PC+ negatives and visual supports mixed with the text (:mod:`refseg.clipseg.data`).

The CLIP is frozen, so its outputs are pure functions of its inputs: the task memoises text
embeddings by string, support embeddings by sample and skip activations by (image, crop)
(``feature_cache_mb``; for square images such as ShapesRef's the crop is always the whole
image, so after the first epoch a step costs only the decoder). The cache changes no
number, only the time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from refseg.clip.loaded import LoadedClip
from refseg.clipseg.config import IMAGENET_MEAN, IMAGENET_STD, PAPER_LAYERS, CLIPSegConfig
from refseg.clipseg.data import SampleConfig, SegmentationSamples, collate
from refseg.clipseg.load import resolve_clip, save_clipseg
from refseg.clipseg.loaded import LoadedCLIPSeg
from refseg.clipseg.model import CLIPSeg, decoder_config_for
from refseg.data import open_dataset
from refseg.errors import InputError
from refseg.masks import intersection_union
from refseg.train.loop import TaskBase
from refseg.train.memo import FrozenMemo

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class CLIPSegTaskConfig:
    """What ``refseg train clipseg`` trains (the loop's options live in ``LoopConfig``).

    Attributes:
        data_root, dataset, split, val_split, split_by, image_dir: the data
            (:func:`refseg.data.open_dataset`; ``dataset="phrasecut"`` or a refer-layout name).
        clip: the frozen CLIP (name or path); it must be a ViT.
        clip_source: recorded in the shipped file instead of the CLIP weights (decoder-only
            artefact); ``None`` writes the CLIP into the file too.
        image_size, pixel_stats, extract_layers, reduce_dim, refined, heads, ffn_dim,
            dropout: the model and its input pipeline.
        lr, lr_min, weight_decay: AdamW with cosine decay from ``lr`` to ``lr_min``.
        sample: how samples are drawn (negatives, crops, supports, templates).
        eval_expressions: validation expressions used by ``evaluate`` (first N of val).
        feature_cache_mb: memory for memoised CLIP skip activations (0: none).
    """

    data_root: str
    dataset: str = "shapesref"
    split: str = "train"
    val_split: str | None = "val"
    split_by: str | None = None
    image_dir: str | None = None
    clip: str = "ViT-B/16"
    clip_source: str | None = None
    image_size: int = 352
    # "imagenet": the statistics the official decoders were trained with (SPEC §2);
    # "clip": the frozen CLIP's own, for a new decoder over a CLIP trained with them.
    pixel_stats: str = "imagenet"
    extract_layers: tuple[int, ...] = PAPER_LAYERS
    reduce_dim: int = 64
    refined: bool = True
    heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.1
    lr: float = 1e-3
    lr_min: float = 1e-4
    weight_decay: float = 0.01  # torch AdamW's default, as the official training.py
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval_expressions: int = 300
    feature_cache_mb: int = 2048

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CosineTo(torch.optim.lr_scheduler.LambdaLR):
    """Cosine decay from the base LR to ``lr_min`` over ``total_steps``, no warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, ratio: float) -> None:
        def factor(step: int) -> float:
            progress = min(step, total_steps) / max(1, total_steps)
            return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        super().__init__(optimizer, factor)


class CLIPSegTask(TaskBase):
    """Contract A's :class:`~refseg.train.loop.TrainTask` for the CLIPSeg decoder."""

    name = "clipseg"
    best_metric = "miou"
    best_mode = "max"

    def __init__(self, config: CLIPSegTaskConfig) -> None:
        self.config = config
        self._clip: LoadedClip | None = None
        self._samples: SegmentationSamples | None = None
        self._text_cache: dict[str, torch.Tensor] = {}
        self._support_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._features_memo = FrozenMemo(config.feature_cache_mb)
        self._last_scores: dict[str, float] | None = None

    # -- pieces -------------------------------------------------------------------------

    @property
    def clip(self) -> LoadedClip:
        if self._clip is None:
            self._clip = resolve_clip(self.config.clip, None)
        return self._clip

    def _model_config(self, model_clip: Any) -> CLIPSegConfig:
        c = self.config
        decoder = decoder_config_for(
            model_clip,
            extract_layers=tuple(c.extract_layers),
            reduce_dim=c.reduce_dim,
            refined=c.refined,
            heads=c.heads,
            ffn_dim=c.ffn_dim,
            dropout=c.dropout,
        )
        mean, std = self._stats()
        return CLIPSegConfig(decoder=decoder, image_size=c.image_size, mean=mean, std=std)

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.config.pixel_stats == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        if self.config.pixel_stats == "clip":
            pre = self.clip.config.preprocess
            return tuple(pre.mean), tuple(pre.std)
        raise InputError(
            f"pixel_stats must be 'imagenet' or 'clip'; got {self.config.pixel_stats!r}"
        )

    def _open(self, split: str):  # noqa: ANN202
        c = self.config
        return open_dataset(c.data_root, c.dataset, split, c.split_by, c.image_dir)

    # -- TrainTask ----------------------------------------------------------------------

    def train_dataset(self) -> SegmentationSamples:
        if self._samples is None:
            mean, std = self._stats()
            sample = dataclasses.replace(
                self.config.sample, image_size=self.config.image_size, mean=mean, std=std
            )
            self._samples = SegmentationSamples(self._open(self.config.split), sample)
        return self._samples

    def build_model(self) -> CLIPSeg:
        clip = self.clip.model.float().cpu()
        return CLIPSeg(clip, self._model_config(clip))

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples)

    def optimizer(self, model: CLIPSeg) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> CosineTo:
        return CosineTo(optimizer, total_steps, self.config.lr_min / self.config.lr)

    def _texts(self, model: CLIPSeg, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self._text_cache})
        if missing:
            loaded = LoadedClip(model.clip, self.clip.tokenizer, "train")
            with torch.no_grad():
                embedded = loaded.encode_texts(missing).float()
            self._text_cache.update(zip(missing, embedded, strict=True))
        return torch.stack([self._text_cache[t] for t in texts])

    def _supports(self, model: CLIPSeg, supports: list[int], like: torch.Tensor) -> torch.Tensor:
        """Embeddings of the engineered supports (zeros for -1), memoised per referent."""
        samples = self.train_dataset()
        keys = [samples.referent_key(s) if s >= 0 else None for s in supports]
        missing = {k: s for k, s in zip(keys, supports, strict=True) if k is not None}
        missing = {k: s for k, s in missing.items() if k not in self._support_cache}
        if missing:
            pixels = torch.stack([samples.support_pixels(s) for s in missing.values()])
            embedded = model.encode_image(pixels.to(like.device)).float()
            self._support_cache.update(zip(missing, embedded, strict=True))
        zero = torch.zeros_like(like[0])
        return torch.stack([zero if k is None else self._support_cache[k] for k in keys])

    def _features(self, model: CLIPSeg, keys: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Skip activations of the batch's queries, memoised by query key."""
        keys = [tuple(int(v) for v in k) for k in keys]

        def compute(missing: list[tuple[int, ...]]) -> list[list[torch.Tensor]]:
            samples = self.train_dataset()
            pixels = torch.stack([samples.query_pixels(k) for k in missing])
            device = model.decoder.film_mul.weight.device
            computed = model.activations(pixels.to(device))
            return [[a[row] for a in computed] for row in range(len(missing))]

        return self._features_memo.stacked(keys, compute)

    def loss(self, model: CLIPSeg, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch["mask"]
        activations = self._features(model, batch["query_key"])
        text = self._texts(model, batch["text"]).to(target.device)
        visual = self._supports(model, batch["support"], text)
        weight = batch["text_weight"][:, None].to(text.dtype)
        cond = weight * text + (1 - weight) * visual
        side = self.config.image_size // model.config.decoder.patch_size
        logits = model.decode(activations, cond, (side, side))[:, 0]
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits[:, None], size=target.shape[-2:], mode="bilinear", align_corners=True
            )[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return loss, {}

    def evaluate(self, model: CLIPSeg) -> dict[str, float]:
        if self.config.val_split is None:
            return {}
        scores = validation_scores(
            self.loaded(model), self._open(self.config.val_split), self.config.eval_expressions
        )
        return scores

    def loaded(self, model: CLIPSeg) -> LoadedCLIPSeg:
        return LoadedCLIPSeg(model, self.clip.tokenizer, "clipseg-train")

    def save_artifact(self, model: CLIPSeg, out_dir: Path) -> None:
        """Write the model with the threshold that maximises val mIoU (if a val split)."""
        loaded = self.loaded(model)
        if self.config.val_split is not None:
            # The loop evaluates the same weights just before saving them.
            scores = self._last_scores or validation_scores(
                loaded, self._open(self.config.val_split), self.config.eval_expressions
            )
            best = max(THRESHOLDS, key=lambda t: scores[f"miou@{t}"])
            model.config = dataclasses.replace(model.config, threshold=best)
        save_clipseg(loaded, out_dir, clip_source=self.config.clip_source)
        model.train()

    def record(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "thresholds_swept": list(THRESHOLDS)}


@torch.no_grad()
def validation_scores(loaded: LoadedCLIPSeg, dataset: Any, limit: int) -> dict[str, float]:
    """Text-prompt mIoU / oIoU (percent) over the first ``limit`` expressions, at every
    threshold of :data:`THRESHOLDS` (``miou@t``) and at the model's own (``miou``)."""
    was_training = loaded.model.training
    loaded.model.eval()
    own = loaded.config.threshold
    thresholds = sorted({*THRESHOLDS, own})
    inter = dict.fromkeys(thresholds, 0)
    union = dict.fromkeys(thresholds, 0)
    ious: dict[float, list[float]] = {t: [] for t in thresholds}
    count = 0
    for image in dataset:
        if count >= limit:
            break
        pairs = list(image.expressions())[: limit - count]
        count += len(pairs)
        state = loaded.encode_query(image.load_image())
        probs = loaded.probabilities(state, loaded.text_conditionals([e.text for _, e in pairs]))
        for (referent, _), prob in zip(pairs, probs, strict=True):
            for t in thresholds:
                i, u = intersection_union((prob > t).numpy(), referent.mask)
                inter[t] += i
                union[t] += u
                ious[t].append(i / u if u else 1.0)
    if was_training:
        loaded.model.train()
    if not count:
        raise InputError("the validation split holds no expressions")
    out = {f"miou@{t}": 100 * float(np.mean(ious[t])) for t in THRESHOLDS}
    out.update({f"oiou@{t}": 100 * inter[t] / max(union[t], 1) for t in THRESHOLDS})
    out["miou"] = 100 * float(np.mean(ious[own]))
    out["oiou"] = 100 * inter[own] / max(union[own], 1)
    return out
