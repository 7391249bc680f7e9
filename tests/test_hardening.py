"""Hostile and careless inputs (issue 16): nothing they hold runs, crashes or blows up memory."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from refseg.cli import main
from refseg.clip import load_clip
from refseg.errors import CheckpointFormatError, DatasetError, InputError
from refseg.masks import MaskFormatError, decode_rle, decode_segmentation, encode_rle

# --- 1. TorchScript checkpoints never run code -------------------------------------------------


class _Payload(nn.Module):
    """A scripted module whose ``__setstate__`` writes bytes to a file (via ``from_file``)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.weight = nn.Parameter(torch.ones(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.target, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        written = torch.from_file(state[0], True, 8, dtype=torch.uint8)
        written.fill_(65)
        self.target = state[0]
        self.weight = state[1] + written[0].float() * 0  # uses the write: not optimised away
        self.training = state[2]


class _Holder(nn.Module):
    """A plain module tree with the payload nested inside, as in a real attack."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.visual = nn.Linear(2, 2)
        self.payload = _Payload(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


@pytest.fixture
def payload_archive(tmp_path):
    target = tmp_path / "written-by-checkpoint"
    path = tmp_path / "evil.pt"
    torch.jit.script(_Holder(str(target))).save(str(path))
    assert not target.exists()
    return path, target


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torchscript_payload_writes_nothing(payload_archive, tmp_path, capsys):
    path, target = payload_archive
    with pytest.raises(CheckpointFormatError):
        load_clip(path, device="cpu")
    assert not target.exists()
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "pytorch_model.bin").write_bytes(path.read_bytes())
    with pytest.raises(CheckpointFormatError):
        load_clip(hf_dir, device="cpu")
    assert not target.exists()
    assert main(["serve", "--clip", str(path), "--port", "0", "--proposals", "superpixel"]) == 2
    assert not target.exists()
    assert capsys.readouterr().err.startswith("refseg: error:")


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torchscript_weights_read_without_running_code(tmp_path):
    module = _Holder(str(tmp_path / "x"))
    path = tmp_path / "w.pt"
    torch.jit.script(module).save(str(path))
    from refseg.clip.load import read_state_dict

    state, _ = read_state_dict(path)
    assert set(state) == {"visual.weight", "visual.bias"}  # the payload's tuple state is skipped
    assert torch.equal(state["visual.weight"], module.visual.weight.detach())
    assert torch.equal(state["visual.bias"], module.visual.bias.detach())
    assert not (tmp_path / "x").exists()


# --- 2, 5, 6. Masks: polygons, RLE counts and declared sizes are checked before decoding ------

HOSTILE_SCRIPT = """
import json, sys
from refseg.cli import main
codes = [main(args) for args in json.loads(sys.argv[1])]
print(json.dumps(codes))
"""


def _run_isolated(argvs: list[list[str]], timeout: float = 120) -> tuple[list[int], str]:
    """Run ``refseg`` argument lists in a child process (a segfault or hang cannot take pytest
    down): the exit status of each, and stderr."""
    completed = subprocess.run(
        [sys.executable, "-c", HOSTILE_SCRIPT, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, (completed.returncode, completed.stderr[-2000:])
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


def _write_refer(root: Path, segmentation, size=(8, 10)) -> Path:
    """A one-image, one-expression refcoco-layout dataset whose only mask is ``segmentation``."""
    folder = root / "refcoco"
    folder.mkdir(parents=True)
    refs = [
        {
            "ref_id": 1,
            "ann_id": 7,
            "image_id": 1,
            "split": "val",
            "category_id": 1,
            "sentences": [{"sent_id": 3, "raw": "the thing", "sent": "the thing"}],
        }
    ]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs))
    height, width = size
    instances = {
        "images": [{"id": 1, "height": height, "width": width, "file_name": "1.png"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": segmentation}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    return root


def _score_args(root: Path, tmp_path: Path) -> list[str]:
    predictions = tmp_path / "pred.json"
    mask = np.zeros((8, 10), bool)
    mask[2:5, 2:6] = True
    predictions.write_text(json.dumps([{"sent_id": 3, "segmentation": encode_rle(mask)}]))
    return ["score", "--dataset", str(root), "--name", "refcoco", "--split", "val",
            "--predictions", str(predictions)]  # fmt: skip


@pytest.fixture
def small_image(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(path)
    return path


def _segment_args(image: Path, clip_dir: Path, proposals: Path, out: Path) -> list[str]:
    return ["segment", str(image), "the thing", "--clip", str(clip_dir), "--proposals",
            str(proposals), "--out", str(out), "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize("coordinate", [1e12, -1e9])
def test_hostile_polygons_exit_2_without_crash_or_hang(
    coordinate, tmp_path, small_image, tiny_clip_dir
):
    polygon = [[1.0, 1.0, coordinate, 1.0, 5.0, 4.0, 1.0, 4.0]]
    proposals = tmp_path / "props.json"
    proposals.write_text(json.dumps([{"file_name": "scene.png", "segmentation": polygon}]))
    root = _write_refer(tmp_path / "data", polygon)
    start = time.perf_counter()
    codes, err = _run_isolated(
        [
            _segment_args(small_image, tiny_clip_dir, proposals, tmp_path / "m.png"),
            _score_args(root, tmp_path),
        ]
    )
    assert codes == [2, 2], err
    assert time.perf_counter() - start < 60
    lines = [line for line in err.splitlines() if line.startswith("refseg: error:")]
    assert len(lines) == 2 and all("far outside" in line for line in lines), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "polygon, message",
    [
        ([[1, 1, float("nan"), 1, 5, 4]], "finite"),
        ([[1, 1, "5", 1, 5, 4]], "numbers"),
        ([[0, 0, 30, 0] * 200 + [0, 5]], "long"),  # zig-zag: long but inside the image
    ],
)
def test_polygon_checks(polygon, message):
    with pytest.raises(MaskFormatError, match=message):
        decode_segmentation(polygon, 24, 32)


def test_rle_counts_must_cover_the_mask_exactly(tmp_path):
    mask = np.zeros((8, 10), bool)
    mask[2:5, 2:6] = True
    good = encode_rle(mask)
    assert decode_rle(good).sum() == 12
    short = {"size": [8, 10], "counts": encode_rle(mask[:, :9])["counts"]}  # 72 of 80 pixels
    for rle in (
        short,
        {"size": [8, 10], "counts": [20, 12, 40]},
        {"size": [8, 10], "counts": [90]},
    ):
        with pytest.raises(MaskFormatError, match="cover"):
            decode_rle(rle)
    # Scoring a prediction or a dataset mask with short counts is a user error, not noise.
    predictions = tmp_path / "short.json"
    predictions.write_text(json.dumps([{"sent_id": 3, "segmentation": short}]))
    root = _write_refer(tmp_path / "data", good)
    args = _score_args(root, tmp_path)
    args[args.index("--predictions") + 1] = str(predictions)
    assert main(args) == 2
    bad_root = _write_refer(tmp_path / "bad", short)
    assert main(_score_args(bad_root, tmp_path)) == 2


def test_declared_sizes_are_checked_against_the_image(tmp_path, small_image, tiny_clip_dir, capsys):
    from refseg.proposals.from_file import FileProposals

    image = Image.open(small_image)
    huge_rle = {"size": [60000, 60000], "counts": [60000 * 60000]}
    images = [{"id": 1, "file_name": "scene.png", "height": 60000, "width": 60000}]
    polygon = [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0]]
    for data in (
        [{"image_id": 1, "segmentation": huge_rle}],
        {"images": images, "annotations": [{"image_id": 1, "segmentation": polygon}]},
    ):
        with pytest.raises(InputError, match="declares 60000 x 60000"):
            FileProposals(data=data)(image, image_key=1)
    root = _write_refer(tmp_path / "data", polygon, size=(60000, 60000))
    assert main(_score_args(root, tmp_path)) == 2
    assert "declares 60000 x 60000" in capsys.readouterr().err


# --- 3. refs pickle: the latin-1 repair is linear in the file ---------------------------------


def exponential_refs_pickle(levels: int = 40) -> bytes:
    """A Python 2 style refs pickle whose ``junk`` field is a list of 2**levels shared leaves:
    each level is a list holding the previous one twice (BINGET), 8 bytes per level."""
    body = b"](U\x02\xc3\xa9eq\x00"  # memo 0: ['é'] as Python 2 UTF-8 bytes
    for level in range(1, levels + 1):
        body += b"](h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"eq" + bytes([level])
    ref = (
        b"}(U\x06ref_idK\x01U\x06ann_idK\x07U\x08image_idK\x01U\x05splitU\x03val"
        b"U\tsentences](}(U\x07sent_idK\x03U\x03rawU\x07caf\xc3\xa9 Xu"
        + b"eU\x04junkh"
        + bytes([levels])
        + b"u"
    )
    return b"\x80\x02" + body + b"0](" + ref + b"e."


REFS_CHILD = """
import json, resource, sys, time
from refseg.data import open_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
dataset = open_dataset(sys.argv[1], "refcoco", "val")
text = dataset[0].referents[0].sentences[0].text
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "text": text, "rss_growth_mb": growth / 1024}))
"""


def test_exponential_refs_pickle_loads_in_bounded_time_and_memory(tmp_path):
    data = exponential_refs_pickle()
    assert len(data) < 500  # a few hundred bytes
    root = _write_refer(tmp_path / "data", [[1, 1, 5, 1, 5, 4]])
    (root / "refcoco" / "refs(unc).p").write_bytes(data)
    completed = subprocess.run(
        [sys.executable, "-c", REFS_CHILD, str(root)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout)
    assert result["text"] == "café X"  # the latin-1 repair still ran
    assert result["seconds"] < 2.0
    assert result["rss_growth_mb"] < 50


def test_refs_repair_bounds_its_work():
    from refseg.data.refer import _repair_text

    shared = ["caf\xc3\xa9"]
    tree = [shared] * 3
    repaired = _repair_text(tree)
    assert repaired == [["café"]] * 3 and repaired[0] is repaired[2]  # sharing kept
    with pytest.raises(DatasetError, match="more than 100 items"):
        _repair_text([list(range(60)), list(range(60))], max_items=100)
    deep: list = []
    for _ in range(100_000):  # nesting 100k deep: no RecursionError
        deep = [deep]
    assert isinstance(_repair_text(deep), list)


# --- 4. Service: the upload cap holds while a chunked body streams -----------------------------


@pytest.fixture
def serve_segmenter(tiny_clip, tiny_tokenizer):
    from refseg.clip import LoadedClip
    from refseg.methods import GlobalLocalConfig
    from refseg.segmenter import Segmenter
    from test_serve_api import BoxProposals, FirstWords

    clip = LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit")
    return Segmenter(clip, BoxProposals(), config=GlobalLocalConfig(k=2), phrases=FirstWords())


def _stream_upload(app, total: int, chunk: int = 1 << 20) -> tuple[int, int, dict]:
    """POST a chunked multipart upload of ``total`` image bytes straight into the ASGI app:
    ``(bytes the app read, status, JSON body)``."""
    import asyncio

    boundary = b"refsegboundary"
    head = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="text"\r\n\r\nthe thing\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"'
        b"\r\nContent-Type: image/png\r\n\r\n"
    )
    tail = b"\r\n--" + boundary + b"--\r\n"
    pieces = [head] + [b"\x89" * chunk] * (total // chunk) + [tail]
    state = {"read": 0, "next": 0, "messages": []}

    async def receive() -> dict:
        if state["next"] >= len(pieces):
            await asyncio.sleep(3600)  # the client has nothing more to send
        piece = pieces[state["next"]]
        state["next"] += 1
        state["read"] += len(piece)
        return {"type": "http.request", "body": piece, "more_body": state["next"] < len(pieces)}

    async def send(message: dict) -> None:
        state["messages"].append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/segment",
        "raw_path": b"/segment",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"multipart/form-data; boundary=" + boundary),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=120))
    start = next(m for m in state["messages"] if m["type"] == "http.response.start")
    body = b"".join(
        m.get("body", b"") for m in state["messages"] if m["type"] == "http.response.body"
    )
    return state["read"], start["status"], json.loads(body)


def test_chunked_upload_is_refused_while_it_streams(serve_segmenter):
    from fastapi.testclient import TestClient

    from refseg.serve import ServeSettings, create_app

    app = create_app(serve_segmenter, ServeSettings())  # 20 MiB uploads
    read, status, body = _stream_upload(app, 100 * 2**20)
    assert status == 413 and "at most 20 MiB" in body["error"]
    assert read < 25 * 2**20, read  # cut off just past the 20 MiB + form overhead
    small = create_app(serve_segmenter, ServeSettings(max_upload_bytes=2**20))
    read_small, status, _ = _stream_upload(small, 100 * 2**20)
    assert status == 413 and read_small < 3 * 2**20
    from test_serve_api import png_bytes

    with TestClient(app) as client:  # still serving, and a normal upload still works
        response = client.post(
            "/segment",
            files={"image": ("a.png", png_bytes(), "image/png")},
            data={"text": ["the thing"]},
        )
        assert response.status_code == 200, response.text


# --- 6. Service memory: the image cache is bounded in bytes, each request by a budget ---------

UPLOADS_CHILD = """
import io, json, sys
import numpy as np
from PIL import Image
from fastapi.testclient import TestClient
from refseg.clip import load_clip
from refseg.methods import GlobalLocalConfig
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter
from refseg.serve import ServeSettings, create_app

clip_dir, width, height, n_proposals, cache_bytes = sys.argv[1:6]
width, height, n_proposals = int(width), int(height), int(n_proposals)


def rss_mb(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field))
    return int(line.split()[1]) / 1024


class Words:
    def normalise(self, text):
        return text.lower()

    def batch(self, texts):
        return [t.lower() for t in texts]


class Boxes:
    name = "boxes"

    def __call__(self, image, *, image_key=None):
        rng = np.random.default_rng(image.width)
        masks = np.zeros((n_proposals, image.height, image.width), bool)
        for i in range(n_proposals):
            y, x = rng.integers(0, image.height // 2), rng.integers(0, image.width // 2)
            masks[i, y : y + image.height // 3, x : x + image.width // 3] = True
        return MaskProposals(masks)


def upload(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


segmenter = Segmenter(
    load_clip(clip_dir, device="cpu"), Boxes(), config=GlobalLocalConfig(k=2), phrases=Words()
)
settings = {} if cache_bytes == "default" else {"cache_bytes": int(cache_bytes)}
uploads = [upload(seed) for seed in range(11)]
with TestClient(create_app(segmenter, ServeSettings(**settings))) as client:
    for i, data in enumerate(uploads):
        files = {"image": ("a.png", data, "image/png")}
        response = client.post("/segment", files=files, data={"text": ["the thing"]})
        assert response.status_code == 200, response.text
        if i == 0:  # after one warm-up request: lazy imports and first allocations done
            baseline = rss_mb("VmRSS:")
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset VmHWM, the peak, to the current RSS
    cache = client.get("/health").json()["cache"]
print(json.dumps({"peak_growth": rss_mb("VmHWM:") - baseline, "growth": rss_mb("VmRSS:") - baseline,
                  "upload_mb": max(len(u) for u in uploads) / 2**20, "cache": cache}))
"""


def request_budget_mb(upload_mb: float, pixels: int, proposals: int, texts: int = 1) -> float:
    """The per-request memory budget the README states, for an image that is not downscaled:
    3x the upload + (4 + texts) bytes per uploaded pixel + (proposals + 16) bytes per working
    pixel + 48 MB (resize buffers, and a small model's activations)."""
    return 3 * upload_mb + (4 + texts + proposals + 16) * pixels / 2**20 + 48


def test_ten_large_uploads_stay_within_the_memory_budget(tiny_clip_dir):
    width, height, proposals, cache_bytes = 1000, 750, 24, 48 * 2**20
    completed = subprocess.run(
        [sys.executable, "-c", UPLOADS_CHILD, str(tiny_clip_dir), str(width), str(height),
         str(proposals), str(cache_bytes)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["cache"]["bytes"] <= cache_bytes
    assert 1 <= result["cache"]["entries"] < 8  # bounded by bytes, not by the 8 entries
    budget = cache_bytes / 2**20 + request_budget_mb(result["upload_mb"], width * height, proposals)
    assert result["peak_growth"] < budget, (result, budget)
    assert result["growth"] < cache_bytes / 2**20 + 24  # after the requests: about the cache


# --- 7. Eval resume: the dataset is fingerprinted, refusals write nothing ----------------------


def _eval(data_root: Path, clip_dir: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--no-progress", "--dataset", str(data_root), "--name", "tinyref",
                 "--split", "val", "--proposals", "gt", "--clip", str(clip_dir),
                 "--out", str(out), *extra])  # fmt: skip


def _stamp(path: Path) -> tuple[bytes, int, int]:
    stat = path.stat()
    return path.read_bytes(), stat.st_ino, stat.st_mtime_ns


def test_resume_over_a_regenerated_dataset_is_refused(tmp_path, tiny_clip_dir, capsys):
    import shutil

    from test_eval_runner import write_refer_dataset

    data_root = write_refer_dataset(tmp_path / "data", seed=0)
    out = tmp_path / "run"
    assert _eval(data_root, tiny_clip_dir, out, "--limit", "2") == 0
    config, log = out / "config.json", out / "partial" / "shard-0-of-1.jsonl"
    before = _stamp(config), _stamp(log)
    assert len(json.loads(config.read_text())["dataset_fingerprint"]) == 64
    shutil.rmtree(data_root)
    write_refer_dataset(data_root, seed=1)  # same image ids and file names, other masks
    capsys.readouterr()
    assert _eval(data_root, tiny_clip_dir, out) == 2
    assert "run on other data" in capsys.readouterr().err
    assert (_stamp(config), _stamp(log)) == before  # nothing rewritten


def test_refused_second_eval_leaves_config_alone(tmp_path, tiny_clip_dir, capsys):
    from refseg.eval.runner import PartialLog
    from test_eval_runner import write_refer_dataset

    data_root = write_refer_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert _eval(data_root, tiny_clip_dir, out, "--limit", "1") == 0
    before = _stamp(out / "config.json")
    with PartialLog(out / "partial" / "shard-0-of-1.jsonl").open():  # a run in progress
        assert _eval(data_root, tiny_clip_dir, out) == 2
    assert "another refseg eval" in capsys.readouterr().err
    assert _stamp(out / "config.json") == before
    assert _eval(data_root, tiny_clip_dir, out, "--alpha", "0.3") == 2
    assert _stamp(out / "config.json") == before


def test_out_holding_other_files_is_not_overwritten(tmp_path, tiny_clip_dir, capsys):
    from test_eval_runner import write_refer_dataset

    data_root = write_refer_dataset(tmp_path / "data")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.json").write_text("my own metrics")
    assert _eval(data_root, tiny_clip_dir, out, "--limit", "1") == 2
    assert "not a refseg run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "my own metrics"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _eval(data_root, tiny_clip_dir, empty, "--limit", "1") == 0  # empty is fine


# --- 8. refseg safetensors: the metadata config is checked against the tensors first ----------


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def _with_metadata_config(clip_dir: Path, out_dir: Path, config) -> Path:
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(clip_dir / "model.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata["config"] = config if isinstance(config, str) else json.dumps(config)
    out_dir.mkdir()
    save_file(state, str(out_dir / "model.safetensors"), metadata=metadata)
    shutil.copy(clip_dir / "tokenizer.json", out_dir / "tokenizer.json")
    return out_dir


def test_metadata_declaring_a_huge_model_allocates_nothing(tmp_path, tiny_clip_dir, tiny_clip):
    config = tiny_clip.config.to_dict()
    config["text"]["width"] = 4096  # 2 blocks of 4096 wide: ~1.6 GB of float32 if built
    config["text"]["heads"] = 64
    path = _with_metadata_config(tiny_clip_dir, tmp_path / "huge", config)
    _peak_rss_reset()
    start_mb = _peak_rss_mb()
    with pytest.raises(CheckpointFormatError, match="does not match"):
        load_clip(path, device="cpu")
    assert _peak_rss_mb() - start_mb < 200


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "not a refseg CLIP config"),
        ({"vision": {"layers": 2, "colour": 3}}, "not a refseg CLIP config"),
        ({"vision": {"layers": "two"}}, "layer counts"),
        ("patch", "invalid CLIP architecture"),  # heads that do not divide the width
        ({"text": {"layers": 10**9}}, "blocks"),
    ],
)
def test_bad_metadata_configs_are_checkpoint_errors(
    tmp_path, tiny_clip_dir, tiny_clip, config, message, capsys
):
    if config == "patch":
        config = tiny_clip.config.to_dict()
        config["text"]["heads"] = 3
    path = _with_metadata_config(tiny_clip_dir, tmp_path / "bad", config)
    with pytest.raises(CheckpointFormatError, match=message):
        load_clip(path, device="cpu")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    args = ["segment", str(image), "a thing", "--clip", str(path), "--out", str(tmp_path / "m.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("refseg: error:") and "internal error" not in err


# --- 9. One-line user errors (exit 2), outputs checked before computing -----------------------


@pytest.fixture
def segment_base(tmp_path, small_image, tiny_clip_dir):
    def args(*extra: str, out: str | Path | None = None) -> list[str]:
        target = tmp_path / "m.png" if out is None else out
        return ["segment", str(small_image), *extra, "--clip", str(tiny_clip_dir), "--out",
                str(target), "--proposals", "superpixel", "--device", "cpu"]  # fmt: skip

    return args


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("refseg: error:") and "internal error" not in err, err
    assert all(n in err for n in needles), err
    return err


@pytest.mark.parametrize(
    "case, needle",
    [
        ("directory", "is a directory"),
        ("no-extension", "extension"),
        ("unwritable", "not a writable folder"),
        ("bad-text", "not valid UTF-8"),
        ("max-pixels-negative", "--max-pixels"),
        ("max-pixels-zero", "--max-pixels"),
        ("k-too-deep", "k=50"),
    ],
)
def test_user_errors_are_one_line_and_outputs_are_checked_first(
    case, needle, tmp_path, segment_base, capsys, monkeypatch
):
    from refseg.segmenter import Segmenter

    if case != "k-too-deep":  # these must fail before any model is loaded
        monkeypatch.setattr(Segmenter, "from_pretrained", classmethod(lambda *a, **k: 1 / 0))
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    args = {
        "directory": segment_base("a thing", out=tmp_path / "outdir"),
        "no-extension": segment_base("a thing", out=tmp_path / "mask"),
        "unwritable": segment_base("a thing", out=tmp_path / "afile" / "m.png"),
        "bad-text": segment_base("caf\udce9"),  # what the shell hands Python for raw byte 0xE9
        "max-pixels-negative": segment_base("a thing", "--max-pixels", "-5"),
        "max-pixels-zero": segment_base("a thing", "--max-pixels", "0"),
        "k-too-deep": segment_base("a thing", "--k", "50"),
    }[case]
    assert main(args) == 2
    _one_line_error(capsys, needle)


def test_deeply_nested_json_and_pickles_are_user_errors(
    tmp_path, small_image, tiny_clip_dir, capsys
):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    args = _segment_args(small_image, tiny_clip_dir, deep, tmp_path / "m.png")
    assert main(args) == 2
    _one_line_error(capsys, "nested too deeply")
    root = _write_refer(tmp_path / "data", [[1, 1, 5, 1, 5, 4]])
    scoring = _score_args(root, tmp_path)
    predictions = scoring[scoring.index("--predictions") + 1]
    Path(predictions).write_text("[" * 100_000 + "]" * 100_000)
    assert main(scoring) == 2
    _one_line_error(capsys, "nested too deeply")
    (root / "refcoco" / "instances.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(_score_args(root, tmp_path)) == 2
    _one_line_error(capsys, "nested too deeply")
    nested = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."  # 100k nested lists
    refs_root = _write_refer(tmp_path / "pickled", [[1, 1, 5, 1, 5, 4]])
    (refs_root / "refcoco" / "refs(unc).p").write_bytes(nested)
    assert main(_score_args(refs_root, tmp_path)) == 2
    _one_line_error(capsys, "refs")


def test_service_refuses_foreign_hosts_origins_and_bad_text(serve_segmenter):
    from fastapi.testclient import TestClient

    from refseg.cli import build_parser
    from refseg.commands.serve import settings_from_args
    from refseg.serve import create_app
    from test_serve_api import png_bytes

    settings = settings_from_args(build_parser().parse_args(["serve"]))  # bound to 127.0.0.1
    files = {"image": ("a.png", png_bytes(), "image/png")}
    with TestClient(create_app(serve_segmenter, settings), base_url="http://127.0.0.1:8000") as c:
        assert c.post("/segment", files=files, data={"text": ["the thing"]}).status_code == 200
        same = {"Origin": "http://127.0.0.1:8000"}
        assert (
            c.post("/segment", files=files, data={"text": ["x"]}, headers=same).status_code == 200
        )
        foreign = c.post(
            "/segment",
            files=files,
            data={"text": ["x"]},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403 and "--allow-origin" in foreign.json()["error"]
        rebound = c.get("/health", headers={"Host": "evil.example:8000"})  # DNS rebinding
        assert rebound.status_code == 403
        assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        bad_text = c.post("/segment", files=files, data={"text": ["caf\x8e"]})
        assert bad_text.status_code == 422 and "UTF-8" in bad_text.json()["error"]
        deep = c.post("/segment", files=files, data={"text": ["x"], "k": str(10**20)})
        assert deep.status_code == 400 and "blocks" in deep.json()["error"]
    allowed = settings_from_args(
        build_parser().parse_args(["serve", "--allow-origin", "https://app.example"])
    )
    with TestClient(create_app(serve_segmenter, allowed), base_url="http://127.0.0.1:8000") as c:
        ok = c.post(
            "/segment", files=files, data={"text": ["x"]}, headers={"Origin": "https://app.example"}
        )
        assert ok.status_code == 200
