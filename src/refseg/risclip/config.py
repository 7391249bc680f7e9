"""RISCLIP settings: one dataclass, every reconstructed (**[D]**) choice a named field.

SPEC §3 marks with [D] what the paper (Kim et al., NAACL 2024, arXiv 2306.08498) could not
be read for; those defaults live here so each can be checked and changed in one place.
Presets: the paper's ViT-B/16 and ViT-L/14 settings on RefCOCO, and ``shapes`` for the
packaged ``shapes-vit`` CLIP on ShapesRef.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refseg.errors import InputError

# Largest input side: the side of the 2048x2048 pixel cap. Beyond it a typo (an extra zero)
# would allocate a patch grid's attention quadratic in the side before any error.
MAX_IMAGE_SIZE = 2048


@dataclass(frozen=True)
class RisclipConfig:
    """Architecture, loss and optimisation settings of one RISCLIP model.

    Ablation switches (the paper's table): ``use_adapters``, ``use_cfe``, ``use_ske``,
    ``use_decoder``. With all four off the model is CLIP's MaskCLIP-style grounding.
    """

    clip: str = "ViT-B/16"  # a load_clip source: name, file or directory
    image_size: int = 448  # [D] 28x28 grid for ViT-B/16 (positional embedding interpolated)
    # Images are squashed to image_size x image_size ([D]: a crop would cut referents off),
    # and predictions resized back to the image.
    # Adapters [D]: y = f(x) + W_up GELU(W_down f(x)) on each sub-layer output, W_up = 0.
    use_adapters: bool = True
    adapter_width: int = 64
    # CFE [D]: shared width and heads; W_s2t / W_s2v zero-initialised.
    use_cfe: bool = True
    cfe_width: int = 512
    cfe_heads: int = 8
    # SKE [D] (our reconstruction): transformer layers over [patches; words] in the joint space.
    use_ske: bool = True
    ske_layers: int = 2
    ske_heads: int = 8
    ske_mlp_ratio: int = 4
    # Decoder (LAVT's) [D]: taps are 0-based image blocks (None: blocks L/4, L/2, 3L/4, L).
    use_decoder: bool = True
    decoder_taps: tuple[int, int, int, int] | None = None
    decoder_widths: tuple[int, int, int, int] = (256, 256, 256, 256)  # D_4, D_3, D_2, D_1
    # [D] The decoder's logits are added to the upsampled stage-1 grounding logits and its
    # head starts at zero, so an untrained decoder predicts exactly what stage 1 does and
    # stage 2 can only start from there (without it, a randomly initialised decoder first has
    # to relearn the map from one of its input channels: see benchmarks/shapesref.md).
    decoder_residual: bool = True
    threshold: float = 0.5  # mask = sigmoid(logit) > threshold
    # Loss [D]: dice + focal_weight * focal(alpha, gamma), both stages.
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_weight: float = 20.0
    dice_smooth: float = 1.0
    # Optimisation [D]: AdamW, poly decay, batch, epochs per stage.
    lr: float = 1e-4
    weight_decay: float = 0.01
    poly_power: float = 0.9
    batch_size: int = 32
    epochs_stage1: int = 40
    epochs_stage2: int = 20

    def __post_init__(self) -> None:
        positive = {
            "image_size": self.image_size,
            "adapter_width": self.adapter_width,
            "cfe_width": self.cfe_width,
            "cfe_heads": self.cfe_heads,
            "ske_heads": self.ske_heads,
            "ske_mlp_ratio": self.ske_mlp_ratio,
            "batch_size": self.batch_size,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise InputError(f"RISCLIP {name} must be >= 1; got {value}")
        if int(self.image_size) > MAX_IMAGE_SIZE:
            raise InputError(
                f"RISCLIP image_size must be <= {MAX_IMAGE_SIZE} (the pixel cap's side); "
                f"got {self.image_size}"
            )
        if self.cfe_width % self.cfe_heads:
            raise InputError(f"cfe_width {self.cfe_width} is not divisible by {self.cfe_heads}")
        if self.ske_layers < 0 or min(self.decoder_widths) < 1 or len(self.decoder_widths) != 4:
            raise InputError("ske_layers must be >= 0 and decoder_widths four positive ints")
        if self.decoder_taps is not None and len(self.decoder_taps) != 4:
            raise InputError(f"decoder_taps needs 4 block indices; got {self.decoder_taps}")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must lie in (0, 1); got {self.threshold}")

    def taps(self, blocks: int) -> tuple[int, ...]:
        """0-based image blocks feeding the decoder (v_1..v_4)."""
        if self.decoder_taps is not None:
            taps = tuple(int(t) for t in self.decoder_taps)
        else:
            taps = tuple(max(0, round(i * blocks / 4) - 1) for i in range(1, 5))
        if not all(0 <= t < blocks for t in taps):
            raise InputError(f"decoder taps {taps} must lie in 0..{blocks - 1}")
        return taps

    def ablated(self, **switches: bool) -> RisclipConfig:
        """A copy with some of ``use_adapters/use_cfe/use_ske/use_decoder`` changed."""
        return dataclasses.replace(self, **switches)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RisclipConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused (a user file is data)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown RISCLIP config keys: {', '.join(unknown)}")
        values = dict(data)
        for key in ("decoder_taps", "decoder_widths"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


# Paper settings on RefCOCO (SPEC §3). ViT-L/14: 32x32 grid at 448 px, CFE pairs image block
# 2k+1 with text block k (the proportional pairing of model.cfe_pairs), taps 6/12/18/24.
PRESETS: dict[str, RisclipConfig] = {
    "vit-b16-refcoco": RisclipConfig(clip="ViT-B/16", decoder_taps=(2, 5, 8, 11)),
    "vit-l14-refcoco": RisclipConfig(clip="ViT-L/14", cfe_width=768, decoder_taps=(5, 11, 17, 23)),
    # shapes-vit: 128-wide towers (6 image blocks, 3 text blocks), run at its own 112 px
    # (7x7 grid, no positional interpolation). 224 px (14x14 via interpolation) halves the
    # patch footprint but costs 3.7x per training step on a CPU (3.5 s vs 0.95 s at batch 16,
    # one thread): within a 15-minute CPU budget per stage that is ~250 steps instead of ~950.
    # The decoder's four x2 stages end at 112 px and the logits are resized to the image.
    # Narrow decoder stages keep the high-resolution convolutions affordable.
    "shapes": RisclipConfig(
        clip="shapes-vit",
        image_size=112,
        adapter_width=32,
        cfe_width=128,
        cfe_heads=4,
        ske_heads=4,
        decoder_taps=(1, 2, 4, 5),
        decoder_widths=(64, 32, 16, 16),
        lr=1e-3,
        batch_size=16,
        epochs_stage1=8,
        epochs_stage2=4,
    ),
}


def preset(name: str, **overrides: Any) -> RisclipConfig:
    """A preset by name, with fields overridden."""
    if name not in PRESETS:
        raise InputError(f"unknown RISCLIP preset {name!r}; choose from {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


__all__ = ["PRESETS", "RisclipConfig", "preset"]
