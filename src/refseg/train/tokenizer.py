"""Training a small byte-level BPE for a tiny CLIP, with CLIP's own text pipeline.

The result is a ``tokenizers.Tokenizer`` that :class:`refseg.clip.ClipTokenizer` loads from
``tokenizer.json`` like OpenAI's: same normaliser and split pattern, ``</w>`` word ends,
``<|startoftext|>`` / ``<|endoftext|>`` as the last two ids.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from refseg.clip.tokenizer import (
    EOT_TOKEN,
    SOT_TOKEN,
    ClipTokenizer,
    clip_normalizer,
    clip_pre_tokenizer,
)
from refseg.errors import InputError

# 256 byte symbols plus their "</w>" forms already take ~300 ids; a few hundred merges on top
# make every ShapesRef word a single token.
DEFAULT_VOCAB_SIZE = 768
DEFAULT_CONTEXT_LENGTH = 32  # ShapesRef captions are short; OpenAI CLIP uses 77


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Learn BPE merges on ``texts`` (sentences or single words); deterministic for its input.

    The byte alphabet is always included, so any text encodes (unseen words fall back to
    bytes). Special tokens are added after training, so they take the last two ids.
    """
    corpus = [text for text in texts if text.strip()]
    if not corpus:
        raise InputError("cannot train a tokenizer on no text: pass captions or words")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < 2 * len(alphabet) + 2:
        raise InputError(
            f"vocab_size {vocab_size} is too small: the byte alphabet and its word-end forms "
            f"need {2 * len(alphabet) + 2}"
        )
    tokenizer = Tokenizer(
        BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOT_TOKEN)
    )
    tokenizer.normalizer = clip_normalizer()
    tokenizer.pre_tokenizer = clip_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    # Every byte, alone and as a word end, so no text ever needs the unknown token.
    word_ends = [symbol + "</w>" for symbol in sorted(alphabet)]
    trainer = BpeTrainer(
        vocab_size=vocab_size - 2,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=alphabet,
        special_tokens=word_ends,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
    return tokenizer


def train_clip_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
) -> ClipTokenizer:
    """:func:`train_bpe` wrapped as the :class:`ClipTokenizer` the model is trained with."""
    return ClipTokenizer(train_bpe(texts, vocab_size), context_length)
