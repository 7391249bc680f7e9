"""Runtime settings chosen by measurement on this machine, cached in ``~/.cache/refseg``.

What it decides (each exact in fp32 unless the user opts into ``precision="bf16"``):

- the chunk size of the local branch's crop batches: measured on the real crops while the
  first images are processed (no extra work), then kept per machine and architecture;
- whether fp32 matmuls go through oneDNN (``torch.backends.mkldnn.matmul.fp32_precision``):
  only when a start-up probe finds the result fp32-exact (on CPUs with AMX that flag lets
  oneDNN compute in bf16) and faster than the default path;
- thread defaults for the command line: OpenMP threads that sleep instead of spinning
  (``OMP_WAIT_POLICY=PASSIVE``) and no more threads than idle cores, so that a busy shared
  machine does not make two threads slower than one.

- the backend of each CLIP tower under ``backend="auto"`` (the default): ONNX Runtime
  (:mod:`refseg.clip.onnx_backend`, fp32) where it is installed, gives the eager outputs
  within :data:`EXACT_TOLERANCE` and is faster on the first real batch, else eager torch
  (:func:`choose_backend`; which towers use it: :mod:`refseg.clip.backend`).
  ``backend="torch"`` / ``"onnx"`` force one.

``REFSEG_CACHE_DIR`` moves the cache; ``REFSEG_TUNE=0`` turns measuring off (fixed chunks of
:data:`DEFAULT_CHUNK`, default matmul path, torch backend under ``auto``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from refseg.fileio import write_atomic

PRECISIONS = ("fp32", "bf16")
BACKENDS = ("auto", "torch", "onnx")
MATMUL_PATHS = ("default", "onednn")
# "factored": exact shortcuts in the global branch (ViT: zero-weight patches folded, class token
# only in the last block; RN: pooling projections once per map); "full": every token of every
# masked block and one pooling per mask, as the reference code computes them (benchmarks).
GLOBAL_BRANCHES = ("factored", "full")
# Crop chunk sizes tried by the tuner; the reference encodes all crops in one batch.
CHUNK_CANDIDATES = (1, 2, 4, 8, 16, 32)
DEFAULT_CHUNK = 64  # used when tuning is off
SAMPLES_PER_CANDIDATE = 2  # per-crop timings per candidate before the tuner settles
TUNING_CALLS = 24  # settle after this many batches of crops even if a candidate is unsampled
# A relative error above this on the probe matmul means the path is not fp32 (bf16: ~4e-3).
FP32_PROBE_TOLERANCE = 1e-5
ONEDNN_MIN_GAIN = 1.05  # oneDNN must be at least 5% faster to be chosen
# backend="auto": ONNX Runtime must give the eager outputs (L2-normalised, as scores use them)
# within this and be at least BACKEND_MIN_GAIN faster (median of BACKEND_REPEATS alternated
# CPU timings after one untimed call each) on at most BACKEND_SAMPLE real inputs.
EXACT_TOLERANCE = 1e-5
BACKEND_MIN_GAIN = 1.05
BACKEND_REPEATS = 3
BACKEND_SAMPLE = 8


@dataclass
class RuntimeSettings:
    """User-facing choices; ``None`` means "measure on this machine"."""

    precision: str = "fp32"  # "bf16": autocast on the local branch only (opt-in, not exact)
    chunk: int | None = None  # crops per batch in the local branch
    matmul: str | None = None  # "default" or "onednn" for fp32 matmuls in the local branch
    # "torch", "onnx" (both towers through ONNX Runtime, fp32) or "auto": per tower, the
    # faster exact one installed, measured on the first real batch (choose_backend)
    backend: str = "auto"
    global_branch: str = "factored"  # see GLOBAL_BRANCHES

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")
        if self.backend == "onnx" and self.precision != "fp32":
            raise ValueError("the onnx backend is fp32 only")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk must be >= 1; got {self.chunk}")
        if self.global_branch not in GLOBAL_BRANCHES:
            raise ValueError(
                f"global_branch must be one of {GLOBAL_BRANCHES}; got {self.global_branch!r}"
            )
        if self.matmul is not None and self.matmul not in MATMUL_PATHS:
            raise ValueError(f"matmul must be one of {MATMUL_PATHS}; got {self.matmul!r}")


_settings = RuntimeSettings()
_lock = threading.Lock()


def settings() -> RuntimeSettings:
    return _settings


def configure(**changes: object) -> RuntimeSettings:
    """Change the process-wide settings (``precision``, ``chunk``, ``matmul``, ``backend``)."""
    global _settings
    _settings = replace(_settings, **changes)  # type: ignore[arg-type]
    if _settings.precision == "bf16" and not bf16_supported():
        warnings.warn(
            "this CPU has no native bf16: --precision bf16 computes the same bf16 numbers "
            "but more slowly than fp32",
            stacklevel=2,
        )
    return _settings


@contextlib.contextmanager
def overridden(**changes: object) -> Iterator[RuntimeSettings]:
    """Temporarily change the settings (benchmarks: run the baseline's settings)."""
    global _settings
    previous = _settings
    _settings = replace(_settings, **changes)  # type: ignore[arg-type]
    try:
        yield _settings
    finally:
        _settings = previous


def tuning_enabled() -> bool:
    return os.environ.get("REFSEG_TUNE", "1") != "0"


def bf16_supported() -> bool:
    """Native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX, as oneDNN sees it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ------------------------------------------------------------------------- the cache
def cache_path() -> Path:
    root = os.environ.get("REFSEG_CACHE_DIR") or Path.home() / ".cache" / "refseg"
    return Path(root) / "runtime.json"


def machine_key() -> str:
    """CPU model and flags, torch version and thread count: what the measurements hold for."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = "|".join(
            sorted({ln.split(":", 1)[1].strip() for ln in lines
                    if ln.startswith(("model name", "flags"))})
        )
    text = f"{cpu}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    entry = data.get(machine_key()) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else {}


def notify(message: str) -> None:
    """One line on stderr for a slow one-off step (it does not break a running tqdm bar)."""
    tqdm.write(f"refseg: {message}", file=sys.stderr)


def _write_cache(section: str, key: str, value: object) -> None:
    """Merge one measured value into the cache file (best effort: a read-only home is fine)."""
    path = cache_path()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    entry = data.setdefault(machine_key(), {})
    if not isinstance(entry.get(section), dict):
        entry[section] = {}
    entry[section][key] = value
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


# ------------------------------------------------------------------- matmul path
def _onednn_flag_available() -> bool:
    backend = getattr(torch.backends.mkldnn, "matmul", None)
    return torch.backends.mkldnn.is_available() and hasattr(backend, "fp32_precision")


@contextlib.contextmanager
def matmul_path(path: str) -> Iterator[None]:
    """Route fp32 matmuls through oneDNN (``"onednn"``) or leave torch's default.

    torch sends fp32 matmuls to oneDNN only when ``mkldnn.matmul.fp32_precision`` allows a
    lower internal precision ("bf16"); whether oneDNN then uses it depends on the CPU, so
    :func:`measure_matmul_path` checks exactness on this machine before choosing it.
    """
    if path != "onednn" or not _onednn_flag_available():
        yield
        return
    backend = torch.backends.mkldnn.matmul
    previous = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        yield
    finally:
        backend.fp32_precision = previous


def _probe_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(400, 768, generator=gen), torch.randn(768, 3072, generator=gen)


def onednn_changes_matmul() -> bool:
    """Whether the oneDNN flag changes any bit of the probe's product: if not, the flag
    reaches the same kernel here (e.g. a CPU without AVX-512) and there is nothing to gain."""
    a, b = _probe_inputs()
    default = a @ b
    with matmul_path("onednn"):
        routed = a @ b
    return not torch.equal(default, routed)


def probe_matmul(path: str, repeats: int = 3) -> tuple[float, float]:
    """``(relative error vs float64, median seconds)`` of a ViT-B-sized fp32 matmul."""
    a, b = _probe_inputs()
    exact = a.double() @ b.double()
    times = []
    with matmul_path(path):
        for _ in range(repeats):
            start = time.perf_counter()
            out = a @ b
            times.append(time.perf_counter() - start)
    error = float((out.double() - exact).abs().max() / exact.abs().max())
    return error, statistics.median(times)


def measure_matmul_path() -> str:
    """``"onednn"`` when that path is fp32-exact here and clearly faster, else ``"default"``."""
    if not _onednn_flag_available() or not onednn_changes_matmul():
        return "default"
    error, _ = probe_matmul("onednn", repeats=1)
    if error > FP32_PROBE_TOLERANCE:
        return "default"  # oneDNN would compute in a lower precision on this CPU
    default_times, onednn_times = [], []
    for _ in range(3):  # alternated, so that a load change hits both
        default_times.append(probe_matmul("default", repeats=1)[1])
        onednn_times.append(probe_matmul("onednn", repeats=1)[1])
    gain = statistics.median(default_times) / statistics.median(onednn_times)
    return "onednn" if gain >= ONEDNN_MIN_GAIN else "default"


_matmul_choice: str | None = None


def chosen_matmul_path() -> str:
    """The user's ``matmul`` setting, else the measured choice (cached per machine)."""
    global _matmul_choice
    if _settings.matmul is not None:
        return _settings.matmul
    if not tuning_enabled():
        return "default"
    with _lock:
        if _matmul_choice is None:
            cached = _read_cache().get("matmul", {}).get("fp32")
            if cached in MATMUL_PATHS:
                _matmul_choice = cached
            else:
                _matmul_choice = measure_matmul_path()
                _write_cache("matmul", "fp32", _matmul_choice)
    return _matmul_choice


# -------------------------------------------------------------------- chunk sizes
@dataclass
class ChunkTuner:
    """Chooses the crops-per-batch of one architecture by timing the real batches.

    Until it settles it tries the :data:`CHUNK_CANDIDATES` that fit in the crops at hand,
    least-sampled first, recording CPU seconds per crop of every full batch; once each
    candidate up to the largest crop count seen has :data:`SAMPLES_PER_CANDIDATE` timings
    (or after :data:`TUNING_CALLS` batches of crops) it keeps the lowest median.
    """

    key: str
    candidates: tuple[int, ...] = CHUNK_CANDIDATES
    samples: dict[int, list[float]] = field(default_factory=dict)
    calls: int = 0
    most_crops: int = 0
    best: int | None = None

    def next_size(self, remaining: int | None = None) -> int:
        if self.best is not None:
            return self.best
        fitting = [c for c in self.candidates if remaining is None or c <= remaining]
        return min(fitting or self.candidates[:1],
                   key=lambda c: (len(self.samples.get(c, [])), c))

    def start_call(self, crops: int) -> None:
        self.calls += 1
        self.most_crops = max(self.most_crops, crops)

    def record(self, size: int, crops: int, seconds: float) -> None:
        if self.best is not None or crops < size:
            return  # only full batches measure the candidate
        self.samples.setdefault(size, []).append(seconds / crops)
        wanted = [c for c in self.candidates if c <= max(self.most_crops, size)]
        enough = all(len(self.samples.get(c, [])) >= SAMPLES_PER_CANDIDATE for c in wanted)
        if enough or self.calls >= TUNING_CALLS:
            self.settle()

    def settle(self) -> None:
        self.best = min(self.samples, key=lambda c: statistics.median(self.samples[c]))
        _write_cache("chunks", self.key, self.best)


_tuners: dict[str, ChunkTuner] = {}


def chunk_tuner(key: str) -> ChunkTuner:
    with _lock:
        if key not in _tuners:
            tuner = ChunkTuner(key)
            cached = _read_cache().get("chunks", {}).get(key)
            if isinstance(cached, int) and cached >= 1:
                tuner.best = cached
            _tuners[key] = tuner
        return _tuners[key]


def model_key(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Architecture, device and dtype (speed does not depend on the weights' values)."""
    config = getattr(model, "config", None)
    text = f"{config!r}|{device.type}|{dtype}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpu_seconds() -> float:
    # With one thread CPU time is what the batch cost, whatever else runs on the machine.
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def encode_in_chunks(
    encode: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor, key: str
) -> list[torch.Tensor]:
    """``encode`` over ``crops`` in batches: the set chunk size, else the tuned one."""
    size = _settings.chunk or (None if tuning_enabled() else DEFAULT_CHUNK)
    tuner = chunk_tuner(key) if size is None else None
    if tuner is not None:
        tuner.start_call(len(crops))
    outputs, start = [], 0
    while start < len(crops):
        step = size or tuner.next_size(len(crops) - start)
        batch = crops[start : start + step]
        begin = _cpu_seconds()
        outputs.append(encode(batch))
        if tuner is not None:
            tuner.record(step, len(batch), _cpu_seconds() - begin)
        start += step
    return outputs


@contextlib.contextmanager
def local_branch() -> Iterator[None]:
    """The numeric context of the local branch: matmul path, and bf16 autocast if opted in."""
    with matmul_path(chosen_matmul_path()):
        if _settings.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield


# ------------------------------------------------------------------------- backends
def onnx_installed() -> bool:
    """ONNX Runtime and onnxscript (the dynamo exporter's) are installed (not imported here)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript"))


@dataclass
class BackendTrial:
    """Backends compared on the same inputs: median CPU seconds per call of each (the first
    is the reference, eager torch) and the largest difference of another's L2-normalised
    outputs from the reference's."""

    seconds: dict[str, float]
    difference: float

    def choice(self) -> str:
        """The reference unless another backend is exact and at least BACKEND_MIN_GAIN faster."""
        reference, *others = self.seconds
        if not others or not self.difference <= EXACT_TOLERANCE:  # NaN is not exact either
            return reference
        fastest = min(others, key=self.seconds.__getitem__)
        gain = self.seconds[reference] / max(self.seconds[fastest], 1e-12)
        return fastest if gain >= BACKEND_MIN_GAIN else reference


def measure_backends(
    sample: torch.Tensor,
    encoders: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    repeats: int = BACKEND_REPEATS,
    clock: Callable[[], float] | None = None,
) -> BackendTrial:
    """Run every encoder on ``sample`` once untimed (warm-up; these outputs are compared),
    then ``repeats`` timed rounds, alternated so that a change of load hits all of them."""
    clock = clock or _cpu_seconds
    first = {name: encode(sample) for name, encode in encoders.items()}
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats):
        for name, encode in encoders.items():
            start = clock()
            encode(sample)
            times[name].append(clock() - start)
    outputs = [F.normalize(out.detach().cpu().float(), dim=-1) for out in first.values()]
    difference = max((float((outputs[0] - out).abs().max()) for out in outputs[1:]), default=0.0)
    return BackendTrial({name: statistics.median(t) for name, t in times.items()}, difference)


_backend_choices: dict[str, str] = {}


def known_backend(key: str) -> str | None:
    """``auto``'s backend for ``key`` when nothing needs measuring: torch without ONNX Runtime
    or with ``REFSEG_TUNE=0``, else the choice made in this process or cached for this
    machine; ``None`` until it is measured."""
    if not onnx_installed() or not tuning_enabled():
        return "torch"
    with _lock:
        if key not in _backend_choices:
            cached = _read_cache().get("backend", {}).get(key)
            if cached in ("torch", "onnx"):
                _backend_choices[key] = cached
        return _backend_choices.get(key)


def choose_backend(
    key: str,
    sample: torch.Tensor,
    builders: Mapping[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]],
    label: str | None = None,
) -> str:
    """``auto``'s backend for ``key`` (one tower of one architecture on this machine).

    Known (:func:`known_backend`), else measured once on the first :data:`BACKEND_SAMPLE`
    rows of ``sample`` (a real batch) with the encoders ``builders`` make (the first, eager
    torch, is the reference; building ONNX's may export the graph, announced with its
    duration), then cached per machine. A builder that fails leaves its backend out, with a
    warning. An empty ``sample`` gives torch, undecided.
    """
    known = known_backend(key)
    if known is not None or len(sample) == 0:
        return known or "torch"
    label = label or key
    notify(
        f"backend auto: timing {' against '.join(builders)} on the {label} (once per machine "
        "and architecture; exporting a real-size tower to ONNX takes 10 s to a few minutes)"
    )
    encoders = {}
    for name, build in builders.items():
        try:
            encoders[name] = build()
        except Exception as exc:  # noqa: BLE001 - any failed export: keep the other backends
            warnings.warn(f"backend auto: {name} cannot run the {label}: {exc}", stacklevel=2)
    sample = sample[:BACKEND_SAMPLE]
    trial = measure_backends(sample, encoders)
    choice = trial.choice()
    with _lock:
        _backend_choices[key] = choice
    _write_cache("backend", key, choice)
    timings = ", ".join(f"{name} {seconds:.3g}" for name, seconds in trial.seconds.items())
    notify(
        f"backend auto: {label} -> {choice} (CPU seconds per batch of {len(sample)}: {timings}; "
        f"outputs differ by {trial.difference:.1e}); kept in {cache_path()}"
    )
    return choice


# -------------------------------------------------------------------------- threads
def default_threads() -> int:
    """Threads for a run: the cores not already busy (1-minute load), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_thread_defaults() -> None:
    """Command-line defaults: passive OpenMP waiting, threads = idle cores (unless set).

    ``OMP_WAIT_POLICY`` only takes effect if set before OpenMP starts, so call this before
    torch runs its first parallel op. An explicit ``OMP_NUM_THREADS`` is respected.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(default_threads())
