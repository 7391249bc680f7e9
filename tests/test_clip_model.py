"""refseg's CLIP architecture: parity with transformers' CLIPModel and the segmentation hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refseg.clip import load_clip
from refseg.clip.model import CLIP, at_input_size, interpolate_pos_embedding, positions_resized

SENTENCES = [
    "the cat lying on the scooter seat",
    "A MAN in a red shirt, holding 2 umbrellas!",
    "giraffe's head (far right)",
    "",
]


# --- parity with transformers ---------------------------------------------------------------


def _hf_clip_dir(tmp_path, tiny_bpe, write_tokenizer_files, hidden_act):
    """A random HF CLIPModel saved with ``save_pretrained`` beside the tiny tokenizer files."""
    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel

    vocab, _ = tiny_bpe
    config = HFConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(vocab),
            max_position_embeddings=16,
            hidden_act=hidden_act,
            bos_token_id=vocab["<|startoftext|>"],
            # HF reads the pooled token at the first eos_token_id (argmax of ids only if it is 2).
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=8,
            image_size=32,
            hidden_act=hidden_act,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # HF initialises norms to 1/0 and biases to 0: make every weight count
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    directory = tmp_path / "hf"
    model.save_pretrained(directory)
    write_tokenizer_files(directory, "vocab+merges")
    return model, directory


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_matches_transformers_clip(tmp_path, tiny_bpe, write_tokenizer_files, hidden_act):
    hf, directory = _hf_clip_dir(tmp_path, tiny_bpe, write_tokenizer_files, hidden_act)
    clip = load_clip(directory, device="cpu")
    assert clip.config.quick_gelu == (hidden_act == "quick_gelu")
    assert clip.config.vision.mlp_width == 96 and clip.config.text.mlp_width == 80

    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32)
    ids = clip.tokenize(SENTENCES)
    with torch.inference_mode():
        ours_image = clip.encode_image(pixels)
        ours_text = clip.encode_text(ids)
        hf_image = hf.get_image_features(pixel_values=pixels).pooler_output
        hf_text = hf.get_text_features(input_ids=ids).pooler_output
    assert ours_image.shape == (3, 16) and ours_text.shape == (4, 16)
    assert (ours_image - hf_image).abs().max() < 1e-4
    assert (ours_text - hf_text).abs().max() < 1e-4
    assert not torch.allclose(ours_text[0], ours_text[1])  # different sentences, different vectors


def test_quick_gelu_and_gelu_give_different_outputs(tiny_clip, make_clip, tiny_vit_config):
    tiny_vit_config.quick_gelu = False
    exact = make_clip(tiny_vit_config)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert not torch.allclose(tiny_clip.encode_image(pixels), exact.encode_image(pixels))


# --- text tower -------------------------------------------------------------------------------


def test_text_embedding_read_at_first_eot_ignores_padding(tiny_clip, tiny_tokenizer):
    ids = tiny_tokenizer(["the cat on the left"])
    eot = tiny_tokenizer.eot_id
    end = int((ids[0] == eot).nonzero()[0])
    noisy = ids.clone()
    noisy[0, end + 1 :] = torch.randint(0, eot, (ids.shape[1] - end - 1,))  # garbage after EOT
    with torch.inference_mode():
        clean = tiny_clip.encode_text(ids, eot)
        assert torch.allclose(clean, tiny_clip.encode_text(noisy, eot), atol=1e-6)
        # OpenAI's argmax rule agrees here because EOT has the largest id of this vocabulary.
        assert torch.allclose(clean, tiny_clip.encode_text(ids), atol=1e-6)
        changed = ids.clone()
        changed[0, 1] = ids[0, 2]
        assert not torch.allclose(clean, tiny_clip.encode_text(changed, eot))


def test_text_longer_than_context_is_rejected(tiny_clip):
    with pytest.raises(ValueError, match="context length 16"):
        tiny_clip.encode_text(torch.zeros(1, 17, dtype=torch.long))


# --- ViT hooks ---------------------------------------------------------------------------------


def _count_block_calls(visual):
    """Hooks on every block recording the batch size of each full or first-token call."""
    calls: dict[int, list[int]] = {i: [] for i in range(visual.num_blocks)}
    handles = [
        block.register_forward_hook(lambda _m, args, _o, i=i: calls[i].append(args[0].shape[0]))
        for i, block in enumerate(visual.transformer.resblocks)
    ]
    for i, block in enumerate(visual.transformer.resblocks):
        first_token = block.forward_first_token

        def counted(x, *args, i=i, first_token=first_token):
            calls[i].append(x.shape[0])
            return first_token(x, *args)

        block.forward_first_token = counted
        handles.append(_Restore(block, "forward_first_token"))
    return calls, handles


class _Restore:
    """A handle whose ``remove()`` drops an instance attribute that shadows a method."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name = owner, name

    def remove(self) -> None:
        delattr(self.owner, self.name)


def test_first_token_forward_equals_the_full_block_first_row(tiny_clip):
    block = tiny_clip.visual.transformer.resblocks[-1]
    torch.manual_seed(7)
    x = torch.randn(3, 17, block.ln_1.normalized_shape[0])
    with torch.inference_mode():
        full = block(x)[:, :1]
        first = block.forward_first_token(x)
    assert first.shape == (3, 1, x.shape[-1])
    assert torch.allclose(first, full, atol=1e-6)
    assert not torch.allclose(first, block(x)[:, 1:2], atol=1e-3)  # it is the first row


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(1, 3, 32, 32)


def test_full_mask_equals_plain_forward_for_every_k(tiny_clip, image):
    visual = tiny_clip.visual
    ones = torch.ones(1, 4, 4)
    with torch.inference_mode():
        plain = visual(image)
        for k in range(1, visual.num_blocks + 1):
            masked = visual.forward_masked(image, ones, k)
            assert masked.shape == (1, 16)
            assert torch.allclose(masked, plain, atol=1e-6), k


def test_masked_forward_runs_the_trunk_once(tiny_clip, image):
    visual = tiny_clip.visual
    weights = torch.rand(5, 4, 4)
    layers, k = visual.num_blocks, 2
    calls, handles = _count_block_calls(visual)
    try:
        with torch.inference_mode():
            visual.forward_masked(image, weights, k)
    finally:
        for handle in handles:
            handle.remove()
    assert [calls[i] for i in range(layers - k)] == [[1]] * (layers - k)
    assert [calls[i] for i in range(layers - k, layers)] == [[5]] * k


def test_batched_masks_equal_single_mask_calls(tiny_clip, image):
    visual = tiny_clip.visual
    torch.manual_seed(4)
    weights = torch.rand(4, 4, 4)
    with torch.inference_mode():
        batched = visual.forward_masked(image, weights, 2)
        single = torch.cat([visual.forward_masked(image, w[None], 2) for w in weights])
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def _sparse_weights(num: int, seed: int) -> torch.Tensor:
    """Soft weights ``[num, 4, 4]`` with 0..16 non-zero patches: empty, full and in between."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(num, 16, generator=generator)
    for i in range(num):
        weights[i, torch.randperm(16, generator=generator)[: (i * 5) % 17]] = 0.0
    weights[0] = 0.0
    weights[-1] = torch.rand(16, generator=generator) + 0.1
    return weights.reshape(num, 4, 4)


@pytest.mark.parametrize("weights", [torch.rand(1, 4, 4), _sparse_weights(37, 11)],
                         ids=["dense", "sparse"])
@pytest.mark.parametrize("k", [1, 2])
def test_masked_forward_matches_step_by_step_reference(tiny_clip, image, weights, k):
    """Patch tokens (not CLS) scaled before *each* of the last k blocks, every token computed;
    zero-weight patches (folded into one token) and the first-token last block change nothing."""
    visual = tiny_clip.visual
    num, start = weights.shape[0], visual.num_blocks - k
    with torch.inference_mode():
        x = visual.run_blocks(visual.embed(image), 0, start).expand(num, -1, -1)
        for block in visual.transformer.resblocks[start:]:
            x = torch.cat([x[:, :1], x[:, 1:] * weights.reshape(num, 16, 1)], dim=1)
            x = block(x)
        expected = visual.head(x)
        got = visual.forward_masked(image, weights, k)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_zero_mask_changes_the_embedding(tiny_clip, image):
    visual = tiny_clip.visual
    zeros, ones = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    half = ones.clone()
    half[:, :, 2:] = 0
    with torch.inference_mode():
        full = visual.forward_masked(image, ones, 1)
        assert (visual.forward_masked(image, zeros, 1) - full).abs().max() > 1e-3
        assert (visual.forward_masked(image, half, 1) - full).abs().max() > 1e-3


def test_no_masks_give_an_empty_batch(tiny_clip, image):
    with torch.inference_mode():
        assert tiny_clip.visual.forward_masked(image, torch.zeros(0, 4, 4), 2).shape == (0, 16)


def test_masked_forward_rejects_bad_inputs(tiny_clip, image):
    visual = tiny_clip.visual
    with pytest.raises(ValueError, match="one image"):
        visual.forward_masked(image.repeat(2, 1, 1, 1), torch.ones(1, 4, 4), 1)
    with pytest.raises(ValueError, match="k must be in 1..3"):
        visual.forward_masked(image, torch.ones(1, 4, 4), 0)
    with pytest.raises(ValueError, match="k must be in 1..3"):
        visual.forward_masked(image, torch.ones(1, 4, 4), 4)
    with pytest.raises(ValueError, match="cover 9 patches; the image has 16"):
        visual.forward_masked(image, torch.ones(1, 3, 3), 1)


def test_block_outputs_feed_the_head(tiny_clip, image):
    visual = tiny_clip.visual
    with torch.inference_mode():
        outputs = visual.block_outputs(image, [2, 0])
        assert [o.shape for o in outputs] == [(1, 17, 64)] * 2
        assert torch.allclose(visual.head(outputs[0]), visual(image), atol=1e-6)
        assert torch.allclose(outputs[1], visual.run_blocks(visual.embed(image), 0, 1))
    with pytest.raises(ValueError, match="0..2"):
        visual.block_outputs(image, [3])


def test_attention_mask_is_honoured(tiny_clip):
    """A diagonal-only mask makes each token attend to itself: out_proj(v) (MaskCLIP)."""
    attn = tiny_clip.visual.transformer.resblocks[0].attn
    x = torch.randn(2, 5, 64)
    diagonal = torch.full((5, 5), float("-inf")).fill_diagonal_(0.0)
    with torch.inference_mode():
        assert torch.allclose(attn(x, diagonal), attn.value_only(x), atol=1e-5)
        assert not torch.allclose(attn(x), attn.value_only(x), atol=1e-3)
        per_item = torch.stack([diagonal, torch.zeros(5, 5)])  # [B, L, L]
        out = attn(x, per_item)
        assert torch.allclose(out[0], attn.value_only(x)[0], atol=1e-5)
        assert torch.allclose(out[1], attn(x)[1], atol=1e-5)
    with pytest.raises(TypeError, match="additive float mask"):
        attn(x, torch.eye(5, dtype=torch.bool))


def test_dense_embeddings_shapes(tiny_clip, tiny_rn_clip, image):
    with torch.inference_mode():
        assert tiny_clip.visual.dense_embeddings(image).shape == (1, 4, 4, 16)
        rn = tiny_rn_clip.visual.dense_embeddings(torch.randn(2, 3, 64, 64))
    assert rn.shape == (2, 2, 2, 16)


def test_other_resolution_interpolates_positions(tiny_clip):
    pos = tiny_clip.visual.positional_embedding
    assert interpolate_pos_embedding(pos, (4, 4)) is pos
    resized = interpolate_pos_embedding(pos, (6, 6))
    assert resized.shape == (37, 64) and torch.equal(resized[0], pos[0])
    with torch.inference_mode():
        assert tiny_clip.visual.dense_embeddings(torch.randn(1, 3, 48, 48)).shape == (1, 6, 6, 16)
        wide = torch.randn(1, 3, 32, 48)
        assert tiny_clip.visual.dense_embeddings(wide).shape == (1, 4, 6, 16)
        assert tiny_clip.visual.forward_masked(wide, torch.ones(2, 4, 6), 1).shape == (2, 16)


def test_a_vit_rebuilt_for_another_input_size_computes_what_it_did_there(tiny_clip, tiny_rn_clip):
    """The resized table holds what the model interpolated at run time: same embedding."""
    rebuilt = CLIP(at_input_size(tiny_clip.config, 48))
    assert rebuilt.visual.positional_embedding.shape == (37, 64)
    rebuilt.load_state_dict(positions_resized(tiny_clip.state_dict(), rebuilt.config.vision))
    pixels = torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt.encode_image(pixels), tiny_clip.encode_image(pixels))
    assert at_input_size(tiny_clip.config, 32) is tiny_clip.config
    rn_state = tiny_rn_clip.state_dict()  # a ResNet's table is left alone
    kept = positions_resized(rn_state, tiny_rn_clip.config.vision)
    assert all(kept[k] is rn_state[k] for k in rn_state)


# --- ResNet hooks ------------------------------------------------------------------------------


def test_rn_attention_pool_of_full_weights_equals_image_embedding(tiny_rn_clip):
    """attnpool(trunk(x) * 1) == encode_image(x). The reference's per-position L2
    normalisation of the map is a method choice, not part of this invariant."""
    visual = tiny_rn_clip.visual
    torch.manual_seed(5)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = visual.trunk(pixels)
        assert features.shape == (2, 256, 2, 2)
        plain = tiny_rn_clip.encode_image(pixels)
        pooled = visual.attnpool(features * torch.ones(2, 1, 2, 2))
        assert torch.allclose(pooled, plain, atol=1e-6)
        weights = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(2, 1, 2, 2)
        assert (visual.attnpool(features * weights) - plain).abs().max() > 1e-3


def test_trimmed_padding_gives_the_same_text_features(tiny_clip, tiny_tokenizer):
    from refseg.clip import LoadedClip

    loaded = LoadedClip(tiny_clip, tiny_tokenizer, "tiny")
    ids = loaded.tokenize(["the cat", "a man in a red shirt holding a blue umbrella", ""])
    with torch.no_grad():
        full = tiny_clip.encode_text(ids, tiny_tokenizer.eot_id)
        trimmed = loaded.encode_text(ids)
    assert torch.allclose(full, trimmed, atol=1e-6)


@pytest.mark.parametrize("grid", [(7, 7), (5, 6)])
def test_weighted_pooling_equals_pooling_the_weighted_map(grid) -> None:
    from refseg.clip.model import AttentionPool2d

    torch.manual_seed(0)
    pool = AttentionPool2d(7, 64, 4, 32).eval()
    features = torch.randn(1, 64, *grid)
    weights = torch.rand(9, *grid)
    weights[0] = 1.0  # the unmasked map
    weights[1] = 0.0  # nothing left but positions
    with torch.inference_mode():
        expected = pool(features * weights[:, None])
        got = pool.forward_weighted(features, weights)
        assert (got - expected).abs().max().item() < 1e-5
        assert (got[0] - pool(features)[0]).abs().max().item() < 1e-5
        with pytest.raises(ValueError, match="one feature map"):
            pool.forward_weighted(features.expand(2, -1, -1, -1), weights)


def _readout_copy(model, seed: int | None = None, **readout):
    """``model`` with a readout (``spatial_readout=True`` or ``token_readout=H``) whose new
    weights are zero where initialised so, or all random when ``seed`` is set."""
    import dataclasses

    from refseg.clip import CLIP

    vision = dataclasses.replace(model.config.vision, **readout)
    copy = CLIP(dataclasses.replace(model.config, vision=vision)).eval()
    missing, unexpected = copy.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("visual.") for k in missing)
    if seed is not None:
        torch.manual_seed(seed)
        with torch.no_grad():
            for name in missing:
                copy.get_parameter(name).normal_(0.0, 0.05)
    return copy


def _spatial_copy(model, seed: int | None = None):
    return _readout_copy(model, seed, spatial_readout=True)


def test_zero_spatial_readout_equals_the_class_token_readout(tiny_clip, image):
    spatial = _spatial_copy(tiny_clip)
    with torch.inference_mode():
        assert torch.equal(spatial.encode_image(image), tiny_clip.encode_image(image))


def test_spatial_readout_adds_a_linear_map_of_every_patch(tiny_clip, image):
    spatial = _spatial_copy(tiny_clip, seed=2)
    visual = spatial.visual
    with torch.inference_mode():
        tokens = visual.run_blocks(visual.embed(image))
        expected = (visual.ln_post(tokens[:, 0]) @ visual.proj
                    + visual.ln_post(tokens[:, 1:]).flatten(1) @ visual.spatial_proj)
        assert torch.allclose(spatial.encode_image(image), expected, atol=1e-6)
        assert not torch.allclose(expected, tiny_clip.encode_image(image), atol=1e-3)
        with pytest.raises(ValueError, match="native"):
            spatial.encode_image(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("readout", [{"spatial_readout": True}, {"token_readout": 16}])
def test_masked_forward_with_a_readout_matches_the_step_by_step_reference(tiny_clip, image,
                                                                          readout):
    """A readout reads every patch, so the folded and first-token shortcuts stay off."""
    visual = _readout_copy(tiny_clip, seed=3, **readout).visual
    weights = _sparse_weights(9, 5)
    with torch.inference_mode():
        x = visual.run_blocks(visual.embed(image), 0, visual.num_blocks - 2).expand(9, -1, -1)
        for block in visual.transformer.resblocks[-2:]:
            x = block(torch.cat([x[:, :1], x[:, 1:] * weights.reshape(9, 16, 1)], dim=1))
        assert torch.allclose(visual.forward_masked(image, weights, 2), visual.head(x), atol=1e-5)
        full = torch.ones(1, 4, 4)  # a full mask reproduces the unmasked forward
        assert torch.allclose(visual.forward_masked(image, full, 2), visual(image), atol=1e-5)


def test_spatial_readout_is_for_vits_only():
    from refseg.clip import VisionConfig

    with pytest.raises(ValueError, match="ViT"):
        VisionConfig(layers=(1, 1, 1, 1), spatial_readout=True)


def test_zero_token_readout_equals_the_class_token_readout(tiny_clip, image):
    reader = _readout_copy(tiny_clip, token_readout=16)
    with torch.inference_mode():
        assert torch.equal(reader.encode_image(image), tiny_clip.encode_image(image))


def test_token_readout_adds_the_grid_mean_of_a_per_token_mlp(tiny_clip, image):
    visual = _readout_copy(tiny_clip, seed=4, token_readout=16).visual
    with torch.inference_mode():
        tokens = visual.run_blocks(visual.embed(image))
        patches = visual.ln_post(tokens[:, 1:])  # [1, 16, C]
        first, last = visual.token_readout[0], visual.token_readout[2]
        per_token = F.gelu(patches @ first.weight.T + first.bias) @ last.weight.T + last.bias
        expected = visual.ln_post(tokens[:, 0]) @ visual.proj + per_token.mean(dim=1)
        assert torch.allclose(visual(image), expected, atol=1e-6)
        assert not torch.allclose(expected, tiny_clip.encode_image(image), atol=1e-3)
        # one map for every place: any input size works, unlike the spatial readout
        assert visual(torch.randn(1, 3, 48, 48)).shape == expected.shape


@pytest.mark.parametrize(("width", "layers"), [(-1, 2), ("x", 2), (2.5, 2), (8, (1, 1, 1, 1))])
def test_token_readout_is_a_width_for_vits_only(width, layers):
    """A config is data (it comes from a file's metadata): a wrong value is a clear error."""
    from refseg.clip import VisionConfig

    with pytest.raises(ValueError, match="token_readout"):
        VisionConfig(layers=layers, token_readout=width)


def test_patch_coordinates_are_fourier_features_of_patch_centres_row_major():
    from refseg.clip.model import patch_coordinates

    features = patch_coordinates(2, 3, frequencies=2)
    assert features.shape == (6, 8)
    x = torch.tensor([0.5, 1.5, 2.5] * 2) / 3
    y = torch.tensor([0.5] * 3 + [1.5] * 3) / 2
    assert torch.allclose(features[:, 0], torch.sin(torch.pi * x))
    assert torch.allclose(features[:, 3], torch.sin(2 * torch.pi * y))
    assert torch.allclose(features[:, 5], torch.cos(2 * torch.pi * x))
    assert torch.allclose(features[:, :4] ** 2 + features[:, 4:] ** 2, torch.ones(6, 4))
