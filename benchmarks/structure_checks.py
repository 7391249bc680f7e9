"""Can each tower of a shapes CLIP learn what the structure head asks, when told alone?

Issue #13, trial 8 (``benchmarks/negclip_trials.md``). Two supervised checks, each training
one tower of a CLIP plus a fresh :class:`refseg.train.structure.StructureHead` on the
structure loss only (no contrastive term), AdamW, 1 thread:

- ``text``: random captions "a <colour> <shape> <relation> a <colour> <shape>" (``--kind
  relation``) or "a <colour> <shape> and a <colour> <shape>" (``--kind binding``), batch 64;
  prints on 400 held-out captions the share of stated orders the head reads right
  (relation) or the share whose two mentioned types outscore the colour-swapped pair
  (binding).
- ``image``: fresh ShapesRef scenes (no crops), batch 32, with ``--spatial-readout`` for a
  ViT; prints on 40 probe scenes (seed 5) the head's mean position error (fraction of the
  image, for types that occur once) and, on the binding probe pairs, the share whose true
  types outscore the swapped ones. ``--mean-readout`` adds a zero-initialised linear map of
  the mean patch token to the embedding instead (one map for every place);
  ``--token-readout`` a per-token MLP, mean-pooled (each token classified before pooling).
  ``--probe-scenes`` sets how many probe scenes are scored; ``--freeze-tower`` trains the
  head and the readout alone.

``patches`` asks whether a ViT's final patch tokens (``ln_post``, frozen) carry each
object's colour, shape and colour x shape type: linear classifiers trained on the tokens of
patches that one object covers for at least half (300 fresh scenes), scored on 100 others;
and where the patch lies: a ridge regression of its centre, against always the mean.

``pooled`` asks whether those tokens bind colour to shape once pooled: on the binding probe
pairs of 100 scenes, linear readouts of which types are present from the mean token, and from
a type classifier applied to each token before max-pooling (300 scenes to fit both).

``patch-train`` trains a ViT's image tower and the head's patch classifier on the patch loss
alone (``--patch-weight``'s term: the type under every patch of fresh scenes, batch 32) and
prints, on the object patches of 64 held-out scenes, how often the predicted colour, shape
and type are right: can the tower put shape into its patch tokens when told directly?

A further command decodes a ``--structure-weight`` run's head (its ``checkpoint.pt``) on the
probe pairs of fresh scenes: on relation pairs, how often each tower's head puts the two
types in the stated order and how often the cosine prefers the true caption; on binding pairs,
how often each tower's head scores the true caption's types above the swapped ones.

    python benchmarks/structure_checks.py text --kind relation --steps 600
    python benchmarks/structure_checks.py image --steps 300 --spatial-readout
    python benchmarks/structure_checks.py image --clip runs/two/p1 --steps 400 --mean-readout
    python benchmarks/structure_checks.py decode --run runs/structure/W
    python benchmarks/structure_checks.py patches [--clip shapes-rn]
    python benchmarks/structure_checks.py pooled --clip runs/two/p1
    python benchmarks/structure_checks.py patch-train --image-size 224 --steps 1200 --every 25
    python benchmarks/structure_checks.py patch-train --image-size 224 --steps 1500 --save runs/p1

``patch-train --image-size`` first resizes the tower to that input (its positional table
resized bicubic, as ``refseg train clip --init`` does across sizes), so the table trains at
the new grid; ``--save DIR`` writes the result as a CLIP (the head left out) that ``refseg
train clip --preset shapes-vit-224 --init DIR`` can continue: a first stage of the patch loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refseg.clip.load import load_clip, save_clip
from refseg.clip.model import (
    CLIP,
    COORDINATE_FREQUENCIES,
    at_input_size,
    patch_centres,
    patch_coordinates,
    positions_resized,
)
from refseg.clip.preprocess import resize_for_clip
from refseg.data.shapes.scene import sample_scene, scene_rng
from refseg.data.shapes.words import COLORS, RELATION_PHRASES, SHAPES
from refseg.errors import RefsegError
from refseg.eval.probe import probe_pairs
from refseg.train.contrastive import pixels_from_uint8, trim_tokens
from refseg.train.fresh_pairs import FreshPairs
from refseg.train.structure import (
    BACKGROUND,
    TYPE_INDEX,
    TYPES,
    StructureHead,
    collate_structure,
    patch_loss,
    patch_types,
    scene_targets,
    structure_loss,
    text_targets,
)

NO_TEXT = "-"  # a text outside the grammar: no text target, so only images count


def scene_pixels(scene, size: int) -> torch.Tensor:
    """A scene squashed to the model's input: ``uint8 [size, size, 3]``."""
    return torch.from_numpy(np.array(resize_for_clip(scene.pil_image(), size, "squash")))


def random_caption(rng: random.Random, kind: str) -> str:
    """A two-object relation or list caption of random colours and shapes."""
    (c1, c2), (s1, s2) = rng.sample(COLORS, 2), rng.sample(SHAPES, 2)
    if kind == "binding":
        return f"a {c1} {s1} and a {c2} {s2}"
    relation = rng.choice(sorted(RELATION_PHRASES))
    return f"a {c1} {s1} {rng.choice(RELATION_PHRASES[relation])} a {c2} {s2}"


def binding_hit(caption: str, logits: torch.Tensor) -> bool:
    """For "a c1 s1 and a c2 s2": the two mentioned types outscore (c2 s1, c1 s2)."""
    words = caption.split()
    (c1, s1), (c2, s2) = (words[1], words[2]), (words[5], words[6])
    true = logits[TYPE_INDEX[(c1, s1)]] + logits[TYPE_INDEX[(c2, s2)]]
    return bool(true > logits[TYPE_INDEX[(c2, s1)]] + logits[TYPE_INDEX[(c1, s2)]])


def prefers_true_types(pair, scores: torch.Tensor) -> bool:
    """For a binding probe pair: the types its true caption names score higher, on average,
    than those of its colour-swapped twin (``scores``: one per type of :data:`TYPES`)."""
    true = torch.tensor(text_targets(pair.positive).present).bool()
    false = torch.tensor(text_targets(pair.negative).present).bool()
    return bool(scores[true].mean() > scores[false].mean())


def check_text(model: CLIP, tokenizer, args: argparse.Namespace) -> None:
    head = StructureHead(model.config.embed_dim)
    tower = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    optimizer = torch.optim.AdamW([*tower, *head.parameters()], lr=args.lr, weight_decay=0.0)
    rng = random.Random(0)
    held_out = [random_caption(random.Random(10_000 + i), args.kind) for i in range(400)]
    no_image = torch.zeros(1, model.config.embed_dim)

    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode_text(trim_tokens(tokenizer(texts)), tokenizer.eot_id)

    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                features = encode(held_out)
                if args.kind == "binding":
                    logits, _ = head(features)
                    score = np.mean(
                        [binding_hit(c, r) for c, r in zip(held_out, logits, strict=True)]
                    )
                else:
                    batch = collate_structure([None], held_out)
                    score = structure_loss(head, no_image, features, batch)[1][
                        "structure_order_accuracy"
                    ]
            print(f"step {step}: held-out {args.kind} {score:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        texts = [random_caption(rng, args.kind) for _ in range(64)]
        loss, _ = structure_loss(head, no_image, encode(texts), collate_structure([None], texts))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def pooled_readout(width: int, dim: int, args: argparse.Namespace) -> nn.Module | None:
    """A map applied to every patch token (then mean-pooled) and added to the embedding:
    linear (``--mean-readout``: a linear map of the mean token) or a per-token MLP
    (``--token-readout``: each token classified before pooling). The last layer starts at
    zero, so the embedding starts as the plain one; ``None`` when neither is asked for."""
    if args.token_readout:
        extra = 4 * COORDINATE_FREQUENCIES if args.readout_coordinates else 0
        readout = nn.Sequential(
            nn.Linear(width + extra, 4 * width), nn.GELU(), nn.Linear(4 * width, dim)
        )
    elif args.mean_readout:
        readout = nn.Sequential(nn.Linear(width, dim, bias=False))
    else:
        return None
    nn.init.zeros_(readout[-1].weight)
    return readout


def check_image(model: CLIP, args: argparse.Namespace) -> None:
    head = StructureHead(model.config.embed_dim)
    width, dim = model.config.vision.width, model.config.embed_dim
    readout = pooled_readout(width, dim, args)
    params = [*head.parameters(), *(readout.parameters() if readout is not None else [])]
    if args.freeze_tower:  # only the head and the readout learn: is the readout able?
        model.visual.requires_grad_(False)
    else:
        params += [*model.visual.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def embed(image: torch.Tensor) -> torch.Tensor:
        """The image embedding, plus the pooled readout of the patch tokens if asked for."""
        if readout is None:
            return model.encode_image(image)
        embedding, patches = model.visual.forward_with_patches(image)
        if args.readout_coordinates:  # the readout is told where each token lies
            grid = int(round(patches.shape[1] ** 0.5))
            where = patch_coordinates(grid, grid).expand(patches.shape[0], -1, -1)
            patches = torch.cat([patches, where], dim=-1)
        return embedding + readout(patches).mean(dim=1)

    size = model.config.preprocess.image_size
    data = FreshPairs(
        0, (args.steps + 1) * 32, size, negatives=0, crop_fraction=0.0, structure=True
    )
    probes = []
    for index in range(args.probe_scenes):
        scene = sample_scene(scene_rng(5, index, "probe"))
        pixels = scene_pixels(scene, size)
        binding = [p for p in probe_pairs(scene)[0] if p.kind == "binding"]
        probes.append((pixels, scene_targets(scene), binding))

    def evaluate() -> tuple[float, float, int]:
        model.eval()
        errors, hits = [], []
        with torch.no_grad():
            for pixels, targets, pairs in probes:
                image = pixels_from_uint8(pixels[None], model.config.preprocess)
                logits, coords = head(embed(image))
                error = (coords[0] - torch.from_numpy(targets.coords)).norm(dim=-1)
                errors += error[torch.from_numpy(targets.located)].tolist()
                for pair in pairs:
                    hits.append(prefers_true_types(pair, logits[0]))
        model.train()
        return float(np.mean(errors)), float(np.mean(hits)), len(hits)

    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            error, binding, pairs = evaluate()
            print(f"step {step}: position error {error:.3f}, binding {binding:.3f} "
                  f"({pairs} pairs) ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        samples = [data[step * 32 + k] for k in range(32)]
        images = pixels_from_uint8(torch.stack([s.image for s in samples]), model.config.preprocess)
        batch = collate_structure([s.targets for s in samples], [NO_TEXT])
        no_text = torch.zeros(1, model.config.embed_dim)
        loss, _ = structure_loss(head, embed(images), no_text, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def cell_features(model: CLIP, image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Final features of each grid cell, ``[grid * grid, C]``, and the grid side: a ViT's
    patch tokens after ``ln_post``, a ResNet's trunk map (what its attention pool reads)."""
    if model.config.vision.is_vit:
        patches = model.visual.forward_with_patches(image)[1][0]
        return patches, int(round(patches.shape[0] ** 0.5))
    trunk = model.visual.trunk(image)[0]  # [C, g, g]
    return trunk.flatten(1).T, trunk.shape[-1]


def scene_cells(model: CLIP, scene, size: int) -> tuple[torch.Tensor, int]:
    """:func:`cell_features` of ``scene`` squashed to ``size`` px."""
    image = pixels_from_uint8(scene_pixels(scene, size)[None], model.config.preprocess)
    return cell_features(model, image)


def patch_labels(
    model: CLIP, scenes: range, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final cell features ``[N, C]`` (input squashed to ``size``) of the cells one object
    covers for at least half, that object's type index ``[N]`` and the cell's centre ``[N, 2]``
    (x, y as fractions of the image)."""
    tokens, labels, centres = [], [], []
    with torch.no_grad():
        for index in scenes:
            scene = sample_scene(scene_rng(11, index, "probe"))
            patches, grid = scene_cells(model, scene, size)
            centre_of = patch_centres(grid, grid)
            masks = torch.from_numpy(scene.masks).float()[:, None]  # [N, 1, H, W]
            cover = F.adaptive_avg_pool2d(masks, grid)[:, 0].flatten(1)
            share, owner = cover.max(dim=0)  # per patch: the object covering most of it
            for patch in (share >= 0.5).nonzero().flatten().tolist():
                obj = scene.objects[int(owner[patch])]
                tokens.append(patches[patch])
                labels.append(TYPE_INDEX[(obj.color, obj.shape)])
                centres.append(centre_of[patch])
    return torch.stack(tokens), torch.tensor(labels), torch.stack(centres)


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, multilabel: bool) -> nn.Linear:
    """A linear probe fitted full-batch (Adam, 300 steps): softmax, or sigmoid per class."""
    probe = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    loss_of = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
    for _ in range(300):
        loss = loss_of(probe(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def ridge_error(train_x, train_y, test_x, test_y) -> tuple[float, float]:
    """Mean distance to ``test_y`` of a ridge regression (standardised inputs, float64) fitted
    on the training pair, and of always answering the training mean."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6

    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - mean) / std, torch.ones(len(x), 1)], dim=1).double()

    a = design(train_x)
    weights = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(a.shape[1]).double(), a.T @ train_y)
    error = (design(test_x) @ weights - test_y).norm(dim=1).mean()
    baseline = (test_y - train_y.mean(0)).norm(dim=1).mean()
    return float(error), float(baseline)


def check_patches(model: CLIP, size: int) -> None:
    train_x, train_y, train_at = patch_labels(model, range(300), size)
    test_x, test_y, test_at = patch_labels(model, range(300, 400), size)
    shapes = len(SHAPES)
    targets = {
        "colour": lambda y: y // shapes,
        "shape": lambda y: y % shapes,
        "type (colour x shape)": lambda y: y,
    }
    for name, target in targets.items():
        classes = int(target(torch.tensor(len(TYPE_INDEX) - 1))) + 1
        probe = fit_linear(train_x, target(train_y), classes, multilabel=False)
        with torch.no_grad():
            accuracy = (probe(test_x).argmax(dim=1) == target(test_y)).float().mean()
        print(f"  {name:<22} {float(accuracy):.3f} on {len(test_y)} held-out patches "
              f"({len(train_y)} to train)")  # fmt: skip
    error, baseline = ridge_error(train_x, train_at.double(), test_x, test_at.double())
    print(f"  {'own position (x, y)':<22} error {error:.3f} (always the mean: {baseline:.3f})")


def check_pooled(model: CLIP, size: int) -> None:
    """Do a scene's frozen patch tokens bind colour to shape once pooled? Two linear readouts
    of which types are present, scored on the binding probe pairs (true types vs the
    colour-swapped ones): presence from the *mean* token, and a type classifier applied to
    *each* token, its probabilities max-pooled (classify, then pool)."""

    def tokens_of(seed: int, count: int) -> list[tuple]:
        rows = []
        with torch.no_grad():
            for index in range(count):
                scene = sample_scene(scene_rng(seed, index, "probe"))
                patches, grid = scene_cells(model, scene, size)
                rows.append((scene, patches, torch.from_numpy(patch_types(scene, grid))))
        return rows

    train, test = tokens_of(11, 300), tokens_of(5, 100)
    mean_x = torch.stack([patches.mean(0) for _, patches, _ in train])
    present = torch.from_numpy(np.stack([scene_targets(scene).present for scene, _, _ in train]))
    pooled = fit_linear(mean_x, present, len(TYPES), multilabel=True)
    per_patch = fit_linear(
        torch.cat([patches for _, patches, _ in train]),
        torch.cat([labels for _, _, labels in train]),
        len(TYPES) + 1,
        multilabel=False,
    )
    readouts = {
        "mean token, linear presence": lambda t: pooled(t.mean(0)),
        "each token classified, max-pooled": lambda t: per_patch(t).softmax(-1).amax(0)[:-1],
    }
    for name, readout in readouts.items():
        hits = []
        with torch.no_grad():
            for scene, patches, _ in test:
                scores = readout(patches)
                for pair in (p for p in probe_pairs(scene)[0] if p.kind == "binding"):
                    hits.append(prefers_true_types(pair, scores))
        print(f"  {name:<36} binding {np.mean(hits):.3f} ({len(hits)} pairs)")


def resized_vit(model: CLIP, size: int) -> CLIP:
    """``model`` (a ViT) built for ``size`` px input, its positional table resized to the grid."""
    resized = CLIP(at_input_size(model.config, size))
    resized.load_state_dict(positions_resized(model.state_dict(), resized.config.vision))
    return resized


def train_patches(model: CLIP, size: int, args: argparse.Namespace) -> None:
    """The patch loss alone on the image tower (see the module docstring)."""
    visual, grid = model.visual, size // model.visual.patch_size
    head = StructureHead(model.config.embed_dim, model.config.vision.width)
    params = [*visual.parameters(), *head.parameters()]
    if args.position_weight:  # a linear readout of each patch's own centre and its object's
        where = nn.Linear(model.config.vision.width, 4)
        params += [*where.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    own = patch_centres(grid, grid)  # [grid * grid, 2]
    scenes = {"negatives": 0, "crop_fraction": 0.0, "structure": True, "patch_grid": grid}
    data = FreshPairs(0, (args.steps + 1) * 32, size, **scenes)
    held = FreshPairs(9, 64, size, **scenes)
    held_out = [held[i] for i in range(64)]

    def tokens(samples: list) -> torch.Tensor:
        images = torch.stack([s.image for s in samples])
        return visual.forward_with_patches(pixels_from_uint8(images, model.config.preprocess))[1]

    def position_errors(samples: list, found: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-patch distances ``[B, P]`` of the predicted own centre and object centre, and
        where the object centre is defined (an object patch of a type that occurs once)."""
        labels = torch.from_numpy(np.stack([s.targets.patches for s in samples]))
        coords = torch.from_numpy(np.stack([s.targets.coords for s in samples]))  # [B, T, 2]
        located = torch.from_numpy(np.stack([s.targets.located for s in samples]))
        on_object = labels != BACKGROUND
        kinds = labels.clamp(max=len(TYPES) - 1)
        centre = torch.gather(coords, 1, kinds[..., None].expand(-1, -1, 2))  # [B, P, 2]
        defined = on_object & torch.gather(located, 1, kinds)
        predicted = where(found)
        own_error = (predicted[..., :2] - own).norm(dim=-1)
        return own_error, (predicted[..., 2:] - centre).norm(dim=-1), defined

    def evaluate() -> str:
        with torch.no_grad():
            labels = torch.from_numpy(np.stack([s.targets.patches for s in held_out]))
            found = tokens(held_out)
            predicted = head.classify_patches(found).argmax(dim=-1)
        on_objects = labels != BACKGROUND
        pairs = list(zip(labels[on_objects].tolist(), predicted[on_objects].tolist(), strict=True))
        named = [(TYPES[t], TYPES[p] if p < len(TYPES) else (None, None)) for t, p in pairs]
        colour = np.mean([t[0] == p[0] for t, p in named])
        shape = np.mean([t[1] == p[1] for t, p in named])
        kind = np.mean([t == p for t, p in named])
        line = f"colour {colour:.3f}  shape {shape:.3f}  type {kind:.3f} ({len(pairs)} patches)"
        if not args.position_weight:
            return line
        with torch.no_grad():
            own_error, centre_error, defined = position_errors(held_out, found)
        return (
            f"{line}  own position {own_error[on_objects].mean():.3f}"
            f"  object centre {centre_error[defined].mean():.3f}"
        )

    start = time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            print(f"step {step:>5}  {evaluate()}  {time.time() - start:.0f} s", flush=True)
        if step == args.steps:
            break
        samples = [data[step * 32 + k] for k in range(32)]
        labels = collate_structure([s.targets for s in samples], [NO_TEXT]).patch_types
        found = tokens(samples)
        loss, _ = patch_loss(head, found, labels)
        if args.position_weight:  # where: every patch its own centre, object patches theirs
            own_error, centre_error, defined = position_errors(samples, found)
            loss = loss + args.position_weight * (
                own_error.square().mean() + centre_error[defined].square().mean()
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def decode_run(args: argparse.Namespace) -> None:
    import json

    from refseg.train import checkpoint
    from refseg.train.contrastive import ContrastiveConfig, ContrastiveTask

    run = Path(args.run)
    try:  # a run directory is data: any malformed part ends in one clear line
        config = ContrastiveConfig(**json.loads((run / "TRAINING.json").read_text())["config"])
        if not config.structure_weight:
            raise ValueError("the run trained no structure head (--structure-weight 0)")
        task = ContrastiveTask(config, evaluate_crops=False, progress=False)
        model = task.build_model()
        state = checkpoint.load(run / "checkpoint.pt")  # weights only, format checked
        model.load_state_dict(state["model"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, RefsegError) as exc:
        message = f"decode: cannot read the run {run}: {type(exc).__name__}: {exc}"
        raise SystemExit(message) from None
    model.eval()
    head, tokenizer = model.structure_head, task.tokenizer
    size = model.config.preprocess.image_size
    counts: dict[str, list[bool]] = {}
    with torch.no_grad():
        for index in range(args.scenes):
            scene = sample_scene(scene_rng(args.seed, index, "probe"))
            pixels = scene_pixels(scene, size)
            image = model.encode_image(pixels_from_uint8(pixels[None], model.config.preprocess))
            image_logits, image_coords = head(image)
            for pair in probe_pairs(scene)[0]:
                if pair.kind == "position":
                    continue
                tokens = trim_tokens(tokenizer([pair.positive, pair.negative]))
                text = model.encode_text(tokens, tokenizer.eot_id)
                text_logits, text_coords = head(text)
                cosine = F.cosine_similarity(image, text)
                counts.setdefault(f"{pair.kind}: cosine prefers the true caption", []).append(
                    bool(cosine[0] > cosine[1])
                )
                true = text_targets(pair.positive)
                if pair.kind == "relation" and true.order[0] >= 0:
                    first, second, axis = true.order
                    for tower, coords in (("image", image_coords), ("text", text_coords)):
                        counts.setdefault(f"relation: {tower} head orders the types", []).append(
                            bool(coords[0, second, axis] > coords[0, first, axis])
                        )
                if pair.kind == "binding":
                    for tower, logits in (("image", image_logits), ("text", text_logits)):
                        counts.setdefault(
                            f"binding: {tower} head prefers the true types", []
                        ).append(prefers_true_types(pair, logits[0]))
    print(f"{run} at step {state['step']}, probe seed {args.seed}, {args.scenes} scenes")
    for name, hits in sorted(counts.items()):
        print(f"  {name:<48} {np.mean(hits):.3f} ({len(hits)} pairs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "tower", choices=("text", "image", "decode", "patches", "patch-train", "pooled")
    )
    parser.add_argument("--run", help="decode: a --structure-weight run's directory")
    parser.add_argument("--seed", type=int, default=5, help="decode: probe seed")
    parser.add_argument("--scenes", type=int, default=60, help="decode: probe scenes")
    parser.add_argument("--clip", default="shapes-vit", help="CLIP to start from")
    parser.add_argument("--kind", choices=("relation", "binding"), default="relation")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100, help="evaluate every N steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--spatial-readout", action="store_true", help="ViT: add the readout")
    parser.add_argument(
        "--mean-readout",
        action="store_true",
        help="image, ViT: add a zero-initialised linear map of the mean patch token",
    )
    parser.add_argument(
        "--token-readout",
        action="store_true",
        help="image, ViT: add a zero-initialised per-token MLP, mean-pooled",
    )
    parser.add_argument(
        "--readout-coordinates",
        action="store_true",
        help="image, with --token-readout: give the MLP each patch's Fourier coordinates",
    )
    parser.add_argument(
        "--freeze-tower", action="store_true", help="image: train the head and readout only"
    )
    parser.add_argument(
        "--probe-scenes", type=int, default=40, help="image: probe scenes (seed 5) scored"
    )
    parser.add_argument(
        "--image-size", type=int, help="patches, patch-train: input side (default: the CLIP's)"
    )
    parser.add_argument("--save", help="patch-train: write the trained CLIP to this directory")
    parser.add_argument(
        "--position-weight",
        type=float,
        default=0.0,
        help="patch-train: add W x the squared errors of a linear readout of each patch's own "
        "centre and (object patches) its object's centre (default 0: type only)",
    )
    parser.add_argument(
        "--from-scratch", action="store_true", help="random weights of --clip's architecture"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.tower == "decode":
        if not args.run:
            parser.error("decode needs --run DIR")
        decode_run(args)
        return
    try:  # a CLIP is data: a missing or malformed one ends in one clear line
        loaded = load_clip(args.clip, device="cpu")
    except RefsegError as error:
        parser.error(f"--clip {args.clip}: {error}")
    model = loaded.model
    if args.spatial_readout:
        config = loaded.config
        vision = dataclasses.replace(config.vision, spatial_readout=True)
        model = CLIP(dataclasses.replace(config, vision=vision))
        model.load_state_dict(loaded.model.state_dict(), strict=False)  # readout starts at 0
    if args.from_scratch:
        model = CLIP(model.config)
    if args.tower == "pooled":
        size = args.image_size or model.config.preprocess.image_size
        print(f"{args.clip} at {size} px: linear readouts of pooled frozen patch tokens")
        check_pooled(model, size)
    elif args.tower == "patches":
        size = args.image_size or model.config.preprocess.image_size
        print(f"{args.clip} at {size} px: linear probes on frozen final cell features")
        check_patches(model, size)
    elif args.tower == "patch-train":
        if not model.config.vision.is_vit:
            parser.error(f"patch-train trains ViT patch tokens; {args.clip} is not a ViT")
        size = args.image_size or model.config.preprocess.image_size
        if size < 1 or size % model.visual.patch_size:
            parser.error(f"--image-size {size} is not a positive multiple of the patch size")
        if args.save:  # fail before an hour of training, not after
            try:
                Path(args.save).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                parser.error(f"--save {args.save}: {error.strerror}")
        model = resized_vit(model, size)
        print(f"{args.clip} at {size} px: the patch loss alone, lr {args.lr}")
        train_patches(model, size, args)
        if args.save:
            metadata = {
                "stage": f"structure_checks.py patch-train from {args.clip}, "
                f"{args.steps} steps, lr {args.lr}, {size} px"
            }
            print(f"saved {save_clip(model, loaded.tokenizer, args.save, metadata)}")
    elif args.tower == "text":
        check_text(model, loaded.tokenizer, args)
    else:
        check_image(model, args)


if __name__ == "__main__":
    main()
