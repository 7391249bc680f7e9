"""Random baseline: one proposal chosen uniformly, reproducibly.

Each (image, expression) pair gets its own generator, seeded from a SHA-256 of the image key
(or, without a key, the preprocessed pixels) and the expression, so a run gives the same
answers in any order, process or batch. The scores are i.i.d. uniform on ``[0, 1)``: their
argmax is uniform over the proposals.
"""

from __future__ import annotations

import hashlib

import torch

from refseg.clip.loaded import LoadedClip
from refseg.methods.base import ImageContext, Method, TextBatch
from refseg.methods.baselines import no_proposals
from refseg.methods.global_local import GlobalLocalConfig


def image_digest(context: ImageContext) -> bytes:
    """What identifies the image: its key when it has one, else its preprocessed pixels."""
    if context.key is not None:
        return b"key:" + repr(context.key).encode()
    pixels = context.pixels.detach().cpu().contiguous()
    return b"pixels:" + hashlib.sha256(pixels.numpy().tobytes()).digest()


def seed_for(image: bytes, text: str) -> int:
    """A 63-bit seed for one (image, expression) pair."""
    digest = hashlib.sha256(image + b"\0" + text.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RandomMethod(Method):
    """Uniform random scores, seeded by image and expression."""

    name = "random"

    def scores(
        self, clip: LoadedClip, context: ImageContext, text: TextBatch, params: GlobalLocalConfig
    ) -> torch.Tensor:
        num = len(context.proposals)
        if num == 0:
            return no_proposals(text)
        image = image_digest(context)
        rows = []
        for sentence in text.texts:
            generator = torch.Generator().manual_seed(seed_for(image, sentence))
            rows.append(torch.rand(num, generator=generator))
        return torch.stack(rows)
