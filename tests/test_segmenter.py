"""Segmenter behaviour on tiny random CLIPs: argmax, batching, caching, the paper's formulas
recomputed independently, and every kind of bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refseg import runtime
from refseg.clip import LoadedClip
from refseg.errors import ImageError, InputError
from refseg.methods.global_local import GlobalLocalConfig, masked_crops
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter
from refseg.text import PhraseExtractor

TEXTS = ["the cat lying on the scooter seat", "a man in a red shirt", "left zebra"]


def _image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _proposals(height: int = 48, width: int = 64) -> MaskProposals:
    masks = np.zeros((5, height, width), dtype=bool)
    masks[0, :20, :20] = True
    masks[1, 20:, 30:] = True
    masks[2] = True
    masks[3, 5:30, 40:60] = True
    masks[4, 30:40, 5:15] = True
    return MaskProposals(masks)


@pytest.fixture(params=["vit", "rn"])
def loaded(request, tiny_clip, tiny_rn_clip, tiny_tokenizer) -> LoadedClip:
    model = tiny_clip if request.param == "vit" else tiny_rn_clip
    return LoadedClip(model, tiny_tokenizer, f"tiny-{request.param}")


@pytest.fixture
def segmenter(loaded) -> Segmenter:
    return Segmenter(loaded, None, config=GlobalLocalConfig(k=2))


def test_chosen_mask_is_argmax_of_reported_scores(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    for result in segmenter.query(TEXTS):
        assert result.index == int(np.argmax(result.scores))
        assert result.score == pytest.approx(float(result.scores.max()))
        np.testing.assert_array_equal(result.mask, _proposals().masks[result.index])
        assert list(result.ranking) == list(np.argsort(-result.scores, kind="stable"))


def test_batched_expressions_equal_one_by_one(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    together = torch.stack([torch.from_numpy(r.scores) for r in segmenter.query(TEXTS)])
    for i, text in enumerate(TEXTS):
        fresh = Segmenter(segmenter.clip, None, config=segmenter.config)
        fresh.set_image(_image(), proposals=_proposals())
        alone = torch.from_numpy(fresh.query([text])[0].scores)
        assert (together[i] - alone).abs().max() < 1e-5


def test_batched_proposals_equal_one_proposal_at_a_time(segmenter):
    proposals = _proposals()
    segmenter.set_image(_image(), proposals=proposals)
    batched, _ = segmenter.scores(TEXTS)
    for i in range(len(proposals)):
        segmenter.set_image(_image(), proposals=proposals.select([i]))
        single, _ = segmenter.scores(TEXTS)
        assert (batched[:, i] - single[:, 0]).abs().max() < 1e-5


def test_scores_match_the_papers_formula_recomputed_by_hand(segmenter):
    """f = a f^G + (1-a) f^L, t = b psi(T) + (1-b) psi(NP); reference normalisation, clean
    pixels (the reference pixel preset is checked in test_reference_pixels.py)."""
    segmenter.config = GlobalLocalConfig(k=2, pixels="clean")
    clip, config = segmenter.clip, segmenter.config
    image, proposals = _image(), _proposals()
    context = segmenter.set_image(image, proposals=proposals)
    scores, text = segmenter.scores(TEXTS)
    model = clip.model
    with torch.inference_mode():
        pixels = context.pixels
        masks = torch.from_numpy(proposals.masks).float()[:, None]
        if config.k and hasattr(model.visual, "forward_masked"):
            grid = pixels.shape[-1] // model.visual.patch_size
            weights = F.interpolate(masks, size=(grid, grid), mode="bilinear")[:, 0]
            global_feats = torch.cat(
                [model.visual.forward_masked(pixels, w[None], config.k) for w in weights]
            )
        else:
            trunk = F.normalize(model.visual.trunk(pixels), dim=1)
            weights = F.interpolate(masks, size=trunk.shape[-2:], mode="bilinear")
            global_feats = model.visual.attnpool(trunk * weights)
        crops = masked_crops(Image.fromarray(image), proposals.masks, clip.config.preprocess)
        local_feats = model.encode_image(crops)
        normalised = [segmenter.phrases.normalise(t) for t in TEXTS]
        sentence = clip.encode_texts(normalised)
        phrase = clip.encode_texts(text.phrases)
    a, b = config.alpha, config.beta
    if hasattr(model.visual, "patch_size"):  # ViT: raw mixes, cosine at scoring
        visual = F.normalize(a * global_feats + (1 - a) * local_feats, dim=-1)
        words = F.normalize(b * sentence + (1 - b) * phrase, dim=-1)
    else:  # RN: f^G raw, the rest unit length, plain dot product
        visual = a * global_feats + (1 - a) * F.normalize(local_feats, dim=-1)
        words = b * F.normalize(sentence, dim=-1) + (1 - b) * F.normalize(phrase, dim=-1)
    expected = words @ visual.t()
    assert (scores - expected).abs().max() < 1e-5


def test_unit_normalisation_is_cosine_of_normalised_mixes(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    ref, _ = segmenter.scores(TEXTS)
    segmenter.config = GlobalLocalConfig(k=2, normalization="unit")
    unit, _ = segmenter.scores(TEXTS)
    assert unit.abs().max() <= 1.0 + 1e-6
    assert not torch.allclose(ref, unit)


def test_visual_work_done_once_per_image_for_many_queries(segmenter, monkeypatch):
    visual = segmenter.clip.model.visual
    calls = {"embed": 0}
    stem = visual.embed if hasattr(visual, "embed") else visual.trunk
    name = "embed" if hasattr(visual, "embed") else "trunk"

    def counted(*args, **kwargs):
        calls["embed"] += 1
        return stem(*args, **kwargs)

    monkeypatch.setattr(visual, name, counted)
    # All crops in one batch (refseg.runtime would otherwise measure chunk sizes).
    monkeypatch.setattr(runtime, "_settings", runtime.RuntimeSettings(chunk=64))
    segmenter.set_image(_image(), proposals=_proposals())
    segmenter.query(TEXTS)
    segmenter.query(["another expression"], alpha=0.5, beta=0.2)
    segmenter.query(TEXTS, method="global-only")
    # ViT: one embed for the shared trunk + one per local batch; RN: one trunk + one per batch
    after_first = calls["embed"]
    segmenter.query(TEXTS, method="local-only")
    assert calls["embed"] == after_first
    assert after_first == 2


def test_text_features_are_cached_between_queries(segmenter, monkeypatch):
    segmenter.set_image(_image(), proposals=_proposals())
    encoded: list[int] = []
    original = segmenter.clip.encode_text  # token ids -> features (the torch backend's)
    monkeypatch.setattr(
        segmenter.clip, "encode_text", lambda ids: encoded.append(len(ids)) or original(ids)
    )
    segmenter.query(TEXTS)
    segmenter.query(TEXTS[:2])
    assert encoded == [2 * len(TEXTS)]


def test_ablation_methods_pin_alpha_and_beta(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    global_only, _ = segmenter.scores(TEXTS, method="global-only")
    explicit, _ = segmenter.scores(TEXTS, alpha=1.0)
    assert torch.allclose(global_only, explicit)
    local_only, _ = segmenter.scores(TEXTS, method="local-only")
    assert torch.allclose(local_only, segmenter.scores(TEXTS, alpha=0.0)[0])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "I", "F", "1", "CMYK"])
def test_any_image_mode_is_converted(segmenter, mode):
    rgb = Image.fromarray(_image())
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    else:
        image = rgb.convert(mode)
    result = segmenter.segment(image, "the cat", proposals=_proposals())
    assert result.mask.shape == (48, 64)


def test_sixteen_bit_png_round_trip(segmenter, tmp_path):
    values = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    result = segmenter.segment(path, "the cat", proposals=_proposals())
    assert result.mask.shape == (48, 64)


def test_corrupt_and_missing_images_raise_image_error(segmenter, tmp_path):
    broken = tmp_path / "broken.png"
    Image.fromarray(_image()).save(broken)
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ImageError, match="broken.png"):
        segmenter.segment(broken, "x", proposals=_proposals())
    with pytest.raises(ImageError, match="not found"):
        segmenter.segment(tmp_path / "nope.jpg", "x", proposals=_proposals())
    with pytest.raises(ImageError, match="empty"):
        segmenter.segment(b"", "x", proposals=_proposals())
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    with pytest.raises(ImageError):
        segmenter.segment(text_file, "x", proposals=_proposals())


@pytest.mark.parametrize("texts", ["", "   ", [], ["fine", ""]])
def test_empty_text_is_a_clear_error(segmenter, texts):
    segmenter.set_image(_image(), proposals=_proposals())
    with pytest.raises(InputError):
        segmenter.query(texts)


def test_overlong_text_is_truncated_with_a_warning(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    long_text = "the man in the red shirt " * 40
    with pytest.warns(UserWarning, match="truncated"):
        result = segmenter.query(long_text)
    assert result.index is not None


def test_absurd_text_gives_a_defined_result(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    for text in ["!!!???", "🙂🙂🙂", "x" * 5000, "der Mann im roten Hemd"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = segmenter.query(text)
        assert result.index is not None and np.isfinite(result.score)


def test_zero_proposals_is_an_empty_result_with_a_warning(segmenter):
    with pytest.warns(UserWarning, match="no mask proposals"):
        segmenter.set_image(_image(), proposals=MaskProposals.empty(48, 64))
    result = segmenter.query("the cat")
    assert result.score is None and result.index is None
    assert result.mask.shape == (48, 64) and not result.mask.any()
    assert result.to_dict()["bbox"] is None


def test_huge_image_is_downscaled_and_mask_mapped_back(segmenter):
    image = _image(300, 400)
    masks = np.zeros((2, 300, 400), dtype=bool)
    masks[0, :150, :200] = True
    masks[1, 150:, 200:] = True
    segmenter.max_pixels = 100 * 75
    context = segmenter.set_image(image, proposals=MaskProposals(masks))
    assert context.image.size == (100, 75)
    result = segmenter.query("the cat")
    assert result.mask.shape == (300, 400)
    chosen = masks[result.index]
    assert (result.mask == chosen).mean() > 0.99


def test_proposals_of_the_wrong_size_are_rejected(segmenter):
    with pytest.raises(InputError, match="proposal masks"):
        segmenter.set_image(_image(), proposals=_proposals(10, 10))


def test_unknown_method_lists_the_valid_ones(loaded):
    with pytest.raises(InputError, match="global-local"):
        Segmenter(loaded, None, method="magic")


def test_query_before_set_image_is_a_clear_error(segmenter):
    with pytest.raises(InputError, match="set_image"):
        segmenter.query("x")


def test_bad_hyper_parameters_are_input_errors(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    with pytest.raises(InputError, match="alpha"):
        segmenter.query("x", alpha=1.5)


def test_without_a_parser_the_whole_sentence_is_the_phrase(loaded, monkeypatch):
    extractor = PhraseExtractor(fallback="sentence")
    monkeypatch.setattr(extractor, "batch", lambda texts: [extractor.normalise(t) for t in texts])
    segmenter = Segmenter(loaded, None, phrases=extractor)
    segmenter.set_image(_image(), proposals=_proposals())
    beta_half, _ = segmenter.scores(TEXTS)
    sentence_only, _ = segmenter.scores(TEXTS, beta=1.0)
    assert torch.allclose(beta_half, sentence_only, atol=1e-6)


def test_result_files_and_dict(segmenter, tmp_path):
    image = _image()
    result = segmenter.segment(image, "the cat", proposals=_proposals())
    mask_path = result.save_mask(tmp_path / "out" / "mask.png")
    saved = np.asarray(Image.open(mask_path))
    np.testing.assert_array_equal(saved > 0, result.mask)
    overlay = Image.open(result.save_overlay(Image.fromarray(image), tmp_path / "overlay.png"))
    assert overlay.size == (64, 48)
    changed = np.any(np.asarray(overlay) != image, axis=-1)
    assert changed[result.mask].mean() > 0.9 and not changed[~result.mask].any()
    record = result.to_dict(rle=True)
    assert record["area"] == int(result.mask.sum())
    assert record["proposals"][0]["index"] == result.index
    assert record["segmentation"]["size"] == [48, 64]


def test_k_sweep_reuses_the_trunk_and_matches_fresh_runs(segmenter):
    segmenter.set_image(_image(), proposals=_proposals())
    segmenter.query(TEXTS)  # caches local features too, under a different key shape
    swept = {k: segmenter.scores(TEXTS, k=k)[0] for k in (3, 1, 2)}
    for k, scores in swept.items():
        fresh = Segmenter(segmenter.clip, None, config=GlobalLocalConfig(k=k))
        fresh.set_image(_image(), proposals=_proposals())
        assert (fresh.scores(TEXTS)[0] - scores).abs().max() < 1e-5


def test_set_image_computes_the_visual_features_queries_then_reuse(segmenter, monkeypatch):
    visual = segmenter.clip.model.visual
    name = "embed" if hasattr(visual, "embed") else "trunk"
    calls = {"embed": 0}
    stem = getattr(visual, name)

    def counted(*args, **kwargs):
        calls["embed"] += 1
        return stem(*args, **kwargs)

    monkeypatch.setattr(visual, name, counted)
    context = segmenter.set_image(_image(), proposals=_proposals())
    encoded = calls["embed"]
    assert encoded >= 2  # the trunk (global branch) and the local crops, up front
    assert _has_features(context, "local") and _has_features(context, "global")
    spent = {stage: context.timings[stage] for stage in ("global", "local")}
    segmenter.query(TEXTS)
    assert calls["embed"] == encoded  # the query ran no image encoder
    assert {stage: context.timings[stage] for stage in ("global", "local")} == spent


def test_set_image_skips_a_branch_of_weight_zero(loaded):
    only_local = Segmenter(loaded, None, method="local-only")
    context = only_local.set_image(_image(), proposals=_proposals())
    assert _has_features(context, "local") and not _has_features(context, "global")
    only_global = Segmenter(loaded, None, method="global-only")
    context = only_global.set_image(_image(), proposals=_proposals())
    assert not _has_features(context, "local") and _has_features(context, "global")


def _has_features(context, branch: str) -> bool:
    """Whether the context caches ``branch`` ("local" or "global") features, under any key
    shape (``"local"``, ``("local", precision, backend)``, ``("global", k)``)."""
    return any(
        key == branch or (isinstance(key, tuple) and key[0] == branch) for key in context.cache
    )


def test_results_name_the_proposal_generator(loaded):
    class Grid:
        name = "grid"

        def __call__(self, image, *, image_key=None):
            return _proposals(image.height, image.width)

    segmenter = Segmenter(loaded, Grid(), config=GlobalLocalConfig(k=2))
    segmenter.set_image(_image())
    result = segmenter.query("left zebra")
    assert result.proposal_generator == "grid" and result.to_dict()["proposal_generator"] == "grid"
    segmenter.set_image(_image(), proposals=_proposals())
    assert segmenter.query("left zebra").proposal_generator == "given"
