"""Training: one loop for every model kind (:mod:`refseg.train.loop`, on ``accelerate``) and
the contrastive task that trains the tiny CLIPs shipped with refseg."""

from refseg.train.contrastive import (
    PRESETS,
    ContrastiveConfig,
    ContrastiveResult,
    ContrastiveTask,
    contrastive_loss,
    train_contrastive,
)
from refseg.train.loop import (
    LoopConfig,
    TaskBase,
    TrainingInterrupted,
    TrainResult,
    TrainTask,
    gather_with_grad,
    train,
)
from refseg.train.tokenizer import train_bpe, train_clip_tokenizer

__all__ = [
    "PRESETS",
    "ContrastiveConfig",
    "ContrastiveResult",
    "ContrastiveTask",
    "LoopConfig",
    "TaskBase",
    "TrainResult",
    "TrainTask",
    "TrainingInterrupted",
    "contrastive_loss",
    "gather_with_grad",
    "train",
    "train_bpe",
    "train_clip_tokenizer",
    "train_contrastive",
]
