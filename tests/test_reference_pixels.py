"""The ``reference`` pixel preset against the authors' documented pixel steps.

The reference is written here from the description of the authors' code (issue 14 and
refseg.methods.pixels), step by step and per mask, without refseg's helpers:

1. shorter side -> 800 with PIL bilinear (longer side truncated), /255, ImageNet mean/std;
2. global input: that tensor -> S x S, bilinear, align_corners=False, no antialiasing;
3. crops: the 800-px tensor -> the masks' size (same resize); each mask keeps its pixels
   and puts ImageNet's mean (0.485, 0.456, 0.406) in normalised units elsewhere; the box is
   FreeSOLO's: per axis, centre of mass of the covered rows (columns) +- half their count,
   truncated with int(); the crop is resized to S x S (same resize).

Scores are then recomputed from those tensors with the paper's formulas (reference
normalisation) on random CLIPs at the paper's 224 px, for ViT and RN.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.cli import main as refseg
from refseg.clip import LoadedClip
from refseg.clip.config import PreprocessConfig
from refseg.data.shapes.writer import write_shapesref
from refseg.eval.report import PIXELS_DESCRIPTION, collect_table, find_runs
from refseg.methods.global_local import GlobalLocalConfig
from refseg.methods.pixels import freesolo_box, local_inputs, masked_crops, short_side_size
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter

TEXTS = ["the cat lying on the scooter seat", "a man in a red shirt", "left zebra"]
HEIGHT, WIDTH = 37, 53  # short side 37 -> 800, long side int(800 * 53 / 37) = 1145
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def image_array(height: int = HEIGHT, width: int = WIDTH, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def proposal_masks(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    masks = np.zeros((5, height, width), dtype=bool)
    masks[0, :10, :15] = True  # touches the top-left border
    masks[0, 10:13, :4] = True
    masks[1, 5:13, 30:36] = True  # two pieces
    masks[1, 20:31, 40:51] = True
    masks[2, 25:28, 10:14] = True  # a 3 x 4 speck
    yy, xx = np.mgrid[:height, :width]
    masks[3] = (yy - 20) ** 2 + (xx - 25) ** 2 < 80  # a disc
    masks[4, 30:, 45:] = True  # touches the bottom-right border
    return masks


def bilinear(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False)
    return out[0]


def reference_steps(image: np.ndarray, masks: np.ndarray, size: int):
    """The documented steps: (global input [1, 3, S, S], crops [N, 3, S, S])."""
    height, width = image.shape[:2]
    if width <= height:
        new_w, new_h = 800, int(800 * height / width)
    else:
        new_w, new_h = int(800 * width / height), 800
    big = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    tensor = torch.from_numpy(np.asarray(big).copy()).permute(2, 0, 1).float() / 255
    tensor = (tensor - MEAN) / STD
    global_input = bilinear(tensor, (size, size))[None]
    back = bilinear(tensor, (height, width))
    crops = []
    for mask in masks:
        m = torch.from_numpy(mask.astype(np.uint8)).float()
        masked = back * m + (1 - m) * MEAN
        rows = m.amax(dim=1)  # [H]: 1 where the row has mask pixels
        cols = m.amax(dim=0)  # [W]
        cy = (rows * torch.arange(height)).sum() / rows.sum()
        cx = (cols * torch.arange(width)).sum() / cols.sum()
        box = torch.stack(
            [
                cx - 0.5 * cols.sum(),
                cy - 0.5 * rows.sum(),
                cx + 0.5 * cols.sum(),
                cy + 0.5 * rows.sum(),
            ]
        ).to(torch.int)
        x1, y1, x2, y2 = (int(v) for v in box)
        crops.append(bilinear(masked[:, y1:y2, x1:x2], (size, size)))
    return global_input, torch.stack(crops)


def test_freesolo_box_examples():
    masks = proposal_masks()
    # top-left rectangle plus a tab: rows 0..12 (13 rows), columns 0..14 (15 columns)
    assert freesolo_box(masks[0]) == (0, 0, 14, 12)
    # the 3 x 4 speck at rows 25..27, columns 10..13: the box shifts up-left by one pixel
    assert freesolo_box(masks[2]) == (9, 24, 13, 27)
    assert freesolo_box(np.zeros((4, 4), dtype=bool)) is None
    single = np.zeros((4, 4), dtype=bool)
    single[2, 0] = True  # one column at the border: an empty box in the reference, widened
    assert freesolo_box(single) == (0, 1, 1, 2)


def test_short_side_rule_matches_torchvision():
    assert short_side_size(53, 37) == (1145, 800)
    assert short_side_size(37, 53) == (800, 1145)
    assert short_side_size(800, 1000) == (800, 1000)  # already 800: unchanged


@pytest.fixture(params=["vit", "rn"])
def paper_size_clip(request, tiny_vit_config, tiny_rn_config, tiny_tokenizer, make_clip):
    """Random CLIPs at the paper's 224 px (ViT: 32-px patches, 7x7 grid; RN: 7x7 map)."""
    config = tiny_vit_config if request.param == "vit" else tiny_rn_config
    config.vision.image_size = 224
    if request.param == "vit":
        config.vision.patch_size = 32
    config.preprocess = PreprocessConfig(image_size=224)
    return LoadedClip(make_clip(config, seed=5), tiny_tokenizer, f"tiny-{request.param}-224")


def expected_scores(segmenter: Segmenter, global_input, crops, masks, texts):
    """The paper's formulas (reference normalisation) on the given pixel tensors."""
    clip, config = segmenter.clip, segmenter.config
    model = clip.model
    weights = torch.from_numpy(masks).float()[:, None]
    if hasattr(model.visual, "patch_size"):
        grid = global_input.shape[-1] // model.visual.patch_size
        grid_weights = F.interpolate(weights, size=(grid, grid), mode="bilinear")[:, 0]
        global_feats = torch.cat(
            [model.visual.forward_masked(global_input, w[None], config.k) for w in grid_weights]
        )
    else:
        trunk = F.normalize(model.visual.trunk(global_input), dim=1)
        map_weights = F.interpolate(weights, size=trunk.shape[-2:], mode="bilinear")
        global_feats = model.visual.attnpool(trunk * map_weights)
    local_feats = model.encode_image(crops)
    sentence = clip.encode_texts([segmenter.phrases.normalise(t) for t in texts])
    phrase = clip.encode_texts(segmenter.phrases.batch(texts))
    a, b = config.alpha, config.beta
    if hasattr(model.visual, "patch_size"):
        visual = F.normalize(a * global_feats + (1 - a) * local_feats, dim=-1)
        words = F.normalize(b * sentence + (1 - b) * phrase, dim=-1)
    else:
        visual = a * global_feats + (1 - a) * F.normalize(local_feats, dim=-1)
        words = b * F.normalize(sentence, dim=-1) + (1 - b) * F.normalize(phrase, dim=-1)
    return words @ visual.t()


def test_reference_preset_reproduces_the_documented_pixels_and_scores(paper_size_clip):
    image, masks = image_array(), proposal_masks()
    # alpha 0.5 weighs the crops enough that a crop difference would move the argmax
    for alpha in (0.95, 0.5):
        segmenter = Segmenter(paper_size_clip, None, config=GlobalLocalConfig(alpha=alpha))
        assert segmenter.config.pixels == "reference"  # the default
        context = segmenter.set_image(image, proposals=MaskProposals(masks))
        scores, _ = segmenter.scores(TEXTS)
        with torch.inference_mode():
            global_input, crops = reference_steps(image, masks, 224)

            ours = local_inputs(paper_size_clip, context)
            expected = expected_scores(segmenter, global_input, crops, masks, TEXTS)
        assert (context.pixels - global_input).abs().max() < 1e-6
        assert ours.shape == crops.shape == (5, 3, 224, 224)
        assert (ours - crops).abs().max() < 1e-6
        assert (scores - expected).abs().max() < 1e-5
        assert torch.equal(scores.argmax(dim=1), expected.argmax(dim=1))


def test_reference_and_clean_pixels_differ_and_clean_is_the_old_pipeline(paper_size_clip):
    image, masks = image_array(), proposal_masks()
    clean = Segmenter(paper_size_clip, None, config=GlobalLocalConfig(pixels="clean"))
    context = clean.set_image(image, proposals=MaskProposals(masks))
    squash = paper_size_clip.preprocess(Image.fromarray(image), mode="squash")[None]
    assert torch.equal(context.pixels, squash)

    crops = masked_crops(Image.fromarray(image), masks, paper_size_clip.config.preprocess)
    assert torch.equal(local_inputs(paper_size_clip, context), crops)
    clean_scores, _ = clean.scores(TEXTS)
    # The same segmenter switches preset per query; it matches a fresh reference segmenter.
    switched, _ = clean.scores(TEXTS, pixels="reference")
    reference = Segmenter(paper_size_clip, None)
    reference.set_image(image, proposals=MaskProposals(masks))
    fresh, _ = reference.scores(TEXTS)
    assert (switched - fresh).abs().max() < 1e-6
    assert (switched - clean_scores).abs().max() > 1e-5  # 10x the float noise above


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="pixels must be one of"):
        GlobalLocalConfig(pixels="bicubic")


@pytest.mark.parametrize("pixels", [None, "clean"])
def test_eval_states_the_preset_it_ran_with(tmp_path, tiny_clip_dir, capsys, pixels):
    write_shapesref(tmp_path / "data", seed=0, images=3)  # image 2 is the test split
    out = tmp_path / "run"
    args = ["eval", "--dataset", str(tmp_path / "data"), "--name", "shapesref", "--split",
            "test", "--clip", str(tiny_clip_dir), "--proposals", "gt", "--out", str(out),
            "--no-progress"]  # fmt: skip
    if pixels:
        args += ["--pixels", pixels]
    assert refseg(args) == 0
    preset = pixels or "reference"  # the default
    printed = capsys.readouterr().out
    assert f"pixels: {PIXELS_DESCRIPTION[preset]}; precision@X counts IoU >= X" in printed
    assert json.loads((out / "config.json").read_text())["params"]["pixels"] == preset
    assert f"| pixels | {PIXELS_DESCRIPTION[preset]} |" in (out / "report.md").read_text()
    table = collect_table(find_runs([out]))
    assert f"| gt | {preset} |" in table  # the pixels column
