"""RISCLIP checkpoints: the trained (non-CLIP) weights plus the config, never a pickle.

A RISCLIP directory holds ``risclip.safetensors`` (adapters, CFE, SKE, grounding head,
decoder; the config JSON and training stage in its metadata). The frozen CLIP is not
copied: the config's ``clip`` field names it (``shapes-vit``, ``ViT-B/16`` or a path) and
:func:`refseg.clip.load_clip` loads it. Packaged models: ``risclip-shapes``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from refseg.clip import LoadedClip, load_clip
from refseg.errors import CheckpointFormatError, CheckpointNotFoundError
from refseg.risclip.config import RisclipConfig
from refseg.risclip.model import Risclip

WEIGHTS_NAME = "risclip.safetensors"
FORMAT = "refseg-risclip-1"
PACKAGED = ("risclip-shapes",)


def save_risclip(model: Risclip, directory: str | os.PathLike, stage: int) -> Path:
    """Write ``risclip.safetensors`` (trained weights; config and stage in the metadata)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.trained_state().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "stage": str(int(stage)),
    }
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, directory / WEIGHTS_NAME)
    return directory


def resolve(source: str | os.PathLike) -> Path:
    """A packaged name or a directory/file -> the ``risclip.safetensors`` path."""
    name = str(source)
    if name in PACKAGED and not Path(name).exists():
        path = Path(str(resources.files("refseg") / "weights" / name))
    else:
        path = Path(name).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"no RISCLIP checkpoint at {name!r} (a directory with {WEIGHTS_NAME}, the file "
            f"itself, or one of: {', '.join(PACKAGED)})"
        )
    return path


def read_risclip(
    source: str | os.PathLike,
) -> tuple[RisclipConfig, int, dict[str, torch.Tensor]]:
    """``(config, stage, state)`` of a checkpoint; tensors only (safetensors)."""
    from safetensors import safe_open

    path = resolve(source)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise CheckpointFormatError(f"{path} is not a readable safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointFormatError(f"{path} is not a RISCLIP checkpoint (format {FORMAT})")
    try:
        config = RisclipConfig.from_dict(json.loads(metadata["config"]))
        stage = int(metadata["stage"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointFormatError(f"{path} has an unreadable RISCLIP config: {exc}") from None
    return config, stage, state


def load_state(
    model: Risclip,
    state: dict[str, torch.Tensor],
    *,
    decoder: bool = True,
    shapes_only: bool = False,
) -> None:
    """Load trained weights into ``model``; ``decoder=False`` takes only stage-1 parts.
    ``shapes_only`` checks keys and shapes without copying (for a model on the meta device)."""
    expected = model.trained_state()
    wanted = {k for k in expected if decoder or not k.startswith("decoder.")}
    given = {k for k in state if decoder or not k.startswith("decoder.")}
    if wanted != given:
        missing, extra = sorted(wanted - given), sorted(given - wanted)
        raise CheckpointFormatError(
            f"RISCLIP weights do not match the config: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for key in sorted(wanted):
        if expected[key].shape != state[key].shape:
            raise CheckpointFormatError(
                f"{key}: shape {tuple(state[key].shape)}, expected {tuple(expected[key].shape)}"
            )
    if shapes_only:
        return
    with torch.no_grad():
        for key in wanted:
            expected[key].copy_(state[key])


def load_risclip(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    clip: LoadedClip | None = None,
) -> tuple[Risclip, LoadedClip]:
    """A ready RISCLIP (eval mode) and its CLIP (tokenizer, preprocessing)."""
    config, _, state = read_risclip(source)
    clip = clip or load_clip(config.clip, device="cpu")
    with torch.device("meta"):  # check a config from the file's metadata before allocating
        blueprint = Risclip(clip.model, config, clip.tokenizer.eot_id)
    load_state(blueprint, state, decoder=config.use_decoder, shapes_only=True)
    model = Risclip(clip.model, config, clip.tokenizer.eot_id)
    load_state(model, state, decoder=config.use_decoder)
    return model.to(device).eval(), clip
