"""Segmentation methods, reachable by name (``Segmenter(method=...)``, ``--method``)."""

from refseg.methods.base import (
    ImageContext,
    Method,
    TextBatch,
    available_methods,
    register_method,
    resolve_method,
)
from refseg.methods.global_local import ALPHA_BY_DATASET, GlobalLocalConfig
from refseg.methods.global_local_method import GlobalLocalMethod

register_method(
    "global-local", GlobalLocalMethod, "the paper: global and local context, sentence + phrase"
)
register_method("global-only", GlobalLocalMethod, "global-context visual feature only", alpha=1.0)
register_method(
    "local-only",
    GlobalLocalMethod,
    "masked crop through CLIP only (the cropping baseline)",
    alpha=0.0,
)
register_method("cropping", GlobalLocalMethod, "alias of local-only", alpha=0.0)
register_method("sentence-only", GlobalLocalMethod, "whole-sentence text feature only", beta=1.0)
register_method("phrase-only", GlobalLocalMethod, "target noun phrase text feature only", beta=0.0)

__all__ = [
    "ALPHA_BY_DATASET",
    "GlobalLocalConfig",
    "GlobalLocalMethod",
    "ImageContext",
    "Method",
    "TextBatch",
    "available_methods",
    "register_method",
    "resolve_method",
]
