"""Why the layers and the evaluation loop are written the way they are: each choice raced against the obvious alternative.

    python -m benchmarks.choices            # about half a minute on a 2-core CPU
    python -m benchmarks.choices --repeats 5

One process; the two versions of each row alternate (taking turns at going first), so that machine
noise hits both alike, and the table shows the median milliseconds of each and their ratio
(alternative / chosen: above 1, the choice is faster). Each row first checks that the two versions
compute the same thing. Shapes are SimpleCNN's on a training batch of 64; evaluation uses 2,000 test images.
"""

import argparse
import statistics
import time

import torch
from torch import nn

from helpers import SimpleCNN, evaluate, mnist_tensors, predict
from helpers.layers import _conv_input_grad, _conv_nhwc, _window_slot


def race(chosen, alternative, repeats):
    """Median seconds of each of two functions, called alternately."""
    times = {chosen: [], alternative: []}
    for i in range(repeats + 2):
        for fn in (chosen, alternative) if i % 2 else (alternative, chosen):
            start = time.perf_counter()
            fn()
            if i >= 2:  # two warm-up rounds
                times[fn].append(time.perf_counter() - start)
    return statistics.median(times[chosen]), statistics.median(times[alternative])


# conv2's input gradient two other ways (stride 1, padding 1). g: (N, H, W, F) channels-last -> (N, H, W, C)


def dx_all_dcols(g, weight):
    """The whole dcols = g @ W^T built first, then each kernel position's slice added back."""
    n, h, w, f = g.shape
    f, c, k, _ = weight.shape
    dcols = (g.reshape(-1, f) @ weight.permute(0, 2, 3, 1).reshape(f, -1)).view(n, h, w, k, k, c)
    grad_x = g.new_zeros(n, h + 2, w + 2, c)
    for u in range(k):
        for v in range(k):
            _window_slot(grad_x, u, v, 1, h, w).add_(dcols[:, :, :, u, v])
    return grad_x[:, 1:-1, 1:-1]


def dx_flipped_kernel(g, weight):
    """As notebook 02 derives it: the gradient, padded by k - 2, correlated with the kernel turned 180 degrees."""
    p = weight.shape[2] - 2
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

    # max pooling's bookkeeping, on pool1's input: one window position against the running maximum,
    # as MaxPool2DFunction.forward does it, then the gradient routed back as its backward does it
    x, g = torch.randn(64, 28, 28, 32).relu(), torch.randn(64, 14, 14, 32)
    candidate, best = _window_slot(x, 0, 1, 2, 14, 14), _window_slot(x, 0, 0, 2, 14, 14)
    as_float, as_bool = torch.empty(64, 14, 14, 32), torch.empty(64, 14, 14, 32, dtype=torch.bool)
    assert torch.equal(torch.gt(candidate, best, out=as_float).bool(), torch.gt(candidate, best, out=as_bool))
    t = race(lambda: torch.gt(candidate, best, out=as_float), lambda: torch.gt(candidate, best, out=as_bool), args.repeats)
    rows.append(("pooling: compare", "into a float tensor", "into a bool tensor", *t))
    grad_x = (torch.zeros(64, 28, 28, 32), torch.zeros(64, 28, 28, 32))
    route_float = lambda: _window_slot(grad_x[0], 0, 1, 2, 14, 14).addcmul_(as_float, g)
    route_bool = lambda: _window_slot(grad_x[1], 0, 1, 2, 14, 14).add_(as_bool * g)
    route_float(), route_bool()
    assert torch.equal(*grad_x)
    t = race(route_float, route_bool, args.repeats)
    rows.append(("pooling: route gradient", "addcmul_ with float mask", "add_ of bool mask * g", *t))

    # evaluation batch size
    model, test = SimpleCNN(), mnist_tensors(train=False, subset=2000)
    eval_repeats = max(1, args.repeats // 10)
    assert torch.equal(predict(model, test[0], batch_size=128), predict(model, test[0], batch_size=1000))
    t = race(lambda: evaluate(model, *test, batch_size=128), lambda: evaluate(model, *test, batch_size=1000), eval_repeats)
    rows.append(("evaluate 2,000 images", "batches of 128", "batches of 1,000", *t))

    print(f"{torch.get_num_threads()} threads, median of {args.repeats} (evaluation: {eval_repeats}), alternating\n")
    print(f"{'what':<25} {'chosen':<27} {'ms':>7}   {'alternative':<27} {'ms':>7}  {'ratio':>5}")
    for what, chosen_name, alt_name, t_chosen, t_alt in rows:
        print(f"{what:<25} {chosen_name:<27} {t_chosen * 1e3:7.2f}   {alt_name:<27} {t_alt * 1e3:7.2f}  {t_alt / t_chosen:5.2f}")


if __name__ == "__main__":
    main()
