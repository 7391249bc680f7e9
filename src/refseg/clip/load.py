"""``load_clip``: a name, a checkpoint file or a checkpoint directory in, a ready model out.

Formats: OpenAI TorchScript ``.pt`` archives (tensors only: their code never runs),
OpenAI/open_clip state dicts (``.pt``, ``.pth``, ``.bin``, ``.safetensors``), Hugging Face
CLIP directories, and refseg's own safetensors (config in the metadata). Loading is
``strict``: every missing or unexpected key is reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from refseg.clip.config import CLIPConfig, infer_config
from refseg.clip.convert import config_from_hf, convert_hf_state_dict, is_hf_state_dict
from refseg.clip.hub import HUB_CHECKPOINTS, download_checkpoint, download_tokenizer
from refseg.clip.loaded import LoadedClip
from refseg.clip.model import CLIP
from refseg.clip.tokenizer import ClipTokenizer
from refseg.clip.torchscript import is_torchscript_archive, read_torchscript_tensors
from refseg.errors import CheckpointFormatError, CheckpointNotFoundError

REFSEG_FORMAT = "refseg-clip"
# Models shipped inside the package (trained on ShapesRef; see README), loaded offline.
PACKAGED_MODELS = ("shapes-vit", "shapes-rn")
# Keys OpenAI's TorchScript archives carry that are not weights.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


def available_models() -> list[str]:
    """Names :func:`load_clip` accepts besides paths."""
    return [*HUB_CHECKPOINTS, *PACKAGED_MODELS]


def _canonical_name(source: str) -> str | None:
    key = source.lower().replace("-", "").replace("/", "").replace("_", "")
    for name in available_models():
        if name.lower().replace("-", "").replace("/", "").replace("_", "") == key:
            return name
    return None


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata from a checkpoint file (safetensors, torch.save or TorchScript)."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointFormatError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
    else:
        state = _torch_load(path)
    return _unwrap(state, path), metadata


def _torch_load(path: Path) -> Any:
    if is_torchscript_archive(path):
        return read_torchscript_tensors(path)  # never torch.jit.load: it runs archive code
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/...
        raise CheckpointFormatError(
            f"cannot read {path} as a PyTorch checkpoint (truncated, corrupt or not a "
            f"checkpoint): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointFormatError(f"{path} does not hold a state dict of tensors")
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
        if k not in _NON_WEIGHT_KEYS
    }


def build_model(state_dict: Mapping[str, torch.Tensor], config: CLIPConfig | None = None) -> CLIP:
    """A :class:`CLIP` holding ``state_dict`` (OpenAI names), architecture inferred if not given.

    Raises:
        CheckpointFormatError: missing, unexpected or wrongly shaped weights (all listed).
    """
    config = config or infer_config(state_dict)
    own = expected_shapes(config, state_dict)
    # BatchNorm's step counter is bookkeeping, not a weight; some exports drop it.
    counters = {
        k: torch.zeros((), dtype=torch.long) for k in own if k.endswith("num_batches_tracked")
    }
    state_dict = {**counters, **state_dict}
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or mismatched:  # checked on shapes alone: nothing allocated yet
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointFormatError(
            "checkpoint does not match the CLIP architecture; " + "; ".join(parts)
        )
    model = CLIP(config)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in state_dict.items()}, strict=True)
    return model.eval()


def expected_shapes(
    config: CLIPConfig, state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The state dict a :class:`CLIP` of ``config`` has, as storage-less ``meta`` tensors.

    The model is built on the meta device, so a config declaring a huge model (from a
    checkpoint's metadata or an HF ``config.json``) costs nothing before the shapes are
    compared. A config with more blocks than the checkpoint has tensors is refused first.

    Raises:
        CheckpointFormatError: the config cannot describe a CLIP, or cannot match the weights.
    """
    vision_layers = config.vision.layers
    blocks = [
        config.text.layers,
        *(vision_layers if isinstance(vision_layers, tuple) else [vision_layers]),
    ]
    if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in blocks):
        raise CheckpointFormatError(f"invalid CLIP architecture: layer counts {blocks}")
    if sum(blocks) > len(state_dict):
        raise CheckpointFormatError(
            f"the config declares {sum(blocks)} blocks but the checkpoint holds only "
            f"{len(state_dict)} tensors: config and weights do not match"
        )
    try:
        with torch.device("meta"):
            model = CLIP(config)
    except Exception as exc:  # any constructor failure means a config no CLIP can have
        raise CheckpointFormatError(
            f"invalid CLIP architecture {config}: {type(exc).__name__}: {exc}"
        ) from None
    return dict(model.state_dict())


def _from_directory(directory: Path) -> tuple[CLIP, Path]:
    """Model from an HF CLIP directory or a refseg directory; returns (model, tokenizer dir)."""
    for name in (
        "model.safetensors",
        "open_clip_model.safetensors",
        "pytorch_model.bin",
        "open_clip_pytorch_model.bin",
    ):
        if (directory / name).is_file():
            return _from_file(directory / name), directory
    raise CheckpointNotFoundError(
        f"no weights in {directory}: expected model.safetensors or pytorch_model.bin "
        "(Hugging Face layout) or open_clip_model.safetensors"
    )


def _from_file(path: Path) -> CLIP:
    state, metadata = read_state_dict(path)
    config: CLIPConfig | None = None
    if metadata.get("format") == REFSEG_FORMAT:
        config = _metadata_config(metadata, path)
    if is_hf_state_dict(state):
        config_path = path.parent / "config.json"
        if not config_path.is_file():
            raise CheckpointNotFoundError(
                f"{path} holds Hugging Face CLIP weights but {config_path} is missing"
            )
        try:
            config = config_from_hf(json.loads(config_path.read_text()))
        except json.JSONDecodeError as exc:
            raise CheckpointFormatError(f"{config_path} is not valid JSON: {exc}") from None
        state = convert_hf_state_dict(state)
    elif not any(k.startswith("visual.") for k in state):
        raise CheckpointFormatError(
            f"{path} is not a CLIP checkpoint (no 'visual.*' or 'vision_model.*' weights)"
        )
    if config is None:
        config = infer_config(state)
        _apply_open_clip_config(config, path.parent / "open_clip_config.json")
    return build_model(state, config)


def _metadata_config(metadata: Mapping[str, str], path: Path) -> CLIPConfig:
    """The CLIPConfig in a refseg safetensors' metadata (shapes are checked later).

    Raises:
        CheckpointFormatError: missing, not JSON, or not a CLIPConfig.
    """
    try:
        return CLIPConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointFormatError(
            f"{path}: the 'config' in its metadata is not a refseg CLIP config "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def _apply_open_clip_config(config: CLIPConfig, path: Path) -> None:
    """Take activation and pixel statistics from an ``open_clip_config.json`` beside weights."""
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    model_cfg, pre_cfg = data.get("model_cfg", {}), data.get("preprocess_cfg", {})
    if "quick_gelu" in model_cfg:
        config.quick_gelu = bool(model_cfg["quick_gelu"])
    if "mean" in pre_cfg:
        config.preprocess.mean = tuple(pre_cfg["mean"])
    if "std" in pre_cfg:
        config.preprocess.std = tuple(pre_cfg["std"])


def _find_tokenizer(
    directory: Path, model: CLIP, cache_dir: str | os.PathLike | None
) -> ClipTokenizer:
    context = model.config.text.context_length
    try:
        return ClipTokenizer.from_directory(directory, context)
    except CheckpointNotFoundError:
        if model.config.text.vocab_size != 49408:
            raise
    # OpenAI's vocabulary is the same for every OpenAI CLIP: take it from the Hub cache.
    try:
        tokenizer_path = download_tokenizer("ViT-B/32", HUB_CHECKPOINTS["ViT-B/32"], cache_dir)
    except CheckpointNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"no tokenizer files beside the weights in {directory}, and OpenAI's tokenizer "
            f"could not be fetched instead ({exc}). Pass tokenizer=PATH to load_clip."
        ) from None
    return ClipTokenizer.from_file(tokenizer_path, context)


def packaged_model_dir(name: str) -> Path:
    return Path(str(resources.files("refseg") / "weights" / name))


def load_clip(
    source: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    tokenizer: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedClip:
    """Load a CLIP by name, file or directory.

    Args:
        source: a name from :func:`available_models` (``"ViT-B/32"``, ``"RN50"``,
            ``"shapes-vit"``…), a checkpoint file, or a checkpoint directory.
        device: where to run (default: CUDA if available, else CPU).
        dtype: ``torch.float32`` (default), ``torch.float16`` or ``torch.bfloat16``.
        tokenizer: a ``tokenizer.json`` or a directory holding tokenizer files, overriding
            the one found beside the weights.
        cache_dir: huggingface_hub cache directory for named checkpoints (and for OpenAI's
            tokenizer when a checkpoint with OpenAI's vocabulary comes without one).

    Raises:
        CheckpointNotFoundError: nothing at ``source`` (with what to do about it).
        CheckpointFormatError: the file is not a usable CLIP checkpoint.
    """
    name = str(source)
    canonical = _canonical_name(name) if not Path(name).exists() else None
    if canonical in HUB_CHECKPOINTS:
        weights, tokenizer_path = download_checkpoint(
            canonical, HUB_CHECKPOINTS[canonical], cache_dir
        )
        model = _from_file(weights)
        clip_tokenizer = ClipTokenizer.from_file(tokenizer_path, model.config.text.context_length)
        name = canonical
    else:
        if canonical in PACKAGED_MODELS:
            path = packaged_model_dir(canonical)
            if not path.is_dir():
                raise CheckpointNotFoundError(
                    f"packaged model {canonical!r} is missing from this install ({path})"
                )
        else:
            path = Path(name).expanduser()
            if not path.exists():
                valid = ", ".join(available_models())
                raise CheckpointNotFoundError(
                    f"no CLIP checkpoint at {name!r}: not a file or directory, and not a known "
                    f"name ({valid})"
                )
        model, tokenizer_dir = (
            _from_directory(path) if path.is_dir() else (_from_file(path), path.parent)
        )
        clip_tokenizer = None if tokenizer else _find_tokenizer(tokenizer_dir, model, cache_dir)
        name = canonical or name
    if tokenizer is not None:
        tok_path = Path(tokenizer)
        context = model.config.text.context_length
        clip_tokenizer = (
            ClipTokenizer.from_directory(tok_path, context)
            if tok_path.is_dir()
            else ClipTokenizer.from_file(tok_path, context)
        )
    if clip_tokenizer.vocab_size > model.config.text.vocab_size:
        raise CheckpointFormatError(
            f"tokenizer has {clip_tokenizer.vocab_size} tokens but the model embeds only "
            f"{model.config.text.vocab_size}"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return LoadedClip(model.to(device=device, dtype=dtype or torch.float32), clip_tokenizer, name)


def save_clip(
    model: CLIP,
    tokenizer: ClipTokenizer,
    directory: str | os.PathLike,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model.safetensors`` (config in its metadata) and ``tokenizer.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": REFSEG_FORMAT, "config": json.dumps(model.config.to_dict())}
    metadata.update(extra_metadata or {})
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata=metadata)
    tokenizer.save(directory / "tokenizer.json")
    return directory
