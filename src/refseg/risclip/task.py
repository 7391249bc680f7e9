"""RISCLIP's two training stages as trainer tasks (CONTRACTS.md A, ``refseg.train.loop``).

Stage 1 (patch level) trains adapters, CFE, SKE and the grounding head against the mask
area-pooled to the patch grid; stage 2 (pixel level) trains the decoder alone against the
full mask, starting from a stage-1 checkpoint whose parts stay frozen. Both: DICE + focal.
The task never touches devices or ``torch.distributed``; the loop does.

In stage 2 everything before the decoder is frozen and deterministic (no dropout; CLIP and
the stage-1 parts hold no batch statistics), so its outputs (grounding logits and decoder
taps) are pure functions of the expression: the task memoises them per expression
(``feature_cache_mb``) and after the first epoch a step costs only the decoder. The cache
changes no number, only the time (``tests/test_risclip.py`` checks equal losses).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refseg.clip import LoadedClip, load_clip
from refseg.data import ImageDataset, open_dataset
from refseg.errors import InputError
from refseg.risclip.config import RisclipConfig
from refseg.risclip.data import ExpressionSamples, collate
from refseg.risclip.evaluate import THRESHOLDS, evaluate_thresholds
from refseg.risclip.io import load_state, read_risclip, save_risclip
from refseg.risclip.losses import risclip_loss
from refseg.risclip.model import Risclip
from refseg.train.loop import TaskBase
from refseg.train.memo import FrozenMemo


@dataclass(frozen=True)
class RisclipTaskConfig:
    """What one stage trains on.

    ``init`` is required for stage 2 (the stage-1 checkpoint); its architecture wins over
    ``model`` except for the decoder widths/taps. ``val_limit`` caps the val expressions
    scored at each evaluation (CPU time).
    """

    stage: int
    model: RisclipConfig
    data_root: Path
    dataset: str
    train_split: str = "train"
    val_split: str | None = "val"
    split_by: str | None = None
    image_dir: Path | None = None
    init: Path | None = None
    val_limit: int | None = 500
    feature_cache_mb: int = 2048  # stage 2: memoised frozen outputs (0: none)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise InputError(f"--stage must be 1 or 2; got {self.stage}")
        if self.stage == 2 and self.init is None:
            raise InputError("stage 2 starts from a stage-1 checkpoint: pass --init DIR")


class RisclipTask(TaskBase):
    """A :class:`refseg.train.loop.TrainTask` for one RISCLIP stage."""

    best_metric: str | None = "oIoU"
    best_mode: str = "max"

    def __init__(self, config: RisclipTaskConfig, clip: LoadedClip | None = None) -> None:
        self.config = config
        self.stage = config.stage
        self.name = f"risclip-stage{config.stage}"
        self._init_state: dict[str, torch.Tensor] | None = None
        # Stage 1 has no decoder: its checkpoint predicts from the upsampled grounding map.
        model_config = dataclasses.replace(config.model, use_decoder=False)
        if config.init is not None:
            init_config, init_stage, self._init_state = read_risclip(config.init)
            if init_stage < 1:
                raise InputError(f"{config.init} is not a trained RISCLIP checkpoint")
            model_config = dataclasses.replace(
                init_config,
                use_decoder=True if self.stage == 2 else init_config.use_decoder,
                decoder_taps=config.model.decoder_taps,
                decoder_widths=config.model.decoder_widths,
                decoder_residual=config.model.decoder_residual,
                lr=config.model.lr,
                batch_size=config.model.batch_size,
                epochs_stage2=config.model.epochs_stage2,
            )
        self.model_config = model_config
        self._clip = clip
        self._last_scores: dict[str, float] | None = None
        self._frozen = FrozenMemo(config.feature_cache_mb)

    @cached_property
    def clip(self) -> LoadedClip:
        return self._clip or load_clip(self.model_config.clip, device="cpu")

    def _samples(self, split: str, limit: int | None = None) -> ExpressionSamples:
        dataset: ImageDataset = open_dataset(
            self.config.data_root,
            self.config.dataset,
            split,
            split_by=self.config.split_by,
            image_dir=self.config.image_dir,
        )
        return ExpressionSamples(
            dataset,
            self.clip.tokenizer,
            self.clip.config.preprocess,
            self.model_config.image_size,
            limit=limit,
        )

    # ------------------------------------------------------------------ TrainTask

    def build_model(self) -> Risclip:
        model = Risclip(self.clip.model, self.model_config, self.clip.tokenizer.eot_id)
        if self._init_state is not None:
            load_state(model, self._init_state, decoder=False)
        model.set_stage(self.stage)
        return model

    def train_dataset(self) -> ExpressionSamples:
        return self._samples(self.config.train_split)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(samples)

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["mask"]
        if self.stage == 1:
            logits = model(batch["pixels"], batch["tokens"]).patch_logits
            target = F.adaptive_avg_pool2d(mask[:, None], logits.shape[-2:])[:, 0]
        else:
            patch_logits, taps = self._frozen_outputs(model, batch)
            logits = model.decoder(taps, patch_logits, tuple(mask.shape[-2:]))
            target = mask
        cfg = self.model_config
        return risclip_loss(
            logits,
            target,
            alpha=cfg.focal_alpha,
            gamma=cfg.focal_gamma,
            focal_weight=cfg.focal_weight,
            smooth=cfg.dice_smooth,
        )

    def _frozen_outputs(
        self, model: Risclip, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage 2: grounding logits and decoder taps of the frozen stage-1 model, memoised
        per expression (``sent_id``) within ``feature_cache_mb``."""
        keys = [int(k) for k in batch["sent_id"]]

        def compute(missing: list[int]) -> list[tuple[torch.Tensor, ...]]:
            rows = torch.tensor([keys.index(k) for k in missing])
            with torch.no_grad():
                patch_logits, taps = model.forward_patches(
                    batch["pixels"][rows], batch["tokens"][rows]
                )
            return [(patch_logits[j], *(t[j] for t in taps)) for j in range(len(missing))]

        patch_logits, *taps = self._frozen.stacked(keys, compute)
        return patch_logits, taps

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        cfg = self.model_config
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        power, total = self.model_config.poly_power, max(1, total_steps)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / total) ** power
        )

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Val mIoU / oIoU at the model's threshold (the best checkpoint's measure) and
        ``miou@t`` / ``oiou@t`` at every threshold of :data:`THRESHOLDS`."""
        if self.config.val_split is None:
            return {}
        model = getattr(model, "module", model)
        own = model.config.threshold
        samples = self._samples(self.config.val_split, self.config.val_limit)
        results = evaluate_thresholds(model, samples, sorted({*THRESHOLDS, own}))
        scores = {"mIoU": results[own].miou, "oIoU": results[own].oiou}
        for t in THRESHOLDS:
            scores[f"miou@{t}"], scores[f"oiou@{t}"] = results[t].miou, results[t].oiou
        self._last_scores = scores
        return scores

    def save_artifact(self, model: nn.Module, out_dir: Path) -> None:
        """Write the trained parts with the threshold of best val mIoU (if a val split), so
        the shipped model's default mask threshold is chosen on val."""
        model = getattr(model, "module", model)
        if self.config.val_split is not None:
            scores = self._last_scores or self.evaluate(model)
            best = max(THRESHOLDS, key=lambda t: (scores[f"miou@{t}"], -abs(t - 0.5)))
            model.config = dataclasses.replace(model.config, threshold=best)
        save_risclip(model, out_dir, self.stage)

    def record(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        config["model"] = self.model_config.to_dict()
        return {key: str(v) if isinstance(v, Path) else v for key, v in config.items()}

    def steps_for_epochs(self, epochs: int, batch_size: int) -> int:
        """Optimizer steps covering ``epochs`` passes over the training expressions."""
        return max(1, math.ceil(epochs * len(self.train_dataset()) / batch_size))
