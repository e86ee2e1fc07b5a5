"""The from-scratch layers against PyTorch's own: values, gradients, gradcheck, errors."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import (
    Conv2D,
    LocallyConnected2D,
    MaxPool2D,
    conv2d,
    conv2d_naive,
    im2col,
    maxpool2d,
    maxpool2d_naive,
    xavier_uniform_,
)

# (batch, in_channels, out_channels, height, width, kernel, stride, padding)
CONV_CASES = [
    (1, 1, 1, 5, 5, 3, 1, 0),
    (1, 1, 32, 28, 28, 3, 1, 1),  # SimpleCNN's conv1
    (4, 32, 64, 14, 14, 3, 1, 1),  # SimpleCNN's conv2
    (2, 3, 5, 7, 9, 3, 2, 1),  # odd, non-square, strided
    (3, 4, 2, 10, 6, 5, 2, 2),
    (2, 2, 3, 8, 11, 3, 3, 0),  # stride leaves rows and columns unused
    (1, 6, 4, 4, 4, 1, 1, 0),  # 1x1 kernel
    (2, 3, 3, 6, 5, 4, 1, 2),  # even kernel
    (1, 2, 2, 3, 3, 3, 1, 3),  # padding larger than kernel - 1
]


def grads(fn, *tensors):
    """fn(*tensors) and the gradients of every tensor for the same (seeded) random upstream gradient."""
    out = fn(*tensors)
    torch.manual_seed(1)
    # not randn_like, which would follow the memory layout; made on the CPU, so that every device gets the same
    upstream = torch.randn(out.shape, dtype=out.dtype).to(out.device)
    return out, torch.autograd.grad(out, tensors, upstream)


@pytest.mark.parametrize("n,c,f,h,w,k,s,p", CONV_CASES)
def test_conv2d_matches_pytorch(n, c, f, h, w, k, s, p):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(f, c, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(f, dtype=torch.float64, requires_grad=True)
    ours, our_grads = grads(lambda *t: conv2d(*t, stride=s, padding=p), x, weight, bias)
    ref, ref_grads = grads(lambda *t: F.conv2d(*t, stride=s, padding=p), x, weight, bias)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)
    for name, a, b in zip(("input", "weight", "bias"), our_grads, ref_grads):
        torch.testing.assert_close(a, b, msg=f"gradient of the {name}")


def test_conv2d_without_bias_and_in_float32():
    torch.manual_seed(0)
    x = torch.randn(8, 32, 14, 14, requires_grad=True)
    weight = torch.randn(64, 32, 3, 3, requires_grad=True) * 0.1
    ours, our_grads = grads(lambda a, b: conv2d(a, b, padding=1), x, weight)
    ref, ref_grads = grads(lambda a, b: F.conv2d(a, b, padding=1), x, weight)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# (batch, channels, height, width, kernel, stride)
POOL_CASES = [
    (2, 32, 28, 28, 2, 2),  # SimpleCNN's pool1
    (1, 1, 7, 7, 2, 2),  # odd size: the last row and column are dropped
    (3, 4, 9, 6, 3, 3),
    (2, 3, 8, 8, 3, 2),  # overlapping windows
    (1, 2, 5, 7, 2, 1),
    (2, 2, 6, 6, 1, 1),
    (2, 2, 9, 10, 2, 3),  # stride larger than the window: some pixels are never read
]


@pytest.mark.parametrize("n,c,h,w,k,s", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool2d_matches_pytorch(n, c, h, w, k, s, ties):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    if ties:  # few distinct values: most windows hold several maxima, the first must win
        x = x.round().clamp(min=0)
    x.requires_grad_()
    ours, (our_grad,) = grads(lambda t: maxpool2d(t, k, s), x)
    ref, (ref_grad,) = grads(lambda t: F.max_pool2d(t, k, s), x)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_maxpool2d_large_windows_in_low_precision(dtype):
    # the index of the winner must stay exact for windows of more than 256 elements (17x17) and a global pool
    torch.manual_seed(0)
    x = torch.randn(2, 3, 28, 28).to(dtype)
    for k in (17, 28):
        ours, (our_grad,) = grads(lambda t: maxpool2d(t, k), x.clone().requires_grad_())
        ref, (ref_grad,) = grads(lambda t: F.max_pool2d(t, k), x.clone().requires_grad_())
        assert torch.equal(ours, ref)
        assert torch.equal(our_grad, ref_grad)


def test_gradcheck_conv2d():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for stride, padding in [(1, 0), (1, 1), (2, 1), (2, 2)]:
        assert torch.autograd.gradcheck(lambda *t: conv2d(*t, stride=stride, padding=padding), (x, weight, bias))


def test_gradcheck_maxpool2d():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, requires_grad=True)  # distinct values: no ties
    for k, s in [(2, 2), (3, 2), (2, 1)]:
        assert torch.autograd.gradcheck(lambda t: maxpool2d(t, k, s), (x,))


def test_gradcheck_modules():
    torch.manual_seed(0)
    conv = Conv2D(2, 3, 3, padding=1).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: MaxPool2D(2)(conv(t)), (x,))


@pytest.mark.parametrize("s,p", [(1, 0), (1, 1), (2, 1)])
def test_naive_loops_agree_with_im2col(s, p):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(conv2d_naive(x, weight, bias, s, p), conv2d(x, weight, bias, s, p))
    torch.testing.assert_close(maxpool2d_naive(x, 2), maxpool2d(x, 2))
    torch.testing.assert_close(maxpool2d_naive(x, 3, 2), maxpool2d(x, 3, 2))


def test_im2col_rows_are_windows():
    x = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).view(2, 4, 5, 3)  # (N, H, W, C)
    cols = im2col(x, 3, stride=1, padding=0)
    assert cols.shape == (2 * 2 * 3, 3 * 3 * 3)
    # row for image 1, output (1, 2): the window x[1, 1:4, 2:5, :] read row by row
    torch.testing.assert_close(cols[1 * 6 + 1 * 3 + 2], x[1, 1:4, 2:5, :].reshape(-1))


def test_modules_match_pytorch_modules():
    torch.manual_seed(0)
    ours, ref = Conv2D(3, 8, 3, stride=2, padding=1), torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 11, 10)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(MaxPool2D(3, 2)(x), torch.nn.MaxPool2d(3, 2)(x))


def test_output_is_channels_last_and_reads_as_nchw():
    x = torch.randn(2, 1, 28, 28)
    out = Conv2D(1, 32, 3, padding=1)(x)
    assert out.shape == (2, 32, 28, 28)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert MaxPool2D(2)(out).is_contiguous(memory_format=torch.channels_last)


def test_no_builtin_convolution_or_pooling_runs():
    """Profile a forward and backward pass: no ATen convolution or pooling kernel may appear."""
    x = torch.randn(4, 1, 28, 28)
    conv1, pool, conv2 = Conv2D(1, 8, 3, padding=1), MaxPool2D(2), Conv2D(8, 4, 3, stride=2, padding=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        conv2(pool(conv1(x))).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert any("mm" in op for op in ops), ops  # the profiler did see the work
    assert not [op for op in ops if "conv" in op or "pool" in op], ops


def test_xavier_bound_and_zero_bias():
    torch.manual_seed(0)
    conv = Conv2D(32, 64, 3)
    bound = math.sqrt(6 / (32 * 9 + 64 * 9))
    w = conv.weight.detach()
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.99 * bound  # uniform over the whole range, not a narrower one
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound  # std of U(-b, b) is b / sqrt(3)
    assert torch.equal(conv.bias.detach(), torch.zeros(64))
    t = torch.empty(10, 20)
    assert xavier_uniform_(t).abs().max() <= math.sqrt(6 / 30)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Conv2D(0, 4, 3), "in_channels must be a positive integer, got 0"),
        (lambda: Conv2D(1, -2, 3), "out_channels must be a positive integer, got -2"),
        (lambda: Conv2D(1, 4, 0), "kernel_size must be a positive integer, got 0"),
        (lambda: Conv2D(1, 4, 2.5), "kernel_size must be a positive integer, got 2.5"),
        (lambda: Conv2D(1, 4, 3, stride=0), "stride must be a positive integer, got 0"),
        (lambda: Conv2D(1, 4, 3, padding=-1), "padding must be an integer >= 0, got -1"),
        (lambda: MaxPool2D(0), "kernel_size must be a positive integer, got 0"),
        (lambda: MaxPool2D(2, stride=-1), "stride must be a positive integer, got -1"),
    ],
)
def test_bad_sizes_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "layer,x,match",
    [
        (Conv2D(1, 4, 3), torch.randn(28, 28), r"4-D input \(N, C, H, W\), got 2-D input of shape \(28, 28\)"),
        (Conv2D(1, 4, 3), torch.randn(1, 28, 28), r"got 3-D input .* use x.unsqueeze\(0\)"),
        (Conv2D(3, 4, 3), torch.randn(2, 1, 28, 28), r"expects 3 input channel\(s\), got 1"),
        (Conv2D(1, 4, 5), torch.randn(2, 1, 3, 3), "kernel_size 5 is larger than the padded input 3x3"),
        (Conv2D(1, 4, 5, padding=1), torch.randn(2, 1, 2, 9), "kernel_size 5 is larger than the padded input 4x11"),
        (MaxPool2D(2), torch.randn(32, 14, 14), "4-D input"),
        (MaxPool2D(3), torch.randn(1, 1, 2, 8), "kernel_size 3 is larger than the padded input 2x8"),
    ],
)
def test_bad_input_raises_clear_error(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer(x)


@pytest.mark.parametrize("fn", [conv2d, conv2d_naive])
def test_functional_conv_checks_its_input(fn):
    with pytest.raises(ValueError, match=r"expects 2 input channel\(s\), got 3"):
        fn(torch.randn(1, 3, 5, 5), torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"expects a weight of shape \(F, C, k, k\), got \(4, 2, 3, 2\)"):
        fn(torch.randn(1, 2, 5, 5), torch.randn(4, 2, 3, 2))
    with pytest.raises(ValueError, match=r"expects a bias of shape \(4,\), one per filter, got \(3,\)"):
        fn(torch.randn(1, 2, 5, 5), torch.randn(4, 2, 3, 3), torch.randn(3))


def test_all_parameter_combinations_give_pytorch_shapes():
    for h, k, s, p in itertools.product([5, 6, 7], [1, 2, 3], [1, 2, 3], [0, 1, 2]):
        x = torch.randn(1, 2, h, h)
        assert conv2d(x, torch.randn(3, 2, k, k), stride=s, padding=p).shape == F.conv2d(
            x, torch.randn(3, 2, k, k), stride=s, padding=p
        ).shape


# ----------------------------------------------------------------------------- dtypes, devices, empty batches, NaN

FLOATS = [torch.float32, torch.float64]


# (input, weight, bias) dtypes, every mix
MIXES = [d for d in itertools.product(FLOATS, FLOATS, FLOATS + [None]) if len(set(d) - {None}) > 1]


@pytest.mark.parametrize("dtypes", MIXES)
def test_mixed_dtypes_get_the_layers_own_error(dtypes):
    x_dtype, w_dtype, b_dtype = dtypes
    x, weight = torch.randn(2, 3, 6, 6, dtype=x_dtype), torch.randn(4, 3, 3, 3, dtype=w_dtype)
    bias = None if b_dtype is None else torch.randn(4, dtype=b_dtype)
    name, other = ("weight", w_dtype) if w_dtype != x_dtype else ("bias", b_dtype)
    fix = {torch.float32: "float()", torch.float64: "double()"}
    match = rf"one dtype, got input {x_dtype} and {name} {other}: convert .*{name}\.{fix[x_dtype]}"
    with pytest.raises(TypeError, match=match):
        conv2d(x, weight, bias, padding=1)


def test_a_module_in_float64_names_the_fix_for_float32_images():
    match = r"got input torch.float32 and weight torch.float64: convert one side, x.double\(\) or weight.float\(\) "
    with pytest.raises(TypeError, match=match + r"\(a whole module: layer.float\(\)\)"):
        Conv2D(1, 4, 3).double()(torch.randn(2, 1, 28, 28))


LAYERS = [Conv2D(1, 4, 3), LocallyConnected2D(1, 4, 3, in_size=28)]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda m: type(m).__name__)
def test_integer_images_are_refused_with_how_the_series_prepares_them(dtype, layer):
    raw = torch.randint(0, 256, (2, 1, 28, 28)).to(dtype)  # as torchvision's MNIST.data stores them
    match = rf"floating-point images, got an input of dtype {dtype}: .*x.float\(\) / 255, then normalise "
    with pytest.raises(TypeError, match=match + r"\(helpers.mnist_tensors does both\)"):
        layer(raw)
    assert torch.equal(maxpool2d(raw, 2), F.max_pool2d(raw, 2))  # max pooling needs no arithmetic: integers are fine


def test_tensors_on_different_devices_get_the_layers_own_error():
    # the "meta" device (shapes without data) stands in for a GPU on machines that have none
    x, weight, bias = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4)
    with pytest.raises(ValueError, match=r"one device, got input on meta and weight on cpu: move one side, x.to\('cpu"):
        conv2d(x.to("meta"), weight, bias)
    with pytest.raises(ValueError, match=r"got input on cpu and bias on meta: move it, bias.to\('cpu'\)"):
        conv2d(x, weight, bias.to("meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_layers_match_pytorch_and_refuse_mixed_devices():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64, device="cuda", requires_grad=True)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    ours, our_grads = grads(lambda a, b: maxpool2d(conv2d(a, b, padding=1), 2), x, weight)
    ref, ref_grads = grads(lambda a, b: F.max_pool2d(F.conv2d(a, b, padding=1), 2), x, weight)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"got input on cpu and weight on cuda:0: move one side"):
        Conv2D(3, 5, 3).cuda()(torch.randn(1, 3, 9, 9))
    nan = torch.tensor([[5.0, 1], [float("nan"), 2]], device="cuda")[None, None].requires_grad_()
    maxpool2d(nan, 2).backward(torch.ones(1, 1, 1, 1, device="cuda"))
    assert nan.grad.flatten().tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize(
    "ours_fn,ref_fn",
    [
        (lambda *t: conv2d(*t, padding=1), lambda *t: F.conv2d(*t, padding=1)),
        (lambda *t: maxpool2d(conv2d(*t, stride=2), 2), lambda *t: F.max_pool2d(F.conv2d(*t, stride=2), 2)),
    ],
)
def test_an_empty_batch_goes_forward_and_backward_like_pytorch(ours_fn, ref_fn):
    torch.manual_seed(0)
    x = torch.randn(0, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ours, our_grads = grads(ours_fn, x, weight, bias)
    ref, ref_grads = grads(ref_fn, x, weight, bias)
    assert ours.shape == ref.shape and ours.shape[0] == 0
    for a, b in zip(our_grads, ref_grads):
        assert torch.equal(a, b)  # empty for the input, zeros for the weight and bias


def test_an_empty_batch_through_the_modules_and_simplecnn():
    from helpers import SimpleCNN

    assert Conv2D(2, 3, 3, padding=1)(torch.randn(0, 2, 5, 5)).shape == (0, 3, 5, 5)
    assert MaxPool2D(2)(torch.randn(0, 2, 5, 5)).shape == (0, 2, 2, 2)
    model = SimpleCNN()
    logits = model(torch.randn(0, 1, 28, 28))
    assert logits.shape == (0, 10)
    torch.nn.functional.cross_entropy(logits, torch.zeros(0, dtype=torch.long), reduction="sum").backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


def test_empty_images_and_kernels_are_refused_like_pytorch_refuses_them():
    with pytest.raises(ValueError, match=r"images of at least 1 channel and 1x1 pixels .* input shape \(2, 2, 0, 5"):
        conv2d(torch.randn(2, 2, 0, 5), torch.randn(3, 2, 1, 1), padding=1)
    with pytest.raises(ValueError, match=r"got input shape \(2, 0, 5, 5\)"):
        maxpool2d(torch.randn(2, 0, 5, 5), 2)
    with pytest.raises(ValueError, match=r"a weight of at least 1 filter, 1 channel and 1x1, got \(0, 2, 3, 3\)"):
        conv2d(torch.randn(2, 2, 5, 5), torch.randn(0, 2, 3, 3))


NAN = float("nan")


@pytest.mark.parametrize(
    "window,nan_at",
    [
        ([[5.0, 1], [NAN, 2]], (1, 0)),  # the example: the NaN after the maximum
        ([[NAN, 1], [7, 2]], (0, 0)),  # the NaN first
        ([[NAN, NAN], [1, 2]], (0, 1)),  # two NaNs: the last one, as PyTorch's `v > max or isnan(v)` picks
    ],
)
def test_the_gradient_goes_to_the_nan_of_a_window_as_in_pytorch(window, nan_at):
    x = torch.tensor(window)[None, None].requires_grad_()
    out = maxpool2d(x, 2)
    assert out.isnan().all()
    out.backward(torch.ones_like(out))
    expected = torch.zeros(2, 2)
    expected[nan_at] = 1
    assert torch.equal(x.grad[0, 0], expected)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (2, 1), (3, 3)])
def test_maxpool2d_with_nans_matches_pytorch(k, s):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    x[torch.rand(x.shape) < 0.1] = NAN  # some windows one NaN, some several, most none
    ours, (our_grad,) = grads(lambda t: maxpool2d(t, k, s), x.clone().requires_grad_())
    ref, (ref_grad,) = grads(lambda t: F.max_pool2d(t, k, s), x.clone().requires_grad_())
    assert ours.isnan().any()
    torch.testing.assert_close(ours, ref, equal_nan=True)
    torch.testing.assert_close(our_grad, ref_grad)  # overlapping windows add up in another order: not bit-equal
