"""CLIP's byte-level BPE on the ``tokenizers`` library.

Normalisation (NFC, whitespace squeeze, lower-case), CLIP's split pattern, ``</w>`` word-end
suffix; ``<|startoftext|>`` / ``<|endoftext|>`` added here; truncation keeps the end token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from refseg.errors import CheckpointFormatError, CheckpointNotFoundError

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# CLIP's pre-tokenisation pattern (letters, single digits, punctuation runs, contractions).
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )


def clip_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def build_bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` with CLIP's pipeline around the given BPE vocabulary."""
    model = BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        unk_token=EOT_TOKEN,
        fuse_unk=False,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = clip_normalizer()
    tokenizer.pre_tokenizer = clip_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
    return tokenizer


class ClipTokenizer:
    """Turns sentences into ``[B, context_length]`` id tensors for :meth:`CLIP.encode_text`."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77, pad_id: int = 0) -> None:
        self._tokenizer = tokenizer
        # A tokenizer.json may carry its own padding/truncation; this class does both itself.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.context_length = context_length
        self.pad_id = pad_id
        self.sot_id = self._special_id(SOT_TOKEN)
        self.eot_id = self._special_id(EOT_TOKEN)

    def _special_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise CheckpointFormatError(f"the tokenizer vocabulary has no {token} token")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77) -> ClipTokenizer:
        """Load ``tokenizer.json`` (the HF fast-tokenizer file)."""
        try:
            return cls(Tokenizer.from_file(str(path)), context_length)
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise CheckpointFormatError(f"cannot read tokenizer file {path}: {exc}") from None

    @classmethod
    def from_vocab_merges(
        cls, vocab_path: str | Path, merges_path: str | Path, context_length: int = 77
    ) -> ClipTokenizer:
        """Load OpenAI/HF ``vocab.json`` + ``merges.txt``."""
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        merges = []
        for line in Path(merges_path).read_text(encoding="utf-8").splitlines():
            if line.startswith("#version") or not line.strip():
                continue
            left, right = line.split()
            merges.append((left, right))
        return cls(build_bpe_tokenizer(vocab, merges), context_length)

    @classmethod
    def from_directory(cls, directory: str | Path, context_length: int = 77) -> ClipTokenizer:
        """Load whichever tokenizer files a checkpoint directory holds."""
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            return cls.from_file(directory / "tokenizer.json", context_length)
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return cls.from_vocab_merges(
                directory / "vocab.json", directory / "merges.txt", context_length
            )
        raise CheckpointNotFoundError(
            f"no tokenizer in {directory}: expected tokenizer.json or vocab.json + merges.txt"
        )

    def save(self, path: str | Path) -> None:
        self._tokenizer.save(str(path))

    def token_ids(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenise ``texts`` into ``int64 [B, context_length]``.

        Each row is ``[SOT, ids..., EOT, pad...]``; sentences that do not fit are cut and keep
        their EOT (see :meth:`truncated` to detect that).
        """
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        budget = self.context_length - 2
        for row, encoding in enumerate(
            self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ):
            ids = [self.sot_id, *encoding.ids[:budget], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def truncated(self, text: str) -> bool:
        """Whether ``text`` is longer than the context allows (it will be cut)."""
        return len(self.token_ids(text)) > self.context_length - 2
