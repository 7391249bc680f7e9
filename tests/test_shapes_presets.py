"""The bigger ShapesRef preset: a 14x14 patch grid at 224 px that builds and encodes."""

from __future__ import annotations

import torch

from refseg.clip import CLIP
from refseg.train.shapes_presets import BIGGER_PRESETS, shapes_vit_224


def test_shapes_vit_224_has_a_14_by_14_grid_and_encodes():
    config = shapes_vit_224(vocab_size=300, context_length=16)
    assert BIGGER_PRESETS["shapes-vit-224"] is shapes_vit_224
    assert config.vision.image_size // config.vision.patch_size == 14
    assert config.preprocess.image_size == config.vision.image_size == 224
    torch.manual_seed(0)
    model = CLIP(config).eval()
    assert model.visual.positional_embedding.shape[0] == 14 * 14 + 1
    assert 1.9e6 < sum(p.numel() for p in model.parameters()) < 2.2e6
    with torch.inference_mode():
        image = model.encode_image(torch.randn(2, 3, 224, 224))
        text = model.encode_text(torch.tensor([[298, 5, 299], [298, 7, 299]]), 299)
    assert image.shape == text.shape == (2, config.embed_dim)
