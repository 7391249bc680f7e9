"""Contrastive (CLIP) training of a tiny CLIP on ShapesRef, as a task of the one training loop.

No pretrained CLIP can be downloaded on every machine, so refseg trains its offline demo
models (``shapes-vit``, ``shapes-rn``) with this task on :func:`refseg.train.loop.train`:
symmetric InfoNCE with a learnable temperature (Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision", Fig. 3 and Sec. 2.5), AdamW with linear
warm-up and cosine decay.

Rendering a scene costs more than a training step of these models, so a pool of
(image, caption) pairs is rendered once (deterministically, as ``uint8`` tensors) and every
batch is drawn from it: ``batch_size`` distinct pairs at random per step, a pure function of
``(seed, step)`` (the loop's ``"step"`` sampling). The pool holds what the run can use,
``min(6000, steps x batch_size)`` pairs unless ``pool_size`` is given, so a short trial run
starts at once; the held-out pairs are rendered only when first evaluated. Under several
processes every rank computes the loss over the gathered global batch
(:func:`refseg.train.loop.gather_with_grad`), so N processes train as one. With
``grad_accum`` > 1 the negatives of a pair are those of its micro-batch only (InfoNCE does
not split into micro-batches): a different, weaker objective.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from refseg.clip.config import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from refseg.clip.load import save_clip
from refseg.clip.loaded import LoadedClip
from refseg.clip.model import CLIP, at_input_size, positions_resized
from refseg.clip.preprocess import resize_for_clip
from refseg.clip.tokenizer import ClipTokenizer
from refseg.errors import InputError
from refseg.train.fresh_pairs import MAX_NEGATIVES, FreshPairs, FreshSample, pad_negatives
from refseg.train.loop import LoopConfig, TaskBase, gather_with_grad, move_fields, train
from refseg.train.negatives_loss import (
    hard_negative_accuracy,
    negclip_loss,
    own_negatives_loss,
)
from refseg.train.structure import (
    StructureBatch,
    StructureHead,
    collate_structure,
    patch_loss,
    structure_loss,
)
from refseg.train.tokenizer import DEFAULT_CONTEXT_LENGTH, DEFAULT_VOCAB_SIZE, train_bpe

# ``(seed, n) -> n (RGB image, caption) pairs``; ShapesRef's ``sample_training_pairs`` is one.
PairSource = Callable[[int, int], Iterable[tuple[Image.Image, str]]]

# Added to the seed for the held-out pool, so evaluation pairs are never trained on.
HELD_OUT_SEED_OFFSET = 1_000_003
STRUCTURE_HEAD = "structure_head"  # attribute of the trained CLIP that holds the head
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP paper, Sec. 2.5: "clipped to prevent scaling ... > 100"


# --------------------------------------------------------------------------- presets


def _text_tower(vocab_size: int, context_length: int, layers: int) -> TextConfig:
    return TextConfig(
        context_length=context_length, vocab_size=vocab_size, width=128, heads=4, layers=layers
    )


def _shapes_vit(vocab_size: int, context_length: int, image_size: int = 112) -> CLIPConfig:
    """ViT of 16 px patches, 6 layers of width 128, ~2 M parameters: at 112 px ViT-B/32's
    7x7 grid (``shapes-vit``), at 224 px a 14x14 grid for the dense systems
    (``shapes-vit-224``)."""
    return CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=image_size, layers=6, width=128, heads=4, patch_size=16),
        text=_text_tower(vocab_size, context_length, layers=3),
        preprocess=PreprocessConfig(image_size=image_size, resize_mode="squash"),
        quick_gelu=True,
    )


def _shapes_rn(vocab_size: int, context_length: int) -> CLIPConfig:
    """ModifiedResNet (1,1,1,1) of stem width 16: RN50's 7x7 output grid at 224 px."""
    return CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=224, layers=(1, 1, 1, 1), width=16, heads=8),
        text=_text_tower(vocab_size, context_length, layers=3),
        preprocess=PreprocessConfig(image_size=224, resize_mode="squash"),
        quick_gelu=True,
    )


def _tiny_vit(vocab_size: int, context_length: int) -> CLIPConfig:
    """For tests: seconds to train, no claim to learn anything useful."""
    return CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, layers=1, width=32, heads=2, patch_size=16),
        text=TextConfig(
            context_length=context_length, vocab_size=vocab_size, width=32, heads=2, layers=1
        ),
        preprocess=PreprocessConfig(image_size=32, resize_mode="squash"),
    )


def _tiny_rn(vocab_size: int, context_length: int) -> CLIPConfig:
    """For tests: the ResNet path (BatchNorm running statistics included)."""
    return CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=4, heads=2),
        text=TextConfig(
            context_length=context_length, vocab_size=vocab_size, width=32, heads=2, layers=1
        ),
        preprocess=PreprocessConfig(image_size=64, resize_mode="squash"),
    )


# Architecture presets by name: (vocab_size, context_length) -> CLIPConfig.
PRESETS: dict[str, Callable[[int, int], CLIPConfig]] = {
    "shapes-vit": _shapes_vit,
    "shapes-rn": _shapes_rn,
    "tiny-vit": _tiny_vit,
    "tiny-rn": _tiny_rn,
    "shapes-vit-224": functools.partial(_shapes_vit, image_size=224),
}


def preset_config(name: str, vocab_size: int, context_length: int) -> CLIPConfig:
    """The architecture of preset ``name``; unknown names list the valid ones."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](vocab_size, context_length)


# --------------------------------------------------------------------------- configuration

# Per-preset training defaults: the settings of the shipped weights (src/refseg/weights/*/
# TRAINING.json). Measured on a shared 2-core machine: shapes-vit 1.9 s a step (1 thread,
# load 3-8, 22 min); shapes-rn 1.5 s a step (2 threads, load ~2, 18 min). At 350 steps
# shapes-rn reached only 73% crop colour+shape; 700 steps give 87%. Both drew from 6000
# pairs (the pool's cap, see ContrastiveConfig.pool_pairs).
POOL_CAP = 6000
# Fresh pairs whose captions and negatives (with the caption words) train the tokenizer.
TOKENIZER_CORPUS_PAIRS = 1000
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "shapes-vit": {
        "steps": 700,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_steps": 70,
    },
    "shapes-rn": {
        "steps": 700,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup_steps": 35,
    },
}


@dataclass
class ContrastiveConfig:
    """Hyper-parameters of one training run.

    Optimiser values follow the CLIP paper (Radford et al. 2021, Sec. 2.5 and Table 19):
    AdamW, beta2 0.98, eps 1e-6, weight decay 0.2 on weights only, cosine schedule, learnable
    temperature initialised at 0.07 and clipped at 100. Step counts, batch size and learning
    rate are ours, sized for a few-million-parameter model trained for minutes on two CPU
    cores. The loop's own options (threads, checkpoints, ...) are in
    :class:`refseg.train.loop.LoopConfig`; ``steps``, ``batch_size`` and ``seed`` are here too
    because presets set them and the data depend on them.
    """

    preset: str = "shapes-vit"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    seed: int = 0
    # Rendered (image, caption) pairs batches are drawn from; None: min(POOL_CAP, steps x
    # batch_size), all a run can use.
    pool_size: int | None = None
    held_out_size: int = 512  # pairs for the final retrieval accuracy (another seed)
    crop_eval_scenes: int = 100  # benchmark scenes whose object crops test colour + shape
    vocab_size: int = DEFAULT_VOCAB_SIZE
    context_length: int = DEFAULT_CONTEXT_LENGTH
    # Off-diagonal pairs whose captions mean the same are not negatives (crops repeat a lot).
    mask_duplicate_captions: bool = True
    # The NegCLIP recipe (issue #13); the defaults are the shipped models' pool training.
    # on_the_fly: every step renders fresh pairs (refseg.train.fresh_pairs) instead of
    # drawing from a pool; negatives: hard negative captions per scene pair (NegCLIP loss);
    # positions: scene captions may say where an object lies; crop_fraction: share of crop
    # pairs (on the fly only; the pool uses sample_training_pairs' own).
    on_the_fly: bool = False
    negatives: int = 0
    positions: bool = False
    crop_fraction: float = 0.25
    # Relation/binding/position probes (refseg.eval.probe) at every evaluation on this many
    # scenes of probe_seed; the best checkpoint is then the best mean(relation, binding).
    probe_scenes: int = 0
    probe_seed: int = 1
    # Start from this CLIP (a name such as "shapes-vit" or a saved directory) instead of
    # random weights: its architecture and tokenizer are kept (no BPE is trained, so token
    # ids keep their meaning) and ``preset`` must name the same architecture.
    init: str | None = None
    # Weight of a second, focused hard-negative term: per image, cross-entropy over its own
    # caption and its own negatives only (0: plain NegCLIP). In the full NegCLIP softmax a
    # few hard negatives are drowned by B other captions while the model is still learning
    # objects; this term gives them a gradient of their own (see benchmarks/negclip_trials.md).
    negative_weight: float = 0.0
    # Share of scene pairs captioned like the composition probes (a relation, two objects,
    # a position; refseg.data.shapes.captions.composition_caption) instead of the scene
    # captions, which list all objects and give a relation only one draw in four or five.
    composition: float = 0.0
    # Image-side hard negatives: a scene pair whose caption allows it brings its twin
    # (mirrored, or two objects' colours swapped; refseg.data.shapes.twins), for which the
    # caption is false, into the same batch (batches grow by one pair per twin; one process).
    twins: bool = False
    # At most this many objects per training scene (None: ShapesRef's 2-6); evaluation and
    # probes keep the full range.
    max_objects: int | None = None
    # Train a ViT with VisionConfig.spatial_readout (a zero-initialised linear map of all
    # patch tokens added to the embedding; with ``init``, the loaded weights are kept and
    # only that map starts at zero).
    spatial_readout: bool = False
    # Hidden width of VisionConfig.token_readout (a zero-initialised per-token MLP of the
    # final patch tokens, mean-pooled into the embedding); 0: none. With ``init`` only the
    # readout starts fresh.
    token_readout: int = 0
    # Locked-image tuning (LiT): the image tower is frozen but for its output projection and
    # readouts, so patch tokens that already bind (a patch-trained tower) keep it while the
    # text tower learns to match them.
    lock_image: bool = False
    # The image tower's learning rate as a share of ``lr`` (its projection and readouts keep
    # ``lr``): a slow tower keeps what it has learnt while the rest catches up.
    image_lr_scale: float = 1.0
    # Weight of the structure loss (refseg.train.structure; on the fly only): a linear head
    # shared by both towers must read each object's type and position from the image
    # embedding, and the types and stated order from the caption's. 0: no head.
    structure_weight: float = 0.0
    # Weight of the patch loss (refseg.train.structure.patch_loss; ViT, needs the structure
    # head): the head also names the object under every final patch token of scene images.
    patch_weight: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)  # type: ignore[assignment]
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "pool_size": self.pool_size is None or self.pool_size >= self.batch_size,
            "held_out_size": self.held_out_size >= 2,
            "seed": self.seed >= 0,
            "negatives": 0 <= self.negatives <= MAX_NEGATIVES,
            "crop_fraction": 0.0 <= self.crop_fraction <= 1.0,
            "probe_scenes": self.probe_scenes >= 0,
            "probe_seed": self.probe_seed >= 0,
            "negative_weight": 0.0 <= self.negative_weight < math.inf,
            "composition": 0.0 <= self.composition <= 1.0,
            "max_objects": self.max_objects is None or self.max_objects >= 1,
            "structure_weight": 0.0 <= self.structure_weight < math.inf,
            "patch_weight": 0.0 <= self.patch_weight < math.inf,
            "token_readout": self.token_readout >= 0,
            "image_lr_scale": 0.0 < self.image_lr_scale < math.inf,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InputError(
                f"invalid training option(s) {', '.join(bad)}: steps must be >= 1, "
                "batch_size >= 2, pool_size >= batch_size, lr > 0, seed, warmup_steps, "
                f"probe_scenes and probe_seed >= 0, negatives in 0..{MAX_NEGATIVES}, "
                "crop_fraction and composition in [0, 1], token_readout >= 0, image_lr_scale "
                "finite and > 0, negative_weight, "
                "structure_weight and patch_weight finite and >= 0"
            )
        fresh_only = (
            self.negatives, self.positions, self.composition, self.twins, self.structure_weight
        )
        if (any(fresh_only) or self.max_objects is not None) and not self.on_the_fly:
            raise InputError(
                "negatives, positions, composition, twins, max_objects and structure_weight "
                "need on-the-fly pairs (--on-the-fly)"
            )
        if self.negative_weight and not self.negatives:
            raise InputError("negative_weight needs hard negatives (--negatives N)")
        if self.patch_weight and not self.structure_weight:
            raise InputError("patch_weight needs the structure head (--structure-weight W)")
        if self.patch_weight and self.lock_image:
            raise InputError("patch_weight trains the image tower, which lock_image freezes")
        preset = preset_config(self.preset, self.vocab_size, self.context_length)  # the name
        if (self.spatial_readout or self.token_readout) and not preset.vision.is_vit:
            raise InputError(f"a readout needs a ViT preset; {self.preset} is not")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pool_pairs(self) -> int:
        """Pairs in the training pool: ``pool_size``, or all a run can draw up to
        :data:`POOL_CAP`."""
        if self.pool_size is not None:
            return self.pool_size
        return max(self.batch_size, min(POOL_CAP, self.steps * self.batch_size))

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> ContrastiveConfig:
        """The preset's training defaults (:data:`PRESET_TRAINING`), then ``overrides``."""
        return cls(preset=preset, **{**PRESET_TRAINING.get(preset, {}), **overrides})


# --------------------------------------------------------------------------- data pool


@dataclass
class PairPool:
    """Rendered pairs held in memory.

    Attributes:
        images: ``uint8 [N, S, S, 3]``.
        captions: ``N`` strings.
        caption_ids: ``int64 [N]``, equal ids for captions with equal :func:`caption_key`.
        tokens: ``int64 [N, context_length]`` (filled once a tokenizer exists).
    """

    images: torch.Tensor
    captions: list[str]
    caption_ids: torch.Tensor
    tokens: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.captions)


@cache
def _synonyms() -> dict[str, str]:
    from refseg.data.shapes.words import SHAPE_NOUNS, SIZE_WORDS, plural

    table = {}
    for forms in (*SHAPE_NOUNS.values(), *SIZE_WORDS.values()):
        table.update({form: forms[0] for form in forms})
    for nouns in SHAPE_NOUNS.values():
        table.update({plural(noun): plural(nouns[0]) for noun in nouns})
    return table


# Caption openings that say nothing about the picture ("a picture of a red circle").
_EMPTY_PREFIXES = ("a picture of ", "an image of ", "a scene with ")


def caption_key(caption: str) -> str:
    """A caption's meaning up to wording: openings dropped, synonyms ("disk", "box",
    "little", "big") mapped to one word, "and"-joined parts sorted.

    Pairs whose captions share a key are not used as each other's negatives, and count as
    correct in retrieval ("a red disk" for a crop captioned "an image of a red circle").
    """
    text = " ".join(caption.lower().split())
    for prefix in _EMPTY_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    synonyms = _synonyms()
    parts = [" ".join(synonyms.get(w, w) for w in part.split()) for part in text.split(" and ")]
    return " and ".join(sorted(parts))


def caption_id(caption: str) -> int:
    """A 63-bit id of the caption's :func:`caption_key`, equal on every rank and every step
    (fresh pairs have no pool to number captions in)."""
    digest = hashlib.blake2b(caption_key(caption).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def render_pool(
    source: PairSource, seed: int, size: int, image_size: int, progress: bool = False
) -> PairPool:
    """Draw ``size`` pairs from ``source`` and squash every image to ``image_size`` pixels."""
    images, captions = [], []
    for image, caption in tqdm(
        source(seed, size),
        total=size,
        desc="rendering pairs",
        leave=False,
        mininterval=2,
        disable=not progress,
    ):
        resized = resize_for_clip(image.convert("RGB"), image_size, "squash")
        images.append(torch.from_numpy(np.array(resized, dtype=np.uint8)))
        captions.append(caption)
    if len(captions) != size:
        raise InputError(f"the pair source gave {len(captions)} pairs; {size} were asked for")
    index: dict[str, int] = {}
    ids = [index.setdefault(caption_key(caption), len(index)) for caption in captions]
    return PairPool(torch.stack(images), captions, torch.tensor(ids, dtype=torch.long))


def default_pair_source() -> PairSource:
    """ShapesRef's training pairs (scenes with captions, single-object crops)."""
    try:
        from refseg.data.shapes.captions import sample_training_pairs
    except ImportError:
        raise InputError(
            "refseg.data.shapes.sample_training_pairs is not available in this install; "
            "pass a pair source to train_contrastive"
        ) from None
    return sample_training_pairs


def pixels_from_uint8(images: torch.Tensor, preprocess: PreprocessConfig) -> torch.Tensor:
    """``uint8 [B, S, S, 3]`` -> CLIP-normalised ``float32 [B, 3, S, S]``."""
    mean = torch.tensor(preprocess.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def trim_tokens(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop trailing columns that are padding in every row: ``[B, L] -> [B, L']``.

    Exact for CLIP's causal text tower: the end token never attends to positions after it.
    """
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]


# --------------------------------------------------------------------------- loss, schedule


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP paper, Fig. 3).

    Args:
        image_features, text_features: ``[B, D]``, not necessarily normalised.
        logit_scale: scalar, the log of the inverse temperature.
        caption_ids: ``int64 [B]``; off-diagonal pairs sharing an id are masked out
            instead of counting as negatives. ``None``: plain InfoNCE.

    Returns:
        Scalar loss, the mean of image->text and text->image cross-entropies.
    """
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()  # [B, B]
    if caption_ids is not None:
        same = caption_ids[:, None] == caption_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def learning_rate(step: int, config: ContrastiveConfig) -> float:
    """Linear warm-up to ``config.lr``, then cosine decay to 0 at ``config.steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def in_image_tower(name: str) -> bool:
    """Whether a CLIP parameter belongs to the image tower proper: under ``visual.`` but not
    what maps its tokens into the joint space (``proj`` and the readouts)."""
    readouts = ("visual.proj", "visual.spatial_proj")
    return (
        name.startswith("visual.")
        and name not in readouts
        and not name.startswith("visual.token_readout.")
    )


def lock_image_tower(model: CLIP) -> None:
    """Freeze the image tower but for its projection and readouts: locked-image tuning."""
    for name, param in model.named_parameters():
        if in_image_tower(name):
            param.requires_grad_(False)


def _decay_first_unscaled(group: tuple[tuple[bool, bool], Any]) -> tuple[bool, bool]:
    """Order of the optimiser's groups: decayed first, unscaled first (logs read group 0)."""
    (decays, tower), _ = group
    return (not decays, tower)


def _optimizer(model: CLIP, config: ContrastiveConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: no decay on gains, biases, embeddings of
    positions, the class token or the temperature (as open_clip's ``exclude`` rule). The
    image tower's groups carry ``lr_scale`` = ``config.image_lr_scale`` (the others 1),
    which :class:`WarmupCosine` applies."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim < 2 or "embedding" in name or "logit_scale" in name)
        tower = config.image_lr_scale != 1.0 and in_image_tower(name)  # else 2 groups, as before
        groups.setdefault((decays, tower), []).append(param)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": config.weight_decay if decays else 0.0,
                "lr_scale": config.image_lr_scale if tower else 1.0,
            }
            for (decays, tower), params in sorted(groups.items(), key=_decay_first_unscaled)
        ],
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
    )


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def retrieval_accuracy(model: CLIP, pool: PairPool, eot_id: int, chunk: int) -> dict[str, float]:
    """Top-1 retrieval within consecutive chunks of ``chunk`` held-out pairs.

    A retrieved caption meaning the same as the true one (same :func:`caption_key`) counts as
    correct: such duplicates are indistinguishable.

    Returns:
        ``{"image_to_text": acc, "text_to_image": acc}``, fractions in [0, 1].
    """
    model.eval()
    hits_i2t = hits_t2i = total = 0
    device = model.logit_scale.device
    for start in range(0, len(pool) - 1, chunk):
        rows = slice(start, min(start + chunk, len(pool)))
        pixels = pixels_from_uint8(pool.images[rows].to(device), model.config.preprocess)
        image = F.normalize(model.encode_image(pixels), dim=-1)
        tokens = trim_tokens(pool.tokens[rows]).to(device)
        text = F.normalize(model.encode_text(tokens, eot_id), dim=-1)
        sims = (image @ text.t()).cpu()
        ids = pool.caption_ids[rows]
        hits_i2t += int((ids[sims.argmax(dim=1)] == ids).sum())
        # text -> image: right if the chosen image carries the same caption
        hits_t2i += int((ids[sims.argmax(dim=0)] == ids).sum())
        total += len(ids)
    return {"image_to_text": hits_i2t / total, "text_to_image": hits_t2i / total}


def shape_crops(seed: int, scenes: int) -> Iterator[tuple[Image.Image, str, str]]:
    """Object crops of ShapesRef benchmark scenes (the "dataset" stream, never trained on)
    with their colour and shape: ``(crop, color, shape)``."""
    from refseg.data.shapes.render import render_object_crop
    from refseg.data.shapes.scene import sample_scene, scene_rng

    for index in range(scenes):
        scene = sample_scene(scene_rng(seed, index, "dataset"))
        for i, obj in enumerate(scene.objects):
            yield render_object_crop(scene, i), obj.color, obj.shape


@torch.inference_mode()
def crop_accuracy(
    model: CLIP,
    tokenizer: ClipTokenizer,
    crops: Sequence[tuple[Image.Image, str, str]],
    colors: Sequence[str],
    shapes: Sequence[str],
) -> dict[str, float]:
    """Zero-shot colour+shape classification of crops with prompts "a <color> <shape>".

    Returns the fraction of crops whose best prompt has the right colour and shape
    (``"color_shape"``), the right colour (``"color"``) and the right shape (``"shape"``).
    """
    from refseg.data.shapes.words import with_article

    model.eval()
    labels = [(c, s) for c in colors for s in shapes]
    device = model.logit_scale.device
    tokens = trim_tokens(tokenizer([with_article(f"{c} {s}") for c, s in labels])).to(device)
    text = model.encode_text(tokens, tokenizer.eot_id)
    text = F.normalize(text, dim=-1)
    size = model.config.preprocess.image_size
    pixels = pixels_from_uint8(
        torch.stack(
            [torch.from_numpy(np.array(resize_for_clip(c, size, "squash"))) for c, _, _ in crops]
        ).to(device),
        model.config.preprocess,
    )
    best = [
        labels[int(i)]
        for i in (F.normalize(model.encode_image(pixels), dim=-1) @ text.t()).argmax(dim=1)
    ]
    truth = [(color, shape) for _, color, shape in crops]
    count = len(truth)
    return {
        "color_shape": sum(b == t for b, t in zip(best, truth, strict=True)) / count,
        "color": sum(b[0] == t[0] for b, t in zip(best, truth, strict=True)) / count,
        "shape": sum(b[1] == t[1] for b, t in zip(best, truth, strict=True)) / count,
        "crops": float(count),
    }


# --------------------------------------------------------------------------- the task


class _PoolRows(torch.utils.data.Dataset):
    """Sample ``i`` is pool row ``i``; :meth:`ContrastiveTask.collate` slices the pool's
    tensors by the rows of a batch at once (faster than stacking samples)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """:func:`learning_rate` as a scheduler, times each group's ``lr_scale`` (default 1)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: ContrastiveConfig) -> None:
        self.config = config
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        rate = learning_rate(self.last_epoch, self.config)
        return [rate * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "config"}


@dataclass
class ContrastiveBatch:
    """One micro-batch: ``uint8 [B, S, S, 3]`` images, tokens, caption ids; with hard
    negatives also ``K`` per pair, row-major (``[B * K, L]`` tokens, ``[B * K]`` caption ids
    and 1 for a real negative, 0 for padding)."""

    images: torch.Tensor
    tokens: torch.Tensor
    caption_ids: torch.Tensor
    negative_tokens: torch.Tensor | None = None
    negative_ids: torch.Tensor | None = None
    negative_valid: torch.Tensor | None = None
    structure: StructureBatch | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ContrastiveBatch:
        """Every tensor on ``device`` (the loop moves batches with this)."""
        return move_fields(self, device, non_blocking)


class ContrastiveTask(TaskBase):
    """A :class:`refseg.train.loop.TrainTask` training a CLIP preset on rendered pairs.

    Args:
        config: the run's hyper-parameters.
        pair_source: ``(seed, n) -> pairs``; default ShapesRef's ``sample_training_pairs``.
        evaluate_crops: the final evaluation also measures colour/shape accuracy on
            ShapesRef object crops.
        progress: show a bar while rendering pairs.
    """

    name = "clip"
    sampling = "step"  # batch i: batch_size distinct pool rows drawn with seed (seed, i)
    best_metric = "image_to_text"
    best_mode = "max"

    def __init__(
        self,
        config: ContrastiveConfig,
        *,
        pair_source: PairSource | None = None,
        evaluate_crops: bool = True,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.pair_source = pair_source or default_pair_source()
        self.evaluate_crops = evaluate_crops
        self.progress = progress
        self.pool: PairPool | None = None
        self.held_out: PairPool | None = None
        self.tokenizer: ClipTokenizer | None = None
        self.fresh: FreshPairs | None = None
        self._init: LoadedClip | None = None
        if config.on_the_fly:
            self.sampling = "epoch"  # every fresh pair once
        if config.probe_scenes:
            self.best_metric = "probe_mean"

    @property
    def preset_vision(self) -> VisionConfig:
        """The preset's image tower (input size, patch size)."""
        return preset_config(self.config.preset, self.config.vocab_size, 1).vision

    @property
    def image_size(self) -> int:
        return self.preset_vision.image_size

    def _patch_grid(self) -> int | None:
        """Side of the image tower's patch grid when the patch loss is on, else ``None``."""
        if not self.config.patch_weight:
            return None
        vision = self.preset_vision
        if not vision.is_vit:
            raise InputError(f"--patch-weight needs a ViT preset; {self.config.preset} is not")
        return vision.image_size // vision.patch_size

    def _prepare(self) -> None:
        """Render the training pool (or set up fresh pairs) and the tokenizer (once)."""
        if self.pool is not None or self.fresh is not None:
            return
        config = self.config
        if config.on_the_fly:
            self.fresh = FreshPairs(
                config.seed,
                config.steps * config.batch_size,
                self.image_size,
                negatives=config.negatives,
                positions=config.positions,
                crop_fraction=config.crop_fraction,
                composition=config.composition,
                twins=config.twins,
                max_objects=config.max_objects,
                structure=bool(config.structure_weight),
                patch_grid=self._patch_grid(),
            )
            if config.twins and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # ranks would gather batches of different sizes
                raise InputError("--twins trains on one process only (not under torchrun)")
            self.tokenizer = self._tokenizer(self.fresh.texts(TOKENIZER_CORPUS_PAIRS))
            return
        pool = render_pool(
            self.pair_source, config.seed, config.pool_pairs, self.image_size, self.progress
        )
        self.tokenizer = self._tokenizer(pool.captions)
        pool.tokens = self.tokenizer(pool.captions)
        self.pool = pool

    def _tokenizer(self, captions: Iterable[str]) -> ClipTokenizer:
        """``config.init``'s tokenizer (its ids must keep their meaning), else a BPE trained
        on the caption vocabulary and ``captions`` (read only then)."""
        initial = self._initial()
        if initial is not None:
            return initial.tokenizer
        from refseg.data.shapes.words import caption_vocabulary

        bpe = train_bpe([*caption_vocabulary(), *captions], self.config.vocab_size)
        return ClipTokenizer(bpe, self.config.context_length)

    def _initial(self) -> LoadedClip | None:
        """The CLIP of ``config.init`` on the CPU (loaded once), checked to be the preset's
        architecture (a ViT may differ in input size: ``shapes-vit`` can start
        ``shapes-vit-224``, its positional table resized); ``None`` when training from
        scratch."""
        if self.config.init is None:
            return None
        if self._init is None:
            from refseg.clip.load import load_clip

            loaded = load_clip(self.config.init, device="cpu")
            own = loaded.config
            preset = preset_config(self.config.preset, own.text.vocab_size, own.text.context_length)
            plain_vision = dataclasses.replace(own.vision, spatial_readout=False, token_readout=0)
            if own.vision.is_vit:  # the input size is free: positions are resized
                plain_vision = dataclasses.replace(
                    plain_vision, image_size=preset.vision.image_size
                )
            if (preset.vision, preset.text, preset.embed_dim) != (
                plain_vision,
                own.text,
                own.embed_dim,
            ):
                raise InputError(
                    f"--init {self.config.init!r} is not a {self.config.preset} model: "
                    f"vision {own.vision} vs {preset.vision}, text {own.text} vs {preset.text}"
                )
            self._init = loaded
        return self._init

    def train_dataset(self) -> torch.utils.data.Dataset:
        self._prepare()
        return self.fresh if self.fresh is not None else _PoolRows(len(self.pool))

    def model_config(self) -> CLIPConfig:
        """The architecture trained: the preset's, sized to the tokenizer (or the init's)."""
        self._prepare()
        config = self.config
        if self._init is not None:
            chosen = at_input_size(self._init.config, self.image_size)
        else:
            chosen = preset_config(config.preset, self.tokenizer.vocab_size, config.context_length)
        if not (config.spatial_readout or config.token_readout):
            return chosen
        readouts = {"token_readout": config.token_readout} if config.token_readout else {}
        if config.spatial_readout:
            readouts["spatial_readout"] = True
        return dataclasses.replace(chosen, vision=dataclasses.replace(chosen.vision, **readouts))

    def build_model(self) -> CLIP:
        """The preset's CLIP (or the init's weights), with the structure head attached as
        ``structure_head`` when ``structure_weight`` > 0 (left out of the saved model)."""
        model = CLIP(self.model_config())
        if self.config.structure_weight:
            patch_width = model.config.vision.width if self.config.patch_weight else None
            head = StructureHead(model.config.embed_dim, patch_width)
            model.add_module(STRUCTURE_HEAD, head)
        initial = self._initial()
        if initial is not None:
            # a ViT's input size may differ (_initial allows it): resize its positional table
            state = positions_resized(initial.model.state_dict(), model.config.vision)
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = {k for k in missing if not k.startswith(f"{STRUCTURE_HEAD}.")}
            fresh = ("visual.spatial_proj", "visual.token_readout.")  # readouts may be new
            missing = {k for k in missing if not k.startswith(fresh)}
            if missing or unexpected:  # only the new readouts and the head start fresh
                raise InputError(
                    f"--init {self.config.init!r} does not fit: missing {missing}, "
                    f"unexpected {unexpected}"
                )
        if self.config.lock_image:
            lock_image_tower(model)
        return model

    def collate(self, samples: list[int] | list[FreshSample]) -> ContrastiveBatch:
        if self.fresh is not None:
            return self._collate_fresh(samples)
        rows = torch.tensor(samples, dtype=torch.long)
        pool = self.pool
        return ContrastiveBatch(pool.images[rows], pool.tokens[rows], pool.caption_ids[rows])

    def _collate_fresh(self, drawn: list[FreshSample]) -> ContrastiveBatch:
        samples = [pair for sample in drawn for pair in sample.pairs()]  # twins join the batch
        captions = [s.caption for s in samples]
        batch = ContrastiveBatch(
            torch.stack([s.image for s in samples]),
            self.tokenizer(captions),
            torch.tensor([caption_id(c) for c in captions], dtype=torch.long),
        )
        count = self.config.negatives
        negatives: list[str] = []  # K padded texts per pair, row-major
        if count:
            valid = []
            for sample in samples:
                padded, real = pad_negatives(sample.caption, sample.negatives, count)
                negatives += padded
                valid += real
            batch.negative_tokens = self.tokenizer(negatives)
            batch.negative_ids = torch.tensor(
                [caption_id(t) for t in negatives], dtype=torch.long
            )
            batch.negative_valid = torch.tensor(valid, dtype=torch.long)
        if self.config.structure_weight:  # texts in the order they are encoded in
            targets = [s.targets for s in samples]
            batch.structure = collate_structure(targets, captions + negatives)
        return batch

    def loss(self, model: CLIP, batch: ContrastiveBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.negative_tokens is not None:
            return self._negclip_loss(model, batch)
        image, patches = self._encode_images(model, batch)
        text = model.encode_text(trim_tokens(batch.tokens), self.tokenizer.eot_id)
        image_features, text_features = gather_with_grad(image), gather_with_grad(text)
        ids = gather_with_grad(batch.caption_ids) if self.config.mask_duplicate_captions else None
        loss = contrastive_loss(image_features, text_features, model.logit_scale, ids)
        return self._with_structure(model, batch, (image, patches), text, loss, {})

    def _encode_images(
        self, model: CLIP, batch: ContrastiveBatch
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image embeddings ``[B, D]``, and the final patch tokens after ``ln_post``
        (``[B, P, C]``) when the patch loss needs them (else ``None``)."""
        pixels = pixels_from_uint8(batch.images, model.config.preprocess)
        if batch.structure is None or batch.structure.patch_types is None:
            return model.encode_image(pixels), None
        return model.visual.forward_with_patches(pixels)

    def _with_structure(
        self,
        model: CLIP,
        batch: ContrastiveBatch,
        images: tuple[torch.Tensor, torch.Tensor | None],
        text: torch.Tensor,
        loss: torch.Tensor,
        metrics: dict[str, float],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss`` plus ``structure_weight`` x the structure loss of this rank's embeddings
        (``images``: embeddings and patch tokens or ``None``; ``text``: captions, then padded
        negatives) plus ``patch_weight`` x the patch loss; unchanged without a head."""
        if batch.structure is None:
            return loss, metrics
        head = getattr(model, STRUCTURE_HEAD)
        image, patches = images
        extra, found = structure_loss(head, image, text, batch.structure)
        total = loss + self.config.structure_weight * extra
        found = {**metrics, **found, "structure_loss": float(extra.detach())}
        if patches is not None:
            dense, patch_metrics = patch_loss(head, patches, batch.structure.patch_types)
            total = total + self.config.patch_weight * dense
            found |= {**patch_metrics, "structure_patch_loss": float(dense.detach())}
        return total, found

    def _negclip_loss(
        self, model: CLIP, batch: ContrastiveBatch
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """NegCLIP over the gathered global batch; padding negatives are dropped after the
        gather (every rank sends ``B x K`` rows)."""
        image, patches = self._encode_images(model, batch)
        image_features = gather_with_grad(image)
        rows = batch.tokens.shape[0]
        # captions and negatives through the text tower in one pass
        tokens = trim_tokens(torch.cat([batch.tokens, batch.negative_tokens]))
        text = model.encode_text(tokens, self.tokenizer.eot_id)
        text_features = gather_with_grad(text[:rows])
        padded_negatives = gather_with_grad(text[rows:])
        valid = gather_with_grad(batch.negative_valid).bool()
        owner = torch.arange(image_features.shape[0], device=valid.device)
        owner = owner.repeat_interleave(self.config.negatives)[valid]
        negative_features = padded_negatives[valid]
        ids = negative_ids = None
        if self.config.mask_duplicate_captions:
            ids = gather_with_grad(batch.caption_ids)
            negative_ids = gather_with_grad(batch.negative_ids)[valid]
        loss = negclip_loss(
            image_features, text_features, negative_features, model.logit_scale, ids, negative_ids
        )
        if self.config.negative_weight:
            focused = own_negatives_loss(
                image_features, text_features, padded_negatives, valid, model.logit_scale
            )
            loss = loss + self.config.negative_weight * focused
        accuracy = hard_negative_accuracy(
            image_features.detach(), text_features.detach(), negative_features.detach(), owner
        )
        metrics = {"hard_negative_accuracy": accuracy, "negatives": float(valid.sum())}
        return self._with_structure(model, batch, (image, patches), text, loss, metrics)

    def optimizer(self, model: CLIP) -> torch.optim.Optimizer:
        return _optimizer(model, self.config)

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> WarmupCosine:
        if total_steps != self.config.steps:
            raise InputError(f"the loop runs {total_steps} steps, the config {self.config.steps}")
        return WarmupCosine(optimizer, self.config)

    def after_step(self, model: CLIP) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def evaluate(self, model: CLIP) -> dict[str, float]:
        """Held-out retrieval (pairs of another seed, rendered on first use), the
        temperature, and the ShapesRef crop accuracy if asked for."""
        config = self.config
        if self.held_out is None:
            self.held_out = render_pool(
                self.fresh.pair_source if self.fresh is not None else self.pair_source,
                config.seed + HELD_OUT_SEED_OFFSET,
                config.held_out_size,
                self.image_size,
                self.progress,
            )
            self.held_out.tokens = self.tokenizer(self.held_out.captions)
        metrics = retrieval_accuracy(model, self.held_out, self.tokenizer.eot_id, config.batch_size)
        metrics["logit_scale"] = model.logit_scale.exp().item()
        if self.evaluate_crops:
            from refseg.data.shapes.words import COLORS, SHAPES

            crops = list(shape_crops(config.seed, config.crop_eval_scenes))
            accuracy = crop_accuracy(model, self.tokenizer, crops, COLORS, SHAPES)
            metrics.update({f"crop_{k}": v for k, v in accuracy.items()})
        if config.probe_scenes:
            metrics.update(self._probe(model))
        return metrics

    def _probe(self, model: CLIP) -> dict[str, float]:
        """Relation, binding and position probe accuracies on fresh scenes, and
        ``probe_mean`` = mean(relation, binding), the best checkpoint's measure."""
        from refseg.clip.loaded import LoadedClip
        from refseg.eval.probe import run_probe

        config = self.config
        clip = LoadedClip(model, self.tokenizer, "training")
        result = run_probe(clip, config.probe_seed, config.probe_scenes)
        metrics = {f"probe_{k}": count.accuracy for k, count in result.counts.items()}
        metrics["probe_mean"] = (metrics["probe_relation"] + metrics["probe_binding"]) / 2
        return metrics

    def save_artifact(self, model: CLIP, out_dir: Path) -> None:
        if hasattr(model, STRUCTURE_HEAD):  # a training device, not part of the CLIP
            plain = CLIP(model.config)
            plain.load_state_dict(
                {
                    k: v
                    for k, v in model.state_dict().items()
                    if not k.startswith(f"{STRUCTURE_HEAD}.")
                }
            )
            model = plain
        save_clip(model, self.tokenizer, out_dir, {"preset": self.config.preset})

    def record(self) -> dict[str, Any]:
        config = self.config
        return {
            "preset": config.preset,
            "pool_pairs": None if config.on_the_fly else config.pool_pairs,
            "held_out_pairs": config.held_out_size,
            "crop_eval_scenes": config.crop_eval_scenes if self.evaluate_crops else 0,
            "config": config.to_dict(),
            "model_config": self.model_config().to_dict(),
            **({"init": _init_record(self._init)} if self._init is not None else {}),
        }


def _init_record(initial: LoadedClip) -> dict[str, Any]:
    """What a run started from: the name and a SHA-256 of its weights (names, shapes, bytes),
    so a later change of a packaged model under the same name shows."""
    digest = hashlib.sha256()
    for name, tensor in sorted(initial.model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return {"source": initial.name, "weights_sha256": digest.hexdigest()}


@dataclass
class ContrastiveResult:
    """What a run produced: the trained model, its tokenizer and the record written to
    ``TRAINING.json``."""

    model: CLIP
    tokenizer: ClipTokenizer
    record: dict[str, Any]
    main_process: bool = True


def train_contrastive(
    config: ContrastiveConfig,
    out_dir: str | os.PathLike,
    *,
    pair_source: PairSource | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    evaluate_crops: bool = True,
    **loop_options: Any,
) -> ContrastiveResult:
    """Train a CLIP preset contrastively and save it with :func:`refseg.clip.save_clip`.

    :class:`ContrastiveTask` on :func:`refseg.train.loop.train`: writes ``OUT/checkpoint.pt``
    every ``checkpoint_every`` steps, at the end and on SIGINT/SIGTERM, ``metrics.jsonl``,
    then ``model.safetensors``, ``tokenizer.json`` and ``TRAINING.json``.

    Args:
        pair_source: ``(seed, n) -> pairs``; default ShapesRef's ``sample_training_pairs``.
        resume: continue from ``OUT/checkpoint.pt`` (same options required).
        command: the command line, recorded in ``TRAINING.json``.
        evaluate_crops: also measure colour/shape accuracy on ShapesRef object crops.
        loop_options: other :class:`refseg.train.loop.LoopConfig` fields (``threads``,
            ``checkpoint_every``, ``grad_accum``, ...).

    Raises:
        InputError: bad options or a pair source that gives too few pairs.
        CheckpointError: ``resume`` without a usable checkpoint.
    """
    first_rank = int(os.environ.get("RANK", "0")) == 0  # torchrun's; one bar, not N
    task = ContrastiveTask(
        config,
        pair_source=pair_source,
        evaluate_crops=evaluate_crops,
        progress=progress and first_rank,
    )
    loop = LoopConfig(
        out_dir=Path(out_dir),
        steps=config.steps,
        batch_size=config.batch_size,
        seed=config.seed,
        resume=resume,
        progress=progress,
        command=command,
        **loop_options,
    )
    result = train(task, loop)
    return ContrastiveResult(result.model, task.tokenizer, result.record, result.main_process)
