"""One training loop for every refseg model kind, on Hugging Face ``accelerate``.

A model kind (contrastive CLIP, CLIPSeg, RISCLIP, ...) supplies a :class:`TrainTask`: its
model, its data, its loss, its optimiser and schedule, its evaluation and how to save the
final artefact. :func:`train` does the rest, identically on one process or under
``torchrun --nproc_per_node N`` / ``accelerate launch`` (gloo on CPU, NCCL on CUDA):

- device placement, DDP wrapping, mixed precision (``"no" | "fp16" | "bf16"``), gradient
  accumulation and gradient clipping (``accelerate``);
- sampling: the *global* batch of optimiser step ``s`` is a pure function of
  ``(seed, s)`` (:func:`global_batch_indices`); rank ``r`` takes its contiguous share of every
  micro-batch, so ``N`` ranks with batch ``B/N`` each see exactly the samples of one rank with
  batch ``B``, and resuming needs only the step number;
- exact resume: ``OUT/checkpoint.pt`` holds model, optimiser, scheduler, grad scaler, the RNG
  states of every rank and the step (= sampler position); written atomically every
  ``checkpoint_every`` steps, at the end, and when SIGINT/SIGTERM arrives (the step in flight
  finishes first);
- rank 0 only: tqdm (loss, it/s), ``OUT/metrics.jsonl`` (and TensorBoard under ``OUT/tb`` if
  ``tensorboard`` is installed), validation every ``eval_every`` steps keeping
  ``OUT/best/checkpoint.pt`` by ``task.best_metric``, ``task.save_artifact`` and
  ``OUT/TRAINING.json`` at the end.

Tasks never call ``torch.distributed`` or ``accelerate`` themselves. ``task.loss`` gets the
plain (unwrapped) model and may call any of its methods: the loop wraps ``task.loss`` in a
module that DDP wraps, so gradients are averaged over ranks whatever the task calls. A loss
that must see the whole global batch (contrastive InfoNCE) gathers with
:func:`gather_with_grad`, which is the identity on one process.

API (contract A in the project's CONTRACTS.md; additions to the contract are marked +):

``LoopConfig``  out_dir, steps, batch_size (global, per optimiser step), grad_accum, seed,
    mixed_precision, checkpoint_every, eval_every (0: only at the end), log_every,
    max_grad_norm, + resume, + progress, + threads (CPU threads per process, None: torch's
    default), + deterministic (deterministic kernels), + num_workers (DataLoader workers),
    + command (recorded in TRAINING.json), + find_unused_parameters (DDP).
``TrainTask``  the protocol below; :class:`TaskBase` gives the optional members defaults
    (+ ``after_step(model)``: called after every optimiser step, e.g. to clamp a
    temperature; + ``sampling``: ``"epoch"`` (default: a fresh permutation of the dataset per
    epoch) or ``"step"`` (every step draws ``batch_size`` distinct samples at random).
``train(task, config) -> TrainResult``  (model, record, out_dir).
``add_loop_arguments(parser, defaults)`` / ``loop_config_from_args(args, ...)``  the shared
    argparse options of ``refseg train clip|clipseg|risclip``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

CHECKPOINT_NAME = "checkpoint.pt"
BEST_DIR_NAME = "best"
METRICS_LOG_NAME = "metrics.jsonl"
TRAINING_RECORD_NAME = "TRAINING.json"
# Seeds of step s's batch: generator seeded with seed * SEED_STRIDE + s ("step" sampling) or
# seed * SEED_STRIDE + epoch ("epoch" sampling).
SEED_STRIDE = 1_000_003


@dataclass
class LoopConfig:
    """How to run a training loop (the task says *what* to train).

    Attributes:
        out_dir: checkpoints, logs, the final artefact and TRAINING.json go here.
        steps: optimiser steps in the whole run.
        batch_size: global batch per optimiser step (all ranks x accumulation); must be a
            multiple of ``world_size * grad_accum``.
        grad_accum: micro-batches per optimiser step on each rank.
        seed: seeds model init (``build_model`` runs after seeding), sampling and every
            rank's RNG (rank ``r`` gets ``seed + r`` after the model is built).
        mixed_precision: ``"no"``, ``"fp16"`` (CUDA, with a grad scaler) or ``"bf16"``.
        checkpoint_every: write ``checkpoint.pt`` every this many steps (and at the end and on
            SIGINT/SIGTERM).
        eval_every: run ``task.evaluate`` every this many steps; 0: only at the end.
        log_every: append to ``metrics.jsonl`` every this many steps.
        max_grad_norm: clip the global gradient norm; ``None``: no clipping.
        resume: continue from ``out_dir/checkpoint.pt`` (same task record and loop options).
        progress: show the tqdm bar on rank 0.
        threads: ``torch.set_num_threads`` per process; ``None`` leaves torch's default.
        deterministic: ``torch.use_deterministic_algorithms(True)`` during the run.
        num_workers: DataLoader worker processes per rank (0: load in the training process).
        command: the command line, recorded in TRAINING.json.
        find_unused_parameters: DDP option for models whose trainable parameters are not all
            used by every loss.
    """

    out_dir: Path
    steps: int
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 100
    eval_every: int = 0
    log_every: int = 10
    max_grad_norm: float | None = None
    resume: bool = False
    progress: bool = True
    threads: int | None = None
    deterministic: bool = True
    num_workers: int = 0
    command: str | None = None
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)


@runtime_checkable
class TrainTask(Protocol):
    """What a model kind supplies to :func:`train`. Subclass :class:`TaskBase` for defaults.

    Every method is called on every rank unless said otherwise; none may call
    ``torch.distributed`` or ``accelerate``.
    """

    name: str  # "clip", "clipseg", "risclip-stage1", ...
    best_metric: str | None  # key of evaluate() that decides the best checkpoint; None: none
    best_mode: str  # "max" | "min"

    def build_model(self) -> torch.nn.Module:
        """The model on CPU, freshly initialised (the loop has seeded torch); frozen parts
        have ``requires_grad=False``."""
        ...

    def train_dataset(self) -> torch.utils.data.Dataset:
        """Map-style dataset; sample ``i`` is a pure function of ``i`` (no global RNG)."""
        ...

    def collate(self, samples: list[Any]) -> Any:
        """Samples -> one batch (tensors anywhere inside are moved to the device)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of this rank's micro-batch (a mean over its samples) and extra
        numbers to log. ``model`` is the plain model (not DDP-wrapped), in train mode."""
        ...

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Optimiser over the trainable parameters only."""
        ...

    def scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """LR schedule stepped once per optimiser step (``total_steps`` of them)."""
        ...

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation numbers (may be ``{}``). Called on rank 0 only, model in eval mode
        under ``torch.inference_mode``."""
        ...

    def save_artifact(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Write the final shipped files (rank 0 only, unwrapped model)."""
        ...

    def record(self) -> dict[str, Any]:
        """The task's own configuration (JSON-able), written into TRAINING.json; a resume
        refuses a checkpoint whose record differs."""
        ...


class TaskBase:
    """Defaults for the optional parts of :class:`TrainTask`."""

    name: str = "task"
    best_metric: str | None = None
    best_mode: str = "max"
    sampling: Literal["epoch", "step"] = "epoch"

    def collate(self, samples: list[Any]) -> Any:
        return torch.utils.data.default_collate(samples)

    def scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return {}

    def after_step(self, model: torch.nn.Module) -> None:
        """Called with the plain model after every optimiser step (e.g. clamp a parameter)."""

    def save_artifact(self, model: torch.nn.Module, out_dir: Path) -> None:
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(out_dir / "model.safetensors"),
        )

    def record(self) -> dict[str, Any]:
        return {}


@dataclass
class TrainResult:
    """What :func:`train` returns on every rank.

    Attributes:
        model: the trained plain model (on the loop's device).
        record: the TRAINING.json content (rank 0 writes it; other ranks get the same dict).
        out_dir: where the files went.
    """

    model: torch.nn.Module
    record: dict[str, Any]
    out_dir: Path


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank along dim 0, in rank order, keeping gradients.

    With the loop's sampling the result is the global micro-batch in the order one process
    would see it. Identity on one process.
    """
    raise NotImplementedError  # filled in below


def global_batch_indices(
    step: int, *, seed: int, batch_size: int, dataset_size: int, sampling: str
) -> torch.Tensor:
    """Dataset rows of optimiser step ``step`` (all ranks, all micro-batches), in order."""
    raise NotImplementedError


def train(task: TrainTask, config: LoopConfig) -> TrainResult:
    """Train ``task`` under ``config`` on this process's share of the launch.

    Launch-agnostic: plain ``python``/``refseg`` is one process; under ``torchrun`` or
    ``accelerate launch`` every rank calls this with the same arguments.

    Raises:
        InputError: bad options (batch size not divisible, ...).
        CheckpointError: ``config.resume`` without a matching ``checkpoint.pt``.
    """
    raise NotImplementedError


def add_loop_arguments(
    parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None
) -> None:
    """Add the loop's options (``--out --steps --batch-size --grad-accum --seed
    --mixed-precision --checkpoint-every --eval-every --log-every --max-grad-norm --resume
    --no-progress --threads --num-workers``) with their defaults shown in ``--help``;
    ``defaults`` overrides the loop's own (e.g. a model kind's usual batch size)."""
    raise NotImplementedError


def loop_config_from_args(args: argparse.Namespace, **overrides: Any) -> LoopConfig:
    """The :class:`LoopConfig` of parsed :func:`add_loop_arguments` options."""
    fields = {f.name for f in dataclasses.fields(LoopConfig)}
    raise NotImplementedError(fields, overrides)
