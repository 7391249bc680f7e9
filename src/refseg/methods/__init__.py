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
from refseg.methods.grad_cam import GradCamMethod
from refseg.methods.random_choice import RandomMethod
from refseg.methods.region_token import RegionTokenMethod
from refseg.methods.score_map import ScoreMapMethod

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
register_method(
    "score-map", ScoreMapMethod, "MaskCLIP dense patch-text cosine averaged in each mask"
)
register_method(
    "region-token", RegionTokenMethod, "a class token per mask attending only to its patches"
)
register_method(
    "grad-cam", GradCamMethod, "Grad-CAM of the image-text cosine averaged in each mask"
)
register_method("random", RandomMethod, "a mask chosen uniformly at random (seeded by image, text)")

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
