"""What notebook 07's ablations need: permuted pixels, fit's augment option, and the command line that
trains every network the notebook loads (--model, --permute-pixels)."""

import json

import pytest
import torch

import helpers.train
from helpers import MLP, LocallyConnectedCNN, SimpleCNN, evaluate, fit, load_checkpoint, mnist_tensors, permute_pixels
from helpers.train import main, new_history


def test_permute_pixels_is_one_fixed_shuffle_of_the_positions():
    images = torch.randn(5, 1, 28, 28)
    out = permute_pixels(images)
    assert out.shape == images.shape
    assert torch.equal(out, permute_pixels(images))  # the same seed, the same shuffle
    assert not torch.equal(out, permute_pixels(images, seed=1))
    flat, shuffled = images.flatten(1), out.flatten(1)
    order = [int((flat[0] == v).nonzero()) for v in shuffled[0]]  # where each output pixel came from
    assert sorted(order) == list(range(784)) and order != list(range(784))
    assert torch.equal(shuffled, flat[:, order])  # every image shuffled the same way
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        permute_pixels(images[0])


def test_history_snapshots_conv1_only_for_a_convolution():
    assert "conv1" in new_history(SimpleCNN()) and "conv1_init" in new_history(SimpleCNN())
    assert "conv1" not in new_history(LocallyConnectedCNN()) and "conv1_init" not in new_history(LocallyConnectedCNN())
    assert "conv1" not in new_history(MLP())


@pytest.fixture(scope="module")
def small_mnist():
    return mnist_tensors(True, subset=1000), mnist_tensors(False, subset=500)


def test_fit_applies_augment_to_every_training_batch_and_not_to_the_test_images(small_mnist):
    calls = []

    def record(x):
        calls.append(x.shape)
        return x

    torch.manual_seed(0)
    model = MLP()
    history = fit(model, *small_mnist, epochs=1, device="cpu", augment=record)
    assert calls == [(64, 1, 28, 28)] * 15 + [(40, 1, 28, 28)]  # once per batch, before the model sees it
    assert history["test_acc"][0] == evaluate(model, *small_mnist[1])[1]  # the test images as they are

    torch.manual_seed(0)
    blank = fit(MLP(), *small_mnist, epochs=1, device="cpu", augment=torch.zeros_like)
    assert history["train_acc"][0] > 0.5 and blank["train_acc"][0] < 0.2  # it trained on what augment returned


def test_cli_trains_the_locally_connected_network(tmp_path):
    out = tmp_path / "local.pt"
    assert main(["--quick", "--model", "locally-connected", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out, LocallyConnectedCNN())
    assert ckpt["architecture"] == "LocallyConnectedCNN"
    assert ckpt["config"]["model"] == "locally-connected" and ckpt["config"]["permute_pixels"] is False
    assert ckpt["config"]["device"] == "cpu"
    history = json.loads(out.with_suffix(".json").read_text())
    assert "conv1" not in history and history["test_acc"][0] > 0.5  # no 250,880-number snapshot per epoch
    assert out.with_suffix(".json").stat().st_size < 2_000


def test_cli_permutes_training_and_test_pixels_and_resumes_the_right_network(tmp_path, monkeypatch):
    args = ["--quick", "--epochs", "2", "--model", "mlp", "--permute-pixels"]
    assert main(args + ["--out", str(tmp_path / "straight.pt")]) == 0
    straight = load_checkpoint(tmp_path / "straight.pt", model := MLP())
    assert straight["config"]["permute_pixels"] is True
    test = mnist_tensors(False, subset=1000)
    permuted_acc = evaluate(model, permute_pixels(test[0]), test[1])[1]
    assert permuted_acc == pytest.approx(straight["history"]["test_acc"][-1], abs=1e-6)  # tested on permuted images
    assert evaluate(model, *test)[1] < permuted_acc - 0.3  # and it learnt the permuted ones, not the digits

    real_train_epoch, calls = helpers.train.train_epoch, []

    def interrupted(*a, **kw):  # Ctrl-C in the second epoch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train_epoch(*a, **kw)

    monkeypatch.setattr(helpers.train, "train_epoch", interrupted)
    out = tmp_path / "resumed.pt"
    assert main(args + ["--out", str(out)]) == 130
    monkeypatch.setattr(helpers.train, "train_epoch", real_train_epoch)
    assert main(["--resume", "--out", str(out)]) == 0  # the saved config brings back the MLP and the permutation
    resumed = load_checkpoint(out)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert straight["history"]["test_acc"] == resumed["history"]["test_acc"]


def test_cli_default_out_names_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers.train, "RUNS_DIR", tmp_path)
    args = helpers.train.parse_args(["--model", "locally-connected"])
    assert args.out == tmp_path / "locally_connected.pt"
    args = helpers.train.parse_args(["--model", "simplecnn", "--permute-pixels"])
    assert args.out == tmp_path / "simplecnn_permuted.pt"
    with pytest.raises(SystemExit):
        helpers.train.parse_args(["--model", "resnet"])
