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
- rank 0 only: tqdm (loss, lr, it/s), ``OUT/metrics.jsonl`` (one JSON object per line:
  ``{"step", "split": "train", "loss", ..., "lr", "steps_per_s"}`` every ``log_every`` steps,
  ``{"step", "split": "val", **evaluate()}``; TensorBoard under ``OUT/tb`` if
  ``tensorboard`` is installed), ``task.evaluate`` every ``eval_every`` steps and at the end,
  keeping the best by ``task.best_metric`` in ``OUT/best/`` (``checkpoint.pt``, the task's
  artefact, ``best.json``), ``task.save_artifact`` into ``OUT`` and ``OUT/TRAINING.json``
  at the end.

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
``train(task, config) -> TrainResult``  (model, record, out_dir, main_process); raises
    + ``TrainingInterrupted`` (a ``KeyboardInterrupt``) after the SIGINT/SIGTERM checkpoint.
``add_loop_arguments(parser, defaults, set_elsewhere=...)`` / ``loop_config_from_args(args,
    **overrides)``  the shared argparse options of ``refseg train clip|clipseg|risclip``
    (:mod:`refseg.train.options`).
``gather_with_grad(tensor)``  + all ranks' rows, differentiable (identity on one process).

Equal results: with ``deterministic`` (default) a run is bit-identical to itself on CPU, a
resumed run to an uninterrupted one (tested on 1 and 2 ranks), and N ranks x B/N equal one
rank x B up to float rounding in the gradient average (< 1e-5 after a few AdamW steps).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from tqdm import tqdm

from refseg.errors import InputError
from refseg.eval.predictions import write_json_atomic
from refseg.train import checkpoint
from refseg.train.options import add_loop_arguments, loop_config_from_args
from refseg.train.sampling import StepBatchSampler, check_batch_size, global_batch_indices

__all__ = [
    "LoopConfig",
    "TaskBase",
    "TrainResult",
    "TrainTask",
    "TrainingInterrupted",
    "add_loop_arguments",
    "gather_with_grad",
    "global_batch_indices",
    "loop_config_from_args",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
BEST_DIR_NAME = "best"
METRICS_LOG_NAME = "metrics.jsonl"
TRAINING_RECORD_NAME = "TRAINING.json"
MIXED_PRECISIONS = ("no", "fp16", "bf16")
# Timeout of the process group's collectives (ranks wait for rank 0's validation).
COLLECTIVE_TIMEOUT = timedelta(hours=6)


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
        record: the TRAINING.json content (rank 0 writes it; every rank gets the same dict).
        out_dir: where the files went.
        main_process: whether this is rank 0 (the one that wrote files and should print).
    """

    model: torch.nn.Module
    record: dict[str, Any]
    out_dir: Path
    main_process: bool = True


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run after a checkpoint was written; ``--resume`` goes on."""


# --------------------------------------------------------------------------- distributed


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums the gathered gradient over ranks and keeps this
    rank's slice (all_reduce works on every backend, reduce_scatter does not on gloo)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def move_fields(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """A copy of dataclass ``batch`` with every field that has a ``.to`` (tensors, nested
    batches) moved to ``device``: a batch dataclass's ``to``, which the loop's
    ``accelerate.utils.send_to_device`` calls (it moves only tensors, containers and objects
    with ``.to``)."""
    moved = {
        f.name: getattr(batch, f.name).to(device, non_blocking=non_blocking)
        for f in dataclasses.fields(batch)
        if hasattr(getattr(batch, f.name), "to")
    }
    return dataclasses.replace(batch, **moved)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank along dim 0, in rank order, keeping gradients.

    With the loop's sampling the result is the global micro-batch in the order one process
    would see it, and a loss computed from it on every rank gets the gradient of one process
    (DDP's averaging undoes the sum over ranks). Identity on one process. Tensors without
    gradient (ids, labels) are gathered too.
    """
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _LossModule(torch.nn.Module):
    """The module DDP wraps: its forward is the task's loss, so whatever model methods the
    task calls, the backward pass goes through DDP's gradient averaging."""

    def __init__(self, model: torch.nn.Module, task: TrainTask) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch)


# --------------------------------------------------------------------------- signals


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads after each step; a second signal interrupts
    at once. Handlers are restored on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum


# --------------------------------------------------------------------------- helpers


@contextmanager
def _torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Thread count and deterministic kernels for the run, restored on exit."""
    previous_threads = torch.get_num_threads()
    previous_flag = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        # CUDA kernels without a deterministic version warn instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        # NaN-filling every new tensor costs ~20% of a ResNet step and changes no result.
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_flag)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill


def git_commit() -> str:
    """The refseg source tree's git commit, or ``"unknown"`` outside a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()


def _check_config(config: LoopConfig) -> None:
    checks = {
        "steps >= 1": config.steps >= 1,
        "batch_size >= 1": config.batch_size >= 1,
        "grad_accum >= 1": config.grad_accum >= 1,
        "seed >= 0": config.seed >= 0,
        "checkpoint_every >= 1": config.checkpoint_every >= 1,
        "eval_every >= 0": config.eval_every >= 0,
        "log_every >= 1": config.log_every >= 1,
        "max_grad_norm > 0": config.max_grad_norm is None or config.max_grad_norm > 0,
        "threads >= 1": config.threads is None or config.threads >= 1,
        "num_workers >= 0": config.num_workers >= 0,
        f"mixed_precision in {MIXED_PRECISIONS}": config.mixed_precision in MIXED_PRECISIONS,
    }
    bad = [rule for rule, ok in checks.items() if not ok]
    if bad:
        raise InputError(f"invalid training option(s): need {', '.join(bad)}")
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InputError("--mixed-precision fp16 needs CUDA; on CPU use bf16 or no")


# Loop options a resumed run must share with its checkpoint (the others change no number).
_RESUME_KEYS = ("steps", "batch_size", "grad_accum", "seed", "mixed_precision", "max_grad_norm")


def _resume_key(task: TrainTask, config: LoopConfig) -> dict[str, Any]:
    return {
        "task": task.name,
        "sampling": getattr(task, "sampling", "epoch"),
        **{k: getattr(config, k) for k in _RESUME_KEYS},
        "task_record": task.record(),
    }


class _MetricsLog:
    """Rank 0's ``metrics.jsonl`` (one JSON object a line) and TensorBoard if installed."""

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        self.path = out_dir / METRICS_LOG_NAME
        if resume_step is None:
            self.path.write_text("")
        elif self.path.is_file():  # drop what the interrupted run logged after its checkpoint
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        self.board = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(out_dir / "tb"))

    def write(self, step: int, split: str, numbers: Mapping[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **numbers}) + "\n")
        if self.board is not None:
            for key, value in numbers.items():
                self.board.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


# --------------------------------------------------------------------------- the loop


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT: a scheduler (SLURM, a process-group
    kill) signals every process of the job, and a worker killed first made the training
    process crash without its checkpoint. The training process takes the signal, finishes
    the step, writes the checkpoint and then shuts its workers down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train(task: TrainTask, config: LoopConfig) -> TrainResult:
    """Train ``task`` under ``config`` on this process's share of the launch.

    Launch-agnostic: plain ``python``/``refseg`` is one process; under ``torchrun`` or
    ``accelerate launch`` every rank calls this with the same arguments. Order of calls:
    seed; ``task.train_dataset()``; seed again; ``task.build_model()``;
    ``task.optimizer(model)``; ``task.scheduler(optimizer, steps)``; ``task.record()`` (to
    match a checkpoint on resume); then per step ``task.collate``, ``task.loss`` (once per
    micro-batch), ``task.after_step``; ``task.evaluate`` every ``eval_every`` steps and at the
    end (rank 0); ``task.save_artifact`` and ``task.record()`` at the end (rank 0).

    Raises:
        InputError: bad options (batch size not divisible, ...).
        CheckpointError: ``config.resume`` without a matching ``checkpoint.pt``.
        TrainingInterrupted: SIGINT/SIGTERM; the checkpoint of the last finished step was
            written first.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        InitProcessGroupKwargs,
        send_to_device,
        set_seed,
    )

    _check_config(config)
    started = time.perf_counter()
    commit = git_commit()  # the code that runs, even if the tree moves on meanwhile
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters),
            # other ranks wait while rank 0 validates: allow a long validation
            InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT),
        ],
    )
    try:
        with _torch_settings(config.threads, config.deterministic), _StopFlag() as stop:
            return _run(task, config, accelerator, stop, started, commit, send_to_device, set_seed)
    finally:
        accelerator.free_memory()
        AcceleratorState._reset_state()  # a later train() in this process may differ
        GradientState._reset_state()


def _run(
    task: TrainTask,
    config: LoopConfig,
    accelerator: Any,
    stop: _StopFlag,
    started: float,
    commit: str,
    send_to_device: Any,
    set_seed: Any,
) -> TrainResult:
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    check_batch_size(config.batch_size, world, config.grad_accum)
    out = config.out_dir
    checkpoint_path = out / CHECKPOINT_NAME
    saved = checkpoint.load(checkpoint_path) if config.resume else None
    if main:
        out.mkdir(parents=True, exist_ok=True)

    set_seed(config.seed)
    dataset = task.train_dataset()
    set_seed(config.seed)
    model = task.build_model()
    optimizer = task.optimizer(model)
    scheduler = task.scheduler(optimizer, config.steps)
    resume_key = _resume_key(task, config)
    if world > 1:
        set_seed(config.seed, device_specific=True)  # rank r: seed + r (dropout differs)

    step, losses, wall_time, best = 0, [], 0.0, None
    if saved is not None:
        checkpoint.check_same_options(checkpoint_path, saved["options"], resume_key)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, losses = int(saved["step"]), [float(x) for x in saved["losses"]]
        wall_time, best = float(saved["wall_time_s"]), saved["best"]

    wrapped, optimizer = accelerator.prepare(_LossModule(model, task), optimizer)
    if saved is not None:
        if accelerator.scaler is not None and saved["scaler"] is not None:
            accelerator.scaler.load_state_dict(saved["scaler"])
        rng_states = saved["rng"]
        if len(rng_states) != world and main:
            warnings.warn(
                f"resuming on {world} processes from a checkpoint of {len(rng_states)}: "
                "batches are the same, random states of ranks >= "
                f"{min(world, len(rng_states))} start fresh",
                stacklevel=2,
            )
        if rank < len(rng_states):
            checkpoint.set_rng_state(rng_states[rank])

    def save(path: Path) -> None:
        rng_states = (
            gather_object([checkpoint.rng_state()]) if world > 1 else [checkpoint.rng_state()]
        )
        if main:
            checkpoint.save_atomic(
                path,
                {
                    "format": checkpoint.FORMAT,
                    "options": resume_key,
                    "world_size": world,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
                    "rng": rng_states,
                    "losses": losses,
                    "wall_time_s": wall_time,
                    "best": best,
                },
            )
        accelerator.wait_for_everyone()

    log = _MetricsLog(out, step if saved is not None else None) if main else None

    def evaluate() -> dict[str, float]:
        nonlocal best
        metrics: dict[str, float] = {}
        if main:
            model.eval()
            with torch.inference_mode():
                metrics = {k: float(v) for k, v in task.evaluate(model).items()}
            model.train()
            if metrics:
                log.write(step, "val", metrics)
            key = task.best_metric
            if key is not None and key in metrics:
                if best is None or _improved(metrics[key], best["value"], task.best_mode):
                    best = {"step": step, "metric": key, "value": metrics[key]}
                    save_best = True
                else:
                    save_best = False
            else:
                save_best = False
        else:
            save_best = False
        flags = broadcast_object_list([save_best, best]) if world > 1 else [save_best, best]
        save_best, best = flags
        if save_best:
            save(out / BEST_DIR_NAME / CHECKPOINT_NAME)
            if main:
                task.save_artifact(model, out / BEST_DIR_NAME)
                write_json_atomic(out / BEST_DIR_NAME / "best.json", best, indent=2)
        return metrics

    sampler = StepBatchSampler(
        start_step=step,
        steps=config.steps,
        seed=config.seed,
        batch_size=config.batch_size,
        dataset_size=len(dataset),
        sampling=getattr(task, "sampling", "epoch"),
        rank=rank,
        world_size=world,
        grad_accum=config.grad_accum,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=task.collate,
        num_workers=config.num_workers,
        worker_init_fn=_ignore_stop_signals if config.num_workers else None,
        # Its own generator: starting an iterator must not draw from the global RNG, or a
        # resumed run's dropout masks would shift by one draw.
        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + step),
    )
    batches = iter(loader)
    trainable = [p for p in model.parameters() if p.requires_grad]
    after_step = getattr(task, "after_step", None)
    bar = tqdm(
        total=config.steps, initial=step, desc=task.name, disable=not (main and config.progress)
    )
    window: list[dict[str, float]] = []
    window_started = time.perf_counter()
    model.train()
    while step < config.steps:
        tic = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64)
        extras: dict[str, float] = {}
        for micro in range(config.grad_accum):
            batch = send_to_device(next(batches), accelerator.device)
            last = micro == config.grad_accum - 1
            with nullcontext() if last else accelerator.no_sync(wrapped):
                loss, numbers = wrapped(batch)
                accelerator.backward(loss)
            total += loss.detach().double().cpu() / config.grad_accum
            for key, value in numbers.items():
                extras[key] = extras.get(key, 0.0) + float(value) / config.grad_accum
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        if not optimizer.step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(model)
        # One collective a step: the mean loss and extras over ranks, and whether to stop.
        keys = sorted(extras)
        summary = torch.tensor(
            [float(total), *(extras[k] for k in keys), float(stop.signal is not None)],
            dtype=torch.float64,
        )
        if world > 1:
            summary = accelerator.reduce(summary.to(accelerator.device), "sum").cpu()
        step += 1
        wall_time += time.perf_counter() - tic
        mean_loss = float(summary[0]) / world
        losses.append(mean_loss)
        window.append(
            {"loss": mean_loss, **{k: float(summary[1 + i]) / world for i, k in enumerate(keys)}}
        )
        stopping = float(summary[-1]) > 0
        lr = scheduler.get_last_lr()[0]
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if main and (step % config.log_every == 0 or step == config.steps or stopping):
            seconds = time.perf_counter() - window_started
            numbers = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            rate = len(window) / seconds if seconds > 0 else 0.0
            log.write(step, "train", {**numbers, "lr": lr, "steps_per_s": round(rate, 4)})
            window, window_started = [], time.perf_counter()
        if config.eval_every and step % config.eval_every == 0 and step < config.steps:
            evaluate()
        if step % config.checkpoint_every == 0 or step == config.steps or stopping:
            save(checkpoint_path)
        if stopping:
            bar.close()
            if log is not None:
                log.close()
            if main:
                print(
                    f"refseg: stopped by signal {stop.signal}; checkpoint of step {step} in "
                    f"{checkpoint_path}; continue with --resume",
                    file=sys.stderr,
                )
            raise TrainingInterrupted
    bar.close()
    final_metrics = evaluate()

    record: dict[str, Any] | None = None
    if main:
        task.save_artifact(model, out)
        tail = losses[-min(len(losses), 20) :]
        record = {
            "command": config.command,
            "task": task.name,
            "seed": config.seed,
            "refseg_git_commit": commit,
            "torch_version": torch.__version__,
            "accelerate_version": accelerate_version(),
            "world_size": world,
            "device": accelerator.device.type,
            "mixed_precision": config.mixed_precision,
            "threads": torch.get_num_threads(),
            "steps": config.steps,
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "wall_time_s": round(wall_time, 1),
            "wall_time_note": "seconds in training steps (all runs if resumed); this invocation "
            "incl. data preparation and evaluation: see process_wall_time_s",
            "process_wall_time_s": round(time.perf_counter() - started, 1),
            "steps_per_s": round(config.steps / wall_time, 3) if wall_time > 0 else None,
            "first_loss": round(losses[0], 4) if losses else None,
            "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
            "final_loss_note": f"mean training loss of the last {len(tail)} steps",
            "evaluation": {k: round(v, 4) for k, v in final_metrics.items()},
            "best": best,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in trainable),
            "loop": {k: getattr(config, k) for k in _RECORDED_LOOP_KEYS},
            **checkpoint.plain(task.record()),
        }
        write_json_atomic(out / TRAINING_RECORD_NAME, checkpoint.plain(record), indent=2)
        log.close()
    if world > 1:
        record = broadcast_object_list([record])[0]
    accelerator.wait_for_everyone()
    return TrainResult(model, checkpoint.plain(record), out, main)


_RECORDED_LOOP_KEYS = (
    "steps",
    "batch_size",
    "grad_accum",
    "seed",
    "mixed_precision",
    "checkpoint_every",
    "eval_every",
    "log_every",
    "max_grad_norm",
    "threads",
    "deterministic",
    "num_workers",
)


def accelerate_version() -> str:
    from importlib.metadata import version

    return version("accelerate")


def gather_object(obj: list[Any]) -> list[Any]:
    """Every rank's ``obj`` list, concatenated in rank order (accelerate's helper)."""
    from accelerate.utils import gather_object as gather

    return gather(obj)


def broadcast_object_list(objects: list[Any]) -> list[Any]:
    """Rank 0's ``objects`` on every rank (accelerate's helper)."""
    from accelerate.utils import broadcast_object_list as broadcast

    return broadcast(objects)
