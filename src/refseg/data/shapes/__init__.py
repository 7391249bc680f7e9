"""ShapesRef: a synthetic referring-expression world of coloured shapes.

Scenes of 2-6 shapes (7 categories, 7 colours, 3 sizes) on textured backgrounds, with
visible-pixel instance masks, unambiguous referring expressions of four kinds (attribute,
comparative, absolute, relational; each checked by evaluating its program against the scene),
captions and crops for training a tiny CLIP (with hard negatives checked false for their
scene, :mod:`.negatives`), and a writer in the ``refer`` layout.

Typical use::

    from refseg.data.shapes import write_shapesref, sample_training_pairs
    write_shapesref("data", seed=0, images=1000)
    for image, caption in sample_training_pairs(seed=0, n=10): ...
"""

from refseg.data.shapes.captions import (
    TrainingPair,
    caption_vocabulary,
    object_caption,
    sample_training_pairs,
    scene_captions,
    training_pair,
)
from refseg.data.shapes.config import ShapesConfig
from refseg.data.shapes.expressions import Expression, referring_expressions
from refseg.data.shapes.programs import (
    KINDS,
    AbsoluteProgram,
    AttributeProgram,
    ComparativeProgram,
    Filter,
    Program,
    RelationalProgram,
    evaluate,
    is_unambiguous,
    program_from_dict,
    program_to_dict,
    resolve,
)
from refseg.data.shapes.render import CROP_FILL, render_object_crop
from refseg.data.shapes.scene import Scene, ShapeObject, sample_scene, scene_rng
from refseg.data.shapes.words import COLORS, SHAPES
from refseg.data.shapes.writer import (
    ShapesRefSummary,
    generate_image,
    split_of,
    write_shapesref,
)

__all__ = [
    "COLORS",
    "CROP_FILL",
    "KINDS",
    "SHAPES",
    "AbsoluteProgram",
    "AttributeProgram",
    "ComparativeProgram",
    "Expression",
    "Filter",
    "Program",
    "RelationalProgram",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "ShapesRefSummary",
    "TrainingPair",
    "caption_vocabulary",
    "evaluate",
    "generate_image",
    "is_unambiguous",
    "object_caption",
    "program_from_dict",
    "program_to_dict",
    "referring_expressions",
    "render_object_crop",
    "resolve",
    "sample_scene",
    "sample_training_pairs",
    "scene_captions",
    "scene_rng",
    "split_of",
    "training_pair",
    "write_shapesref",
]
