"""CLIP's BPE tokenizer: ids identical to transformers', special tokens, padding, truncation."""

from __future__ import annotations

import pytest
import torch

from refseg.clip import ClipTokenizer, build_bpe_tokenizer
from refseg.errors import CheckpointFormatError, CheckpointNotFoundError

SENTENCES = [
    "the cat lying on the scooter seat",
    "The Cat LYING on the Scooter!",
    "a man in a red shirt, holding 2 umbrellas...",
    "giraffe's head; they're left, we've seen it, I'm sure you'd agree, it'll go",
    "bowl #3 at 10:30 (far right) -- 42%",
    "  spaces   and\ttabs\nand newlines  ",
    "café naïve façade",
    "emoji 🐱 and ‘curly quotes’",
    "",
]


@pytest.fixture
def tokenizer77(tiny_bpe) -> ClipTokenizer:
    vocab, merges = tiny_bpe
    return ClipTokenizer(build_bpe_tokenizer(vocab, merges), context_length=77)


def test_ids_match_transformers_clip_tokenizer(tmp_path, tiny_bpe, write_tokenizer_files):
    from transformers import CLIPTokenizer

    directory = write_tokenizer_files(tmp_path / "tok", "vocab+merges")
    hf = CLIPTokenizer.from_pretrained(str(directory))
    ours_files = ClipTokenizer.from_directory(directory, 77)
    ours_built = ClipTokenizer(build_bpe_tokenizer(*tiny_bpe), 77)
    hf.save_pretrained(tmp_path / "hf_saved")  # transformers' own tokenizer.json
    ours_hf_json = ClipTokenizer.from_directory(tmp_path / "hf_saved", 77)
    assert (hf.bos_token_id, hf.eos_token_id) == (ours_files.sot_id, ours_files.eot_id)
    for sentence in SENTENCES:
        expected = hf(sentence)["input_ids"]
        assert len(expected) > 2 or sentence == ""
        for ours in (ours_files, ours_built, ours_hf_json):
            row = ours(sentence)[0].tolist()
            assert row[: len(expected)] == expected, sentence
            assert row[len(expected) :] == [ours.pad_id] * (77 - len(expected))


def test_tokenizer_json_and_vocab_merges_agree(tmp_path, write_tokenizer_files):
    json_dir = write_tokenizer_files(tmp_path / "json", "tokenizer.json")
    vm_dir = write_tokenizer_files(tmp_path / "vm", "vocab+merges")
    a = ClipTokenizer.from_directory(json_dir)
    b = ClipTokenizer.from_directory(vm_dir)
    assert torch.equal(a(SENTENCES), b(SENTENCES))
    assert a.vocab_size == b.vocab_size


def test_padding_and_truncation_stored_in_tokenizer_json_are_ignored(tmp_path, tiny_bpe):
    vocab, merges = tiny_bpe
    stored = build_bpe_tokenizer(vocab, merges)
    stored.enable_padding(length=77, pad_id=0, pad_token="!")
    stored.enable_truncation(max_length=77)
    stored.save(str(tmp_path / "tokenizer.json"))
    loaded = ClipTokenizer.from_file(tmp_path / "tokenizer.json")
    plain = ClipTokenizer(build_bpe_tokenizer(vocab, merges))
    assert torch.equal(loaded(SENTENCES), plain(SENTENCES))
    assert not loaded.truncated("a cat")
    long = "the cat on the left " * 60
    assert loaded.token_ids(long) == plain.token_ids(long) and loaded.truncated(long)


def test_rows_are_sot_ids_eot_then_padding(tokenizer77):
    ids = tokenizer77(["a cat", "the giraffe on the far left"])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    for row in ids:
        end = int((row == tokenizer77.eot_id).nonzero()[0])
        assert row[0] == tokenizer77.sot_id
        assert (row[1:end] != tokenizer77.eot_id).all() and (row[1:end] != tokenizer77.sot_id).all()
        assert (row[end + 1 :] == tokenizer77.pad_id).all()
    assert (ids[0] == tokenizer77.eot_id).nonzero()[0] < (ids[1] == tokenizer77.eot_id).nonzero()[0]


def test_single_string_gives_one_row(tokenizer77):
    assert torch.equal(tokenizer77("a cat"), tokenizer77(["a cat"]))


def test_empty_string_is_sot_eot(tokenizer77):
    row = tokenizer77("")[0]
    assert row[:2].tolist() == [tokenizer77.sot_id, tokenizer77.eot_id]
    assert (row[2:] == tokenizer77.pad_id).all()


def test_lower_cases_and_squeezes_whitespace(tokenizer77):
    assert torch.equal(tokenizer77("The CAT On The Left"), tokenizer77("the cat on the left"))
    assert torch.equal(tokenizer77("the   cat\t on\nthe left"), tokenizer77("the cat on the left"))
    assert not torch.equal(tokenizer77("the cat"), tokenizer77("the bat"))


def test_every_character_is_encodable(tokenizer77):
    """Byte-level BPE: unseen characters become byte tokens, never the unknown token."""
    ids = tokenizer77.token_ids("emoji 🐱 façade")
    assert len(ids) > 5 and tokenizer77.eot_id not in ids


def test_truncation_keeps_eot_last(tokenizer77):
    long = "the cat on the left " * 60
    assert len(tokenizer77.token_ids(long)) > 75
    row = tokenizer77(long)[0]
    assert row[0] == tokenizer77.sot_id and row[76] == tokenizer77.eot_id
    assert (row[1:76] != tokenizer77.pad_id).all()
    assert row[1:76].tolist() == tokenizer77.token_ids(long)[:75]
    assert tokenizer77.truncated(long)
    assert not tokenizer77.truncated("the cat on the left")


def test_truncated_boundary_is_exact(tokenizer77):
    """Digits are one token each: 75 fit between SOT and EOT, 76 do not."""
    fits, cut = "1 " * 75, "1 " * 76
    assert len(tokenizer77.token_ids(fits)) == 75
    assert not tokenizer77.truncated(fits) and tokenizer77.truncated(cut)
    assert tokenizer77(fits)[0, 76] == tokenizer77.eot_id
    assert torch.equal(tokenizer77(fits), tokenizer77(cut))


def test_context_length_is_respected(tiny_tokenizer):
    ids = tiny_tokenizer(["the cat on the left " * 5])
    assert ids.shape == (1, 16) and ids[0, 15] == tiny_tokenizer.eot_id


def test_missing_tokenizer_files_raise_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="tokenizer.json or vocab.json"):
        ClipTokenizer.from_directory(tmp_path)


def test_corrupt_tokenizer_json_raises_format_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="cannot read tokenizer file"):
        ClipTokenizer.from_file(path)


def test_vocabulary_without_special_tokens_is_rejected():
    vocab = {"a": 0, "b": 1, "a</w>": 2, "b</w>": 3}
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    bare = Tokenizer(BPE(vocab=vocab, merges=[], end_of_word_suffix="</w>"))
    with pytest.raises(CheckpointFormatError, match="<\\|startoftext\\|>"):
        ClipTokenizer(bare)
