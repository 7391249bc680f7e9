"""A tiny regression TrainTask and a command line for it, for the training-loop tests.

Run as ``python tests/support/tiny_train.py --out OUT [loop options]`` (alone or under
``torchrun``). ``--sleep S`` waits S seconds in every loss (so one can signal a run
mid-way); the final weights go to ``OUT/final.rankR.pt``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from refseg.train.loop import (
    TaskBase,
    TrainingInterrupted,
    add_loop_arguments,
    loop_config_from_args,
    train,
)


class TinyRegression(TaskBase):
    """y = tanh(x A) b + noise on 64 fixed samples, learnt by a small MLP.

    Args:
        dropout: makes the loss depend on the RNG (so resume must restore it).
        kill_at: ``(rank, call)``: that rank sends itself SIGTERM in that call of ``loss``.
    """

    name = "tiny-regression"
    best_metric = "val_mse"
    best_mode = "min"

    def __init__(
        self,
        samples: int = 64,
        *,
        dropout: float = 0.0,
        sleep: float = 0.0,
        kill_at: tuple[int, int] | None = None,
    ) -> None:
        generator = torch.Generator().manual_seed(1234)
        total = samples + 32
        self.x = torch.randn(total, 4, generator=generator)
        a, b = torch.randn(4, 6, generator=generator), torch.randn(6, 1, generator=generator)
        noise = 0.05 * torch.randn(total, 1, generator=generator)
        self.y = torch.tanh(self.x @ a) @ b + noise
        self.samples, self.dropout, self.sleep, self.kill_at = samples, dropout, sleep, kill_at
        self.calls = 0

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(4, 16),
            torch.nn.Tanh(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(16, 1),
        )

    def train_dataset(self) -> torch.utils.data.Dataset:
        return torch.utils.data.TensorDataset(self.x[: self.samples], self.y[: self.samples])

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        if self.kill_at == (int(os.environ.get("RANK", 0)), self.calls):
            os.kill(os.getpid(), signal.SIGTERM)
        if self.sleep:
            time.sleep(self.sleep)
        x, y = batch
        error = model(x) - y
        return (error**2).mean(), {"mae": float(error.detach().abs().mean())}

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.01)

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / (total_steps + 1))

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        x, y = self.x[self.samples :], self.y[self.samples :]
        return {"val_mse": float(((model(x) - y) ** 2).mean())}

    def record(self) -> dict[str, Any]:
        return {"samples": self.samples, "dropout": self.dropout}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    add_loop_arguments(parser, {"steps": 12, "batch_size": 8, "checkpoint_every": 4})
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    args = parser.parse_args(argv)
    config = loop_config_from_args(args, progress=False)
    try:
        result = train(TinyRegression(dropout=args.dropout, sleep=args.sleep), config)
    except TrainingInterrupted:
        return 130
    rank = int(os.environ.get("RANK", 0))
    torch.save(result.model.state_dict(), Path(args.out) / f"final.rank{rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
