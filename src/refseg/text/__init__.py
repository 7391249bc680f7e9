"""Text processing for referring expressions: the target noun phrase NP(T) (SPEC §1.5)."""

from refseg.text.phrases import (
    DEFAULT_PIPELINES,
    FALLBACKS,
    PhraseExtractor,
    find_pipeline,
    load_pipeline,
    select_phrase,
)

__all__ = [
    "DEFAULT_PIPELINES",
    "FALLBACKS",
    "PhraseExtractor",
    "find_pipeline",
    "load_pipeline",
    "select_phrase",
]
