"""Property-based tests: the from-scratch layers against PyTorch's on random shapes and settings.

Hypothesis draws the batch, channels, sizes, kernel, stride and padding, including values PyTorch
refuses (an empty image, a zero stride, a negative padding, a kernel larger than the input). Wherever
``F.conv2d`` / ``F.max_pool2d`` accept the arguments, ours must agree with them in float64, forward and
every gradient, to 1e-9; wherever PyTorch refuses them, ours must raise ValueError and nothing else.
Derandomised: the same few hundred examples on every run, in a few seconds.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import conv2d, maxpool2d

EXAMPLES = settings(max_examples=200, derandomize=True, database=None, deadline=None)
TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


def pytorch_or_refusal(fn, *args):
    """fn(*args), or None when PyTorch refuses the arguments (whatever exception it raises)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 (PyTorch refuses with RuntimeError, ValueError, IndexError...)
        return None


def values_and_grads(fn, tensors, seed):
    """fn(*tensors) and the gradient of every tensor, for a seeded random upstream gradient."""
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return out, torch.autograd.grad(out, tensors, upstream)


def assert_same(ours, ref, names):
    """Two (output, gradients) pairs agree: shape, values (NaN where PyTorch has NaN), every gradient."""
    assert ours[0].shape == ref[0].shape
    torch.testing.assert_close(ours[0], ref[0], **TOLERANCE, equal_nan=True)
    for name, a, b in zip(names, ours[1], ref[1]):
        torch.testing.assert_close(a, b, **TOLERANCE, msg=f"gradient of the {name}")


@EXAMPLES
@given(
    n=st.integers(0, 3),
    c=st.integers(1, 3),
    f=st.integers(1, 3),
    h=st.integers(0, 8),
    w=st.integers(0, 8),
    k=st.integers(0, 5),
    stride=st.integers(0, 3),
    padding=st.integers(-1, 3),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv2d_matches_pytorch_or_refuses_what_it_refuses(n, c, f, h, w, k, stride, padding, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    weight = torch.randn(f, c, k, k, dtype=torch.float64, generator=g)
    tensors = [x, weight] + ([torch.randn(f, dtype=torch.float64, generator=g)] if bias else [])
    ref = pytorch_or_refusal(values_and_grads, lambda *t: F.conv2d(*t, stride=stride, padding=padding), tensors, seed)
    if ref is None:
        with pytest.raises(ValueError):
            conv2d(*tensors, stride=stride, padding=padding)
        return
    ours = values_and_grads(lambda *t: conv2d(*t, stride=stride, padding=padding), tensors, seed)
    assert_same(ours, ref, ("input", "weight", "bias"))


@EXAMPLES
@given(
    n=st.integers(0, 3),
    c=st.integers(0, 3),
    h=st.integers(0, 9),
    w=st.integers(0, 9),
    k=st.integers(0, 5),
    stride=st.none() | st.integers(0, 4),
    values=st.sampled_from(["distinct", "ties", "nan"]),
    seed=st.integers(0, 2**16),
)
def test_maxpool2d_matches_pytorch_or_refuses_what_it_refuses(n, c, h, w, k, stride, values, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    if values == "ties":  # few distinct values: windows with several maxima, the first must win
        x = x.round().clamp(min=0)
    elif values == "nan":  # the gradient goes to a window's NaN, as in PyTorch
        x[torch.rand(x.shape, generator=g) < 0.15] = float("nan")
    ref = pytorch_or_refusal(values_and_grads, lambda t: F.max_pool2d(t, k, stride), [x], seed)
    if ref is None:
        with pytest.raises(ValueError):
            maxpool2d(x, k, stride)
        return
    ours = values_and_grads(lambda t: maxpool2d(t, k, stride), [x], seed)
    assert_same(ours, ref, ("input",))
