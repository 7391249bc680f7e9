"""Measured runtime settings (refseg.runtime): every exact option gives the eager scores,
the chunk tuner keeps the fastest candidate, the matmul probe refuses a non-fp32 path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refseg import runtime
from refseg.clip import LoadedClip
from refseg.methods.global_local import GlobalLocalConfig
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter

TEXTS = ["the cat lying on the scooter seat", "a man in a red shirt", "left zebra"]


def _scene(n: int = 11) -> tuple[np.ndarray, MaskProposals]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    masks = np.zeros((n, 48, 64), dtype=bool)
    for mask in masks:
        y, x = rng.integers(0, 30), rng.integers(0, 40)
        mask[y : y + rng.integers(5, 18), x : x + rng.integers(5, 24)] = True
    return image, MaskProposals(masks)


@pytest.fixture(params=["vit", "rn"])
def loaded(request, tiny_clip, tiny_rn_clip, tiny_tokenizer) -> LoadedClip:
    model = tiny_clip if request.param == "vit" else tiny_rn_clip
    return LoadedClip(model, tiny_tokenizer, f"tiny-{request.param}")


def _scores(loaded: LoadedClip, **settings: object) -> np.ndarray:
    image, proposals = _scene()
    with runtime.overridden(**settings):
        segmenter = Segmenter(loaded, None, config=GlobalLocalConfig(alpha=0.5, k=2))
        segmenter.set_image(image, proposals=proposals)
        return np.stack([r.scores for r in segmenter.query(TEXTS)])


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("matmul", ["default", "onednn"])
@pytest.mark.parametrize("global_branch", ["factored", "full"])
def test_exact_options_equal_eager_scores(loaded, chunk, matmul, global_branch):
    # The reference: one batch, default matmul, every token of the global branch computed.
    eager = _scores(loaded, chunk=64, matmul="default", global_branch="full")
    fast = _scores(loaded, chunk=chunk, matmul=matmul, global_branch=global_branch)
    np.testing.assert_allclose(fast, eager, atol=1e-5, rtol=0)


def test_unknown_global_branch_is_refused():
    with pytest.raises(ValueError, match="global_branch"):
        runtime.RuntimeSettings(global_branch="sparse")


def test_tuned_chunks_equal_eager_scores_and_settle(loaded, monkeypatch, tmp_path):
    monkeypatch.setenv("REFSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_tuners", {})
    eager = _scores(loaded, chunk=64, matmul="default")
    key = f"torch|{runtime.model_key(loaded.model, loaded.device, loaded.dtype)}"
    for _ in range(8):  # 11 crops per image: a few images sample every candidate 3 times
        np.testing.assert_allclose(_scores(loaded, chunk=None), eager, atol=1e-5, rtol=0)
    tuner = runtime.chunk_tuner(key)
    assert tuner.best in runtime.CHUNK_CANDIDATES
    cached = json.loads((tmp_path / "runtime.json").read_text())[runtime.machine_key()]
    assert cached["chunks"][key] == tuner.best
    # A new process (fresh tuners) reads the cached choice instead of measuring again.
    monkeypatch.setattr(runtime, "_tuners", {})
    assert runtime.chunk_tuner(key).best == tuner.best


def test_tuner_keeps_the_fastest_median_and_ignores_partial_batches(monkeypatch, tmp_path):
    monkeypatch.setenv("REFSEG_CACHE_DIR", str(tmp_path))
    tuner = runtime.ChunkTuner("k", candidates=(1, 4, 8))
    per_crop = {1: 3.0, 4: 1.0, 8: 2.0}
    tuner.start_call(8)  # batches of 8 crops: every candidate fits
    tuner.record(8, 5, 0.0)  # partial batch: would look free, must not count
    assert tuner.samples == {}
    for _ in range(runtime.SAMPLES_PER_CANDIDATE):
        for size, cost in per_crop.items():
            assert tuner.best is None
            tuner.record(size, size, cost * size)
    assert tuner.best == 4
    assert tuner.next_size() == 4


def test_unsampled_tuner_tries_candidates_in_turn():
    tuner = runtime.ChunkTuner("k", candidates=(2, 4))
    assert tuner.next_size(5) == 2
    tuner.record(2, 2, 1.0)
    assert tuner.next_size(5) == 4
    assert tuner.next_size(3) == 2  # 4 does not fit in 3 crops: no partial batch


def test_small_images_settle_on_the_candidates_that_fit(monkeypatch, tmp_path):
    monkeypatch.setenv("REFSEG_CACHE_DIR", str(tmp_path))
    tuner = runtime.ChunkTuner("k", candidates=(1, 2, 4, 8))
    for _ in range(10):  # images of 3 crops: 4 and 8 can never be timed
        tuner.start_call(3)
        remaining = 3
        while remaining:
            size = tuner.next_size(remaining)
            crops = min(size, remaining)
            tuner.record(size, crops, {1: 2.0, 2: 1.0}[size] * crops)
            remaining -= crops
    assert tuner.best == 2 and tuner.calls < runtime.TUNING_CALLS


def test_matmul_probe_refuses_a_path_that_is_not_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "probe_matmul", lambda path, repeats=3: (4e-3, 0.001))
    monkeypatch.setattr(runtime, "onednn_changes_matmul", lambda: True)
    assert runtime.measure_matmul_path() == "default"


def test_a_flag_that_changes_nothing_is_not_chosen(monkeypatch):
    monkeypatch.setattr(runtime, "probe_matmul", lambda path, repeats=3: (1e-7, 1.0))
    monkeypatch.setattr(runtime, "onednn_changes_matmul", lambda: False)
    assert runtime.measure_matmul_path() == "default"


def test_matmul_probe_chooses_onednn_only_when_faster(monkeypatch):
    seconds = {"default": 2.0, "onednn": 1.0}
    monkeypatch.setattr(runtime, "probe_matmul", lambda path, repeats=3: (1e-7, seconds[path]))
    monkeypatch.setattr(runtime, "onednn_changes_matmul", lambda: True)
    assert runtime.measure_matmul_path() == ("onednn" if runtime._onednn_flag_available()
                                            else "default")
    seconds["onednn"] = 1.99
    assert runtime.measure_matmul_path() == "default"


def test_onednn_path_is_fp32_exact_on_this_machine():
    error, _ = runtime.probe_matmul("onednn", repeats=1)
    exact_error, _ = runtime.probe_matmul("default", repeats=1)
    if error > runtime.FP32_PROBE_TOLERANCE:  # lower precision here: it must not be chosen
        assert runtime.measure_matmul_path() == "default"
    else:
        assert error <= 10 * max(exact_error, 1e-7)
    assert torch.backends.mkldnn.matmul.fp32_precision == "none"  # restored


def test_bf16_local_branch_is_close_and_cached_apart(loaded):
    fp32 = _scores(loaded, chunk=4, matmul="default")
    with pytest.warns(UserWarning) if not runtime.bf16_supported() else _nothing():
        runtime.configure(precision="bf16")
    try:
        bf16 = _scores(loaded, chunk=4, matmul="default")
    finally:
        runtime.configure(precision="fp32")
    assert not np.array_equal(bf16, fp32)  # bf16 really ran
    np.testing.assert_allclose(bf16, fp32, atol=0.05)


def test_bf16_result_is_not_served_from_the_fp32_cache(loaded):
    image, proposals = _scene()
    segmenter = Segmenter(loaded, None, config=GlobalLocalConfig(alpha=0.5, k=2))
    segmenter.set_image(image, proposals=proposals)
    fp32 = segmenter.query(TEXTS[:1])[0].scores
    with runtime.overridden(precision="bf16"):
        bf16 = segmenter.query(TEXTS[:1])[0].scores
    assert not np.array_equal(fp32, bf16)


def test_bad_settings_are_rejected():
    for bad in ({"precision": "fp8"}, {"chunk": 0}, {"matmul": "blas"}):
        with pytest.raises(ValueError):
            runtime.RuntimeSettings(**bad)


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert runtime.default_threads() == 1
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert runtime.default_threads() == 4
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (13.0, 0.0, 0.0))
    assert runtime.default_threads() == 1


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.slow
def test_onnx_backend_equals_eager_scores_and_caches_the_graphs(loaded, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is optional (not in CI)")
    pytest.importorskip("onnxscript", reason="the onnx extra is optional (not in CI)")
    from refseg.clip import onnx_backend

    monkeypatch.setenv("REFSEG_CACHE_DIR", str(tmp_path))
    eager = _scores(loaded, chunk=64, matmul="default", backend="torch")
    onnx = _scores(loaded, chunk=3, backend="onnx")  # crops and texts through ONNX Runtime
    np.testing.assert_allclose(onnx, eager, atol=1e-5, rtol=0)
    graphs = sorted(p.name.split("-")[0] for p in (tmp_path / "onnx").glob("*.onnx"))
    assert graphs == ["image", "text"]
    # Same weights: the cached graph is reused; changed weights: a new key.
    image = onnx_backend.OnnxImageEncoder(loaded.model)
    assert image.export_seconds == 0 and image.path.exists()
    key = onnx_backend.image_tower(loaded.model).key
    with torch.no_grad():
        next(loaded.model.visual.parameters()).add_(1.0)
    assert onnx_backend.image_tower(loaded.model).key != key


@pytest.mark.slow
def test_onnx_text_encoder_equals_eager_at_any_batch_and_length(
    tiny_clip, tiny_tokenizer, monkeypatch, tmp_path
):
    pytest.importorskip("onnxruntime", reason="the onnx extra is optional (not in CI)")
    pytest.importorskip("onnxscript", reason="the onnx extra is optional (not in CI)")
    from refseg.clip import onnx_backend

    loaded = LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit")  # the same text tower as RN's
    monkeypatch.setenv("REFSEG_CACHE_DIR", str(tmp_path))
    model, eot = loaded.model, loaded.tokenizer.eot_id
    encoder = onnx_backend.OnnxTextEncoder(model, eot)
    assert encoder.export_seconds > 0
    texts = ["a", "the cat lying on the scooter seat next to the tree", *TEXTS]
    for batch in (texts[:1], texts[1:2], texts):  # one row, a long row, trimmed lengths
        tokens = loaded.tokenize(batch)
        for ids in (tokens, loaded.trim_tokens(tokens)):
            np.testing.assert_allclose(
                encoder(ids), model.encode_text(ids, eot).detach(), atol=1e-5, rtol=0
            )
    assert loaded.trim_tokens(loaded.tokenize(texts[:1])).shape[1] < loaded.tokenizer.context_length
    # A second construction loads the cached graph: no export.
    monkeypatch.setattr(onnx_backend, "export_tower", lambda *a: pytest.fail("exported again"))
    assert onnx_backend.OnnxTextEncoder(model, eot).path == encoder.path
    # The key follows the text weights and the end-of-text id, not the image tower's weights.
    key = onnx_backend.text_tower(model, eot).key
    assert onnx_backend.text_tower(model, eot + 1).key != key
    with torch.no_grad():
        next(model.visual.parameters()).add_(1.0)
    assert onnx_backend.text_tower(model, eot).key == key
    with torch.no_grad():
        model.token_embedding.weight[0, 0] += 1e-3
    assert onnx_backend.text_tower(model, eot).key != key
