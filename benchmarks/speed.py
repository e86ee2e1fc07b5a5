"""How fast are the from-scratch layers next to PyTorch's own? One process, one run, side by side.

    python -m benchmarks.speed              # about two minutes on a 2-core CPU
    python -m benchmarks.speed --steps 50 --no-epoch

Times a full training step (forward, backward, Adam) of helpers.SimpleCNN and of
SimpleCNNBuiltin (nn.Conv2d / nn.MaxPool2d) on the same real MNIST batches, alternating the
two so that machine noise hits both alike; breaks the step down by layer; prints FLOPs and
GFLOP/s, the evaluation time of the 10,000 test images and the time of a whole epoch. The last
line, ``ratio_train_step=<x.xx>``, is meant for scripts.
"""

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from helpers import SimpleCNN, SimpleCNNBuiltin, evaluate, mnist_tensors, set_seed, train_epoch

GROUPS = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc")  # "fc": flatten .. fc2 and the loss


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_step(model, optimizer, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def step_flops(batch):
    """Multiply-adds x 2 of one training step. Backward costs two products per layer (weight and
    input gradient) except conv1, whose input gradient nobody needs."""
    conv1 = 2 * batch * 28 * 28 * 32 * 1 * 9
    conv2 = 2 * batch * 14 * 14 * 64 * 32 * 9
    fc = 2 * batch * (3136 * 128 + 128 * 10)
    return 2 * conv1 + 3 * conv2 + 3 * fc


def layer_times(model, optimizer, x, y):
    """Seconds per stage, forward and backward, by running the stages one at a time and
    back-propagating through each with its own ``autograd.backward`` call."""
    stages = dict(model.named_children())
    inputs, outputs, fwd, bwd = {}, {}, {}, {}
    h = x
    for group in GROUPS:
        names = [n for n in stages if n == group] or list(stages)[list(stages).index("flatten") :]
        inp = h if group == "conv1" else h.detach().requires_grad_()
        start = time.perf_counter()
        h = inp
        for n in names:
            h = stages[n](h)
        if group == "fc":
            h = nn.functional.cross_entropy(h, y)
        fwd[group] = time.perf_counter() - start
        inputs[group], outputs[group] = inp, h
    optimizer.zero_grad(set_to_none=True)
    grad = None
    for group in reversed(GROUPS):
        start = time.perf_counter()
        torch.autograd.backward(outputs[group], grad)
        bwd[group] = time.perf_counter() - start
        grad = inputs[group].grad
    start = time.perf_counter()
    optimizer.step()
    fwd["optimiser"], bwd["optimiser"] = 0.0, time.perf_counter() - start
    return fwd, bwd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200, help="timed training steps per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-epoch", action="store_true", help="skip timing a whole epoch of each model")
    args = p.parse_args(argv)

    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    images, labels = mnist_tensors(train=True)
    test = mnist_tensors(train=False)
    set_seed(0)
    ours = SimpleCNN()
    builtin = SimpleCNNBuiltin()
    builtin.load_state_dict(ours.state_dict())
    models = {"from scratch": ours, "built-in": builtin}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    bs = args.batch_size
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batch = [(images[idx], labels[idx]) for idx in order[: (args.steps + 20) * bs].split(bs)]

    # --- the whole training step, alternating the two models
    times = {name: [] for name in models}
    for i, (x, y) in enumerate(batch):
        for name, model in models.items():
            t = timed(train_step, model, optimizers[name], x, y)
            if i >= 20:  # the first steps warm up allocator and caches
                times[name].append(t)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["from scratch"] / med["built-in"]
    flops = step_flops(bs)
    print(f"\ntraining step, batch {bs}, median of {args.steps} (alternating):")
    for name in models:
        print(f"  {name:<13} {med[name] * 1e3:7.2f} ms   {flops / med[name] / 1e9:5.1f} GFLOP/s")
    print(f"  ratio (from scratch / built-in): {ratio:.2f}x   FLOPs per step: {flops / 1e9:.2f} GFLOP")

    # --- per layer, forward and backward
    rows = {name: {} for name in models}
    for i, (x, y) in enumerate(batch[:60]):
        for name, model in models.items():
            fwd, bwd = layer_times(model, optimizers[name], x, y)
            if i >= 10:
                for g in fwd:
                    rows[name].setdefault(g, ([], []))
                    rows[name][g][0].append(fwd[g])
                    rows[name][g][1].append(bwd[g])
    print("\nper layer, median ms (forward / backward):")
    print(f"  {'layer':<10} {'from scratch':>17} {'built-in':>17} {'ratio':>6}")
    for g in (*GROUPS, "optimiser"):
        a = [statistics.median(v) * 1e3 for v in rows["from scratch"][g]]
        b = [statistics.median(v) * 1e3 for v in rows["built-in"][g]]
        r = sum(a) / max(sum(b), 1e-9)
        print(f"  {g:<10} {a[0]:7.2f} / {a[1]:7.2f} {b[0]:7.2f} / {b[1]:7.2f} {r:6.2f}")

    # --- evaluation of the test set
    print("\nevaluation of the 10,000 test images (batches of 128):")
    for name, model in models.items():
        evaluate(model, test[0][:128], test[1][:128], batch_size=128)  # warm-up
        t = min(timed(evaluate, model, *test, 128) for _ in range(3))
        print(f"  {name:<13} {t:6.2f} s")

    # --- one whole epoch, as the training loop runs it
    if not args.no_epoch:
        print(f"\none epoch of {len(images):,} images, batch {bs} (training loop, no evaluation):")
        for name, model in models.items():
            shuffle = torch.Generator().manual_seed(1)
            t = timed(lambda: train_epoch(model, optimizers[name], images, labels, bs, shuffle, progress=False))
            print(f"  {name:<13} {t:6.1f} s")

    print(f"\nratio_train_step={ratio:.2f}")


if __name__ == "__main__":
    main()
