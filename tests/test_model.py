"""SimpleCNN's architecture, its built-in twin and the fully connected baseline."""

import pytest
import torch

from helpers import MLP, SimpleCNN, SimpleCNNBuiltin, simple_cnn_stages


def test_parameter_count_matches_the_write_up():
    model = SimpleCNN()
    assert sum(p.numel() for p in model.parameters()) == 421_642
    assert model.param_counts() == {"conv1": 320, "conv2": 18_496, "fc1": 401_536, "fc2": 1_290}


def test_activations_have_the_documented_shapes():
    acts = SimpleCNN().activations(torch.randn(5, 1, 28, 28))
    shapes = {name: tuple(t.shape) for name, t in acts.items()}
    assert shapes == {
        "conv1": (5, 32, 28, 28), "relu1": (5, 32, 28, 28), "pool1": (5, 32, 14, 14),
        "conv2": (5, 64, 14, 14), "relu2": (5, 64, 14, 14), "pool2": (5, 64, 7, 7),
        "flatten": (5, 3136), "fc1": (5, 128), "relu3": (5, 128), "dropout": (5, 128), "fc2": (5, 10),
    }  # fmt: skip
    assert (acts["relu1"] >= 0).all() and (acts["relu1"] == acts["conv1"].clamp(min=0)).all()


def test_twin_has_the_same_layout_and_computes_the_same_function():
    torch.manual_seed(0)
    ours, twin = SimpleCNN(), SimpleCNNBuiltin()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in twin.state_dict().items()}
    twin.load_state_dict(ours.state_dict())
    assert isinstance(twin.conv1, torch.nn.Conv2d) and isinstance(twin.pool1, torch.nn.MaxPool2d)
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    for model in (ours, twin):
        model.eval()  # no dropout: both must compute the very same function
        torch.nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(ours(x), twin(x), rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(ours.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_mlp_has_about_as_many_parameters():
    mlp = MLP()
    assert sum(p.numel() for p in mlp.parameters()) == 784 * 512 + 512 + 512 * 10 + 10 == 407_050
    assert mlp(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_variants_from_the_public_stages():
    narrow = SimpleCNN(channels=(8, 64))
    assert narrow.param_counts()["conv1"] == 8 * 9 + 8 and narrow.param_counts()["conv2"] == 64 * 8 * 9 + 64
    assert narrow(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    stages = simple_cnn_stages(channels=(16, 32))
    assert list(stages) == [name for name, _ in SimpleCNN().named_children()]
    assert stages["fc1"].in_features == 32 * 7 * 7


def test_receptive_field_matches_the_gradient_footprint():
    model = SimpleCNN()
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    acts = model.activations(x)
    expected = {"conv1": (3, 1, -1), "pool1": (4, 2, -1), "conv2": (8, 2, -3), "pool2": (10, 4, -3)}
    for layer, field in expected.items():
        assert model.receptive_field(layer) == field
        size, jump, start = field
        for i, j in [(0, 0), (2, 3), (acts[layer].shape[2] - 1, 1)]:
            (grad,) = torch.autograd.grad(acts[layer][0, :, i, j].sum(), x, retain_graph=True)
            rows, cols = (grad[0, 0] != 0).any(1).nonzero(), (grad[0, 0] != 0).any(0).nonzero()
            lo, hi = start + i * jump, start + i * jump + size - 1
            assert max(lo, 0) <= rows.min() and rows.max() <= min(hi, 27), (layer, i, j)
            lo, hi = start + j * jump, start + j * jump + size - 1
            assert max(lo, 0) <= cols.min() and cols.max() <= min(hi, 27), (layer, i, j)
    assert SimpleCNNBuiltin().receptive_field("pool2") == (10, 4, -3)  # nn.Conv2d keeps sizes as pairs
    with pytest.raises(ValueError, match="no stage 'conv3'"):
        model.receptive_field("conv3")
