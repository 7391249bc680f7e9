"""The paper's baselines (score map, region token, Grad-CAM, random) on tiny random CLIPs:
each checked for the property that defines it, plus shapes, empty inputs and the Segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refseg.clip import LoadedClip
from refseg.methods import (
    GlobalLocalConfig,
    ImageContext,
    TextBatch,
    available_methods,
    resolve_method,
)
from refseg.methods.baselines import NO_OVERLAP_SCORE, mean_in_masks
from refseg.methods.global_local import rn_trunk
from refseg.methods.global_local_method import vit_tokens_after
from refseg.methods.grad_cam import (
    cam_mask,
    cam_target,
    grad_cam_map,
    grad_cam_weights,
    grad_cams,
)
from refseg.methods.random_choice import RandomMethod
from refseg.methods.region_token import (
    RegionTokenMethod,
    region_attention_mask,
    rn_region_features,
    vit_region_features,
)
from refseg.methods.score_map import ScoreMapMethod
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter

BASELINES = ("score-map", "region-token", "grad-cam", "random")
TEXTS = ["the cat lying on the scooter seat", "a man in a red shirt", "left zebra"]


@pytest.fixture
def vit(tiny_clip, tiny_tokenizer) -> LoadedClip:
    """32x32 input, 8x8 patches: a 4x4 grid, 3 blocks."""
    return LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit")


@pytest.fixture
def rn(tiny_rn_clip, tiny_tokenizer) -> LoadedClip:
    """64x64 input: a 2x2 layer4 map."""
    return LoadedClip(tiny_rn_clip, tiny_tokenizer, "tiny-rn")


@pytest.fixture(params=["vit", "rn"])
def loaded(request) -> LoadedClip:
    return request.getfixturevalue(request.param)


class LastWord:
    """A stand-in phrase extractor (the target phrase = the last word): no spaCy to load."""

    def normalise(self, text: str) -> str:
        return text.lower()

    def batch(self, texts: list[str]) -> list[str]:
        return [t.lower().split()[-1] for t in texts]


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _context(clip: LoadedClip, masks: np.ndarray, seed: int = 0, key=None) -> ImageContext:
    """A context on a square image of the model's input size (so no resampling blur)."""
    from PIL import Image

    size = clip.config.preprocess.image_size
    image = Image.fromarray(_image(size, seed))
    pixels = clip.preprocess(image, mode="squash")[None]
    return ImageContext(image, (size, size), pixels, MaskProposals(masks), key=key)


def _cell_masks(clip: LoadedClip, cells: list[tuple[int, int] | None]) -> np.ndarray:
    """One mask per entry: exactly grid cell ``(row, col)``; ``None`` = the whole image."""
    size = clip.config.preprocess.image_size
    grid = _grid(clip)
    step = size // grid
    masks = np.zeros((len(cells), size, size), dtype=bool)
    for i, cell in enumerate(cells):
        if cell is None:
            masks[i] = True
        else:
            r, c = cell
            masks[i, r * step : (r + 1) * step, c * step : (c + 1) * step] = True
    return masks


def _grid(clip: LoadedClip) -> int:
    size = clip.config.preprocess.image_size
    visual = clip.model.visual
    return size // visual.patch_size if hasattr(visual, "patch_size") else size // 32


def _text(clip: LoadedClip, texts: list[str]) -> TextBatch:
    with torch.inference_mode():
        sentences = clip.encode_texts(texts)
        phrases = clip.encode_texts([t.split()[-1] for t in texts])
    return TextBatch(list(texts), [t.split()[-1] for t in texts], sentences, phrases)


def _unit_text(text: TextBatch, beta: float, vit: bool) -> torch.Tensor:
    """The paper's text mix, recomputed: raw mix for ViT ("reference"), unit mix for RN."""
    s, p = text.sentence_features, text.phrase_features
    if not vit:
        s, p = F.normalize(s, dim=-1), F.normalize(p, dim=-1)
    return F.normalize(beta * s + (1 - beta) * p, dim=-1)


def _is_vit(clip: LoadedClip) -> bool:
    return hasattr(clip.model.visual, "patch_size")


# ------------------------------------------------------------------------ registry & shapes
def test_baselines_are_registered_with_summaries():
    methods = available_methods()
    for name in BASELINES:
        assert name in methods and methods[name]


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_gives_t_by_n_and_handles_no_proposals(loaded, name):
    method, params = resolve_method(name, GlobalLocalConfig(k=2))
    size = loaded.config.preprocess.image_size
    text = _text(loaded, TEXTS)
    with torch.inference_mode():
        full = method.scores(
            loaded, _context(loaded, _cell_masks(loaded, [(0, 0), None])), text, params
        )
        empty = method.scores(
            loaded, _context(loaded, np.zeros((0, size, size), bool)), text, params
        )
    assert full.shape == (3, 2) and torch.isfinite(full).all()
    assert empty.shape == (3, 0)


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_registered_method_runs_through_the_segmenter(loaded, name):
    segmenter = Segmenter(loaded, None, name, GlobalLocalConfig(k=2), phrases=LastWord())
    image = _image(40, seed=3)[:, :36]  # not square, not the input size
    masks = np.zeros((3, 40, 36), dtype=bool)
    masks[0, :20, :18], masks[1, 10:, 10:], masks[2] = True, True, True
    segmenter.set_image(image, image_key="img-1", proposals=MaskProposals(masks))
    results = segmenter.query(TEXTS[:2])
    assert len(results) == 2
    for result in results:
        assert result.method == name
        assert result.scores.shape == (3,) and np.isfinite(result.scores).all()
        assert result.index == int(np.argmax(result.scores))
        np.testing.assert_array_equal(result.mask, masks[result.index])


def test_a_baseline_can_be_picked_per_query(vit):
    segmenter = Segmenter(vit, None, method="score-map", phrases=LastWord())
    segmenter.set_image(_image(32), proposals=MaskProposals(_cell_masks(vit, [(0, 0), (3, 3)])))
    by_default = segmenter.query("left zebra")
    grad_cam = segmenter.query("left zebra", method="grad-cam")
    assert (by_default.method, grad_cam.method) == ("score-map", "grad-cam")
    assert not np.allclose(by_default.scores, grad_cam.scores)


# --------------------------------------------------------------------------------- score map
def test_score_map_of_a_one_patch_mask_is_that_patchs_cosine(loaded):
    grid = _grid(loaded)
    cells = [(0, grid - 1), (grid - 1, 0), None]
    context = _context(loaded, _cell_masks(loaded, cells))
    text = _text(loaded, TEXTS)
    params = GlobalLocalConfig(beta=0.3)
    with torch.inference_mode():
        scores = ScoreMapMethod().scores(loaded, context, text, params)
        dense = loaded.model.visual.dense_embeddings(context.pixels)[0]  # [h, w, D]
    t = _unit_text(text, 0.3, _is_vit(loaded))
    cosine = F.cosine_similarity(dense[:, :, None], t[None, None], dim=-1)  # [h, w, T]
    for i, (r, c) in enumerate(cells[:2]):
        torch.testing.assert_close(scores[:, i], cosine[r, c], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[:, 2], cosine.mean(dim=(0, 1)), atol=1e-5, rtol=1e-5)


def test_score_map_gives_masks_off_the_grid_the_lowest_score(vit):
    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[1, 0, 0] = True  # one pixel: bilinear sampling on the 4x4 grid never reaches it
    masks[2, 8:16, 8:16] = True
    with torch.inference_mode():
        scores = ScoreMapMethod().scores(
            vit, _context(vit, masks), _text(vit, TEXTS), GlobalLocalConfig()
        )
    assert (scores[:, :2] == NO_OVERLAP_SCORE).all()
    assert (scores[:, 2] > NO_OVERLAP_SCORE).all()


def test_mean_in_masks_is_a_weighted_mean():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    weights = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 2.0]], [[0.0] * 2] * 2])
    torch.testing.assert_close(
        mean_in_masks(maps, weights), torch.tensor([[1.0, 11.0 / 4, NO_OVERLAP_SCORE]])
    )


# ------------------------------------------------------------------------------ region token
@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_region_token_with_a_full_mask_is_the_plain_forward(vit, k):
    context = _context(vit, _cell_masks(vit, [None, None]))
    text = _text(vit, TEXTS)
    params = GlobalLocalConfig(k=k)
    with torch.inference_mode():
        scores = RegionTokenMethod().scores(vit, context, text, params)
        plain = vit.encode_image(context.pixels)  # [1, D]
        visual = vit.model.visual
        start = visual.num_blocks - min(k, visual.num_blocks)
        tokens = vit_tokens_after(vit, context, start)
        features = vit_region_features(visual, tokens, torch.ones(2, 16, dtype=torch.bool), start)
    torch.testing.assert_close(features, plain.expand(2, -1), atol=1e-5, rtol=1e-5)
    expected = F.cosine_similarity(plain, _unit_text(text, 0.5, True), dim=-1)  # [T]
    torch.testing.assert_close(scores, expected[:, None].expand(-1, 2), atol=1e-5, rtol=1e-5)


def test_region_token_sees_only_the_patches_inside_its_mask(vit):
    """In the last block, token states outside the mask do not reach the region token."""
    visual = vit.model.visual
    last = visual.num_blocks - 1
    context = _context(vit, _cell_masks(vit, [(0, 0)]))
    inside = torch.zeros(2, 16, dtype=torch.bool)
    inside[0, [0, 1, 4]] = True  # patches 0, 1, 4; proposal 1 covers no patch
    with torch.inference_mode():
        tokens = vit_tokens_after(vit, context, last)
        base = vit_region_features(visual, tokens, inside, last)
        noise = torch.randn(tokens.shape[-1], generator=torch.Generator().manual_seed(0))
        outside, within = tokens.clone(), tokens.clone()
        outside[0, 1 + 7] += noise  # patch 7, outside
        within[0, 1 + 4] += noise  # patch 4, inside
        unchanged = vit_region_features(visual, outside, inside, last)
        changed = vit_region_features(visual, within, inside, last)
        # no patch inside: the token attends only to itself (its own value)
        alone = visual.head(visual.transformer.resblocks[last].forward_value_only(tokens[:, :1]))
    torch.testing.assert_close(unchanged, base, atol=1e-6, rtol=1e-6)
    assert (changed[0] - base[0]).abs().max() > 1e-3
    torch.testing.assert_close(base[1], alone[0], atol=1e-5, rtol=1e-5)


def test_region_attention_mask_layout():
    inside = torch.tensor([[True, False, True], [False, False, False]])
    mask = region_attention_mask(inside)  # [CLS, p0, p1, p2, r0, r1]
    allowed = (mask == 0).long()
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 1, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ]
    )
    torch.testing.assert_close(allowed, expected)
    assert set(mask.unique().tolist()) == {0.0, float("-inf")}


@pytest.mark.parametrize("normalize_positions", [False, True])
def test_rn_region_token_with_a_full_mask_is_attention_pooling(rn, normalize_positions):
    context = _context(rn, _cell_masks(rn, [None]))
    params = GlobalLocalConfig(normalize_positions=normalize_positions, normalization="unit")
    text = _text(rn, TEXTS)
    with torch.inference_mode():
        scores = RegionTokenMethod().scores(rn, context, text, params)
        trunk = rn_trunk(rn.model.visual, context.pixels, normalize_positions)
        pooled = rn.model.visual.attnpool(trunk)
        if not normalize_positions:
            torch.testing.assert_close(pooled, rn.encode_image(context.pixels))
    expected = F.cosine_similarity(pooled, _unit_text(text, 0.5, False), dim=-1)
    torch.testing.assert_close(scores[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_rn_region_token_keys_are_the_mean_token_and_the_masked_positions(rn):
    visual = rn.model.visual
    pool = visual.attnpool
    with torch.inference_mode():
        features = visual.trunk(_context(rn, _cell_masks(rn, [None])).pixels)  # [1, C, 2, 2]
        inside = torch.tensor([[False] * 4, [True, False, False, False]])
        pooled = rn_region_features(pool, features, inside)
        # no position inside: the mean token attends only to itself
        mean_token = features.flatten(2).mean(dim=2) + pool.positional_embedding[0]
        alone = pool.c_proj(pool.v_proj(mean_token))
        # move two positions outside both masks, keeping the mean (the query) fixed
        noise = torch.randn(features.shape[1], generator=torch.Generator().manual_seed(0))
        moved = features.clone()
        moved[0, :, 1, 0] += noise
        moved[0, :, 1, 1] -= noise
        shifted = rn_region_features(pool, moved, inside)
        plain_before, plain_after = pool(features), pool(moved)
    torch.testing.assert_close(pooled[0], alone[0], atol=1e-5, rtol=1e-5)
    assert (pooled[1] - alone[0]).abs().max() > 1e-4
    torch.testing.assert_close(shifted, pooled, atol=1e-5, rtol=1e-5)
    assert (plain_after - plain_before).abs().max() > 1e-4  # unmasked pooling sees them


# ---------------------------------------------------------------------------------- Grad-CAM
def test_grad_cam_weights_are_the_averaged_gradient_by_finite_differences(loaded):
    """w[c] = mean_p dS/dA[p, c]: shifting every position by v changes S by P <w, v>.

    Checked against forward passes only, along random channel directions; the map is
    relu(A w).
    """
    context = _context(loaded, _cell_masks(loaded, [None]))
    text = _unit_text(_text(loaded, TEXTS[:1]), 0.5, _is_vit(loaded))
    target = cam_target(loaded, context.pixels)
    weights = grad_cam_weights(target, text)[0]  # [C]
    acts = target.activations.detach()
    positions, channels = acts.shape

    def similarity(a: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.normalize(target.tail(a).double(), dim=-1) @ text[0].double())

    generator = torch.Generator().manual_seed(0)
    eps = 1e-2
    for _ in range(6):
        v = torch.randn(channels, generator=generator)
        v = v / v.norm()
        slope = (similarity(acts + eps * v) - similarity(acts - eps * v)) / (2 * eps * positions)
        assert float(weights @ v) == pytest.approx(
            slope, rel=2e-2, abs=2e-2 * float(weights.norm())
        )
    cams = grad_cams(target, text)
    expected = F.relu(acts.float() @ weights).reshape(1, *target.grid)
    torch.testing.assert_close(cams, expected)


def test_grad_cam_is_a_non_negative_grid_map_that_depends_on_the_text(loaded):
    pixels = _context(loaded, _cell_masks(loaded, [None])).pixels
    text = _text(loaded, TEXTS)
    t = _unit_text(text, 0.5, _is_vit(loaded))
    with torch.inference_mode():  # as inside the Segmenter
        first, second = grad_cam_map(loaded, pixels, t[0]), grad_cam_map(loaded, pixels, t[1])
    grid = _grid(loaded)
    assert first.shape == second.shape == (grid, grid)
    assert (first >= 0).all() and (second >= 0).all() and first.sum() > 0
    assert not torch.allclose(first, second)
    assert not first.requires_grad


def test_grad_cam_proposal_score_is_the_cams_mean_inside_the_mask(loaded):
    grid = _grid(loaded)
    cells = [(0, 0), (grid - 1, grid - 1), None]
    context = _context(loaded, _cell_masks(loaded, cells))
    text = _text(loaded, TEXTS)
    method, params = resolve_method("grad-cam", GlobalLocalConfig())
    with torch.inference_mode():
        scores = method.scores(loaded, context, text, params)
    t = _unit_text(text, 0.5, _is_vit(loaded))
    cams = torch.stack([grad_cam_map(loaded, context.pixels, t[i]) for i in range(3)])
    torch.testing.assert_close(scores[:, 0], cams[:, 0, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores[:, 1], cams[:, -1, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores[:, 2], cams.mean(dim=(1, 2)), atol=1e-5, rtol=1e-4)


def test_grad_cam_rejects_text_features_of_the_wrong_size(vit):
    pixels = _context(vit, _cell_masks(vit, [None])).pixels
    with pytest.raises(ValueError, match="text features"):
        grad_cam_map(vit, pixels, torch.ones(7))


def test_cam_mask_thresholds_the_normalised_map():
    cam = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    mask = cam_mask(cam, (2, 2))
    np.testing.assert_array_equal(mask, [[False, False], [True, True]])  # 2/4 = 0.5 is in
    big = cam_mask(cam, (40, 30), threshold=0.9)
    assert big.shape == (40, 30) and big.dtype == bool
    assert big[-1, -1] and not big[0, 0] and 0 < big.sum() < big.size
    assert not cam_mask(torch.zeros(3, 3), (8, 8)).any()  # nothing matched: empty
    with pytest.raises(ValueError, match="threshold"):
        cam_mask(cam, (2, 2), threshold=0.0)


# ------------------------------------------------------------------------------------ random
def _random_scores(clip, texts, key="img", seed=0, n=4) -> torch.Tensor:
    size = clip.config.preprocess.image_size
    masks = np.ones((n, size, size), dtype=bool)
    context = _context(clip, masks, seed=seed, key=key)
    text = TextBatch(
        list(texts), list(texts), torch.zeros(len(texts), 16), torch.zeros(len(texts), 16)
    )
    with torch.inference_mode():
        return RandomMethod().scores(clip, context, text, GlobalLocalConfig())


def test_random_is_reproducible_per_image_and_text(vit):
    together = _random_scores(vit, TEXTS)
    again = _random_scores(vit, list(reversed(TEXTS)))
    alone = _random_scores(vit, TEXTS[1:2])
    torch.testing.assert_close(together, again.flip(0))
    torch.testing.assert_close(together[1:2], alone)
    assert not torch.equal(together, _random_scores(vit, TEXTS, key="other"))
    # without a key the pixels identify the image
    unkeyed = _random_scores(vit, TEXTS, key=None)
    torch.testing.assert_close(unkeyed, _random_scores(vit, TEXTS, key=None))
    assert not torch.equal(unkeyed, _random_scores(vit, TEXTS, key=None, seed=1))


def test_random_choice_is_uniform_over_proposals(vit):
    n, count = 4, 800
    texts = [f"expression {i}" for i in range(count)]
    choices = _random_scores(vit, texts, n=n).argmax(dim=1)
    observed = torch.bincount(choices, minlength=n).double()
    chi_square = float(((observed - count / n) ** 2 / (count / n)).sum())
    assert chi_square < 16.27  # 3 degrees of freedom, p = 0.001
    assert observed.min() > 0
