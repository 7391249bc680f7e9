"""The structure head (``refseg train clip --structure-weight``): targets read off scenes and
captions, the loss against hand-computed values, its gradient teaching a text embedding an
order, and the head staying out of the saved CLIP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refseg.data.shapes.scene import sample_scene, scene_rng
from refseg.errors import InputError
from refseg.train.loop import LoopConfig, train
from refseg.train.structure import (
    BACKGROUND,
    IGNORE,
    MARGIN,
    MIN_COVER,
    ORDER_SCALE,
    SHARPNESS,
    TYPE_INDEX,
    TYPES,
    StructureHead,
    collate_structure,
    patch_loss,
    patch_types,
    scene_targets,
    soft_order,
    structure_loss,
    text_targets,
)
from test_train_negatives import negclip_config, negclip_task, read_log

pytestmark = pytest.mark.usefixtures("one_thread")

RED_CIRCLE, BLUE_STAR = TYPE_INDEX[("red", "circle")], TYPE_INDEX[("blue", "star")]


def test_scene_targets_place_each_type_that_occurs_once():
    for index in range(20):
        scene = sample_scene(scene_rng(7, index))
        targets = scene_targets(scene)
        kinds = [(o.color, o.shape) for o in scene.objects]
        for t, kind in enumerate(TYPES):
            assert targets.present[t] == (kind in kinds)
            assert targets.located[t] == (kinds.count(kind) == 1)
            if targets.located[t]:
                np.testing.assert_allclose(
                    targets.coords[t], scene.centroids[kinds.index(kind)], atol=1e-6
                )


@pytest.mark.parametrize(
    ("caption", "order", "side"),
    [
        ("a red circle left of a blue star", (RED_CIRCLE, BLUE_STAR, 0), None),
        ("a red circle to the right of a blue star", (BLUE_STAR, RED_CIRCLE, 0), None),
        ("a red circle above a blue star", (RED_CIRCLE, BLUE_STAR, 1), None),
        ("a picture of a red circle beneath a blue star", (BLUE_STAR, RED_CIRCLE, 1), None),
        ("a red circle on the left", None, (RED_CIRCLE, 0, -1)),
        ("a red circle at the bottom", None, (RED_CIRCLE, 1, 1)),
        ("a red circle and a blue star", None, None),
        ("a red circle left of a red circle", None, None),  # same type: no order to state
    ],
)
def test_text_targets_state_the_mentioned_types_and_order(caption, order, side):
    targets = text_targets(caption)
    mentioned = {RED_CIRCLE} | ({BLUE_STAR} if "blue" in caption else set())
    assert set(np.flatnonzero(targets.present)) == mentioned
    assert targets.weight.min() == 1.0
    assert targets.order == (order or (-1, -1, -1))
    assert targets.side == (side or (-1, -1, 0))


def test_partial_mentions_and_foreign_text_leave_presence_unknown():
    red_shape = text_targets("a red shape on the left")
    reds = [i for i, (color, _) in enumerate(TYPES) if color == "red"]
    assert red_shape.weight[reds].sum() == 0 and red_shape.weight.sum() == len(TYPES) - len(reds)
    assert red_shape.present.sum() == 0 and red_shape.side == (-1, -1, 0)
    foreign = text_targets("the man in the red shirt")
    assert foreign.weight.sum() == 0 and foreign.order == (-1, -1, -1)


def test_loss_equals_hand_computed_value_for_a_constant_head():
    """A head with zero weights predicts logit 0 and position (0.5, 0.5) for every type:
    each BCE is ln 2, the coordinate term is 4 x the mean squared distance to the centre,
    and every order has a gap of 0."""
    head = StructureHead(8)
    torch.nn.init.zeros_(head.proj.weight)
    torch.nn.init.zeros_(head.proj.bias)
    scene = sample_scene(scene_rng(3, 0))
    image = scene_targets(scene)
    texts = ["a red circle left of a blue star", "a blue star at the top", "two red circles"]
    batch = collate_structure([image, None], texts)
    loss, metrics = structure_loss(head, torch.randn(2, 8), torch.randn(3, 8), batch)
    located = image.coords[image.located]
    coords = 4.0 * ((located - 0.5) ** 2).sum(axis=1).mean()
    order = 0.2 * math.log1p(math.exp(MARGIN * SHARPNESS))
    assert ORDER_SCALE == 0.2
    expected = math.log(2) + coords + math.log(2) + order
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert metrics["structure_order_accuracy"] == 0.0  # a gap of 0 is not an order
    distance = np.sqrt(((located - 0.5) ** 2).sum(axis=1)).mean()
    assert metrics["structure_position_error"] == pytest.approx(distance, rel=1e-5)
    assert float(soft_order(torch.tensor(1.0))) < 1e-6


def test_order_gradient_teaches_a_text_embedding_its_relation():
    """Descending the loss on two text embeddings that start equal separates them so that
    each satisfies its own (opposite) order: what an order-blind text tower cannot do."""
    torch.manual_seed(0)
    head = StructureHead(16)
    start = torch.randn(1, 16)
    texts = ["a red circle left of a blue star", "a blue star left of a red circle"]
    batch = collate_structure([None], texts)  # one crop: no image target
    embedding = start.repeat(2, 1).requires_grad_()
    optimizer = torch.optim.SGD([embedding], lr=0.5)
    for _ in range(200):
        loss, metrics = structure_loss(head, torch.zeros(1, 16), embedding, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert metrics["structure_order_accuracy"] == 1.0
    assert torch.cosine_similarity(embedding[0], embedding[1], dim=0) < 0.99


def test_training_with_the_head_logs_it_and_saves_a_plain_clip(tmp_path):
    from refseg.clip.load import load_clip

    task = negclip_task(steps=2, structure_weight=1.0, composition=0.8)
    model = task.build_model()
    assert sum(p.numel() for p in model.structure_head.parameters()) == (16 + 1) * 3 * 49
    result = train(
        task,
        LoopConfig(
            out_dir=tmp_path / "a", steps=2, batch_size=8, threads=1, progress=False, log_every=1
        ),
    )
    logged = [e for e in read_log(tmp_path / "a") if e["split"] == "train"]
    assert all(math.isfinite(e["structure_loss"]) and e["structure_loss"] > 0 for e in logged)
    saved = load_clip(tmp_path / "a", device="cpu")
    assert not any(k.startswith("structure_head") for k in saved.model.state_dict())
    trained = {k: v for k, v in result.model.state_dict().items() if "structure" not in k}
    assert all(torch.equal(saved.model.state_dict()[k], v) for k, v in trained.items())
    # a saved CLIP can start a run with a fresh head
    again = negclip_task(steps=1, structure_weight=1.0, init=str(tmp_path / "a"))
    assert hasattr(again.build_model(), "structure_head")
    with pytest.raises(InputError, match="on-the-fly"):
        negclip_config(on_the_fly=False, negatives=0, positions=False, structure_weight=1.0)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(InputError, match="structure_weight"):
            negclip_config(structure_weight=bad)


def test_batches_move_every_tensor_with_the_loop():
    """accelerate's send_to_device moves only tensors, containers and objects with ``.to``:
    the batch dataclasses must move all their tensors, the nested targets included (checked on
    the meta device, which needs no GPU)."""
    import dataclasses

    from accelerate.utils import send_to_device

    task = negclip_task(steps=2, structure_weight=1.0, composition=0.8, negative_weight=1.0)
    data = task.train_dataset()
    batch = task.collate([data[i] for i in range(4)])
    moved = send_to_device(batch, "meta")
    assert type(moved) is type(batch) and batch.images.device.type == "cpu"
    fields = [getattr(moved, f.name) for f in dataclasses.fields(moved)]
    fields += [getattr(moved.structure, f.name) for f in dataclasses.fields(moved.structure)]
    tensors = [f for f in fields if isinstance(f, torch.Tensor)]
    assert len(tensors) == 14 and all(t.device.type == "meta" for t in tensors)


@pytest.mark.parametrize("grid", [7, 14, 5])
def test_patch_types_name_the_object_that_covers_each_cell(grid):
    """Against a cell-by-cell count of mask pixels (5 does not divide 224: uneven cells)."""
    for index in range(6):
        scene = sample_scene(scene_rng(11, index))
        labels = patch_types(scene, grid).reshape(grid, grid)
        edges_y = [int(i * scene.height / grid) for i in range(grid + 1)]
        edges_x = [int(i * scene.width / grid) for i in range(grid + 1)]
        for row in range(grid):
            for col in range(grid):
                cells = scene.masks[
                    :, edges_y[row] : edges_y[row + 1], edges_x[col] : edges_x[col + 1]
                ]
                cover = cells.reshape(len(scene), -1).mean(axis=1)
                if cover.max() < MIN_COVER:
                    assert labels[row, col] == BACKGROUND
                else:
                    obj = scene.objects[int(cover.argmax())]
                    assert labels[row, col] == TYPE_INDEX[(obj.color, obj.shape)]
        assert (labels != BACKGROUND).any()
    with pytest.raises(ValueError, match="grid"):
        patch_types(scene, 0)


def test_patch_loss_is_cross_entropy_over_scene_patches_only():
    """A zero classifier gives every patch the uniform ln(T + 1); crops (IGNORE rows) add
    nothing, and a batch of crops only gives a zero loss that still backpropagates."""
    head = StructureHead(8, patch_width=4)
    torch.nn.init.zeros_(head.patches.weight)
    torch.nn.init.zeros_(head.patches.bias)
    scene = sample_scene(scene_rng(3, 1))
    batch = collate_structure([scene_targets(scene, patch_grid=7), None], ["a red circle"])
    assert batch.patch_types.shape == (2, 49) and (batch.patch_types[1] == IGNORE).all()
    tokens = torch.randn(2, 49, 4, requires_grad=True)
    loss, metrics = patch_loss(head, tokens, batch.patch_types)
    assert float(loss.detach()) == pytest.approx(math.log(len(TYPES) + 1), rel=1e-6)
    on_objects = batch.patch_types[0][batch.patch_types[0] != BACKGROUND]
    assert len(on_objects)  # uniform logits pick class 0 (argmax's first maximum)
    assert metrics["structure_patch_accuracy"] == float((on_objects == 0).float().mean())
    nothing, found = patch_loss(head, tokens, torch.full((2, 49), IGNORE))
    nothing.backward()
    assert float(nothing.detach()) == 0.0 and math.isnan(found["structure_patch_accuracy"])
    # a classifier that reads the label off one-hot tokens is right on every object patch
    labels = batch.patch_types[:1]
    reader = StructureHead(8, patch_width=len(TYPES) + 1)
    torch.nn.init.eye_(reader.patches.weight)
    torch.nn.init.zeros_(reader.patches.bias)
    one_hot = torch.nn.functional.one_hot(labels, len(TYPES) + 1).float()
    _, perfect = patch_loss(reader, one_hot, labels)
    assert perfect["structure_patch_accuracy"] == 1.0
    with pytest.raises(ValueError, match="patch classifier"):
        StructureHead(8).classify_patches(tokens)


def test_training_with_the_patch_loss_logs_it_and_refuses_what_cannot_have_it(tmp_path):
    """shapes-vit's 7 x 7 grid (tiny-vit's 2 x 2 cells are too big for any object to cover)."""
    from refseg.clip.load import load_clip

    task = negclip_task(
        steps=2, structure_weight=1.0, patch_weight=1.0, composition=0.8, preset="shapes-vit"
    )
    model = task.build_model()
    assert model.structure_head.patches.in_features == model.config.vision.width
    data = task.train_dataset()
    scenes = [s for s in (data[i] for i in range(8)) if s.targets is not None]
    assert scenes and all(s.targets.patches.shape == (49,) for s in scenes)
    train(
        task,
        LoopConfig(
            out_dir=tmp_path / "a", steps=2, batch_size=4, threads=1, progress=False, log_every=1
        ),
    )
    logged = [e for e in read_log(tmp_path / "a") if e["split"] == "train"]
    assert all(e["structure_patch_loss"] > 0 for e in logged)
    saved = load_clip(tmp_path / "a", device="cpu")
    assert not any(k.startswith("structure_head") for k in saved.model.state_dict())
    with pytest.raises(InputError, match="structure head"):
        negclip_config(patch_weight=1.0)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(InputError, match="patch_weight"):
            negclip_config(structure_weight=1.0, patch_weight=bad)
    with pytest.raises(InputError, match="ViT"):
        negclip_task(structure_weight=1.0, patch_weight=1.0, preset="tiny-rn").train_dataset()


def test_a_112_px_vit_starts_the_224_px_preset_with_its_positions_resized():
    """``--init shapes-vit --preset shapes-vit-224``: every weight is the init's, the
    positional table resized as the model itself resizes it for a larger input, so the new
    model's embedding of a 224 px image equals the shipped model's of the same pixels."""
    from refseg.clip.load import load_clip

    shipped = load_clip("shapes-vit", device="cpu").model.eval()
    task = negclip_task(steps=1, preset="shapes-vit-224", init="shapes-vit")
    model = task.build_model().eval()
    assert model.config.vision.image_size == model.config.preprocess.image_size == 224
    new, old = model.state_dict(), shipped.state_dict()
    assert new.keys() == old.keys()
    key = "visual.positional_embedding"
    assert new[key].shape == (1 + 14 * 14, 128) and old[key].shape == (1 + 7 * 7, 128)
    assert all(torch.equal(new[k], old[k]) for k in new if k != key)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), shipped.encode_image(pixels))
    with pytest.raises(InputError, match="not a shapes-rn model"):
        negclip_task(steps=1, preset="shapes-rn", init="shapes-vit").build_model()


def test_forward_with_patches_is_forward_plus_its_final_patch_tokens():
    """One pass gives the patch loss its tokens and the contrastive loss its embedding."""
    from refseg.clip.load import load_clip

    visual = load_clip("shapes-vit", device="cpu").model.visual.eval()
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        embedding, patches = visual.forward_with_patches(pixels)
        torch.testing.assert_close(embedding, visual(pixels), rtol=0, atol=0)
        tokens = visual.run_blocks(visual.embed(pixels))
        torch.testing.assert_close(patches, visual.ln_post(tokens[:, 1:]), rtol=0, atol=0)
    assert patches.shape == (2, 49, 128)
