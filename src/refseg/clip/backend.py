"""Which backend runs each CLIP tower: eager torch or ONNX Runtime (``runtime`` ``backend``).

``torch`` and ``onnx`` are the user's choice for both towers. ``auto`` (the default) decides
per tower and architecture with :func:`refseg.runtime.choose_backend`: torch unless ONNX
Runtime is installed, the model is fp32 on the CPU (and, for the image tower, the local
branch is not in bf16), and ONNX Runtime gives the eager outputs and is faster on the first
real batch (crops for the image tower, tokens for the text tower).

The image tower runs the local branch's crops; the text tower the Segmenter's sentences and
phrases. :func:`backend_record` says what ran, for ``describe()`` and eval's config.json.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from refseg import runtime
from refseg.clip.loaded import LoadedClip

TOWERS = ("image", "text")
Encode = Callable[[torch.Tensor], torch.Tensor]


def tower_key(clip: LoadedClip, tower: str) -> str:
    """What ``auto``'s choice is cached under: the tower and the architecture/device/dtype."""
    return f"{tower}|{runtime.model_key(clip.model, clip.device, clip.dtype)}"


def onnx_possible(clip: LoadedClip, tower: str) -> bool:
    """ONNX Runtime can run this tower exactly: fp32 on the CPU, and an fp32 local branch."""
    fp32_branch = tower == "text" or runtime.settings().precision == "fp32"
    return clip.device.type == "cpu" and clip.dtype == torch.float32 and fp32_branch


def _eager(clip: LoadedClip, tower: str) -> Encode:
    return clip.encode_image if tower == "image" else clip.encode_text


def _onnx(clip: LoadedClip, tower: str) -> Encode:
    from refseg.clip import onnx_backend

    if tower == "image":
        return onnx_backend.onnx_image_encoder(clip.model)
    encoder = onnx_backend.onnx_text_encoder(clip.model, clip.tokenizer.eot_id)
    return lambda tokens: encoder(clip.trim_tokens(tokens))


def encoder(clip: LoadedClip, tower: str, sample: torch.Tensor) -> tuple[str, Encode]:
    """``(backend, encode)`` for ``tower``; under ``auto`` the first call for an architecture
    on this machine may measure both backends on ``sample`` (a real batch of its inputs)."""
    backend = runtime.settings().backend
    if backend == "auto":
        if not onnx_possible(clip, tower):
            backend = "torch"
        else:
            builders = {"torch": lambda: _eager(clip, tower), "onnx": lambda: _onnx(clip, tower)}
            backend = runtime.choose_backend(
                tower_key(clip, tower), sample, builders, label=f"{tower} tower of {clip.name}"
            )
    return backend, (_onnx(clip, tower) if backend == "onnx" else _eager(clip, tower))


def image_encoder(clip: LoadedClip, crops: torch.Tensor) -> tuple[str, Encode]:
    return encoder(clip, "image", crops)


def text_encoder(clip: LoadedClip, tokens: torch.Tensor) -> tuple[str, Encode]:
    return encoder(clip, "text", tokens)


def backend_record(clip: LoadedClip) -> str:
    """The backend as run: ``"torch"`` / ``"onnx"`` when forced; under ``auto``,
    ``"auto: onnx"`` when every tower's choice is known and the same, ``"auto: image onnx,
    text torch"`` when they differ, ``"auto: image onnx, text ?"`` while one is unmeasured."""
    backend = runtime.settings().backend
    if backend != "auto":
        return backend
    used = {
        tower: runtime.known_backend(tower_key(clip, tower)) if onnx_possible(clip, tower)
        else "torch"
        for tower in TOWERS
    }
    if len(set(used.values())) == 1 and None not in used.values():
        return f"auto: {used['image']}"
    return "auto: " + ", ".join(f"{tower} {choice or '?'}" for tower, choice in used.items())


def requested_backend(record: object) -> object:
    """The user's setting in a :func:`backend_record` (``"auto: onnx"`` -> ``"auto"``)."""
    return record.split(":", 1)[0] if isinstance(record, str) else record
