"""The one training loop: N ranks train as one, SIGTERM + resume is exact, sampling, best
checkpoint, logs, options. Ranks are forked CPU processes in a gloo group (support/ranks.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from refseg.cli import build_parser
from refseg.errors import CheckpointFormatError, InputError
from refseg.train.contrastive import ContrastiveConfig, ContrastiveTask
from refseg.train.loop import LoopConfig, TrainingInterrupted, train
from refseg.train.sampling import global_batch_indices, rank_micro_batches
from support.ranks import run_ranks
from support.tiny_train import TinyRegression
from test_train import stand_in_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def loop(out: Path, **options) -> LoopConfig:
    return LoopConfig(
        **{"out_dir": out, "steps": 6, "batch_size": 16, "threads": 1, "progress": False,
           **options}
    )


def clip_task() -> ContrastiveTask:
    config = ContrastiveConfig(
        preset="tiny-vit", steps=4, batch_size=8, lr=2e-3, warmup_steps=0, pool_size=24,
        held_out_size=8,
    )
    return ContrastiveTask(config, pair_source=stand_in_pairs, evaluate_crops=False,
                           progress=False)


def save_final(result, path: Path) -> None:
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, path)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def without_key_biases(state: dict) -> dict:
    """Attention's key bias gets an exactly-zero gradient (softmax ignores a constant per
    query), so AdamW turns its rounding noise into +-lr steps: leave it out of comparisons."""
    state = dict(state)
    for name, value in state.items():
        if name.endswith("attn.in_proj_bias"):
            third = len(value) // 3
            state[name] = torch.cat([value[:third], value[2 * third :]])
    return state


def _train_three_ways(rank: int, out: Path) -> None:
    regression = train(TinyRegression(), loop(out / "regression"))
    save_final(regression, out / f"regression.{rank}.pt")
    accumulated = train(TinyRegression(), loop(out / "accumulated", grad_accum=2))
    save_final(accumulated, out / f"accumulated.{rank}.pt")
    task = clip_task()
    contrastive = train(task, loop(out / "clip", steps=4, batch_size=8))
    save_final(contrastive, out / f"clip.{rank}.pt")


def test_two_ranks_train_as_one_rank_with_twice_the_batch(tmp_path):
    # one process, global batch 16 (and 8 for CLIP) ...
    single = tmp_path / "single"
    _train_three_ways(0, single)
    # ... equals two processes with 8 (4) each, with and without gradient accumulation
    run_ranks(_train_three_ways, 2, tmp_path / "ddp")
    for name in ("regression", "accumulated", "clip"):
        one = torch.load(single / f"{name}.0.pt")
        rank0, rank1 = (torch.load(tmp_path / "ddp" / f"{name}.{r}.pt") for r in (0, 1))
        assert max_diff(rank0, rank1) == 0.0, name  # DDP keeps replicas identical
        assert max_diff(without_key_biases(one), without_key_biases(rank0)) < 1e-5, name
    torch.manual_seed(0)  # the loop seeds so before build_model: the initial weights
    init = TinyRegression().build_model().state_dict()
    assert max_diff(init, torch.load(single / "regression.0.pt")) > 1e-2  # it did train
    records = [json.loads((d / "regression" / "TRAINING.json").read_text())
               for d in (single, tmp_path / "ddp")]
    assert [r["world_size"] for r in records] == [1, 2]
    assert records[0]["final_loss"] == pytest.approx(records[1]["final_loss"], abs=1e-5)


def _sigterm_run(rank: int, out: Path, kill_at, resume: bool) -> None:
    task = TinyRegression(dropout=0.3, kill_at=kill_at)
    config = loop(out, steps=8, checkpoint_every=100, log_every=1, resume=resume)
    try:
        result = train(task, config)
    except TrainingInterrupted:
        return
    save_final(result, out / f"final.{rank}.pt")


@pytest.mark.parametrize("world", [1, 2])
def test_sigterm_then_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, world):
    def launch(*args):
        if world == 1:
            _sigterm_run(0, *args)
        else:
            run_ranks(_sigterm_run, world, *args)

    launch(tmp_path / "full", None, False)
    # the last rank signals itself during step 4 (call 4): that step ends, all ranks stop
    launch(tmp_path / "cut", (world - 1, 4), False)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and len(state["rng"]) == world
    assert not (tmp_path / "cut" / "final.0.pt").exists()
    launch(tmp_path / "cut", None, True)
    for rank in range(world):
        full = torch.load(tmp_path / "full" / f"final.{rank}.pt")
        resumed = torch.load(tmp_path / "cut" / f"final.{rank}.pt")
        assert all(torch.equal(full[k], resumed[k]) for k in full)
    log = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    steps = [entry["step"] for entry in log if entry["split"] == "train"]
    assert steps == list(range(1, 9))  # nothing logged twice
    full_log = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    assert [e["loss"] for e in log if e["split"] == "train"] == [
        e["loss"] for e in full_log if e["split"] == "train"
    ]


def test_without_the_rng_states_dropout_would_differ(tmp_path):
    # the resume test above can fail: a fresh RNG after resuming changes the weights
    _sigterm_run(0, tmp_path / "full", None, False)
    _sigterm_run(0, tmp_path / "cut", (0, 4), False)
    path = tmp_path / "cut" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["rng"][0]["torch"] = torch.manual_seed(99).get_state()
    torch.save(state, path)
    _sigterm_run(0, tmp_path / "cut", None, True)
    full, resumed = (torch.load(tmp_path / d / "final.0.pt") for d in ("full", "cut"))
    assert not all(torch.equal(full[k], resumed[k]) for k in full)


def test_epoch_sampling_sees_every_row_once_and_ranks_split_each_batch():
    rows = torch.cat([
        global_batch_indices(s, seed=3, batch_size=8, dataset_size=26, sampling="epoch")
        for s in range(3)
    ])
    assert sorted(rows.tolist()) == sorted(set(rows.tolist())) and len(rows) == 24
    nxt = global_batch_indices(3, seed=3, batch_size=8, dataset_size=26, sampling="epoch")
    assert not torch.equal(nxt, rows[:8])  # a new permutation in the next epoch
    batch = global_batch_indices(5, seed=0, batch_size=12, dataset_size=40, sampling="step")
    shares = [rank_micro_batches(batch, rank=r, world_size=3, grad_accum=2) for r in range(3)]
    assert [len(m) for s in shares for m in s] == [2] * 6
    for micro in range(2):  # micro-batch m of every rank, in rank order, is the m-th sixth
        joined = [i for r in range(3) for i in shares[r][micro]]
        assert joined == batch[micro * 6 : (micro + 1) * 6].tolist()


def test_best_checkpoint_and_metrics_log(tmp_path):
    result = train(TinyRegression(), loop(tmp_path, steps=12, eval_every=3, log_every=4))
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    val = {e["step"]: e["val_mse"] for e in log if e["split"] == "val"}
    assert sorted(val) == [3, 6, 9, 12]
    assert [e["step"] for e in log if e["split"] == "train"] == [4, 8, 12]
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["value"] == min(val.values()) and val[best["step"]] == best["value"]
    assert torch.load(tmp_path / "best" / "checkpoint.pt", weights_only=True)["step"] == best[
        "step"
    ]
    assert result.record["evaluation"]["val_mse"] == round(val[12], 4)
    assert result.record["best"] == best


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(InputError, match="multiple"):
        train(TinyRegression(), loop(tmp_path / "a", batch_size=10, grad_accum=3))
    with pytest.raises(InputError, match="mixed_precision"):
        train(TinyRegression(), loop(tmp_path / "b", mixed_precision="fp8"))
    train(TinyRegression(), loop(tmp_path / "c", steps=2))
    with pytest.raises(CheckpointFormatError, match="batch_size"):
        train(TinyRegression(), loop(tmp_path / "c", steps=2, batch_size=8, resume=True))


def test_train_clip_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "clip", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text[text.index("options:") : text.index("presets (")]
    # "--name METAVAR help..." up to the next option
    entries = dict(re.findall(r"(--[a-z-]+) (?:N|LR|\{[a-z0-9,-]+\}) (.*?)(?= --[a-z-]+ |$)",
                              options))
    expected = {"--steps", "--batch-size", "--grad-accum", "--seed", "--mixed-precision",
                "--checkpoint-every", "--eval-every", "--log-every", "--max-grad-norm",
                "--threads", "--num-workers", "--lr", "--warmup-steps", "--pool-size",
                "--held-out-size"}
    assert expected <= set(entries)
    for option in expected:
        assert "(default:" in entries[option], option
    assert "shapes-vit 700 64 1e-03 70" in text  # the presets table
    assert "torchrun --nproc_per_node 2" in text


def test_sigterm_to_the_whole_job_with_loader_workers_still_checkpoints(tmp_path):
    """A scheduler signals every process of a job (here: the process group). DataLoader
    workers ignore it, so the training process finishes its step and writes the checkpoint
    instead of crashing on a dead worker."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "refseg", "train", "clip", "--preset", "tiny-vit",
               "--out", str(out), "--threads", "1", "--num-workers", "1", "--steps", "2000",
               "--on-the-fly", "--log-every", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, env=env, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        log = out / "metrics.jsonl"
        while not (log.is_file() and log.read_text().count("\n") >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)  # the training process and its worker
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "stopped by signal 15" in output, output
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 2 <= state["step"] < 2000
