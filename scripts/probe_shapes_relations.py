"""Does a CLIP trained on ShapesRef read spatial relations from a whole scene?

For held-out scenes, each clearly related pair (i left of / right of / above / below j)
gives a caption and its swapped twin ("a red circle left of a blue star" vs "a blue star
left of a red circle"). Accuracy = how often the image prefers the true one; 50% is chance.
A control does the same with colours swapped between the two objects' phrases.

    python scripts/probe_shapes_relations.py [--clip shapes-vit] [--scenes 300]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from PIL import Image

from refseg.clip import load_clip
from refseg.data.shapes import sample_scene, scene_rng
from refseg.data.shapes.programs import related_pairs

RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="shapes-vit")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    clip = load_clip(args.clip, device="cpu")
    relation_hits, colour_hits, total = 0, 0, 0
    for index in range(args.scenes):
        scene = sample_scene(scene_rng(args.seed, index))
        objs = scene.objects
        pairs = [
            (i, j, r)
            for i, j, r in related_pairs(scene)
            if (objs[i].shape, objs[i].color) != (objs[j].shape, objs[j].color)
        ]
        if not pairs:
            continue
        i, j, r = pairs[0]
        a, b = objs[i], objs[j]
        true = f"a {a.color} {a.shape} {RELATION_WORDS[r]} a {b.color} {b.shape}"
        swapped = f"a {b.color} {b.shape} {RELATION_WORDS[r]} a {a.color} {a.shape}"
        recoloured = f"a {b.color} {a.shape} {RELATION_WORDS[r]} a {a.color} {b.shape}"
        with torch.inference_mode():
            pixels = clip.preprocess(Image.fromarray(scene.image), mode="squash")[None]
            image = F.normalize(clip.encode_image(pixels), dim=-1)
            text = F.normalize(clip.encode_texts([true, swapped, recoloured]), dim=-1)
            sims = (image @ text.t())[0]
        relation_hits += int(sims[0] > sims[1])
        colour_hits += int(sims[0] > sims[2])
        total += 1
    print(f"{args.clip}: {total} scenes")
    print(f"true relation preferred over swapped order: {100 * relation_hits / total:.1f}%")
    print(f"true colours preferred over swapped colours: {100 * colour_hits / total:.1f}%")


if __name__ == "__main__":
    main()
