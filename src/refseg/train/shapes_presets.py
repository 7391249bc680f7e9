"""Bigger ShapesRef CLIP presets (issue #13): a finer patch grid for relations and for the
dense systems, in the ``(vocab_size, context_length) -> CLIPConfig`` form of
``refseg.train.contrastive.PRESETS``.

``shapes-vit-224``: 224 px input, 16 px patches, so a 14x14 grid (196 patch tokens instead
of ``shapes-vit``'s 7x7 = 49): a shape covers 1-3 patches a side (``ShapesConfig`` sizes are
8-27 % of the side) instead of 1-2, and where an object lies is read off its patches rather
than guessed from a mixed one. Width, depth and the text tower are ``shapes-vit``'s; the
larger grid costs only a longer positional embedding (+18 k parameters) but ~4x the
compute of a training step. ``python benchmarks/clip_train_step.py`` (batch 64 with 24 hard
negatives, 1 thread, CPU seconds per step on the shared 2-core machine): shapes-vit 1.1 s
(2.02 M parameters), shapes-rn 3.6 s (2.09 M), shapes-vit-224 4.1 s (2.04 M). Rendering a
training pair with its negatives costs another ~10 ms of CPU.
"""

from __future__ import annotations

from collections.abc import Callable

from refseg.clip.config import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig


def shapes_vit_224(vocab_size: int, context_length: int) -> CLIPConfig:
    """ViT 224 px / 16 px patches (14x14 grid), 6 layers of width 128, ~2.04 M parameters."""
    return CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=224, layers=6, width=128, heads=4, patch_size=16),
        # shapes-vit's text tower (contrastive._text_tower), so the two compare directly
        text=TextConfig(
            context_length=context_length, vocab_size=vocab_size, width=128, heads=4, layers=3
        ),
        preprocess=PreprocessConfig(image_size=224, resize_mode="squash"),
        quick_gelu=True,
    )


# To register with the trainer: ``PRESETS.update(BIGGER_PRESETS)``.
BIGGER_PRESETS: dict[str, Callable[[int, int], CLIPConfig]] = {
    "shapes-vit-224": shapes_vit_224,
}
