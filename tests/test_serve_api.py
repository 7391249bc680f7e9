"""``refseg serve`` API through FastAPI's TestClient, on a tiny random CLIP.

Every endpoint, every kind of bad input (each followed by a check that the server still
answers), the per-image cache (counted proposal-generator calls), the deadline, and the
model lock under concurrent requests.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from refseg.clip import LoadedClip  # noqa: E402
from refseg.errors import InputError  # noqa: E402
from refseg.masks import decode_rle  # noqa: E402
from refseg.methods import GlobalLocalConfig  # noqa: E402
from refseg.proposals import MaskProposals  # noqa: E402
from refseg.segmenter import Segmenter  # noqa: E402
from refseg.serve import ServeSettings, create_app  # noqa: E402
from refseg.serve.service import SegmentService  # noqa: E402

H, W = 40, 56


class FirstWords:
    """Stand-in phrase extractor (spaCy takes seconds to load): the first two words."""

    def normalise(self, text: str) -> str:
        return " ".join(text.lower().split())

    def batch(self, texts: list[str]) -> list[str]:
        return [" ".join(self.normalise(t).split()[:2]) for t in texts]


class BoxProposals:
    """Five fixed boxes scaled to the image; counts calls and can be made to block."""

    name = "boxes"

    def __init__(self) -> None:
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.delay = 0.0
        self.gate: threading.Event | None = None  # when set, calls wait for it to open
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image, *, image_key: object = None) -> MaskProposals:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(self.delay)
            return MaskProposals(box_masks(image.height, image.width))
        finally:
            with self._lock:
                self.active -= 1
            self.done.set()


def box_masks(height: int, width: int) -> np.ndarray:
    masks = np.zeros((5, height, width), dtype=bool)
    h, w = height // 4, width // 4
    masks[0, : h * 2, : w * 2] = True
    masks[1, h * 2 :, w * 2 :] = True
    masks[2, h : h * 3, w : w * 3] = True
    masks[3, :h, :] = True
    masks[4, :, :w] = True
    return masks


def png_bytes(seed: int = 0, height: int = H, width: int = W, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def generator() -> BoxProposals:
    return BoxProposals()


@pytest.fixture
def segmenter(tiny_clip, tiny_tokenizer, generator) -> Segmenter:
    clip = LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit")
    return Segmenter(clip, generator, config=GlobalLocalConfig(k=2), phrases=FirstWords())


def make_client(segmenter, **settings) -> TestClient:
    return TestClient(create_app(segmenter, ServeSettings(**settings)))


@pytest.fixture
def client(segmenter):
    with make_client(segmenter, max_upload_bytes=200_000, max_image_pixels=500_000) as c:
        yield c


def post(client, image: bytes = b"", texts=("the red circle",), name="a.png", **form):
    files = {"image": (name, image or png_bytes(), "image/png")}
    data = {"text": list(texts), **{k: str(v) for k, v in form.items()}}
    return client.post("/segment", files=files, data=data)


def assert_still_serving(client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    response = post(client, png_bytes(seed=99), ["the blue square"])
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------ endpoints
def test_health_names_model_device_method_proposals(client):
    body = client.get("/health").json()
    assert body["status"] == "ready"
    assert (body["model"], body["device"], body["method"], body["proposals"]) == (
        "tiny-vit",
        "cpu",
        "global-local",
        "boxes",
    )
    assert "global-only" in body["methods"]
    assert body["limits"]["max_upload_bytes"] == 200_000


def test_segment_returns_masks_rle_and_ranked_proposals(client, segmenter):
    texts = ["the red circle", "a man in a red shirt"]
    response = post(client, png_bytes(), texts)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"]["width"] == W and body["image"]["height"] == H
    assert len(body["image"]["hash"]) == 64 and body["cached"] is False
    expected = segmenter.segment(png_bytes(), texts)  # same model, same image, directly
    masks = box_masks(H, W)
    for record, result in zip(body["results"], expected, strict=True):
        assert record["text"] == result.text and record["phrase"] == result.phrase
        assert record["phrase"] == " ".join(record["text"].split()[:2])
        assert record["score"] == pytest.approx(result.score, abs=1e-5)
        chosen = decode_rle(record["segmentation"])
        np.testing.assert_array_equal(chosen, masks[record["proposal"]])
        assert record["area"] == int(chosen.sum())
        ranked = record["proposals"]
        assert [p["index"] for p in ranked] == list(result.ranking)  # all 5 (< top 10)
        assert ranked[0]["index"] == record["proposal"]
        scores = [p["score"] for p in ranked]
        assert scores == sorted(scores, reverse=True)
        for p in ranked:
            np.testing.assert_array_equal(decode_rle(p["segmentation"]), masks[p["index"]])
            x, y, w, h = p["bbox"]
            assert masks[p["index"]][y : y + h, x : x + w].sum() == p["area"]


def test_top_proposals_are_capped(segmenter):
    with make_client(segmenter, top_proposals=2) as client:
        body = post(client).json()
    assert [len(r["proposals"]) for r in body["results"]] == [2]


def test_png_format_returns_the_mask(client):
    body = post(client).json()
    response = client.post(
        "/segment?format=png",
        files={"image": ("a.png", png_bytes(), "image/png")},
        data={"text": ["the red circle"]},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(response.content)))
    np.testing.assert_array_equal(mask == 255, decode_rle(body["results"][0]["segmentation"]))
    assert set(np.unique(mask)) <= {0, 255}


def test_png_format_refuses_several_expressions(client):
    response = client.post(
        "/segment?format=png",
        files={"image": ("a.png", png_bytes(), "image/png")},
        data={"text": ["one", "two"]},
    )
    assert response.status_code == 400 and "exactly one" in response.json()["error"]
    assert_still_serving(client)


def test_query_parameters_change_the_scores(client):
    base = post(client).json()["results"][0]["proposals"]
    local = post(client, alpha=0.0).json()["results"][0]["proposals"]
    glob = post(client, method="global-only").json()["results"][0]["proposals"]
    by_index = [{p["index"]: p["score"] for p in ranked} for ranked in (base, local, glob)]
    assert by_index[0] != by_index[1] and by_index[0] != by_index[2]


def test_index_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page.text
        assert client.get("/" + asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # works offline


def test_openapi_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    assert {"/segment", "/health"} <= set(schema["paths"])
    responses = schema["paths"]["/segment"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "504"} <= set(responses)


# --------------------------------------------------------------------------- caching
def test_repeated_image_reuses_proposals_and_features(client, generator):
    first = post(client, png_bytes(1), ["the red circle"]).json()
    again = post(client, png_bytes(1), ["a man in a red shirt", "left zebra"]).json()
    assert generator.calls == 1
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["image"]["hash"] == first["image"]["hash"]
    post(client, png_bytes(2))
    assert generator.calls == 2
    cache = client.get("/health").json()["cache"]
    assert (cache["hits"], cache["misses"], cache["entries"]) == (1, 2, 2)


def test_cache_is_bounded_lru(segmenter, generator):
    with make_client(segmenter, cache_size=2) as client:
        for seed in (1, 2, 1, 3, 1, 2):  # 2 is evicted by 3 (1 was used more recently)
            post(client, png_bytes(seed))
        assert generator.calls == 4
        assert client.get("/health").json()["cache"]["entries"] == 2


def test_cached_answer_equals_fresh_answer(client):
    fresh = post(client, png_bytes(5), ["left zebra"]).json()
    post(client, png_bytes(6), ["left zebra"])  # another image in between
    cached = post(client, png_bytes(5), ["left zebra"]).json()
    assert cached["cached"] and cached["results"] == fresh["results"]


# ------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    "side",
    [400, 300],  # random pixels: ~480 kB (refused from Content-Length), ~270 kB (after reading)
    ids=["by-content-length", "by-file-size"],
)
def test_upload_over_the_limit_is_413(client, generator, side):
    response = post(client, png_bytes(0, side, side))
    assert response.status_code == 413 and "MiB" in response.json()["error"]
    assert generator.calls == 0
    assert_still_serving(client)


def test_image_over_the_pixel_limit_is_413(client, generator):
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 1000)).save(buffer, format="PNG")  # 1 MP, small file
    response = post(client, buffer.getvalue())
    assert response.status_code == 413 and "megapixels" in response.json()["error"]
    assert generator.calls == 0
    assert_still_serving(client)


def test_large_image_within_limits_is_downscaled_for_work(segmenter, generator):
    segmenter.max_pixels = 20 * 28
    with make_client(segmenter) as client:
        body = post(client, png_bytes(0, 80, 112)).json()
    assert (body["image"]["width"], body["image"]["height"]) == (112, 80)
    assert decode_rle(body["results"][0]["segmentation"]).shape == (80, 112)
    assert segmenter.context.image.size == (28, 20)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"this is not an image at all", 415),
        (png_bytes()[:60], 400),  # truncated PNG: header fine, pixels missing
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400),  # PNG signature, corrupt chunks
    ],
    ids=["not-an-image", "truncated", "corrupt"],
)
def test_unreadable_uploads_are_rejected(client, generator, payload, status):
    response = post(client, payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert generator.calls == 0
    assert_still_serving(client)


def test_empty_upload_is_400(client):
    response = client.post(
        "/segment", files={"image": ("a.png", b"", "image/png")}, data={"text": ["x"]}
    )
    assert response.status_code == 400 and "empty" in response.json()["error"]
    assert_still_serving(client)


@pytest.mark.parametrize("texts", [["   "], ["ok", ""]], ids=["blank", "one-empty"])
def test_empty_expression_is_422(client, texts):
    response = post(client, png_bytes(), texts)
    assert response.status_code == 422 and "empty" in response.json()["error"]
    assert_still_serving(client)


def test_missing_fields_are_422_with_json_error(client):
    no_text = client.post("/segment", files={"image": ("a.png", png_bytes(), "image/png")})
    no_image = client.post("/segment", data={"text": ["x"]})
    for response in (no_text, no_image):
        assert response.status_code == 422 and "invalid request" in response.json()["error"]
    assert_still_serving(client)


def test_too_many_expressions_is_400(segmenter):
    with make_client(segmenter, max_texts=3) as client:
        assert post(client, texts=["a"] * 3).status_code == 200
        response = post(client, texts=["a", "b", "c", "d"])
        assert response.status_code == 400 and "at most 3" in response.json()["error"]
        assert_still_serving(client)


def test_too_long_expression_is_400(client):
    response = post(client, texts=["word " * 300])
    assert response.status_code == 400 and "characters" in response.json()["error"]
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("form", "status"),
    [({"alpha": 1.5}, 422), ({"k": 0}, 422), ({"alpha": "abc"}, 422), ({"method": "nope"}, 422)],
    ids=["alpha-range", "k-range", "alpha-type", "unknown-method"],
)
def test_bad_parameters_are_rejected(client, form, status):
    response = post(client, **form)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert_still_serving(client)


def test_unknown_route_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"]


def test_timeout_is_504_and_server_recovers(segmenter, generator):
    generator.gate = threading.Event()
    with make_client(segmenter, timeout_s=0.5) as client:
        start = time.monotonic()
        response = post(client, png_bytes(7))
        assert response.status_code == 504 and "longer than" in response.json()["error"]
        assert time.monotonic() - start < 5
        generator.gate.set()  # let the abandoned work finish and release the model
        assert generator.done.wait(5)
        time.sleep(0.05)
        generator.gate = None
        with TestClient(create_app(segmenter, ServeSettings(timeout_s=30))) as patient:
            assert_still_serving(patient)
        assert client.get("/health").json()["status"] == "ready"


def test_internal_error_is_500_json_and_server_recovers(client, generator, monkeypatch):
    def broken(image, *, image_key=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(client.app.state.service.require_segmenter(), "proposals", broken)
    response = post(client, png_bytes(8))
    assert response.status_code == 500 and "boom" in response.json()["error"]
    monkeypatch.undo()
    assert_still_serving(client)


# ----------------------------------------------------------------------- concurrency
def test_concurrent_requests_use_the_model_one_at_a_time(client, generator, segmenter):
    generator.delay = 0.05
    jobs = [(seed, text) for seed in (11, 12, 13) for text in ("left zebra", "a man")]
    serial = {}
    for seed, text in jobs:  # expected answers, one by one, on a separate app
        with make_client(segmenter) as other:
            serial[seed, text] = post(other, png_bytes(seed), [text]).json()["results"]
    generator.calls = generator.max_active = 0
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda j: post(client, png_bytes(j[0]), [j[1]]), jobs))
    assert [r.status_code for r in responses] == [200] * len(jobs)
    assert generator.max_active == 1
    for job, response in zip(jobs, responses, strict=True):
        assert response.json()["results"] == serial[job]  # no mix-up of image contexts


# ----------------------------------------------------------------------- loading
def test_health_says_loading_until_the_model_is_built(segmenter):
    release = threading.Event()

    def loader() -> Segmenter:
        release.wait(10)
        return segmenter

    with TestClient(create_app(loader)) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        busy = post(client)
        assert busy.status_code == 503 and "loading" in busy.json()["error"]
        release.set()
        for _ in range(100):
            if client.get("/health").json()["status"] == "ready":
                break
            time.sleep(0.02)
        assert_still_serving(client)


def test_failed_load_is_reported(segmenter):
    def loader() -> Segmenter:
        raise OSError("weights not found")

    service = SegmentService()
    service.load(loader)
    assert service.state == "failed" and "weights not found" in service.describe()["error"]


def test_settings_must_be_positive():
    with pytest.raises(InputError, match="max_texts"):
        ServeSettings(max_texts=0)


# ------------------------------------------------------------------------ command
def test_serve_command_fails_in_one_line_on_missing_weights(tmp_path, capsys):
    from refseg.cli import main

    code = main(["serve", "--clip", str(tmp_path / "missing"), "--port", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refseg: error:") and "missing" in err[-1]


def test_serve_command_refuses_a_busy_port(capsys):
    import socket

    from refseg.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--clip", "ViT-B/32", "--port", str(port)])
    assert code == 2 and "pick another --port" in capsys.readouterr().err


def test_serve_command_options_become_settings():
    from refseg.cli import build_parser
    from refseg.commands.serve import settings_from_args

    args = build_parser().parse_args(
        ["serve", "--max-upload-mb", "1.5", "--max-texts", "3", "--timeout", "9"]
    )
    settings = settings_from_args(args)
    assert (settings.max_upload_bytes, settings.max_texts, settings.timeout_s) == (
        1_572_864,
        3,
        9.0,
    )
    assert settings.cache_size == ServeSettings().cache_size
    bad = build_parser().parse_args(["serve", "--max-texts", "0"])
    with pytest.raises(InputError, match="max_texts"):
        settings_from_args(bad)


def test_app_can_be_started_twice(segmenter):
    app = create_app(segmenter)
    for _ in range(2):
        with TestClient(app) as client:
            assert post(client).status_code == 200


@pytest.mark.parametrize("query", ["alpha=0.0", "method=local-only&k=1"])
def test_options_in_the_url_are_refused_not_ignored(client, query):
    files = {"image": ("a.png", png_bytes(), "image/png")}
    response = client.post(f"/segment?{query}", files=files, data={"text": ["the red circle"]})
    assert response.status_code == 422, response.text
    assert "form fields" in response.json()["error"]
    assert_still_serving(client)


def test_each_result_names_the_proposal_generator_that_ran(client):
    body = post(client).json()
    generator = client.get("/health").json()["proposals"]
    assert generator and [r["proposal_generator"] for r in body["results"]] == [generator]
    assert body["results"][0]["proposals"][0]["segmentation"]  # one key: proposals
