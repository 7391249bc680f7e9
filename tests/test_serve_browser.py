"""The ``refseg serve`` page in headless Chromium (Playwright), against the real app.

uvicorn serves a tiny random CLIP with superpixel proposals on a loopback port; the test
uploads a synthetic scene, types two expressions, and checks that masks are painted on
the canvas and that the proposal list fills and reacts to clicks. It leaves a screenshot
in ``test-artifacts/serve_page.png``. A dense system's page shows its heat map (toggled)
and takes an example image + mask as the prompt. Skipped where Chromium or Playwright is
missing.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (the browser is Debian's chromium)"
)

from refseg.clip import LoadedClip  # noqa: E402
from refseg.methods import GlobalLocalConfig  # noqa: E402
from refseg.proposals import create_proposals  # noqa: E402
from refseg.segmenter import Segmenter  # noqa: E402
from refseg.serve import ServeSettings, create_app  # noqa: E402
from refseg.systems import DenseSystem  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


class FirstWords:
    """Stand-in phrase extractor (spaCy takes seconds to load): the first two words."""

    def normalise(self, text: str) -> str:
        return " ".join(text.lower().split())

    def batch(self, texts: list[str]) -> list[str]:
        return [" ".join(self.normalise(t).split()[:2]) for t in texts]


def scene(path: Path) -> Path:
    """A 240x160 scene: noisy grey ground, a red disc, a blue square, a green bar."""
    rng = np.random.default_rng(0)
    ground = 120 + rng.integers(-12, 12, (160, 240, 3))
    image = Image.fromarray(ground.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 40, 90, 110), fill=(220, 30, 30))
    draw.rectangle((140, 30, 210, 100), fill=(30, 60, 220))
    draw.rectangle((60, 125, 200, 145), fill=(40, 170, 60))
    image.save(path)
    return path


class Ramp(DenseSystem):
    """A dense system whose map rises from left to right; takes visual prompts."""

    name = "ramp"
    supports_visual_prompts = True

    def encode_image(self, image):
        return None

    def predict(self, image_state, texts, prompt=None):
        ramp = torch.linspace(-4.0, 4.0, 8).expand(4, 8)
        return ramp.expand(max(len(texts), 1), 4, 8).clone()


@pytest.fixture
def server_url(tiny_clip, tiny_tokenizer):
    """The real app under uvicorn on 127.0.0.1 (a free port), stopped afterwards."""
    segmenter = Segmenter(
        LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit"),
        create_proposals("superpixel"),
        config=GlobalLocalConfig(k=2),
        phrases=FirstWords(),
    )
    yield from serve(segmenter)


@pytest.fixture
def dense_url():
    yield from serve(Ramp(threshold=0.5))


def serve(system):
    app = create_app(system, ServeSettings(timeout_s=30))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def page():
    if CHROMIUM is None:
        pytest.skip("no chromium: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 760})
        finally:
            browser.close()


# Pixels of the canvas that differ from the plain image: the painted overlay.
CHANGED_PIXELS = """() => {
  const canvas = document.getElementById("canvas");
  const plain = document.createElement("canvas");
  plain.width = canvas.width; plain.height = canvas.height;
  const p = plain.getContext("2d");
  p.drawImage(document.getElementById("preview"), 0, 0, plain.width, plain.height);
  const a = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const b = p.getImageData(0, 0, plain.width, plain.height).data;
  let changed = 0;
  for (let i = 0; i < a.length; i += 4) {
    if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 30)
      changed += 1;
  }
  return changed;
}"""


def test_upload_type_segment_and_browse_proposals(server_url, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server_url)
    page.wait_for_selector("#status.ready", timeout=10_000)
    assert "tiny-vit" in page.inner_text("#status")

    page.click("#submit")  # nothing chosen yet: the page says so, nothing is sent
    assert "Choose an image" in page.inner_text("#message")

    page.set_input_files("#file", str(scene(tmp_path / "scene.png")))
    page.wait_for_function("document.getElementById('canvas').width === 240")
    assert page.evaluate(CHANGED_PIXELS) == 0  # just the image so far
    page.fill("#texts", "the red circle\n\nthe blue square on the right\n")
    page.click("#submit")
    page.wait_for_selector("body[data-state='done']", timeout=30_000)

    results = page.locator("#results .result")
    assert results.count() == 2
    assert "the red" in results.nth(0).inner_text()  # phrase = first two words (stub)
    painted = page.evaluate(CHANGED_PIXELS)
    assert painted > 200, "no mask overlay on the canvas"

    proposals = page.locator("#proposal-list .proposal")
    assert 1 < proposals.count() <= 10
    assert "★" in proposals.nth(0).inner_text()
    proposals.nth(1).click()
    assert proposals.nth(1).get_attribute("aria-pressed") == "true"
    assert "Proposal" in page.inner_text("#caption")
    assert page.evaluate(CHANGED_PIXELS) != painted  # the clicked proposal replaced the masks

    results.nth(1).click()  # the second expression's proposals
    assert "the blue square" in page.text_content("#proposals-for")
    assert page.locator("#proposal-list .proposal[aria-pressed='true']").count() == 0

    page.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

    page.set_input_files("#file", str(tmp_path / "scene.png"))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    page.set_input_files("#file", str(bad))
    page.click("#submit")
    page.wait_for_selector("body[data-state='error']", timeout=30_000)
    assert "not an image format" in page.inner_text("#message")
    assert errors == []


def test_dense_system_shows_heat_map_and_takes_an_example_prompt(dense_url, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(dense_url)
    page.wait_for_selector("#status.ready", timeout=10_000)
    assert "ramp" in page.inner_text("#status")
    hidden = "(id) => document.getElementById(id).hidden"
    assert page.evaluate(hidden, "alpha") and not page.evaluate(hidden, "threshold")

    page.set_input_files("#file", str(scene(tmp_path / "scene.png")))
    page.wait_for_function("document.getElementById('canvas').width === 240")
    page.fill("#texts", "the right half")
    page.click("#submit")
    page.wait_for_selector("body[data-state='done']", timeout=30_000)
    assert page.locator("#heatmap-toggle").is_visible()
    page.wait_for_function(f"({CHANGED_PIXELS})() > 240 * 160 * 0.9")  # the map covers it all
    with_heat = page.evaluate(CHANGED_PIXELS)
    page.uncheck("#show-heatmap")
    without = page.evaluate(CHANGED_PIXELS)
    assert 0 < without < with_heat  # the mask alone: about the right half
    assert "dense system" in page.inner_text("#proposal-list")

    mask = np.zeros((160, 240), np.uint8)
    mask[40:110, 20:90] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    page.fill("#texts", "")
    page.click("summary")
    page.set_input_files("#prompt-image", str(tmp_path / "scene.png"))
    page.set_input_files("#prompt-mask", str(tmp_path / "mask.png"))
    page.click("#submit")
    page.wait_for_function(
        "document.querySelector('#results .result .text')?.textContent === '(example prompt)'",
        timeout=30_000,
    )
    assert errors == []
