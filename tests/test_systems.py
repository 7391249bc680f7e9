"""One API for every system: the registry and ``refseg.load``, Global-Local as a System,
DenseSystem's resizing / threshold / caching, the maskclip system, pixel AP, and eval, the
CLI and serve driven through the interface (tiny random CLIPs, data made here)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.integrate import simpson

import refseg
from refseg.cli import main
from refseg.clip import LoadedClip
from refseg.data import ReferDataset
from refseg.errors import InputError
from refseg.eval.metrics import AP_THRESHOLDS, PixelCounts, pixel_ap, pixel_counts
from refseg.eval.runner import EvalRunner
from refseg.proposals import MaskProposals
from refseg.results import SegmentationResult
from refseg.segmenter import Segmenter
from refseg.systems import DenseSystem, System, VisualPrompt, base
from refseg.systems.maskclip import MaskClipConfig, MaskClipSystem, minmax_logits
from test_eval_runner import WholeSentence, write_refer_dataset

H, W = 30, 40


class Toy(DenseSystem):
    """Logits ``[T, 3, 4]`` = a ramp plus the text's length; counts encode/predict calls;
    takes visual prompts (the prompt alone: the mask's mean as a constant logit)."""

    name = "toy"
    supports_visual_prompts = True
    query_options = ("bias",)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.encoded: list[tuple[int, int]] = []
        self.predicted = 0
        self.prompts: list[VisualPrompt] = []

    def encode_image(self, image):
        self.encoded.append(image.size)
        return torch.arange(12.0).reshape(3, 4) / 4 - 1.5

    def predict(self, image_state, texts, bias=0.0, prompt=None):
        self.predicted += 1
        if prompt is not None:
            self.prompts.append(prompt)
        if not texts:
            return torch.full((1, 3, 4), float(prompt.mask.mean()))
        return torch.stack([image_state + 0.1 * len(t) + bias for t in texts])


def image(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def loaded(tiny_clip, tiny_tokenizer) -> LoadedClip:
    return LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit")


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that test systems do not leak."""
    base._register_builtins()
    monkeypatch.setattr(base, "_SYSTEMS", dict(base._SYSTEMS))
    base.register_system("toy", Toy, "toy dense system with visual prompts")
    return base._SYSTEMS


# ------------------------------------------------------------------------------ registry
def test_registry_lists_builtins_and_refuses_unknown_names_and_options():
    names = refseg.available_systems()
    assert {"global-local", "maskclip", "clipseg", "risclip"} <= set(names)
    with pytest.raises(InputError, match="unknown system 'nope'.*global-local"):
        refseg.load("nope")
    with pytest.raises(InputError, match="maskclip system does not take 'alpha'.*threshold"):
        refseg.load("maskclip", clip="shapes-vit", alpha=0.5)


def test_load_by_name_and_by_detected_path(registry, tmp_path):
    system = refseg.load("toy", threshold=0.25)
    assert isinstance(system, Toy) and system.threshold == 0.25
    marker = tmp_path / "toy-model"
    marker.mkdir()
    base.register_system(
        "toy-dir",
        lambda path, threshold=0.5: Toy(threshold=threshold),
        "toy from a folder",
        detect=lambda path: path.name == "toy-model",
    )
    assert isinstance(refseg.load(marker), Toy)
    with pytest.raises(InputError, match="unknown system"):
        refseg.load(tmp_path)  # exists, but no system claims it


def test_global_local_is_a_system_and_rejects_foreign_options(loaded):
    segmenter = Segmenter(loaded, None, phrases=WholeSentence())
    assert isinstance(segmenter, System) and segmenter.name == "global-local"
    assert not segmenter.dense
    masks = np.zeros((2, H, W), bool)
    masks[0, :10], masks[1, 10:] = True, True
    segmenter.set_image(image(), proposals=MaskProposals(masks))
    with pytest.raises(InputError, match="does not take visual prompts"):
        segmenter.query(
            "a cat", prompt=VisualPrompt(Image.new("RGB", (4, 4)), np.ones((4, 4), bool))
        )
    with pytest.raises(InputError, match="no option 'threshold'.*alpha"):
        segmenter.query("a cat", threshold=0.5)
    result = segmenter.query("a cat", alpha=0.5)
    assert result.probability is None and result.index in (0, 1)
    assert segmenter.query_params(alpha=0.5)["alpha"] == 0.5
    assert segmenter.query_params(method="global-only")["alpha"] == 1.0  # pinned by the method
    described = segmenter.describe()
    assert described["system"] == "global-local" and described["clip"] == "tiny-vit"
    assert described["alpha"] == segmenter.config.alpha


# --------------------------------------------------------------------------- DenseSystem
def test_dense_result_is_the_resized_sigmoid_and_mask_is_its_threshold():
    system = Toy(threshold=0.6)
    system.set_image(image())
    results = system.query(["a", "abc"])
    for text, result in zip(["a", "abc"], results, strict=True):
        logits = (torch.arange(12.0).reshape(3, 4) / 4 - 1.5 + 0.1 * len(text))[None, None]
        expected = torch.sigmoid(F.interpolate(logits, (H, W), mode="bilinear"))[0, 0].numpy()
        assert result.probability.shape == (H, W) and result.probability.dtype == np.float32
        np.testing.assert_allclose(result.probability, expected, atol=1e-6)
        np.testing.assert_array_equal(result.mask, result.probability > 0.6)
        assert result.score == pytest.approx(float(expected.max()))
        assert len(result.proposals) == 0 and result.index is None and result.method == "toy"
    low = system.query("a", threshold=0.1)
    assert low.mask.sum() > results[0].mask.sum()  # a lower threshold keeps more pixels
    with pytest.raises(InputError, match="threshold must be in"):
        system.query("a", threshold=1.5)
    with pytest.raises(InputError, match="no option 'alpha'.*threshold, bias"):
        system.query("a", alpha=0.3)


def test_dense_system_caps_pixels_and_caches_image_states_and_maps():
    system = Toy(max_pixels=300, image_cache_size=2)
    big = image(1, 60, 80)
    system.set_image(big)
    assert system.encoded == [(20, 15)]  # 80x60 capped to 300 pixels, aspect kept
    first = system.query("abc", threshold=0.3)
    assert first.probability.shape == (60, 80)  # back at the original size
    system.query("abc", threshold=0.7)  # a threshold sweep reuses the maps
    assert system.predicted == 1
    system.query("abc", bias=1.0)
    assert system.predicted == 2
    system.set_image(big.copy())  # same pixels: no new encoding
    system.set_image(image(2, 60, 80))
    system.set_image(image(3, 60, 80))
    system.set_image(big)  # evicted by the two others (cache of 2)
    assert len(system.encoded) == 4
    state = system.image_state()
    system.set_image(image(4))
    system.restore_image_state(state)
    np.testing.assert_allclose(system.query("abc").probability, first.probability)


def test_visual_prompt_alone_gives_one_result_and_bad_prompts_are_user_errors():
    system = Toy()
    system.set_image(image())
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    support = Image.fromarray(image(5, 8, 8))
    (result,) = system.query([], prompt_image=support, prompt_mask=mask)
    assert result.text == "" and system.prompts[-1].mask.mean() == 0.5
    np.testing.assert_allclose(result.probability, 1 / (1 + np.exp(-0.5)), rtol=1e-6)
    np.testing.assert_array_equal(VisualPrompt.build(support, mask.astype(np.uint8)).mask, mask)
    as_png = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(as_png, format="PNG")
    np.testing.assert_array_equal(VisualPrompt.build(support, as_png.getvalue()).mask, mask)
    with pytest.raises(InputError, match="needs both"):
        system.query("a", prompt_image=support)
    with pytest.raises(InputError, match="same size"):
        system.query("a", prompt_image=support, prompt_mask=np.ones((4, 4), bool))
    with pytest.raises(InputError, match="empty"):
        system.query("a", prompt_image=support, prompt_mask=np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="no expression"):
        system.query([])


# ------------------------------------------------------------------------------ maskclip
@pytest.mark.parametrize("clip_fixture", ["tiny_clip", "tiny_rn_clip"])
def test_maskclip_map_is_the_minmax_patch_sentence_cosine(clip_fixture, request, tiny_tokenizer):
    clip = LoadedClip(request.getfixturevalue(clip_fixture), tiny_tokenizer, "tiny")
    system = MaskClipSystem(clip, MaskClipConfig(threshold=0.6))
    picture = image(7, 50, 70)
    system.set_image(picture)
    texts = ["the cat lying on the scooter seat", "left zebra"]
    results = system.query(texts)
    # independently: the dense embeddings of the squashed image against the EOT features
    size = clip.config.preprocess.image_size
    squashed = Image.fromarray(picture).resize((size, size), Image.Resampling.BICUBIC)
    pixels = clip.preprocess(squashed, mode="squash")[None]
    with torch.no_grad():
        dense = F.normalize(clip.model.visual.dense_embeddings(pixels)[0], dim=-1)
        text = F.normalize(clip.encode_texts(texts), dim=-1)
    cosine = torch.einsum("hwd,td->thw", dense, text)
    for i, result in enumerate(results):
        c = cosine[i]
        expected = ((c - c.min()) / (c.max() - c.min())).clamp(1e-4, 1 - 1e-4)
        logits = torch.logit(expected)[None, None]
        resized = torch.sigmoid(F.interpolate(logits, (50, 70), mode="bilinear"))[0, 0]
        assert result.probability.shape == (50, 70)
        np.testing.assert_allclose(result.probability, resized.numpy(), atol=1e-5)
        np.testing.assert_array_equal(result.mask, result.probability > 0.6)
        assert 0.0 < result.mask.mean() < 1.0
    assert system.describe()["system"] == "maskclip"


def test_maskclip_input_size_sets_the_patch_grid(loaded):
    native = loaded.config.preprocess.image_size
    grids = []
    for size in (None, 2 * native):
        system = MaskClipSystem(loaded, MaskClipConfig(input_size=size))
        system.set_image(image(8))
        grids.append(tuple(system.image_state()[2].shape[:2]))
    patch = loaded.model.visual.patch_size
    assert grids == [(native // patch,) * 2, (2 * native // patch,) * 2]


def test_minmax_of_a_constant_map_is_one_half():
    probability = torch.sigmoid(minmax_logits(torch.ones(1, 2, 2)))
    assert torch.allclose(probability, torch.full((1, 2, 2), 0.5))


# ------------------------------------------------------------------------------ pixel AP
def test_pixel_counts_match_a_hand_count():
    probability = np.array([[0.05, 0.5], [0.99, 0.3]], dtype=np.float32)
    target = np.array([[False, True], [True, False]])
    counts = pixel_counts(probability, target)
    for j, t in enumerate(AP_THRESHOLDS):
        assert counts.tp[j] == int(((probability > t) & target).sum())
        assert counts.fp[j] == int(((probability > t) & ~target).sum())
    assert counts.positives == 2 and len(counts.tp) == 49
    assert PixelCounts.from_list(counts.to_list()) == counts


def test_pixel_ap_is_simpson_over_the_clipseg_precision_recall_points():
    # two expressions; pixel probabilities chosen so that three thresholds bands differ
    first = pixel_counts(np.array([[0.9, 0.7, 0.3, 0.1]]), np.array([[True, True, False, True]]))
    second = pixel_counts(np.array([[0.7, 0.3]]), np.array([[False, True]]))
    # by hand: positives 4; p > t for t < 0.1: all 6 pixels (tp 4, fp 2); 0.1 <= t < 0.3:
    # tp 3, fp 2; 0.3 <= t < 0.7: tp 2, fp 1; 0.7 <= t < 0.9: tp 1, fp 0; t >= 0.9: none
    points = sorted({(tp / 5, tp / (1 + tp + fp)) for tp, fp in [(4, 2), (3, 2), (2, 1), (1, 0)]})
    recall, precision = zip(*points, strict=True)
    expected = 100 * simpson(np.array(precision), x=np.array(recall))
    assert pixel_ap([first, second]) == pytest.approx(expected)
    # and Simpson's rule for these 4 uneven points is not the trapezoid rule
    assert abs(expected - 100 * np.trapezoid(precision, recall)) > 1e-6
    assert pixel_ap([]) is None


# ---------------------------------------------------------------------- eval through it
def test_eval_runs_a_dense_system_without_proposals_and_reports_ap(tmp_path, loaded):
    root = write_refer_dataset(tmp_path / "data", images=3)
    dataset = ReferDataset(root, "tinyref", "val")
    system = MaskClipSystem(loaded, MaskClipConfig(threshold=0.5))
    runner = EvalRunner(
        system,
        dataset,
        tmp_path / "run",
        sweep=[{"threshold": 0.2}, {"threshold": 0.8}],
        progress=False,
    )
    summary = runner.run()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["settings"]["system"] == "maskclip" and config["params"] == {"threshold": 0.5}
    assert config["settings"]["clip"] == "tiny-vit" and summary.no_proposal_images == 0
    # metrics by hand from the system's own maps
    counts, inter, union = [], 0, 0
    for sample in dataset:
        system.set_image(sample.load_image())
        for referent, expression in sample.expressions():
            result = system.query(expression.text)
            counts.append(pixel_counts(result.probability, referent.mask))
            inter += int((result.mask & referent.mask).sum())
            union += int((result.mask | referent.mask).sum())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(pixel_ap(counts))
    assert metrics["oIoU"] == pytest.approx(100 * inter / union)
    assert summary.sweep[0]["oIoU"] != summary.sweep[1]["oIoU"]  # the threshold matters
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| system | maskclip (threshold 0.5), dense |" in report and "proposals" not in report
    assert f"| AP | {metrics['AP']:.2f} |" in report


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture
def scene(tmp_path):
    picture = np.full((60, 80, 3), 30, dtype=np.uint8)
    picture[10:30, 10:30] = (220, 30, 30)
    path = tmp_path / "scene.png"
    Image.fromarray(picture).save(path)
    return path


def run_cli(args, capsys):
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_segment_with_a_dense_system_writes_mask_and_heat_map(
    scene, tiny_clip_dir, tmp_path, capsys
):
    out, heat = tmp_path / "mask.png", tmp_path / "heat.png"
    # the expression after the options is still taken as TEXT
    status, stdout, err = run_cli(
        ["segment", scene, "--system", "maskclip", "--clip", tiny_clip_dir,
         "--threshold", "0.7", "--out", out, "--heatmap", heat, "--json", "the red square"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    record = json.loads(stdout.strip().splitlines()[-1])
    assert record["text"] == "the red square"
    assert record["dense"] is True and record["heatmap_path"] == str(heat)
    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == (60, 80) and int(mask.sum()) == record["area"]
    assert Image.open(heat).size == (80, 60)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--system", "nope"], "unknown system 'nope'"),
        (["--system", "maskclip", "--alpha", "0.5"], "does not take 'alpha'"),
        (["--system", "maskclip", "--option", "bogus=1"], "does not take 'bogus'"),
        (["--heatmap", "h.png", "--proposals", "superpixel"], "needs a dense system"),
    ],
    ids=["unknown-system", "foreign-option", "foreign-free-option", "heatmap-of-proposals"],
)
def test_segment_system_errors_are_one_line_exit_2(
    scene, tiny_clip_dir, tmp_path, capsys, extra, message
):
    status, _, err = run_cli(
        ["segment", scene, "a cat", "--clip", tiny_clip_dir, "--out", tmp_path / "m.png", *extra],
        capsys,
    )
    assert status == 2 and message in err
    assert err.startswith("refseg: error:") and len(err.strip().splitlines()) == 1


def test_segment_forwards_a_visual_prompt_or_refuses_it(
    scene, tiny_clip_dir, tmp_path, capsys, registry
):
    support_mask = np.zeros((60, 80), np.uint8)
    support_mask[10:30, 10:30] = 255
    Image.fromarray(support_mask).save(tmp_path / "support_mask.png")
    prompt = ["--prompt-image", scene, "--prompt-mask", tmp_path / "support_mask.png"]
    built: list[Toy] = []
    base.register_system("toy", lambda **kw: built.append(Toy(**kw)) or built[-1], "toy")
    status, stdout, err = run_cli(
        ["segment", scene, "--system", "toy", "--out", tmp_path / "m.png", *prompt], capsys
    )
    assert status == 0, err
    assert "(visual prompt)" in stdout
    (given,) = built[0].prompts
    np.testing.assert_array_equal(given.mask, support_mask > 0)
    status, _, err = run_cli(
        ["segment", scene, "a cat", "--clip", tiny_clip_dir, "--proposals", "superpixel",
         "--out", tmp_path / "m.png", *prompt],
        capsys,
    )  # fmt: skip
    assert status == 2 and "global-local system does not take visual prompts" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_command_with_maskclip_reports_ap(tmp_path, tiny_clip_dir, capsys):
    root = write_refer_dataset(tmp_path / "data", images=2)
    status, stdout, err = run_cli(
        ["eval", "--system", "maskclip", "--clip", tiny_clip_dir, "--dataset", root, "--name",
         "tinyref", "--split", "val", "--out", tmp_path / "run", "--no-progress",
         "--sweep", "threshold=0.3,0.6"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 100.0 and "no proposals" not in stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["settings"]["system"] == "maskclip" and "alpha" not in config["params"]
    status, _, err = run_cli(
        ["eval", "--clip", tiny_clip_dir, "--dataset", root, "--name", "tinyref", "--split",
         "val", "--out", tmp_path / "run2", "--proposals", "superpixel", "--sweep",
         "threshold=0.3"],
        capsys,
    )  # fmt: skip
    assert status == 2 and "no option 'threshold'" in err


# ---------------------------------------------------------------------------------- serve
def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def serve_client():
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from refseg.serve import ServeSettings, create_app

    def make(system):
        return TestClient(create_app(system, ServeSettings()))

    return make


def test_serve_a_dense_system_returns_heat_maps(serve_client, loaded):
    system = MaskClipSystem(loaded)
    with serve_client(system) as client:
        health = client.get("/health").json()
        assert (health["system"], health["dense"], health["visual_prompts"]) == (
            "maskclip",
            True,
            False,
        )
        files = {"image": ("a.png", png(image(3)), "image/png")}
        body = client.post("/segment", files=files, data={"text": ["a cat"]}).json()
        (result,) = body["results"]
        assert result["dense"] and result["proposals"] == [] and result["method"] == "maskclip"
        heat = Image.open(io.BytesIO(base64.b64decode(result["heatmap"].split(",", 1)[1])))
        assert heat.size == (W, H)
        low = client.post("/segment", files=files, data={"text": ["a cat"], "threshold": "0.1"})
        assert low.json()["cached"] and low.json()["results"][0]["area"] > result["area"]
        response = client.post("/segment", files=files, data={"text": ["a"], "method": "x"})
        assert response.status_code == 400 and "no option 'method'" in response.json()["error"]
        prompt = {
            "prompt_image": ("s.png", png(image(4)), "image/png"),
            "prompt_mask": ("m.png", png(np.full((H, W), 255, np.uint8)), "image/png"),
        }
        response = client.post("/segment", files={**files, **prompt}, data={"text": ["a"]})
        assert response.status_code == 400 and "does not take visual prompts" in response.text


def test_serve_accepts_an_example_image_and_mask_as_the_prompt(serve_client):
    system = Toy()
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 4] = 255
    files = {
        "image": ("a.png", png(image(3)), "image/png"),
        "prompt_image": ("s.png", png(image(4)), "image/png"),
        "prompt_mask": ("m.png", png(mask), "image/png"),
    }
    with serve_client(system) as client:
        response = client.post("/segment", files=files)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["text"] == "" and result["heatmap"].startswith("data:image/png;base64,")
        assert system.prompts[-1].mask.mean() == pytest.approx(0.25)
        half = {k: v for k, v in files.items() if k != "prompt_mask"}
        response = client.post("/segment", files=half)
        assert response.status_code == 422 and "both" in response.json()["error"]


def test_one_string_gives_one_result_and_a_list_gives_a_list():
    system = Toy()
    system.set_image(image())
    one = system.query("abc")
    assert isinstance(one, SegmentationResult) and one.text == "abc"
    listed = system.query(["abc"])
    assert isinstance(listed, list) and len(listed) == 1
    np.testing.assert_array_equal(listed[0].probability, one.probability)
    assert [r.text for r in system.query(("a", "abc"))] == ["a", "abc"]
    assert isinstance(system.segment(image(), "a"), SegmentationResult)
    assert len(system.segment(image(), ["a"])) == 1
