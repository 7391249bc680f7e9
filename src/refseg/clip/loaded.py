"""A loaded CLIP: model, tokenizer and preprocessing together, ready to encode."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from refseg.clip.config import CLIPConfig
from refseg.clip.model import CLIP
from refseg.clip.preprocess import preprocess as preprocess_image
from refseg.clip.tokenizer import ClipTokenizer


class LoadedClip:
    """What :func:`refseg.clip.load_clip` returns.

    ``model`` is the :class:`CLIP` module with all the hook methods; the methods here move
    inputs to the model's device and dtype and return its outputs unchanged.
    """

    def __init__(self, model: CLIP, tokenizer: ClipTokenizer, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    @property
    def config(self) -> CLIPConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.text_projection.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``int64 [B, context_length]`` on the CPU."""
        return self.tokenizer(texts)

    def preprocess(self, image: Image.Image, mode: str | None = None) -> torch.Tensor:
        """RGB image -> ``float32 [3, S, S]`` (CPU); ``mode`` overrides the resize mode."""
        return preprocess_image(image, self.config.preprocess, mode)

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(device=self.device, dtype=self.dtype)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> ``[B, D]`` (not normalised)."""
        return self.model.encode_image(self.to_model(pixels))

    def trim_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Drop the columns after the batch's last end-of-text token: attention is causal and
        the feature is read at end-of-text, so the features are the same, for a fraction of
        the work on short sentences."""
        is_eot = token_ids == self.tokenizer.eot_id
        if is_eot.any(dim=1).all():
            length = int(is_eot.int().argmax(dim=1).max()) + 1
            token_ids = token_ids[:, :length]
        return token_ids

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``int64 [B, L]`` -> ``[B, D]`` (not normalised), on :meth:`trim_tokens`' columns."""
        token_ids = self.trim_tokens(token_ids)
        return self.model.encode_text(token_ids.to(self.device), self.tokenizer.eot_id)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenise and encode: ``len(texts)`` sentences -> ``[B, D]``."""
        return self.encode_text(self.tokenize(texts))
