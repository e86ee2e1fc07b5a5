"""Convolution and max pooling written from scratch.

Each layer comes three ways:

* ``conv2d_naive`` / ``maxpool2d_naive``: plain loops, the definition you can check by hand;
* ``conv2d`` / ``maxpool2d``: im2col (a strided view of every window) plus one matrix multiply,
  with the backward pass written out by hand in a ``torch.autograd.Function``;
* ``Conv2D`` / ``MaxPool2D``: ``nn.Module`` wrappers holding the parameters, used by ``SimpleCNN``.

Speed comes from layout, not from a built-in convolution: the fast path keeps activations
channels-last (N, H, W, C) in memory while their shape stays (N, C, H, W), so every im2col row
is a run of neighbouring memory and every matrix multiply writes its result already in the
layout the next layer reads.

Bad input gets an error that says what was expected, what came, and how to fix it, before any
work is done: ``TypeError`` when an argument is not a tensor or has the wrong dtype (integer images,
float32 mixed with float64: no value of that type would do, so convert it), ``ValueError`` when the
shapes, sizes or devices do not fit together (everything PyTorch's own layers refuse as sizes).
An empty batch (N = 0) is fine, as in PyTorch; images without channels or pixels are not.
"""

import math

import torch
from torch import nn


# ----------------------------------------------------------------------------- checks


def _check_size(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _check_input(layer, x, in_channels=None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (for a single image use x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(
            f"{layer} expects a 4-D input (N, C, H, W), got {x.dim()}-D input of shape {tuple(x.shape)}{hint}"
        )
    if x.shape[1] == 0 or (len(x) and 0 in x.shape[2:]):  # as PyTorch: an empty batch may hold empty images
        raise ValueError(
            f"{layer} expects images of at least 1 channel and 1x1 pixels (an empty batch, N = 0, is fine), "
            f"got input shape {tuple(x.shape)}"
        )
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(
            f"{layer} expects {in_channels} input channel(s), got {x.shape[1]} (input shape {tuple(x.shape)})"
        )


def _check_weight(layer, weight, bias):
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{layer} expects a weight of shape (F, C, k, k), got {tuple(weight.shape)}")
    if 0 in weight.shape:
        raise ValueError(f"{layer} expects a weight of at least 1 filter, 1 channel and 1x1, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{layer} expects a bias of shape ({weight.shape[0]},), one per filter, got {tuple(bias.shape)}")


_CAST = {torch.float32: "float()", torch.float64: "double()", torch.float16: "half()", torch.bfloat16: "bfloat16()"}


def _cast(name, dtype):
    """The call that converts ``name`` to ``dtype``: "x.double()", or "x.to(torch.float8_e4m3fn)"."""
    return f"{name}.{_CAST.get(dtype, f'to({dtype})')}"


def _check_tensors(layer, x, weight, bias=None):
    """Input, weight and bias (or None) of a layer with weights: floating-point images, one dtype and
    one device for all three. Call it first: the shape checks assume tensors.

    TypeError for something that is not a tensor or has the wrong dtype, ValueError for tensors on
    different devices.
    """
    for name, t in (("input", x), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) and not (name == "bias" and t is None):
            raise TypeError(f"{layer} expects the {name} as a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{layer} takes floating-point images, got an input of dtype {x.dtype}: convert raw pixels "
            "with x.float() / 255, then normalise (helpers.mnist_tensors does both)"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        # converting x is a fix only for the weight (the bias comes second, when x already matches the weight)
        either = name == "weight" and t.is_floating_point()
        if t.dtype != x.dtype:
            fix = f"one side, {_cast('x', t.dtype)} or " if either else "it, "
            raise TypeError(
                f"{layer} expects the input and the {name} in one dtype, got input {x.dtype} and {name} "
                f"{t.dtype}: convert {fix}{_cast(name, x.dtype)} (a whole module: {_cast('layer', x.dtype)})"
            )
        if t.device != x.device:
            fix = f"one side, x.to('{t.device}') or " if either else "it, "
            raise ValueError(
                f"{layer} expects the input and the {name} on one device, got input on {x.device} and {name} "
                f"on {t.device}: move {fix}{name}.to('{x.device}') (a whole module: layer.to('{x.device}'))"
            )


def _check_window(layer, x, kernel_size, padding):
    h, w = x.shape[2] + 2 * padding, x.shape[3] + 2 * padding
    if kernel_size > h or kernel_size > w:
        raise ValueError(
            f"{layer}: kernel_size {kernel_size} is larger than the padded input {h}x{w} "
            f"(input {x.shape[2]}x{x.shape[3]}, padding {padding})"
        )


def output_size(size, kernel_size, stride=1, padding=0):
    """Side of a convolution or pooling output: floor((size + 2*padding - kernel_size) / stride) + 1."""
    return (size + 2 * padding - kernel_size) // stride + 1


# ----------------------------------------------------------------------------- loops


def conv2d_naive(x, weight, bias=None, stride=1, padding=0):
    """Cross-correlation with plain loops: the definition, slow and easy to check.

    x: (N, C, H, W), weight: (F, C, k, k), bias: (F,) or None -> out: (N, F, H', W')
    out[n, f, i, j] = sum over c, u, v of x_pad[n, c, i*stride + u, j*stride + v] * weight[f, c, u, v] + bias[f]
    """
    _check_tensors("conv2d_naive", x, weight, bias)
    _check_weight("conv2d_naive", weight, bias)
    _check_input("conv2d_naive", x, weight.shape[1])
    k = weight.shape[2]
    _check_window("conv2d_naive", x, k, padding)
    n_images, _, h, w = x.shape
    n_filters = weight.shape[0]
    x_pad = x.new_zeros(n_images, x.shape[1], h + 2 * padding, w + 2 * padding)
    x_pad[:, :, padding : padding + h, padding : padding + w] = x
    h_out, w_out = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    out = x.new_zeros(n_images, n_filters, h_out, w_out)
    for n in range(n_images):
        for f in range(n_filters):
            for i in range(h_out):
                for j in range(w_out):
                    window = x_pad[n, :, i * stride : i * stride + k, j * stride : j * stride + k]
                    out[n, f, i, j] = (window * weight[f]).sum()
            if bias is not None:
                out[n, f] += bias[f]
    return out


def maxpool2d_naive(x, kernel_size, stride=None):
    """Max pooling with plain loops. x: (N, C, H, W) -> (N, C, H', W')."""
    stride = kernel_size if stride is None else stride
    _check_input("maxpool2d_naive", x)
    _check_window("maxpool2d_naive", x, kernel_size, 0)
    n_images, channels, h, w = x.shape
    h_out, w_out = output_size(h, kernel_size, stride), output_size(w, kernel_size, stride)
    out = x.new_zeros(n_images, channels, h_out, w_out)
    for i in range(h_out):
        for j in range(w_out):
            window = x[:, :, i * stride : i * stride + kernel_size, j * stride : j * stride + kernel_size]
            out[:, :, i, j] = window.amax(dim=(2, 3))
    return out


# ----------------------------------------------------------------------------- im2col


def im2col(x, kernel_size, stride=1, padding=0):
    """Every k x k window of a channels-last image as one row of a matrix.

    x: (N, H, W, C) channels-last (``x.permute(0, 2, 3, 1)`` of an (N, C, H, W) batch)
    -> cols: (N * H' * W', k * k * C), each row ordered (row u, column v, channel c).
    ``unfold`` makes a strided *view* of the windows (no copy); ``reshape`` then copies them
    into one matrix, so a whole convolution becomes a single matrix multiply.
    """
    if padding:
        x = nn.functional.pad(x, (0, 0, padding, padding, padding, padding))
    windows = x.unfold(1, kernel_size, stride).unfold(2, kernel_size, stride)  # (N, H', W', C, k, k)
    n, h_out, w_out, c = windows.shape[:4]
    # (u, v, c) order: the innermost run of each row is k*C neighbouring floats in memory
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(n * h_out * w_out, kernel_size * kernel_size * c)


def _window_slot(x, u, v, stride, out_h, out_w):
    """Element (u, v) of every window (of a convolution or a pooling) at once, as a strided view.

    x: (N, H, W, C) -> (N, H', W', C). Writing into the view writes into x.
    """
    return x[:, u : u + stride * (out_h - 1) + 1 : stride, v : v + stride * (out_w - 1) + 1 : stride]


def _weight_matrix(weight):
    """(F, C, k, k) -> (k * k * C, F), rows in the same (u, v, c) order as ``im2col``."""
    return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])


def _conv_nhwc(x, weight, bias, stride, padding):
    """The im2col convolution on channels-last data. x: (N, H, W, C) -> (N, H', W', F), plus the cols."""
    n, h, w, _ = x.shape
    k = weight.shape[2]
    cols = im2col(x, k, stride, padding)
    w_mat = _weight_matrix(weight)
    # addmm fuses the bias add into the matrix multiply
    out = torch.addmm(bias, cols, w_mat) if bias is not None else cols @ w_mat
    h_out, w_out = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    return out.view(n, h_out, w_out, weight.shape[0]), cols


def _nchw(x_nhwc):
    """A (N, H, W, C) buffer seen as (N, C, H, W) without copying: the result is channels-last."""
    return x_nhwc.permute(0, 3, 1, 2)


def _nhwc(x_nchw):
    """(N, C, H, W) seen as (N, H, W, C); free when x is already channels-last."""
    return x_nchw.permute(0, 2, 3, 1)


class Conv2DFunction(torch.autograd.Function):
    """Convolution forward and backward, as matrix multiplies over im2col columns.

    Forward:   out = cols @ W                    (cols: every input window, one per row)
    Backward:  dW  = cols^T @ dout               (correlate the input with the output gradient)
               db  = dout summed over N, H', W'
               dx  = col2im(dout @ W^T)          (hand each window's gradient back to its pixels)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        out, cols = _conv_nhwc(_nhwc(x), weight, bias, stride, padding)
        # keep the im2col matrix: the weight gradient needs exactly it, so the backward skips recomputing it
        ctx.save_for_backward(cols, weight)
        ctx.stride, ctx.padding, ctx.in_size = stride, padding, x.shape[2:]
        return _nchw(out)

    @staticmethod
    def backward(ctx, grad_out):
        cols, weight = ctx.saved_tensors
        n_filters, _, k, _ = weight.shape
        g = _nhwc(grad_out).reshape(-1, n_filters)  # (N * H' * W', F); no copy when grad_out is channels-last
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # False for the first layer: nobody needs the gradient of the images
            grad_x = _nchw(_conv_input_grad(_nhwc(grad_out), weight, ctx.stride, ctx.padding, ctx.in_size))
        if ctx.needs_input_grad[1]:
            grad_w = (cols.t() @ g).view(k, k, -1, n_filters).permute(3, 2, 0, 1)
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None


def _conv_input_grad(grad_out, weight, stride, padding, in_size):
    """dL/dx by col2im: every window hands its gradient back to the pixels it read.

    grad_out: (N, H', W', F), weight: (F, C, k, k) -> (N, H, W, C).
    The gradient of the im2col matrix is dcols = grad_out @ W^T; its block for kernel position
    (u, v) is grad_out @ weight[:, :, u, v] and belongs to the pixel at offset (u, v) of every
    window. One block at a time beats building all of dcols first (1.4-2x in ``python -m benchmarks.choices``):
    each product is a contiguous matrix, added straight onto the strided view of its pixels.
    """
    n, h_out, w_out, n_filters = grad_out.shape
    _, c, k, _ = weight.shape
    h, w = in_size
    g = grad_out.reshape(-1, n_filters)
    grad_x = grad_out.new_zeros(n, h + 2 * padding, w + 2 * padding, c)
    for u in range(k):
        for v in range(k):
            block = (g @ weight[:, :, u, v]).view(n, h_out, w_out, c)
            _window_slot(grad_x, u, v, stride, h_out, w_out).add_(block)
    return grad_x[:, padding : padding + h, padding : padding + w]


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """Fast cross-correlation: im2col + one matrix multiply, hand-written backward.

    x: (N, C, H, W), weight: (F, C, k, k), bias: (F,) or None -> (N, F, H', W') (channels-last in memory)
    with H' = floor((H + 2*padding - k) / stride) + 1.
    """
    _check_size("stride", stride)
    _check_size("padding", padding, minimum=0)
    _check_tensors("conv2d", x, weight, bias)
    _check_weight("conv2d", weight, bias)
    _check_input("conv2d", x, weight.shape[1])
    _check_window("conv2d", x, weight.shape[2], padding)
    return Conv2DFunction.apply(x, weight, bias, stride, padding)


class MaxPool2DFunction(torch.autograd.Function):
    """Max pooling: the forward remembers which element of each window won, the backward routes the
    gradient there and nowhere else. On ties the first maximum (in reading order) wins, as in PyTorch.

    Both passes loop over the k*k positions inside a window, not over the windows: each step is one
    vectorised operation on a strided view of the whole batch.
    """

    @staticmethod
    def forward(ctx, x, kernel_size, stride):
        n, c, h, w = x.shape
        h_out, w_out = output_size(h, kernel_size, stride), output_size(w, kernel_size, stride)
        x = _nhwc(x)
        out = _window_slot(x, 0, 0, stride, h_out, w_out)
        # index u*k + v of the maximum in each window, kept as a float32 (exact up to 2**24, whatever
        # x's dtype): comparisons into floats and float masks are about 3x faster than bools (benchmarks/choices.py)
        winner = torch.zeros(out.shape, dtype=torch.float32, device=x.device)
        wins = torch.empty_like(winner)
        for slot in range(1, kernel_size * kernel_size):
            candidate = _window_slot(x, *divmod(slot, kernel_size), stride, h_out, w_out)
            torch.gt(candidate, out, out=wins)  # 1.0 where strictly greater: on a tie the earlier one stays
            out = torch.maximum(out, candidate)
            winner.addcmul_(wins, slot - winner)  # winner = slot where wins, else unchanged
        if out.sum().isnan():  # a NaN took over some window: rare, and one cheap pass over out tells
            _nan_wins(x, winner, kernel_size, stride)
        ctx.save_for_backward(winner)
        ctx.kernel_size, ctx.stride, ctx.in_shape = kernel_size, stride, (n, h, w, c)
        return _nchw(out.contiguous())

    @staticmethod
    def backward(ctx, grad_out):
        (winner,) = ctx.saved_tensors
        k, s = ctx.kernel_size, ctx.stride
        g = _nhwc(grad_out)
        h_out, w_out = g.shape[1:3]
        grad_x = g.new_zeros(ctx.in_shape)
        won = torch.empty_like(winner)
        for slot in range(k * k):  # col2im: each window position hands its gradient back to its pixel
            torch.eq(winner, slot, out=won)
            _window_slot(grad_x, *divmod(slot, k), s, h_out, w_out).addcmul_(won, g)
        return _nchw(grad_x), None, None


def _nan_wins(x, winner, kernel_size, stride):
    """Make a window's last NaN its winner, in place, where PyTorch's max pooling sends the gradient.

    The forward's ``torch.maximum`` keeps a NaN, but ``candidate > best`` is False for a NaN, so the winner
    stayed at the largest number before it. PyTorch's kernel takes ``v > best or isnan(v)``: the last NaN.
    x: (N, H, W, C), winner: (N, H', W', C).
    """
    h_out, w_out = winner.shape[1:3]
    for slot in range(kernel_size * kernel_size):
        winner.masked_fill_(_window_slot(x, *divmod(slot, kernel_size), stride, h_out, w_out).isnan(), slot)


def maxpool2d(x, kernel_size, stride=None):
    """Fast max pooling over strided windows. x: (N, C, H, W) -> (N, C, H', W'), H' = floor((H - k) / stride) + 1."""
    stride = kernel_size if stride is None else stride
    _check_size("kernel_size", kernel_size)
    _check_size("stride", stride)
    _check_input("maxpool2d", x)
    _check_window("maxpool2d", x, kernel_size, 0)
    return MaxPool2DFunction.apply(x, kernel_size, stride)


# ----------------------------------------------------------------------------- modules


def xavier_uniform_(weight):
    """Glorot/Xavier uniform initialisation, in place: U(-b, b) with b = sqrt(6 / (fan_in + fan_out)).

    weight: (F, C, k, k) -> fan_in = C*k*k, fan_out = F*k*k. The bound keeps the variance of the
    activations (forward) and of the gradients (backward) roughly constant from layer to layer.
    """
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


class Conv2D(nn.Module):
    """2-D convolution layer (cross-correlation, like nn.Conv2d) built on ``conv2d``.

    x: (N, in_channels, H, W) -> (N, out_channels, H', W'). Weights Xavier-uniform, biases zero.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        _check_size("in_channels", in_channels)
        _check_size("out_channels", out_channels)
        _check_size("kernel_size", kernel_size)
        _check_size("stride", stride)
        _check_size("padding", padding, minimum=0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


class MaxPool2D(nn.Module):
    """Max pooling layer built on ``maxpool2d``. x: (N, C, H, W) -> (N, C, H', W'); stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        stride = kernel_size if stride is None else stride
        _check_size("kernel_size", kernel_size)
        _check_size("stride", stride)
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return maxpool2d(x, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


# ----------------------------------------------------------------------------- no weight sharing


class LocallyConnected2DFunction(torch.autograd.Function):
    """A convolution without weight sharing: the same im2col rows, one weight matrix per output position.

    With P = H' * W' output positions, cols: (P, N, k*k*C) (row p of batch p: the window at position p
    of every image) and W: (P, k*k*C, F), a batched matrix multiply does every position at once:

    Forward:   out[p] = cols[p] @ W[p] + b[p]           (P products of (N, kkC) @ (kkC, F))
    Backward:  dW[p]  = cols[p]^T @ dout[p]             (each position's weights see only its own windows)
               db[p]  = dout[p] summed over the batch
               dx     = col2im(dout[p] @ W[p]^T)        (hand each window's gradient back to its pixels)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        n, _, h, w = x.shape
        h_out, w_out = weight.shape[:2]
        cols = _local_cols(x, weight.shape[-1], stride, padding, h_out * w_out)
        w_mats = _local_weight_matrices(weight)
        if bias is None:
            out = torch.bmm(cols, w_mats)
        else:  # baddbmm fuses the bias add into the products, as addmm does for Conv2D
            out = torch.baddbmm(bias.reshape(h_out * w_out, 1, -1), cols, w_mats)
        ctx.save_for_backward(cols, weight)
        ctx.stride, ctx.padding, ctx.in_size = stride, padding, (h, w)
        # (P, N, F) -> (N, H', W', F) channels-last in memory, seen as (N, F, H', W')
        return _nchw(out.transpose(0, 1).reshape(n, h_out, w_out, weight.shape[2]))

    @staticmethod
    def backward(ctx, grad_out):
        cols, weight = ctx.saved_tensors
        h_out, w_out, n_filters, channels, k, _ = weight.shape
        n = grad_out.shape[0]
        g = _nhwc(grad_out).reshape(n, h_out * w_out, n_filters).transpose(0, 1)  # (P, N, F)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            dcols = torch.bmm(g, _local_weight_matrices(weight).transpose(1, 2))  # (P, N, kkC)
            dcols = dcols.transpose(0, 1).reshape(n, h_out, w_out, k, k, channels)
            grad_x = _nchw(_col2im(dcols, ctx.stride, ctx.padding, ctx.in_size))
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(cols.transpose(1, 2), g)  # (P, kkC, F)
            grad_w = grad_w.view(h_out, w_out, k, k, channels, n_filters).permute(0, 1, 5, 4, 2, 3)
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(1).view(h_out, w_out, n_filters)
        return grad_x, grad_w, grad_b, None, None


def _local_cols(x, k, stride, padding, positions):
    """im2col rows grouped by output position: x (N, C, H, W) -> (P, N, k*k*C), a strided view."""
    n, c = x.shape[:2]
    if n == 0:  # an empty batch has no windows to unfold
        return x.new_zeros(positions, 0, k * k * c)
    return im2col(_nhwc(x), k, stride, padding).view(n, positions, -1).transpose(0, 1)


def _local_weight_matrices(weight):
    """(H', W', F, C, k, k) -> (H' * W', k * k * C, F): one ``_weight_matrix`` per output position."""
    h_out, w_out, n_filters = weight.shape[:3]
    return weight.permute(0, 1, 4, 5, 3, 2).reshape(h_out * w_out, -1, n_filters)


def _col2im(dcols, stride, padding, in_size):
    """Add every window's gradient back onto the pixels it was read from.

    dcols: (N, H', W', k, k, C), the gradient of each window -> (N, H, W, C). One strided addition
    per kernel position (u, v), as in ``_conv_input_grad``; the padding's share is dropped.
    """
    n, h_out, w_out, k, _, channels = dcols.shape
    h, w = in_size
    grad_x = dcols.new_zeros(n, h + 2 * padding, w + 2 * padding, channels)
    for u in range(k):
        for v in range(k):
            _window_slot(grad_x, u, v, stride, h_out, w_out).add_(dcols[:, :, :, u, v])
    return grad_x[:, padding : padding + h, padding : padding + w]


def locally_connected2d(x, weight, bias=None, stride=1, padding=0):
    """Locally connected layer: like ``conv2d``, but every output position has its own filters.

    x: (N, C, H, W), weight: (H', W', F, C, k, k) (``weight[i, j]`` is the filter bank of output
    position (i, j), shaped like a Conv2D weight), bias: (H', W', F) or None -> (N, F, H', W')
    out[n, f, i, j] = sum over c, u, v of x_pad[n, c, i*stride + u, j*stride + v] * weight[i, j, f, c, u, v] + bias[i, j, f]
    With the same filter bank at every position this is exactly ``conv2d``: a convolution is a
    locally connected layer whose weights are shared.
    """
    _check_size("stride", stride)
    _check_size("padding", padding, minimum=0)
    _check_tensors("locally_connected2d", x, weight, bias)  # first: TypeError for what is not a tensor
    if weight.dim() != 6 or weight.shape[-1] != weight.shape[-2]:
        shape = tuple(weight.shape)
        raise ValueError(f"locally_connected2d expects a weight of shape (H', W', F, C, k, k), got {shape}")
    h_out, w_out, n_filters, channels, k, _ = weight.shape
    if bias is not None and tuple(bias.shape) != (h_out, w_out, n_filters):
        raise ValueError(
            f"locally_connected2d expects a bias of shape ({h_out}, {w_out}, {n_filters}), one per filter "
            f"and position, got {tuple(bias.shape)}"
        )
    _check_input("locally_connected2d", x, channels)
    _check_window("locally_connected2d", x, k, padding)
    expected = (output_size(x.shape[2], k, stride, padding), output_size(x.shape[3], k, stride, padding))
    if expected != (h_out, w_out):
        raise ValueError(
            f"locally_connected2d: a {x.shape[2]}x{x.shape[3]} input gives {expected[0]}x{expected[1]} output "
            f"positions, but the weight holds filters for {h_out}x{w_out}; a locally connected layer only "
            "accepts the input size it was built for"
        )
    return LocallyConnected2DFunction.apply(x, weight, bias, stride, padding)


class LocallyConnected2D(nn.Module):
    """Locally connected layer: a Conv2D with its own k x k filter bank (and bias) at every output position.

    x: (N, in_channels, H, W) -> (N, out_channels, H', W'), where in_size = (H, W), or one int for a
    square input, is fixed when the layer is built (there is one filter bank per output position).
    weight: (H', W', out_channels, in_channels, k, k), each position's bank Xavier-uniform like Conv2D's;
    bias: (H', W', out_channels), zero. It has H' * W' times a Conv2D's parameters.
    """

    def __init__(self, in_channels, out_channels, kernel_size, in_size, stride=1, padding=0, bias=True):
        super().__init__()
        h, w = (in_size, in_size) if isinstance(in_size, int) and not isinstance(in_size, bool) else tuple(in_size)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("kernel_size", kernel_size), ("stride", stride), ("in_size", h), ("in_size", w)):  # fmt: skip
            _check_size(name, value)
        _check_size("padding", padding, minimum=0)
        if kernel_size > h + 2 * padding or kernel_size > w + 2 * padding:
            raise ValueError(f"kernel_size {kernel_size} is larger than the padded input {h + 2 * padding}x{w + 2 * padding}")
        self.in_channels, self.out_channels, self.in_size = in_channels, out_channels, (h, w)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.out_size = (output_size(h, kernel_size, stride, padding), output_size(w, kernel_size, stride, padding))
        self.weight = nn.Parameter(torch.empty(*self.out_size, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(*self.out_size, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            for bank in self.weight.view(-1, *self.weight.shape[2:]):  # each position like a Conv2D
                xavier_uniform_(bank)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x):
        return locally_connected2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, in_size={self.in_size}, "
            f"stride={self.stride}, padding={self.padding}, positions={self.out_size[0]}x{self.out_size[1]}, "
            f"bias={self.bias is not None}"
        )
