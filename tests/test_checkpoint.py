"""Checkpoints round-trip, refuse what does not fit, and are never left half-written."""

import pytest
import torch

import helpers.checkpoint
from helpers import MLP, CheckpointError, SimpleCNN, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    model = SimpleCNN()
    history = {"epoch": [1], "test_acc": [0.5]}
    save_checkpoint(tmp_path / "a.pt", model, history, {"lr": 0.001})
    fresh = SimpleCNN()
    ckpt = load_checkpoint(tmp_path / "a.pt", fresh)
    assert ckpt["history"] == history and ckpt["config"] == {"lr": 0.001} and ckpt["architecture"] == "SimpleCNN"
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key])


def test_other_architecture_is_refused_with_the_differences(tmp_path):
    save_checkpoint(tmp_path / "mlp.pt", MLP())
    with pytest.raises(CheckpointError, match=r"holds a MLP whose weights do not fit this SimpleCNN: missing conv1.weight"):
        load_checkpoint(tmp_path / "mlp.pt", SimpleCNN())
    narrow = SimpleCNN()
    narrow.fc2 = torch.nn.Linear(128, 5)
    save_checkpoint(tmp_path / "narrow.pt", narrow)
    with pytest.raises(CheckpointError, match=r"fc2.weight: saved \(5, 128\), model wants \(10, 128\)"):
        load_checkpoint(tmp_path / "narrow.pt", SimpleCNN())


def test_truncated_or_foreign_files_are_refused(tmp_path):
    save_checkpoint(tmp_path / "a.pt", SimpleCNN())
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save(SimpleCNN().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="was not written by helpers.save_checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint(path, SimpleCNN(), {"epoch": [1]})
    before = path.read_bytes()

    def crash(obj, f):  # the disk fills up, or Ctrl-C, half-way through the write
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(helpers.checkpoint.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, SimpleCNN(), {"epoch": [1, 2]})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind
