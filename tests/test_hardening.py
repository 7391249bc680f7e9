"""Hostile and careless inputs (issue 16): nothing they hold runs, crashes or blows up memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from refseg.cli import main
from refseg.clip import load_clip
from refseg.errors import CheckpointFormatError

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
