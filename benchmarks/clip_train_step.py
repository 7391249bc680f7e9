"""CPU time of one NegCLIP training step of the ShapesRef CLIP presets, to size a run.

One step = encode a batch of images and its captions plus their hard negatives, the NegCLIP
loss (:func:`refseg.train.negatives_loss.negclip_loss`), backward and AdamW, in fp32. The
batch is real: ``--batch`` training pairs of ShapesRef (seed 0; scenes with position
captions, crops) with up to ``--negatives`` hard negatives per scene caption
(:func:`refseg.data.shapes.negatives.hard_negatives`), tokenised with the shipped
``shapes-vit`` tokenizer and trimmed to the batch's longest text, as training does. Weights
are random (speed does not depend on them).

Prints, per preset: parameters, median seconds per step over ``--repeats`` steps after one
warm-up, wall-clock and CPU per thread (on a shared machine the CPU figure is what an idle
machine would take), and steps per hour at the CPU rate.

Usage: ``python benchmarks/clip_train_step.py [--threads 1] [--batch 64] [--negatives 2]
[--presets shapes-vit shapes-vit-224]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from refseg.clip import CLIP, load_clip
from refseg.clip.preprocess import resize_for_clip
from refseg.data.shapes.captions import training_pair
from refseg.data.shapes.negatives import hard_negatives
from refseg.train import PRESETS
from refseg.train.contrastive import pixels_from_uint8, trim_tokens
from refseg.train.negatives_loss import negclip_loss


def real_batch(batch: int, negatives: int) -> tuple[list, list[str], list[str]]:
    """``batch`` training pairs (images, captions) and their hard negatives' texts."""
    images, captions, negative_texts = [], [], []
    rng = np.random.default_rng(0)
    for index in range(batch):
        pair = training_pair(0, index, positions=True)
        images.append(pair.image)
        captions.append(pair.caption)
        if pair.crop is None:
            found = hard_negatives(pair.caption, pair.scene, rng, limit=negatives)
            negative_texts += [n.text for n in found]
    return images, captions, negative_texts


def train_step(
    model: CLIP,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    negative_tokens: torch.Tensor | None,
    eot_id: int,
) -> None:
    """One NegCLIP optimiser step (forward, loss, backward, AdamW)."""
    image = model.encode_image(pixels)
    text = model.encode_text(tokens, eot_id)
    negative = text[:0] if negative_tokens is None else model.encode_text(negative_tokens, eot_id)
    loss = negclip_loss(image, text, negative, model.logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=2, help="per scene caption, at most")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--presets", nargs="+", default=["shapes-vit", "shapes-rn", "shapes-vit-224"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_clip("shapes-vit", device="cpu").tokenizer
    images, captions, negative_texts = real_batch(args.batch, args.negatives)
    tokens = trim_tokens(tokenizer(captions))
    negative_tokens = trim_tokens(tokenizer(negative_texts)) if negative_texts else None
    print(
        f"batch {args.batch}: {len(negative_texts)} hard negatives, captions "
        f"{tokens.shape[1]} tokens, {args.threads} thread(s)"
    )
    for name in args.presets:
        torch.manual_seed(0)
        model = CLIP(PRESETS[name](tokenizer.vocab_size, tokenizer.context_length))
        model.train()
        size = model.config.preprocess.image_size
        pixels = pixels_from_uint8(
            torch.stack(
                [torch.from_numpy(np.array(resize_for_clip(i, size, "squash"))) for i in images]
            ),
            model.config.preprocess,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = (pixels, tokens, negative_tokens, tokenizer.eot_id)
        train_step(model, optimizer, *batch)  # warm-up
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            train_step(model, optimizer, *batch)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        seconds = statistics.median(walls)
        cpu_seconds = statistics.median(cpus) / args.threads
        params = sum(p.numel() for p in model.parameters())
        grid = "x".join(str(s) for s in (size // model.config.vision.patch_size,) * 2)
        print(
            f"{name:<15} {params / 1e6:.2f} M parameters, {size} px"
            + (f" ({grid} patches)" if model.config.vision.is_vit else "")
            + f": {seconds:.2f} s/step wall, {cpu_seconds:.2f} s CPU per thread "
            f"(~{3600 / cpu_seconds:.0f} steps/hour on {args.threads} idle core(s))"
        )


if __name__ == "__main__":
    main()
