"""Bounded load test of ``refseg serve`` on loopback.

Starts ``refseg serve`` in a subprocess (a tiny random CLIP written to a temporary
directory, or ``--clip NAME``), sends ``--requests`` requests from ``--clients`` concurrent
httpx clients over a few synthetic images and expressions, prints the error count and
latency percentiles, and stops the server. Everything is bounded by ``--budget`` seconds.

    python benchmarks/serve_load.py                       # tiny model, 200 requests, 8 clients
    python benchmarks/serve_load.py --clip shapes-vit     # the shipped offline model
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

EXPRESSIONS = [
    "the red circle",
    "the blue square on the right",
    "the green bar at the bottom",
    "the small yellow triangle",
    "the big shape on the left",
]


def tiny_clip_dir(directory: Path) -> Path:
    """A random-weight ViT CLIP (64 px, 3 blocks) with a BPE learnt on EXPRESSIONS."""
    import torch

    from refseg.clip import CLIP, CLIPConfig, TextConfig, VisionConfig, save_clip
    from refseg.clip.config import PreprocessConfig
    from refseg.train.tokenizer import train_clip_tokenizer

    tokenizer = train_clip_tokenizer(EXPRESSIONS * 10, vocab_size=600, context_length=16)
    config = CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=64, layers=3, width=64, heads=2, patch_size=16),
        text=TextConfig(
            context_length=16, vocab_size=tokenizer.vocab_size, width=32, heads=2, layers=2
        ),
        preprocess=PreprocessConfig(image_size=64),
    )
    torch.manual_seed(0)
    return save_clip(CLIP(config).eval(), tokenizer, directory / "tiny-vit")


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A PNG of a few flat shapes on a noisy background."""
    rng = np.random.default_rng(seed)
    width, height = size
    ground = rng.integers(100, 140) + rng.integers(-10, 10, (height, width, 3))
    image = Image.fromarray(ground.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for colour in [(220, 30, 30), (30, 60, 220), (40, 170, 60), (230, 210, 40)]:
        x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        side = int(rng.integers(30, 60))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + side, y + side), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(clip: str, proposals: str, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "refseg.cli", "serve", "--clip", clip, "--proposals", proposals,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, start_new_session=True)


def wait_ready(url: str, server: subprocess.Popen, deadline: float) -> dict:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            reply = httpx.get(url + "/health", timeout=2)
            if reply.status_code == 200:
                return reply.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit("the server did not become ready in time")


async def load(url: str, jobs: list[tuple[bytes, str]], clients: int, deadline: float):
    """Run ``jobs`` with ``clients`` workers; returns [(seconds, status or error name)]."""
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    records: list[tuple[float, str]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            image, text = queue.get_nowait()
            start = time.perf_counter()
            try:
                reply = await client.post(
                    url + "/segment",
                    files={"image": ("scene.png", image, "image/png")},
                    data={"text": [text]},
                )
                outcome = str(reply.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            records.append((time.perf_counter() - start, outcome))

    timeout = httpx.Timeout(max(1.0, deadline - time.monotonic()))
    async with httpx.AsyncClient(timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return records


def report(records: list[tuple[float, str]], wall: float, requested: int, health: dict) -> int:
    latencies = np.array([seconds for seconds, _ in records]) * 1000
    outcomes = Counter(outcome for _, outcome in records)
    errors = sum(n for outcome, n in outcomes.items() if outcome != "200")
    print(f"requests: {len(records)} of {requested} in {wall:.1f} s ({len(records) / wall:.1f}/s)")
    print(f"errors:   {errors}  {dict(outcomes)}")
    if len(latencies):
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"latency:  p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {latencies.max():.0f} ms")
    cache = health.get("cache", {})
    print(f"cache:    {cache.get('hits')} hits, {cache.get('misses')} misses")
    return 1 if errors or len(records) < requested else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", help="CLIP name or path (default: a tiny random model)")
    parser.add_argument("--proposals", default="superpixel")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=4, help="distinct images")
    parser.add_argument("--budget", type=float, default=300, help="stop after this many seconds")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    rng = random.Random(0)
    images = [scene(seed) for seed in range(args.images)]
    jobs = [(rng.choice(images), rng.choice(EXPRESSIONS)) for _ in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip or str(tiny_clip_dir(Path(tmp)))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(clip, args.proposals, port)
        try:
            started = time.monotonic()
            health = wait_ready(url, server, deadline)
            print(
                f"server:   {health['model']} on {health['device']}, proposals "
                f"{health['proposals']}, ready in {time.monotonic() - started:.1f} s"
            )
            print(
                f"load:     {args.requests} requests, {args.clients} clients, "
                f"{args.images} images x {len(EXPRESSIONS)} expressions"
            )
            start = time.monotonic()
            records = asyncio.run(load(url, jobs, args.clients, deadline))
            wall = time.monotonic() - start
            health = httpx.get(url + "/health", timeout=5).json()
        finally:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    return report(records, wall, args.requests, health)


if __name__ == "__main__":
    sys.exit(main())
