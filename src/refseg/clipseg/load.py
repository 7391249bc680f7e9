"""``load_clipseg`` / ``save_clipseg``: every CLIPSeg weight format to one :class:`LoadedCLIPSeg`.

Sources:

- a registry name (``clipseg-rd64-refined``, ``clipseg-rd64``, ``clipseg-rd16``): the
  CIDAS Hugging Face repos, downloaded through huggingface_hub's cache;
- ``clipseg-shapes``: the decoder shipped in package data (over the shipped ``shapes-vit``);
- a Hugging Face ``CLIPSegForImageSegmentation`` directory (``config.json`` + weights, CLIP
  and decoder in one file) or such a weights file;
- an official decoder file (``rd64-uni.pth``, ``rd64-uni-refined.pth``: plain state dicts,
  read with ``torch.load(weights_only=True)``), over the CLIP given by ``clip=``
  (default ``ViT-B/16``);
- refseg's own ``model.safetensors`` (config in the metadata), holding the CLIP too, or only
  the decoder plus the name of its CLIP and a fingerprint of the CLIP's weights.

Loading is strict: every missing, unexpected or wrongly shaped key is listed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from refseg.clip.config import CLIPConfig
from refseg.clip.hub import download_files
from refseg.clip.load import build_model, load_clip, read_state_dict
from refseg.clip.loaded import LoadedClip
from refseg.clip.model import CLIP
from refseg.clip.tokenizer import ClipTokenizer
from refseg.clipseg.config import PAPER_LAYERS, CLIPSegConfig, resolve_layers
from refseg.clipseg.convert import (
    configs_from_hf,
    convert_official_state_dict,
    decoder_config_from_state,
    is_hf_clipseg_state_dict,
    split_hf_state_dict,
)
from refseg.clipseg.loaded import LoadedCLIPSeg
from refseg.clipseg.model import CLIPSeg, decoder_config_for
from refseg.errors import CheckpointFormatError, CheckpointNotFoundError

REFSEG_FORMAT = "refseg-clipseg"
WEIGHTS_NAME = "model.safetensors"
PACKAGED_MODELS = ("clipseg-shapes",)
DEFAULT_CLIP = "ViT-B/16"  # the CLIP the official decoders were trained over


@dataclass(frozen=True)
class HubCLIPSeg:
    """A Hugging Face repo in ``CLIPSegForImageSegmentation`` layout."""

    repo_id: str
    licence: str = "MIT (CLIPSeg weights, Lüddecke & Ecker; CLIP weights, OpenAI)"


HUB_MODELS: dict[str, HubCLIPSeg] = {
    "clipseg-rd64-refined": HubCLIPSeg("CIDAS/clipseg-rd64-refined"),
    "clipseg-rd64": HubCLIPSeg("CIDAS/clipseg-rd64"),
    "clipseg-rd16": HubCLIPSeg("CIDAS/clipseg-rd16"),
}
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def available_models() -> list[str]:
    """Names :func:`load_clipseg` accepts besides paths."""
    return [*HUB_MODELS, *PACKAGED_MODELS]


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with every key problem listed in one message."""
    own = module.state_dict()
    check_state(own, state, what)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def check_state(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise :class:`CheckpointFormatError` listing every missing, unexpected or mis-shaped
    key of ``state`` against ``own`` (which may live on the meta device)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in sorted(own)
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        f"{label}: {', '.join(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    if problems:
        raise CheckpointFormatError(f"{what} does not match the model; " + "; ".join(problems))


def clip_fingerprint(clip: CLIP) -> str:
    """sha256 over the CLIP's tensors (names, shapes, fp32 bytes): ties a decoder to its CLIP."""
    digest = hashlib.sha256()
    for key, value in sorted(clip.state_dict().items()):
        tensor = value.detach().to("cpu", torch.float32).contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def build_clipseg(
    clip: CLIP,
    decoder_state: Mapping[str, torch.Tensor],
    config: CLIPSegConfig,
) -> CLIPSeg:
    """A :class:`CLIPSeg` over ``clip`` with the decoder weights loaded strictly.

    The decoder is first built on the meta device and compared with the weights, so a config
    (from a file's metadata) that declares a huge decoder allocates nothing.
    """
    with torch.device("meta"):
        blueprint = CLIPSeg(clip, config)
    check_state(blueprint.decoder.state_dict(), decoder_state, "decoder checkpoint")
    model = CLIPSeg(clip, config)
    load_strict(model.decoder, decoder_state, "decoder checkpoint")
    return model.eval()


def official_config(
    clip: CLIP,
    state: Mapping[str, torch.Tensor],
    extract_layers: tuple[int, ...] = PAPER_LAYERS,
    image_size: int = 352,
) -> CLIPSegConfig:
    """Config of an official decoder file over ``clip`` (sizes read off the weights)."""
    sizes = decoder_config_from_state(state, extract_layers)
    heads = 4  # CLIPDensePredT's n_heads; not recoverable from the weights
    decoder = decoder_config_for(clip, heads=heads, **sizes)
    return CLIPSegConfig(decoder=decoder, image_size=image_size)


def resolve_clip(
    clip: str | os.PathLike | LoadedClip | None, cache_dir: str | os.PathLike | None
) -> LoadedClip:
    """A :class:`LoadedClip` (on CPU) from a name, a path or itself; ``None``: ViT-B/16."""
    if isinstance(clip, LoadedClip):
        return clip
    return load_clip(clip or DEFAULT_CLIP, device="cpu", cache_dir=cache_dir)


def _from_official(
    path: Path,
    state: dict[str, torch.Tensor],
    clip: str | os.PathLike | LoadedClip | None,
    layers: tuple[int, ...] | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[CLIPSeg, ClipTokenizer]:
    loaded_clip = resolve_clip(clip, cache_dir)
    state = convert_official_state_dict(state)
    config = official_config(loaded_clip.model, state, layers or PAPER_LAYERS)
    return build_clipseg(loaded_clip.model.float().cpu(), state, config), loaded_clip.tokenizer


def _from_hf(
    weights: Path, config_path: Path, layers: tuple[int, ...] | None, tokenizer_dir: Path
) -> tuple[CLIPSeg, ClipTokenizer]:
    if not config_path.is_file():
        raise CheckpointNotFoundError(
            f"{weights} holds Hugging Face CLIPSeg weights but {config_path} is missing"
        )
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{config_path} is not valid JSON: {exc}") from None
    clip_config, config = configs_from_hf(hf_config, layers)
    state, _ = read_state_dict(weights)
    clip_state, decoder_state = split_hf_state_dict(state)
    clip = build_model(clip_state, clip_config)
    tokenizer = ClipTokenizer.from_directory(tokenizer_dir, clip_config.text.context_length)
    return build_clipseg(clip, decoder_state, config), tokenizer


def _from_refseg(
    path: Path,
    state: dict[str, torch.Tensor],
    metadata: Mapping[str, str],
    clip: str | os.PathLike | LoadedClip | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[CLIPSeg, ClipTokenizer]:
    try:
        config = CLIPSegConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CheckpointFormatError(
            f"{path}: unreadable CLIPSeg config in metadata: {exc}"
        ) from None
    decoder_state = {k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}
    clip_state = {k[len("clip.") :]: v for k, v in state.items() if k.startswith("clip.")}
    stray = sorted(k for k in state if not k.startswith(("decoder.", "clip.")))
    if stray:
        raise CheckpointFormatError(f"{path}: unexpected keys: {', '.join(stray)}")
    if clip_state:
        clip_model = build_model(clip_state, CLIPConfig.from_dict(json.loads(metadata["clip"])))
        tokenizer = ClipTokenizer.from_directory(path.parent, clip_model.config.text.context_length)
    else:
        source = clip if clip is not None else metadata.get("clip_source")
        if source is None:
            raise CheckpointFormatError(
                f"{path} holds only a decoder and names no CLIP; pass clip="
            )
        if (
            isinstance(source, str)
            and not Path(source).is_absolute()
            and (path.parent / source).exists()
        ):
            source = path.parent / source
        loaded_clip = resolve_clip(source, cache_dir)
        clip_model, tokenizer = loaded_clip.model.float().cpu(), loaded_clip.tokenizer
        expected = metadata.get("clip_fingerprint")
        if expected and clip_fingerprint(clip_model) != expected:
            raise CheckpointFormatError(
                f"{path} was trained over another CLIP than {source!r} (weights fingerprint "
                "differs); pass the CLIP it was trained with"
            )
    return build_clipseg(clip_model, decoder_state, config), tokenizer


def _hub_directory(name: str, cache_dir: str | os.PathLike | None) -> Path:
    repo = HUB_MODELS[name].repo_id
    error: CheckpointNotFoundError | None = None
    for weights in _HF_WEIGHT_FILES:
        try:
            paths = download_files(
                name, repo, ("config.json", weights, *_HF_TOKENIZER_FILES), cache_dir, "CLIPSeg"
            )
            return paths[0].parent
        except CheckpointNotFoundError as exc:
            error = error or exc
    assert error is not None
    raise error


def _from_path(
    path: Path,
    clip: str | os.PathLike | LoadedClip | None,
    layers: tuple[int, ...] | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[CLIPSeg, ClipTokenizer]:
    if path.is_dir():
        for name in (WEIGHTS_NAME, *_HF_WEIGHT_FILES):
            if (path / name).is_file():
                return _from_path(path / name, clip, layers, cache_dir)
        raise CheckpointNotFoundError(
            f"no CLIPSeg weights in {path}: expected {WEIGHTS_NAME} or pytorch_model.bin"
        )
    state, metadata = read_state_dict(path)
    if metadata.get("format") == REFSEG_FORMAT:
        model, tokenizer = _from_refseg(path, state, metadata, clip, cache_dir)
        if layers is not None and layers != model.config.decoder.extract_layers:
            raise CheckpointFormatError(
                f"{path} was trained on blocks {model.config.decoder.extract_layers}; "
                f"extract_layers={layers} does not apply"
            )
        return model, tokenizer
    if is_hf_clipseg_state_dict(state):
        return _from_hf(path, path.parent / "config.json", layers, path.parent)
    if "film_mul.weight" in state:
        return _from_official(path, state, clip, layers, cache_dir)
    raise CheckpointFormatError(
        f"{path} is not a CLIPSeg checkpoint (no film_mul.* or decoder.* weights)"
    )


def packaged_model_dir(name: str) -> Path:
    return Path(str(resources.files("refseg") / "weights" / name))


def load_clipseg(
    source: str | os.PathLike,
    *,
    clip: str | os.PathLike | LoadedClip | None = None,
    extract_layers: str | tuple[int, ...] | None = None,
    threshold: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedCLIPSeg:
    """Load a CLIPSeg by name, directory or file (see the module docstring for formats).

    Args:
        source: a name from :func:`available_models` or a path.
        clip: the CLIP under an official decoder file (name, path or :class:`LoadedClip`;
            default ``ViT-B/16``), or another CLIP for a decoder-only refseg file.
        extract_layers: ``"paper"`` (3, 7, 9), ``"hf_compat"`` (3, 6, 9) or indices. Default:
            the paper's for official and CIDAS weights, the file's own for refseg files.
        threshold: probability threshold of the mask (default: the checkpoint's, else 0.3).
        device, dtype: where and in what precision to run (default CUDA if available, fp32).
        cache_dir: huggingface_hub cache for registry names.

    Raises:
        CheckpointNotFoundError: nothing at ``source`` (with what to do about it).
        CheckpointFormatError: not a usable CLIPSeg checkpoint; every key problem listed.
    """
    layers = resolve_layers(extract_layers) if extract_layers is not None else None
    name = str(source)
    if name in HUB_MODELS and not Path(name).exists():
        model, tokenizer = _from_path(_hub_directory(name, cache_dir), clip, layers, cache_dir)
    elif name in PACKAGED_MODELS and not Path(name).exists():
        directory = packaged_model_dir(name)
        if not directory.is_dir():
            raise CheckpointNotFoundError(f"packaged model {name!r} is missing from this install")
        model, tokenizer = _from_path(directory, clip, layers, cache_dir)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise CheckpointNotFoundError(
                f"no CLIPSeg checkpoint at {name!r}: not a file or directory, and not a known "
                f"name ({', '.join(available_models())})"
            )
        model, tokenizer = _from_path(path, clip, layers, cache_dir)
    if threshold is not None:
        model.config = replace(model.config, threshold=threshold)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device=device, dtype=dtype or torch.float32)
    return LoadedCLIPSeg(model, tokenizer, name)


def save_clipseg(
    loaded: LoadedCLIPSeg,
    directory: str | os.PathLike,
    *,
    clip_source: str | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write refseg's ``model.safetensors`` (config in the metadata) into ``directory``.

    With ``clip_source`` (a packaged/registry name or a path relative to ``directory``) only
    the decoder is written, with the CLIP's fingerprint; otherwise the CLIP too, plus its
    ``tokenizer.json``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    metadata = {"format": REFSEG_FORMAT, "config": json.dumps(model.config.to_dict())}
    state = {
        f"decoder.{k}": v.detach().to("cpu", torch.float32).contiguous()
        for k, v in model.decoder.state_dict().items()
    }
    if clip_source is None:
        metadata["clip"] = json.dumps(model.clip.config.to_dict())
        state.update(
            {
                f"clip.{k}": v.detach().to("cpu", torch.float32).contiguous()
                for k, v in model.clip.state_dict().items()
            }
        )
        loaded.tokenizer.save(directory / "tokenizer.json")
    else:
        metadata["clip_source"] = clip_source
        metadata["clip_fingerprint"] = clip_fingerprint(model.clip)
    metadata.update(extra_metadata or {})
    path = directory / WEIGHTS_NAME
    save_file(state, str(path), metadata=metadata)
    return path


def looks_like_clipseg(path: Path) -> bool:
    """Cheap test (no tensors read): a refseg CLIPSeg file or directory, or an HF CLIPSeg
    directory. Official ``.pth`` files are not claimed (they need ``clip=``)."""
    try:
        if path.is_dir():
            config = path / "config.json"
            if config.is_file():
                return json.loads(config.read_text()).get("model_type") == "clipseg"
            path = path / WEIGHTS_NAME
        if path.is_file() and path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return (handle.metadata() or {}).get("format") == REFSEG_FORMAT
    except (OSError, ValueError):
        return False
    return False
