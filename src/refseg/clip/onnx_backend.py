"""CLIP's image and text towers through ONNX Runtime (optional extra ``refseg[onnx]``), fp32.

Each tower is exported once with torch's dynamo exporter (the legacy exporter fails on
``round()`` of a tensor) and the graph is cached on disk under ``REFSEG_CACHE_DIR`` (default
``~/.cache/refseg``) ``/onnx/<tower>-<hash>.onnx``, keyed by a hash of the architecture and
every weight the tower uses, so a change of weights never reuses a stale graph. The export
of a real-size tower takes 10 s to a few minutes: it is announced on stderr with its duration.

- image: ``encode_image``, pixels ``[B, 3, S, S]`` -> ``[B, D]``, dynamic batch;
- text: ``encode_text(tokens, eot_id)``, ids ``int64 [B, L]`` -> ``[B, D]``, dynamic batch
  and dynamic length ``2 <= L <= context_length`` (so trimmed batches need no padding); the
  end-of-text id is part of the graph and of its key.

Only fp32 CPU models are exported; the outputs equal eager torch to about 1e-6 (tests check
1e-5).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from refseg.clip.model import CLIP
from refseg.errors import RefsegError
from refseg.runtime import notify


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def weights_hash(weights: torch.nn.Module | Mapping[str, torch.Tensor], config: object) -> str:
    """SHA-256 over ``repr(config)`` and every tensor (a module's state dict), in name order."""
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    digest = hashlib.sha256(repr(config).encode())
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


class _ImageTower(torch.nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _TextTower(torch.nn.Module):
    def __init__(self, model: CLIP, eot_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.eot_token_id = eot_token_id

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(token_ids, self.eot_token_id)


@dataclass
class Tower:
    """What one exported graph computes: the module to trace, an example input, its dynamic
    dimensions, and the key (architecture + the weights it reads) its cache file is named by."""

    name: str
    module: torch.nn.Module
    input_name: str  # the forward argument's name, which names the graph's input
    example: torch.Tensor
    dynamic: dict[int, torch.export.Dim]
    key: str


def image_tower(model: CLIP) -> Tower:
    """``encode_image`` with a dynamic batch; keyed by the visual weights and architecture."""
    size = model.config.vision.image_size
    arch = (model.config.vision, model.config.embed_dim, model.config.quick_gelu)
    return Tower(
        "image",
        _ImageTower(model).eval(),
        "pixels",
        torch.zeros(2, 3, size, size),
        {0: torch.export.Dim("batch")},
        weights_hash(model.visual, arch),
    )


def text_tower(model: CLIP, eot_token_id: int) -> Tower:
    """``encode_text`` with dynamic batch and length; keyed by the text weights (everything
    outside ``visual``), the text architecture and the end-of-text id."""
    context = model.config.text.context_length
    example = torch.zeros(2, context, dtype=torch.long)
    example[:, context // 2] = eot_token_id
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}
    arch = (model.config.text, model.config.embed_dim, model.config.quick_gelu, eot_token_id)
    return Tower(
        "text",
        _TextTower(model, eot_token_id).eval(),
        "token_ids",
        example,
        {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens", min=2, max=context)},
        weights_hash(state, arch),
    )


def cache_dir() -> Path:
    root = os.environ.get("REFSEG_CACHE_DIR") or Path.home() / ".cache" / "refseg"
    return Path(root) / "onnx"


def graph_path(tower: Tower) -> Path:
    return cache_dir() / f"{tower.name}-{tower.key}.onnx"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's own chatter (a line per torchvision operator it cannot find, which
    refseg never uses, and its library deprecation warnings): the user sees refseg's two
    lines, not torch internals."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_tower(tower: Tower, path: Path) -> float:
    """Write ``tower`` as an ONNX graph at ``path`` (atomically); returns the seconds it took."""
    notify(
        f"exporting the {tower.name} tower to ONNX once for these weights ({path}); "
        "real-size towers take 10 s to a few minutes"
    )
    start = time.perf_counter()
    with _quiet_exporter():
        program = torch.onnx.export(
            tower.module,
            (tower.example,),
            dynamo=True,
            dynamic_shapes={tower.input_name: tower.dynamic},
            verbose=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    program.save(str(tmp))
    os.replace(tmp, path)
    seconds = time.perf_counter() - start
    notify(f"exported the {tower.name} tower in {seconds:.1f} s")
    return seconds


class OnnxEncoder:
    """One exported tower of one fp32 CPU :class:`CLIP` through an ONNX Runtime session.

    ``export_seconds`` is what exporting cost now (0 when the cached graph was reused).
    """

    def __init__(self, model: CLIP, tower: Tower, threads: int | None = None) -> None:
        if not onnx_available():
            raise RefsegError(
                "the onnx backend needs onnxruntime and onnxscript: pip install 'refseg[onnx]'"
            )
        if next(model.parameters()).dtype != torch.float32 or model.text_projection.is_cuda:
            raise RefsegError("the onnx backend runs fp32 models on the CPU only")
        import onnxruntime as ort

        self.path = graph_path(tower)
        self.export_seconds = 0.0 if self.path.exists() else export_tower(tower, self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.dtype = np.float32 if tower.name == "image" else np.int64

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.detach().cpu().numpy().astype(self.dtype, copy=False))
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class OnnxImageEncoder(OnnxEncoder):
    """``encode_image`` of ``model``: ``[B, 3, S, S]`` -> ``[B, D]``."""

    def __init__(self, model: CLIP, threads: int | None = None) -> None:
        super().__init__(model, image_tower(model), threads)


class OnnxTextEncoder(OnnxEncoder):
    """``encode_text(tokens, eot_token_id)`` of ``model``: ``int64 [B, L]`` -> ``[B, D]``."""

    def __init__(self, model: CLIP, eot_token_id: int, threads: int | None = None) -> None:
        super().__init__(model, text_tower(model, eot_token_id), threads)


_encoders: weakref.WeakKeyDictionary[CLIP, dict[tuple, OnnxEncoder]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _encoder(model: CLIP, key: tuple, build: Callable[[], OnnxEncoder]) -> OnnxEncoder:
    with _lock:
        per_model = _encoders.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build()
        return per_model[key]


def onnx_image_encoder(model: CLIP) -> OnnxImageEncoder:
    """One image encoder per model object in this process (export or load happens once)."""
    return _encoder(model, ("image",), lambda: OnnxImageEncoder(model))  # type: ignore[return-value]


def onnx_text_encoder(model: CLIP, eot_token_id: int) -> OnnxTextEncoder:
    """One text encoder per model object and end-of-text id in this process."""
    return _encoder(  # type: ignore[return-value]
        model, ("text", eot_token_id), lambda: OnnxTextEncoder(model, eot_token_id)
    )
