"""The locally connected layer (a convolution without weight sharing) and the network built on it."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import LocallyConnected2D, LocallyConnectedCNN, SimpleCNN, conv2d, locally_connected2d

# (batch, in_channels, out_channels, height, width, kernel, stride, padding)
CASES = [
    (2, 1, 3, 6, 6, 3, 1, 1),  # conv1's shape, small
    (3, 4, 5, 7, 7, 3, 1, 1),  # conv2's shape, small
    (2, 3, 4, 7, 9, 3, 2, 1),  # odd, non-square, strided
    (1, 2, 2, 5, 5, 2, 1, 0),  # even kernel, no padding
    (2, 2, 3, 8, 11, 3, 3, 0),  # stride leaves rows and columns unused
    (1, 3, 2, 4, 4, 1, 1, 0),  # 1x1 kernel
]


def reference(x, weight, bias, stride, padding):
    """The same layer in plain autograd: F.unfold's columns (channel, row, column order) times each
    position's own filter bank."""
    h_out, w_out, n_filters, channels, k, _ = weight.shape
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C*k*k, P)
    out = torch.einsum("nqp,pfq->nfp", cols, weight.reshape(h_out * w_out, n_filters, channels * k * k))
    out = out.reshape(x.shape[0], n_filters, h_out, w_out)
    return out if bias is None else out + bias.permute(2, 0, 1)


def random_case(n, c, f, h, w, k, s, p, dtype=torch.float64, bias=True):
    torch.manual_seed(0)
    h_out, w_out = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x = torch.randn(n, c, h, w, dtype=dtype, requires_grad=True)
    weight = torch.randn(h_out, w_out, f, c, k, k, dtype=dtype, requires_grad=True)
    b = torch.randn(h_out, w_out, f, dtype=dtype, requires_grad=True) if bias else None
    return x, weight, b


def value_and_grads(fn, tensors):
    out = fn(*tensors)
    torch.manual_seed(1)
    upstream = torch.randn(out.shape, dtype=out.dtype)
    needs = [t for t in tensors if t is not None]
    return out, torch.autograd.grad(out, needs, upstream)


@pytest.mark.parametrize("n,c,f,h,w,k,s,p", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_an_autograd_reference(n, c, f, h, w, k, s, p, bias):
    tensors = random_case(n, c, f, h, w, k, s, p, bias=bias)
    ours, our_grads = value_and_grads(lambda *t: locally_connected2d(*t, stride=s, padding=p), tensors)
    ref, ref_grads = value_and_grads(lambda *t: reference(*t, s, p), tensors)
    assert ours.shape == ref.shape == (n, f, tensors[1].shape[0], tensors[1].shape[1])
    torch.testing.assert_close(ours, ref)
    for name, a, b in zip(("input", "weight", "bias"), our_grads, ref_grads):
        torch.testing.assert_close(a, b, msg=f"gradient of the {name}")


@pytest.mark.parametrize("n,c,f,h,w,k,s,p", [(2, 1, 3, 6, 6, 3, 1, 1), (2, 3, 2, 5, 5, 3, 1, 1), (2, 2, 2, 5, 7, 3, 2, 1), (1, 2, 2, 5, 5, 2, 1, 0)])
def test_hand_written_backward_passes_gradcheck(n, c, f, h, w, k, s, p):
    x, weight, bias = random_case(n, c, f, h, w, k, s, p)
    assert torch.autograd.gradcheck(lambda *t: locally_connected2d(*t, stride=s, padding=p), (x, weight, bias))
    assert torch.autograd.gradcheck(lambda *t: locally_connected2d(*t, stride=s, padding=p), (x, weight))


def test_float32_matches_the_reference():
    x, weight, bias = random_case(8, 32, 64, 14, 14, 3, 1, 1, dtype=torch.float32)
    ours, our_grads = value_and_grads(lambda *t: locally_connected2d(*t, padding=1), (x, weight, bias))
    ref, ref_grads = value_and_grads(lambda *t: reference(*t, 1, 1), (x, weight, bias))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_with_the_same_filters_at_every_position_it_is_a_convolution():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    weight, bias = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    tied = weight.expand(9, 9, *weight.shape).contiguous()  # one copy of the bank per output position
    out = locally_connected2d(x, tied, bias.expand(9, 9, 5).contiguous(), padding=1)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1))
    torch.testing.assert_close(out, conv2d(x, weight, bias, padding=1))


def test_each_position_only_learns_from_its_own_windows():
    x, weight, bias = random_case(2, 1, 2, 5, 5, 3, 1, 1)
    out = locally_connected2d(x, weight, bias, padding=1)
    (grad_w,) = torch.autograd.grad(out[:, :, 2, 3].sum(), weight)
    assert grad_w[2, 3].abs().sum() > 0
    grad_w[2, 3] = 0
    assert (grad_w == 0).all()  # no other position's filters moved


def test_empty_batch():
    layer = LocallyConnected2D(2, 3, 3, in_size=5, padding=1)
    x = torch.zeros(0, 2, 5, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == (0, 3, 5, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape and (layer.weight.grad == 0).all() and (layer.bias.grad == 0).all()


def test_module_shapes_initialisation_and_repr():
    torch.manual_seed(0)
    layer = LocallyConnected2D(32, 64, 3, in_size=14, padding=1)
    assert layer.weight.shape == (14, 14, 64, 32, 3, 3) and layer.bias.shape == (14, 14, 64)
    assert sum(p.numel() for p in layer.parameters()) == 14 * 14 * (64 * 32 * 9 + 64) == 3_625_216
    bound = math.sqrt(6 / (32 * 9 + 64 * 9))  # Xavier, as for a Conv2D of the same shape
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.99 * bound
    assert (layer.bias == 0).all()
    assert not torch.equal(layer.weight[0, 0], layer.weight[5, 7])  # every position draws its own filters
    assert (layer.kernel_size, layer.stride, layer.padding, layer.out_size) == (3, 1, 1, (14, 14))
    assert "in_size=(14, 14)" in repr(layer) and "positions=14x14" in repr(layer)
    assert LocallyConnected2D(1, 2, 3, in_size=(6, 8), stride=2).weight.shape == (2, 3, 2, 1, 3, 3)


def test_clear_errors():
    layer = LocallyConnected2D(1, 4, 3, in_size=28, padding=1)
    with pytest.raises(ValueError, match="only accepts the input size it was built for"):
        layer(torch.randn(2, 1, 14, 14))
    with pytest.raises(ValueError, match="expects 1 input channel"):
        layer(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="x.unsqueeze"):
        layer(torch.randn(1, 28, 28))
    with pytest.raises(TypeError, match="float64.*float32"):
        layer(torch.randn(2, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weight of shape \(H', W', F, C, k, k\)"):
        locally_connected2d(torch.randn(1, 1, 5, 5), torch.randn(4, 1, 3, 3))
    with pytest.raises(ValueError, match=r"bias of shape \(3, 3, 4\)"):
        locally_connected2d(torch.randn(1, 1, 5, 5), torch.randn(3, 3, 4, 1, 3, 3), torch.randn(4))
    with pytest.raises(ValueError, match="in_size must be a positive integer"):
        LocallyConnected2D(1, 4, 3, in_size=0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        LocallyConnected2D(1, 4, 5, in_size=3)
    # not a tensor: a TypeError, as for every layer (the shape check used to come first and say ValueError)
    with pytest.raises(TypeError, match="expects the weight as a torch.Tensor, got list"):
        locally_connected2d(torch.randn(1, 1, 5, 5), [[1.0]])


def test_network_is_built_for_28x28_digits_only():
    # fc1 takes pool2's 7x7 maps: an in_size option (32 built, then failed inside fc1) is gone
    with pytest.raises(TypeError, match="in_size"):
        LocallyConnectedCNN(in_size=32)


def test_network_has_simplecnns_shapes_and_receptive_fields():
    torch.manual_seed(0)
    net, cnn = LocallyConnectedCNN(), SimpleCNN()
    assert net.param_counts() == {"conv1": 784 * 320, "conv2": 196 * 18_496, "fc1": 401_536, "fc2": 1_290}
    assert sum(p.numel() for p in net.parameters()) == 4_278_922
    x = torch.randn(3, 1, 28, 28)
    shapes = {name: t.shape for name, t in net.activations(x).items()}
    assert shapes == {name: t.shape for name, t in cnn.activations(x).items()}
    for layer in ("conv1", "pool1", "conv2", "pool2"):
        assert net.receptive_field(layer) == cnn.receptive_field(layer)


def test_network_with_tied_weights_computes_simplecnn():
    torch.manual_seed(0)
    cnn, net = SimpleCNN().eval(), LocallyConnectedCNN().eval()
    tied = {}
    for name, value in cnn.state_dict().items():
        layer = net.get_submodule(name.split(".")[0])
        if hasattr(layer, "out_size"):  # copy the shared bank (or bias) to every position
            value = value.expand(*layer.out_size, *value.shape).contiguous()
        tied[name] = value
    net.load_state_dict(tied)
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(net(x), cnn(x), rtol=1e-5, atol=1e-5)
