"""Published checkpoints by name, and their download through huggingface_hub.

Every OpenAI CLIP is taken from timm's open_clip-format Hub repos, which hold the original
weights as ``open_clip_model.safetensors`` (no pickle) next to the tokenizer files.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from refseg.errors import CheckpointNotFoundError


@dataclass(frozen=True)
class HubCheckpoint:
    """Where a named checkpoint lives on the Hugging Face Hub."""

    repo_id: str
    weights_file: str = "open_clip_model.safetensors"
    tokenizer_file: str = "tokenizer.json"
    licence: str = "MIT (OpenAI CLIP weights)"


# Names a user can type (OpenAI's spelling) -> Hub repos. Licence: OpenAI released the CLIP
# weights under the MIT licence; timm's repo cards say MIT (ResNets) or apache-2.0 (ViTs).
HUB_CHECKPOINTS: dict[str, HubCheckpoint] = {
    "RN50": HubCheckpoint("timm/resnet50_clip.openai"),
    "RN101": HubCheckpoint("timm/resnet101_clip.openai"),
    "RN50x4": HubCheckpoint("timm/resnet50x4_clip.openai"),
    "ViT-B/32": HubCheckpoint("timm/vit_base_patch32_clip_224.openai"),
    "ViT-B/16": HubCheckpoint("timm/vit_base_patch16_clip_224.openai"),
    "ViT-L/14": HubCheckpoint("timm/vit_large_patch14_clip_224.openai"),
}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub endpoint, so offline machines fail at once
    instead of waiting through huggingface_hub's retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parsed = urlparse(constants.ENDPOINT)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def download_checkpoint(
    name: str, checkpoint: HubCheckpoint, cache_dir: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Paths of ``(weights, tokenizer)`` for a named checkpoint, downloading if not cached.

    Uses huggingface_hub's standard cache (``HF_HOME`` / ``HF_HUB_CACHE``, or ``cache_dir``).

    Raises:
        CheckpointNotFoundError: not cached and the Hub cannot be reached.
    """
    weights, tokenizer = download_files(
        name, checkpoint.repo_id, (checkpoint.weights_file, checkpoint.tokenizer_file), cache_dir
    )
    return weights, tokenizer


def download_tokenizer(
    name: str, checkpoint: HubCheckpoint, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Path of a named checkpoint's ``tokenizer.json`` alone (the weights are not fetched)."""
    return download_files(name, checkpoint.repo_id, (checkpoint.tokenizer_file,), cache_dir)[0]


def download_files(
    name: str,
    repo_id: str,
    files: tuple[str, ...],
    cache_dir: str | os.PathLike | None,
    kind: str = "CLIP",
) -> list[Path]:
    """Cached paths of ``files`` of ``repo_id``, downloading if not cached (``kind`` names
    the model family in error messages; CLIPSeg's registry uses this too)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fetch(local_only: bool) -> list[Path]:
        return [
            Path(hf_hub_download(repo_id, f, cache_dir=cache_dir, local_files_only=local_only))
            for f in files
        ]

    try:
        return fetch(local_only=True)
    except LocalEntryNotFoundError:
        pass
    if not hub_reachable():
        raise CheckpointNotFoundError(
            f"{kind} {name!r} is not in the Hugging Face cache and the Hub cannot be reached. "
            f"On a machine with internet run `hf download {repo_id} {' '.join(files)}` "
            "and copy the cache (HF_HOME) here, or pass a local checkpoint path instead."
        )
    try:
        return fetch(local_only=False)
    except Exception as exc:  # network, auth or missing-file errors from the Hub
        raise CheckpointNotFoundError(
            f"could not download {kind} {name!r} from {repo_id}: {exc}"
        ) from None
