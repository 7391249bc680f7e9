"""``backend="auto"``: the choice between eager torch and ONNX Runtime per tower (fake clocks
and stand-in encoders: no timing, no export, no onnxruntime needed), its cache, and what
``describe()`` / eval's config.json record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refseg import runtime
from refseg.cli import main
from refseg.clip import LoadedClip, backend
from refseg.errors import InputError
from refseg.eval import runner as runner_module
from refseg.eval.runner import check_resumable
from refseg.methods.global_local import GlobalLocalConfig
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter
from test_eval_runner import WholeSentence, write_refer_dataset


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A throw-away runtime cache, no choice made yet in this process, ONNX "installed"."""
    monkeypatch.setenv("REFSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_backend_choices", {})
    monkeypatch.setattr(runtime, "onnx_installed", lambda: True)
    return tmp_path


class FakeClock:
    """CPU seconds that advance only when a stand-in encoder "runs"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def encoder(self, seconds: float, offset: float = 0.0):
        def encode(x: torch.Tensor) -> torch.Tensor:
            self.now += seconds
            return x.float() + offset

        return encode


def _sample() -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(0))


def test_the_faster_exact_backend_is_chosen():
    clock = FakeClock()
    trial = runtime.measure_backends(
        _sample(), {"torch": clock.encoder(2.0), "onnx": clock.encoder(1.0, 1e-7)}, clock=clock
    )
    assert trial.seconds == {"torch": 2.0, "onnx": 1.0}
    assert 0 < trial.difference < runtime.EXACT_TOLERANCE
    assert trial.choice() == "onnx"


def test_a_backend_that_changes_the_outputs_is_refused_however_fast():
    clock = FakeClock()
    trial = runtime.measure_backends(
        _sample(), {"torch": clock.encoder(2.0), "onnx": clock.encoder(0.1, 0.05)}, clock=clock
    )
    assert trial.difference > runtime.EXACT_TOLERANCE
    assert trial.choice() == "torch"
    assert runtime.BackendTrial({"torch": 2.0, "onnx": 1.0}, float("nan")).choice() == "torch"


def test_a_gain_within_the_noise_keeps_torch():
    slightly = 2.0 / (runtime.BACKEND_MIN_GAIN - 0.01)
    assert runtime.BackendTrial({"torch": 2.0, "onnx": slightly}, 0.0).choice() == "torch"
    assert runtime.BackendTrial({"torch": 2.0, "onnx": 3.0}, 0.0).choice() == "torch"


def test_timings_are_alternated_medians_after_an_untimed_call():
    clock = FakeClock()
    calls = []
    costs = iter([100.0, 1.0, 5.0, 1.0])  # the first (untimed) call is slow: ignored

    def torch_encode(x):
        calls.append("torch")
        clock.now += next(costs, 1.0)
        return x

    def onnx_encode(x):
        calls.append("onnx")
        clock.now += 0.5
        return x

    trial = runtime.measure_backends(
        _sample(), {"torch": torch_encode, "onnx": onnx_encode}, repeats=3, clock=clock
    )
    assert calls == ["torch", "onnx"] * 4
    assert trial.seconds == {"torch": 1.0, "onnx": 0.5}


def _builders(clock: FakeClock, built: list[str], onnx_seconds: float = 1.0):
    def build(name: str, seconds: float):
        def make():
            built.append(name)
            return clock.encoder(seconds)

        return make

    return {"torch": build("torch", 2.0), "onnx": build("onnx", onnx_seconds)}


def test_choice_is_measured_once_and_cached_per_machine(fresh, monkeypatch, capsys):
    clock = FakeClock()
    real = runtime.measure_backends
    monkeypatch.setattr(runtime, "measure_backends", lambda s, e: real(s, e, clock=clock))
    built: list[str] = []
    samples = torch.zeros(20, 3)
    assert runtime.choose_backend("image|k", samples, _builders(clock, built)) == "onnx"
    assert built == ["torch", "onnx"]
    messages = capsys.readouterr().err
    assert "timing torch against onnx" in messages and "image|k -> onnx" in messages
    assert f"batch of {runtime.BACKEND_SAMPLE}" in messages  # at most a sample of the batch
    cache = json.loads((fresh / "runtime.json").read_text())[runtime.machine_key()]
    assert cache["backend"] == {"image|k": "onnx"}
    # Same process: the memo; a new process: the cache file. Neither builds nor measures.
    assert runtime.choose_backend("image|k", samples, _builders(clock, built)) == "onnx"
    monkeypatch.setattr(runtime, "_backend_choices", {})
    assert runtime.known_backend("image|k") == "onnx"
    assert runtime.choose_backend("image|k", samples, _builders(clock, built)) == "onnx"
    assert built == ["torch", "onnx"]
    # Another architecture is measured on its own: slower ONNX there keeps torch.
    assert runtime.choose_backend("text|k", samples, _builders(clock, built, 3.0)) == "torch"
    cache = json.loads((fresh / "runtime.json").read_text())[runtime.machine_key()]
    assert cache["backend"] == {"image|k": "onnx", "text|k": "torch"}


def test_no_onnx_or_no_tuning_means_torch_without_measuring(fresh, monkeypatch):
    built: list[str] = []
    monkeypatch.setenv("REFSEG_TUNE", "0")
    assert runtime.choose_backend("image|k", torch.zeros(3, 2), _builders(FakeClock(), built)) \
        == "torch"
    monkeypatch.delenv("REFSEG_TUNE")
    monkeypatch.setattr(runtime, "onnx_installed", lambda: False)
    assert runtime.choose_backend("image|k", torch.zeros(3, 2), _builders(FakeClock(), built)) \
        == "torch"
    assert built == [] and not (fresh / "runtime.json").exists()


def test_an_empty_batch_decides_nothing(fresh):
    built: list[str] = []
    assert runtime.choose_backend("image|k", torch.zeros(0, 2), _builders(FakeClock(), built)) \
        == "torch"
    assert built == [] and runtime.known_backend("image|k") is None


def test_a_failed_export_keeps_torch_with_a_warning(fresh, monkeypatch):
    def broken():
        raise RuntimeError("exporter cannot trace this")

    builders = {"torch": lambda: (lambda x: x), "onnx": broken}
    with pytest.warns(UserWarning, match="onnx cannot run"):
        assert runtime.choose_backend("image|k", torch.zeros(3, 2), builders) == "torch"
    assert runtime.known_backend("image|k") == "torch"


# ------------------------------------------------------------ wiring: Segmenter, eval
@pytest.fixture
def loaded(tiny_clip, tiny_tokenizer) -> LoadedClip:
    return LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit")


@pytest.fixture
def stand_in_onnx(monkeypatch):
    """ONNX "encoders" that are the eager ones plus 1e-7, counting their inputs."""
    seen = {"image": 0, "text": 0}

    def fake_onnx(clip, tower):
        eager = backend._eager(clip, tower)

        def encode(x):
            seen[tower] += len(x)
            return eager(x) + 1e-7

        return encode

    monkeypatch.setattr(backend, "_onnx", fake_onnx)
    return seen


def _query(loaded: LoadedClip) -> Segmenter:
    rng = np.random.default_rng(0)
    masks = np.zeros((5, 32, 32), dtype=bool)
    for i, mask in enumerate(masks):
        mask[i * 5 : i * 5 + 8, 4:20] = True
    segmenter = Segmenter(loaded, None, config=GlobalLocalConfig(alpha=0.5, k=1),
                          phrases=WholeSentence())
    segmenter.set_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                        proposals=MaskProposals(masks))
    segmenter.query(["the left one", "a red square"])
    return segmenter


def test_auto_runs_each_tower_through_its_measured_choice(fresh, monkeypatch, loaded,
                                                          stand_in_onnx):
    faster = {"image": "onnx", "text": "torch"}

    def trial(sample, encoders):
        tower = "image" if sample.dtype == torch.float32 else "text"
        outputs = [encode(sample) for encode in encoders.values()]  # both really run
        assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
        seconds = {"torch": 1.0, "onnx": 1.0}
        seconds["torch" if faster[tower] == "onnx" else "onnx"] = 2.0
        return runtime.BackendTrial(seconds, 0.0)

    monkeypatch.setattr(runtime, "measure_backends", trial)
    assert backend.backend_record(loaded) == "auto: image ?, text ?"
    segmenter = _query(loaded)
    assert segmenter.describe()["backend"] == "auto: image onnx, text torch"
    crops_after_trial = stand_in_onnx["image"]
    assert crops_after_trial >= 5  # the crops went through the chosen "onnx" encoder
    stand_in_onnx["text"] = 0
    _query(loaded)  # chosen: no new measurement, the same routes
    assert stand_in_onnx["image"] == crops_after_trial + 5 and stand_in_onnx["text"] == 0
    faster["text"] = "onnx"
    monkeypatch.setattr(runtime, "_backend_choices", {})
    (fresh / "runtime.json").unlink()
    assert backend.backend_record(_query(loaded).clip) == "auto: onnx"


def test_forced_backends_and_bf16_are_recorded_as_they_run(fresh, loaded):
    with runtime.overridden(backend="torch"):
        assert backend.backend_record(loaded) == "torch"
    with runtime.overridden(precision="bf16"):  # no fp32 local branch: the image tower is torch
        assert backend.backend_record(loaded) == "auto: image torch, text ?"


def test_resume_accepts_any_exact_backend_but_not_another_precision(tmp_path):
    def config(record: str, precision: str = "fp32") -> dict:
        return {"settings": {"precision": precision, "backend": record}, "params": {}}

    check_resumable(config("auto: onnx"), config("auto: image torch, text ?"), tmp_path)
    check_resumable(config("auto: image ?, text ?"), config("auto: torch"), tmp_path)
    check_resumable(config("torch"), config("auto: onnx"), tmp_path)  # a run from before auto
    with pytest.raises(InputError, match="precision: 'fp32' there, 'bf16' now"):
        check_resumable(config("torch"), config("torch", "bf16"), tmp_path)


def test_eval_records_what_auto_chose_once_it_has_measured(fresh, monkeypatch, tmp_path,
                                                           tiny_clip_dir, stand_in_onnx):
    root = write_refer_dataset(tmp_path / "data", images=1)
    monkeypatch.setattr(runtime, "measure_backends",
                        lambda sample, encoders: runtime.BackendTrial({"torch": 2.0, "onnx": 1.0},
                                                                      0.0))
    written = []
    real_write = runner_module.write_json_atomic
    def write(path, data, **kw):
        if path.name == "config.json":
            written.append(data["settings"]["backend"])
        return real_write(path, data, **kw)

    monkeypatch.setattr(runner_module, "write_json_atomic", write)
    args = ["eval", "--no-progress", "--dataset", str(root), "--name", "tinyref", "--split",
            "val", "--proposals", "gt", "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "r")]
    with runtime.overridden():
        assert main(args) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["settings"]["backend"] == "auto: onnx"
    assert written[0] == "auto: image ?, text ?"  # not known when the run started
    assert stand_in_onnx["image"] > 0 and stand_in_onnx["text"] > 0
