"""The image tower through ONNX Runtime (optional extra ``refseg[onnx]``), exact in fp32.

The visual tower is exported once with torch's dynamo exporter (dynamic batch size) and
the graph is cached on disk under ``REFSEG_CACHE_DIR`` (default ``~/.cache/refseg``)
``/onnx/<hash>.onnx``, keyed by a hash of the architecture and every weight, so a change
of weights never reuses a stale graph. Only fp32 CPU models are exported; the outputs equal
eager torch to about 1e-6 (tests check 1e-5 on the scores).
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from refseg.clip.model import CLIP
from refseg.errors import RefsegError


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def weights_hash(model: torch.nn.Module, config: object) -> str:
    """SHA-256 over the architecture and every parameter and buffer, in name order."""
    digest = hashlib.sha256(repr(config).encode())
    for name, tensor in sorted(model.state_dict().items()):
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


def export_image_tower(model: CLIP, path: Path) -> Path:
    """Write ``model.encode_image`` as an ONNX graph with a dynamic batch dimension."""
    size = model.config.vision.image_size
    example = torch.zeros(2, 3, size, size)
    program = torch.onnx.export(
        _ImageTower(model).eval(),
        (example,),
        dynamo=True,
        dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    program.save(str(tmp))
    os.replace(tmp, path)
    return path


def cache_dir() -> Path:
    root = os.environ.get("REFSEG_CACHE_DIR") or Path.home() / ".cache" / "refseg"
    return Path(root) / "onnx"


class OnnxImageEncoder:
    """``encode_image`` of one fp32 CPU :class:`CLIP` through an ONNX Runtime session."""

    def __init__(self, model: CLIP, threads: int | None = None) -> None:
        if not onnx_available():
            raise RefsegError(
                "the onnx backend needs onnxruntime and onnxscript: pip install 'refseg[onnx]'"
            )
        if next(model.parameters()).dtype != torch.float32 or model.text_projection.is_cuda:
            raise RefsegError("the onnx backend runs fp32 models on the CPU only")
        import onnxruntime as ort

        path = cache_dir() / f"{weights_hash(model.visual, model.config.vision)}.onnx"
        if not path.exists():
            export_image_tower(model, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


_encoders: weakref.WeakKeyDictionary[CLIP, OnnxImageEncoder] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def onnx_image_encoder(model: CLIP) -> OnnxImageEncoder:
    """One encoder per model object in this process (export or load happens once)."""
    with _lock:
        encoder = _encoders.get(model)
        if encoder is None:
            encoder = _encoders[model] = OnnxImageEncoder(model)
        return encoder
