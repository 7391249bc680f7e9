"""The bigger ShapesRef preset: a 14x14 patch grid at 224 px that builds and encodes."""

from __future__ import annotations

import torch

from refseg.clip import CLIP
from refseg.train.contrastive import PRESETS


def test_shapes_vit_224_has_a_14_by_14_grid_and_encodes():
    config = PRESETS["shapes-vit-224"](300, 16)
    small = PRESETS["shapes-vit"](300, 16)
    assert (config.vision.layers, config.vision.width, config.text) == (
        small.vision.layers, small.vision.width, small.text
    )
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
