"""Why helpers/layers.py is written the way it is: each choice raced against the obvious alternative.

    python -m benchmarks.choices            # about a minute on a 2-core CPU
    python -m benchmarks.choices --repeats 5

One process; the two versions of each row alternate, so that machine noise hits both alike, and the
table shows the median milliseconds of each and their ratio (alternative / chosen: above 1, the choice
is faster). Shapes are SimpleCNN's on a batch of 64.
"""

import argparse
import statistics
import time

import torch
from torch import nn

from helpers import SimpleCNN, evaluate, mnist_tensors
from helpers.layers import _conv_input_grad, _conv_nhwc, _window_slot


def race(chosen, alternative, repeats):
    """Median seconds of each of two functions, called alternately."""
    times = ([], [])
    for i in range(repeats + 2):
        for fn, t in zip((chosen, alternative), times):
            start = time.perf_counter()
            fn()
            if i >= 2:  # two warm-up rounds
                t.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def dx_all_dcols(g, weight, padding=1):
    """conv2's input gradient with the whole dcols = g @ W^T built first, then summed back from its slices."""
    n, h, w, f = g.shape
    f, c, k, _ = weight.shape
    dcols = (g.reshape(-1, f) @ weight.permute(0, 2, 3, 1).reshape(f, -1)).view(n, h, w, k, k, c)
    grad_x = g.new_zeros(n, h + 2 * padding, w + 2 * padding, c)
    for u in range(k):
        for v in range(k):
            _window_slot(grad_x, u, v, 1, h, w).add_(dcols[:, :, :, u, v])
    return grad_x[:, padding:-padding, padding:-padding]


def dx_flipped_kernel(g, weight, padding=1):
    """conv2's input gradient as notebook 02 derives it: the padded gradient convolved with the kernel turned 180 degrees."""
    k = weight.shape[2]
    p = k - 1 - padding
    padded = nn.functional.pad(g, (0, 0, p, p, p, p))
    return _conv_nhwc(padded, weight.flip(2, 3).transpose(0, 1), None, 1, 0)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=50, help="timed calls of each version per row")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []

    # conv2's input gradient: col2im one kernel position at a time, against two alternatives
    g, weight = torch.randn(64, 14, 14, 64), torch.randn(64, 32, 3, 3)
    chosen = _conv_input_grad(g, weight, 1, 1, (14, 14))
    for name, alt in [("all of dcols, then col2im", dx_all_dcols), ("flipped-kernel convolution", dx_flipped_kernel)]:
        torch.testing.assert_close(alt(g, weight), chosen, rtol=1e-4, atol=1e-4)  # same gradient, or the race means nothing
        t = race(lambda: _conv_input_grad(g, weight, 1, 1, (14, 14)), lambda: alt(g, weight), args.repeats)
        rows.append(("conv2 input gradient", "col2im per kernel position", name, *t))

    # max pooling's bookkeeping on pool1's windows: comparisons and masks kept as floats, not bools
    a, b = torch.randn(64, 14, 14, 32), torch.randn(64, 14, 14, 32)
    as_float = torch.empty_like(a)
    t = race(lambda: torch.gt(a, b, out=as_float), lambda: a > b, args.repeats)
    rows.append(("pooling: compare", "into a float tensor", "into a bool tensor", *t))
    as_bool = a > b
    t = race(lambda: as_float * b, lambda: as_bool * b, args.repeats)
    rows.append(("pooling: mask * gradient", "float mask", "bool mask", *t))

    # evaluation batch size
    model, test = SimpleCNN(), mnist_tensors(train=False, subset=2000)
    t = race(lambda: evaluate(model, *test, batch_size=256), lambda: evaluate(model, *test, batch_size=1000), max(args.repeats // 10, 3))
    rows.append(("evaluate 2,000 images", "batches of 256", "batches of 1,000", *t))

    print(f"{torch.get_num_threads()} threads, median of {args.repeats} (evaluation: {max(args.repeats // 10, 3)}), alternating\n")
    print(f"{'what':<25} {'chosen':<27} {'ms':>7}   {'alternative':<27} {'ms':>7}  {'ratio':>5}")
    for what, chosen_name, alt_name, t_chosen, t_alt in rows:
        print(f"{what:<25} {chosen_name:<27} {t_chosen * 1e3:7.2f}   {alt_name:<27} {t_alt * 1e3:7.2f}  {t_alt / t_chosen:5.2f}")


if __name__ == "__main__":
    main()
