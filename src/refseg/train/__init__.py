"""Training: the tiny CLIPs shipped with refseg (contrastive) and their BPE tokenizer."""

from refseg.train.contrastive import (
    PRESETS,
    ContrastiveConfig,
    TrainResult,
    contrastive_loss,
    train_contrastive,
)
from refseg.train.tokenizer import train_bpe, train_clip_tokenizer

__all__ = [
    "PRESETS",
    "ContrastiveConfig",
    "TrainResult",
    "contrastive_loss",
    "train_bpe",
    "train_clip_tokenizer",
    "train_contrastive",
]
