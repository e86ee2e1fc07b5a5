"""The training loop and the command line that reproduces the published run.

    python -m helpers.train                 # the published recipe: 10 epochs on all of MNIST
    python -m helpers.train --quick         # one epoch on 2,000 images, a smoke test
    python -m helpers.train --resume        # continue an interrupted run where it stopped
    python -m helpers.train --val 5000      # choose the epoch on 5,000 held-out training images
    python -m helpers.train --model mlp --permute-pixels --out checkpoints/mlp_permuted.pt   # notebook 07's ablations
"""

import argparse
import contextlib
import os
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, remove_orphaned_temporaries, save_checkpoint, save_json
from .data import DATA_DIR, batches, mnist_tensors, permute_pixels, split_validation
from .layers import Conv2D
from .model import MLP, LocallyConnectedCNN, SimpleCNN

# the published recipe
RECIPE = dict(epochs=10, lr=1e-3, batch_size=64, lr_step=5, lr_gamma=0.5, seed=0)
QUICK = dict(epochs=1, train_subset=2000, test_subset=1000)  # a smoke test: seconds, not minutes
RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"
MODELS = {"simplecnn": SimpleCNN, "mlp": MLP, "locally-connected": LocallyConnectedCNN}  # the CLI's --model

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


def quick_mode():
    """True when the environment variable CNN_QUICK is set (and not "0"): notebooks then train for
    one epoch on a small subset, as the test suite runs them."""
    return os.environ.get("CNN_QUICK", "0") not in ("", "0")


def set_seed(seed):
    """Seed Python's and PyTorch's generators. On the CPU a run is then repeatable to the bit on the
    same machine, thread count and PyTorch build (other CPUs may round a little differently)."""
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device=None):
    """The given device, else CUDA, else Apple's MPS, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def evaluating(model):
    """Inside the block: dropout off and no gradients; yields the model's device. The model's
    train/eval mode is restored afterwards, even if the block fails."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def predict(model, images, batch_size=128):
    """Logits for all images, in eval mode (dropout off). images: (N, 1, 28, 28) -> (N, 10) on the CPU.

    At 128 images the largest buffer (conv2's im2col matrix) is 29 MB. glibc keeps freed blocks under
    32 MB for reuse but hands larger ones back to the OS, so bigger batches pay for fresh memory pages
    on every batch: 1,000 is about 1.8x slower on a CPU (benchmarks/choices.py).
    The logits are copied into one tensor made after the first batch, so that nothing a batch allocates
    outlives the batch. Collecting per-batch results for torch.cat left a small live block after every
    batch among the large ones it had freed; glibc could not reuse the gaps, and its heap grew by
    megabytes per batch and hundreds per evaluation (test_memory_levels_off_over_batches_and_epochs).
    """
    with evaluating(model) as device:
        first = model(images[:batch_size].to(device))
        logits = torch.empty(len(images), *first.shape[1:], dtype=first.dtype)
        logits[: len(first)] = first
        for start in range(batch_size, len(images), batch_size):
            logits[start : start + batch_size] = model(images[start : start + batch_size].to(device))
        return logits


def evaluate(model, images, labels, batch_size=128):
    """(mean cross-entropy loss, accuracy in [0, 1]) over a whole data set, dropout off.

    images: (N, 1, 28, 28), labels: (N,) class indices.
    """
    logits = predict(model, images, batch_size)
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def train_epoch(model, optimizer, images, labels, batch_size=64, generator=None, desc="train", progress=True,
                augment=None):  # fmt: skip
    """One pass over shuffled mini-batches of images (N, 1, 28, 28) and labels (N,).

    Returns (mean loss, accuracy), measured during the pass with dropout on. progress=False hides the bar.
    augment: None, or a function images (B, 1, 28, 28) -> images of the same shape, applied to every
    training batch (data augmentation, e.g. random shifts); the labels stay as they are.
    """
    model.train()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    n_batches = -(-len(images) // batch_size)
    bar = tqdm(batches(images, labels, batch_size, True, generator), total=n_batches, desc=desc, leave=False,
               disable=not progress)  # fmt: skip
    for x, y in bar:
        x, y = x.to(device), y.to(device)
        if augment is not None:
            x = augment(x)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return total_loss / len(images), correct / len(images)


def new_history(model):
    history = {key: [] for key in HISTORY_KEYS}
    # conv1's filters after every epoch, to watch the edge detectors form: only for a convolution
    # (a locally connected conv1 holds 784 filter banks, 250,880 numbers an epoch)
    if isinstance(getattr(model, "conv1", None), (Conv2D, nn.Conv2d)):
        history["conv1_init"] = model.conv1.weight.detach().cpu().tolist()
        history["conv1"] = []
    return history


# history key: (header, width, format), in the order of the table
COLUMNS = {
    "epoch": ("epoch", 5, "{:>5}"),
    "train_loss": ("train loss", 10, "{:>10.4f}"),
    "train_acc": ("train acc", 9, "{:>9.2%}"),
    "val_loss": ("val loss", 8, "{:>8.4f}"),
    "val_acc": ("val acc", 7, "{:>7.2%}"),
    "test_loss": ("test loss", 9, "{:>9.4f}"),
    "test_acc": ("test acc", 8, "{:>8.2%}"),
    "lr": ("lr", 8, "{:>8.6f}"),
    "seconds": ("time", 6, "{:>5.1f}s"),
}


def format_epoch(row=None, columns=HISTORY_KEYS):
    """One line of the per-epoch table (the header when row is None); columns: the history keys shown."""
    if row is None:
        return " ".join(f"{COLUMNS[key][0]:>{COLUMNS[key][1]}}" for key in columns)
    return " ".join(COLUMNS[key][2].format(row[key]) for key in columns)


def fit(
    model,
    train,
    test,
    epochs=RECIPE["epochs"],
    lr=RECIPE["lr"],
    batch_size=RECIPE["batch_size"],
    lr_step=RECIPE["lr_step"],
    lr_gamma=RECIPE["lr_gamma"],
    seed=RECIPE["seed"],
    device=None,
    resume=None,
    on_epoch_end=None,
    val=None,
    augment=None,
):
    """Train with Adam and cross-entropy; every ``lr_step`` epochs the learning rate is multiplied by
    ``lr_gamma`` (the recipe: halved after epoch 5).

    train, test: (images (N, 1, 28, 28), labels (N,)) tensors, e.g. from ``mnist_tensors``.
    Returns the history: per-epoch lists of train/test loss and accuracy, learning rate, seconds,
    and conv1's weights. resume: a checkpoint's training_state plus its "history", to continue
    exactly where that run stopped.
    on_epoch_end(history, training_state) is called after every epoch (the CLI saves there).
    augment: a function applied to every training batch of images (see ``train_epoch``), e.g. random
    shifts; the test images are evaluated as they are.

    val: (images, labels) held out from the training images (``split_validation``), to choose the
    epoch on, so that the test set plays no part in the choice. The history then also records val_loss
    and val_acc, and the model leaves fit with the weights of the epoch with the highest validation
    accuracy (the earliest, on a tie), not the last epoch's, and history["chosen"] = {"epoch",
    "val_acc"} says which (once the last epoch is done). test may be None: no test set is scored
    during training, and the chosen weights can be tested once, afterwards.
    """
    model.to(pick_device(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step, gamma=lr_gamma)
    shuffle = torch.Generator().manual_seed(seed)  # its own generator: the batch order does not depend on dropout
    history = new_history(model)
    if test is None:
        del history["test_loss"], history["test_acc"]
    if val is not None:
        history.update(val_loss=[], val_acc=[])
    best = None  # with val: {"epoch", "val_acc", "model": its weights} of the best epoch so far
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        shuffle.set_state(resume["shuffle_rng"])
        torch.set_rng_state(resume["torch_rng"])
        history = resume["history"]
        best = resume.get("best")
    columns = [key for key in COLUMNS if key in history]
    tqdm.write(format_epoch(None, columns))
    for epoch in range(len(history["epoch"]) + 1, epochs + 1):
        start = time.perf_counter()
        lr_now = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(
            model, optimizer, *train, batch_size, shuffle, desc=f"epoch {epoch}/{epochs}", augment=augment
        )
        scheduler.step()
        test_loss, test_acc = evaluate(model, *test) if test is not None else (None, None)
        row = dict(
            epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
            test_acc=test_acc, lr=lr_now, seconds=time.perf_counter() - start,
        )  # fmt: skip
        if val is not None:
            row["val_loss"], row["val_acc"] = evaluate(model, *val)
            row["seconds"] = time.perf_counter() - start
            if best is None or row["val_acc"] > best["val_acc"]:
                weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
                best = dict(epoch=epoch, val_acc=row["val_acc"], model=weights)
        for key in columns:
            history[key].append(row[key])
        if "conv1" in history:
            history["conv1"].append(model.conv1.weight.detach().cpu().tolist())
        tqdm.write(format_epoch(row, columns))
        if on_epoch_end is not None:
            state = dict(
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                shuffle_rng=shuffle.get_state(), torch_rng=torch.get_rng_state(),
            )  # fmt: skip
            if best is not None:
                state["best"] = best
            on_epoch_end(history, state)
    if best is not None:
        model.load_state_dict(best["model"])
        history["chosen"] = dict(epoch=best["epoch"], val_acc=best["val_acc"])
    return history


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description="Train SimpleCNN (from-scratch layers), or with --model notebook 07's other networks, "
        "on MNIST with the published recipe.",
    )
    p.add_argument("--model", choices=MODELS, default="simplecnn",
                   help="simplecnn (default), mlp (784-512-10) or locally-connected (SimpleCNN without weight sharing)")
    p.add_argument("--permute-pixels", action="store_true",
                   help="shuffle the pixels of every training and test image with one fixed permutation (seed 0): no locality")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help=f"default {RECIPE['epochs']} (1 with --quick)")
    p.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    p.add_argument("--lr", type=float, default=RECIPE["lr"], help="Adam's learning rate, halved every 5 epochs")
    p.add_argument("--seed", type=int, default=RECIPE["seed"])
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder holding MNIST/raw/")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint path (default runs/<model>[_permuted].pt, or runs/quick.pt with --quick); the history goes beside it as .json")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the fastest available)")
    p.add_argument("--quick", action="store_true", help="2,000 training images, 1 epoch: a smoke test")
    p.add_argument("--val", type=int, default=None, metavar="N",
                   help="hold out N training images (a fixed random choice) and choose the epoch on them: "
                        "its weights are kept, and the test set is scored once, at the end")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the interrupted run saved at --out")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint at --out")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "val"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.lr <= 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if args.resume and args.force:
        p.error("--resume continues the run at --out, --force replaces it: choose one")
    if args.out is None:
        stem = args.model.replace("-", "_") + ("_permuted" if args.permute_pixels else "")
        args.out = RUNS_DIR / ("quick.pt" if args.quick else f"{stem}.pt")
    return args


def main(argv=None):
    args = parse_args(argv)
    out, history_path = args.out, args.out.with_suffix(".json")
    resume = None
    if args.resume:
        for leftover in remove_orphaned_temporaries(out) + remove_orphaned_temporaries(history_path):
            print(f"removed {leftover}, left behind by an interrupted save")
        ckpt = load_checkpoint(out)  # FileNotFoundError / CheckpointError say what is wrong
        config, resume = ckpt["config"], ckpt["training_state"]
        done = len(ckpt["history"].get("epoch", []))
        if resume is None:
            print(f"{out} is a finished run ({done}/{config['epochs']} epochs): nothing to resume.")
            return 0
        print(f"resuming {out} after epoch {done}/{config['epochs']} (its saved settings win over the command line)")
    else:
        if out.exists() and not args.force:
            sys.exit(f"{out} already exists: pass --resume to continue it, --force to replace it, or another --out")
        config = dict(RECIPE, batch_size=args.batch_size, lr=args.lr, seed=args.seed, train_subset=None, test_subset=None,
                      model=args.model, permute_pixels=args.permute_pixels, device=str(pick_device(args.device)))  # fmt: skip
        if args.quick:
            config.update(QUICK)
        if args.epochs is not None:
            config["epochs"] = args.epochs
        if args.val is not None:
            config["val"] = args.val

    set_seed(config["seed"])
    model = MODELS[config.get("model", "simplecnn")]()  # checkpoints older than --model hold a SimpleCNN
    if resume is not None:
        load_checkpoint(out, model)
        resume = dict(resume, history=ckpt["history"])
    train = mnist_tensors(True, args.data_dir, config["train_subset"])
    test = mnist_tensors(False, args.data_dir, config["test_subset"])
    if config.get("permute_pixels"):
        train, test = (permute_pixels(train[0]), train[1]), (permute_pixels(test[0]), test[1])
    val = None
    if config.get("val"):
        try:
            train, val = split_validation(train, config["val"])
        except ValueError as error:
            sys.exit(f"--val {config['val']}: {error}")
    device = pick_device(args.device)
    print(
        f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters"
        f"{', pixels permuted' if config.get('permute_pixels') else ''}) on {device} "
        f"({torch.get_num_threads()} threads), {len(train[0]):,} training / "
        + (f"{len(val[0]):,} validation / " if val is not None else "")
        + f"{len(test[0]):,} test images"
    )

    def save(history, state):
        save_checkpoint(out, model, history, config, state)
        save_json(history_path, history)
        saved.append(history["epoch"][-1])

    saved = []
    fit_args = {k: config[k] for k in RECIPE}
    start = time.perf_counter()
    try:
        # with validation, fit never sees the test set: it is scored once, below, with the chosen weights
        history = fit(model, train, None if val is not None else test, device=device, resume=resume,
                      on_epoch_end=save, val=val, **fit_args)  # fmt: skip
    except KeyboardInterrupt:
        if saved or args.resume:
            print(f"\ninterrupted: {out} holds the last completed epoch; continue with --resume --out {out}")
        else:
            print(f"\ninterrupted before the first epoch finished: nothing was written to {out}")
        return 130
    if val is not None:
        test_loss, test_acc = evaluate(model, *test)  # the weights fit kept: those of history["chosen"]
        history["chosen"].update(test_loss=test_loss, test_acc=test_acc)
        save_json(history_path, history)
    save_checkpoint(out, model, history, config)  # finished: drop the optimizer state, keep the file small
    if val is not None:
        epoch, val_acc = history["chosen"]["epoch"], history["chosen"]["val_acc"]
        print(
            f"chosen by validation: epoch {epoch} (validation accuracy {val_acc:.2%}); test accuracy of its "
            f"weights, measured once: {test_acc:.2%}; {time.perf_counter() - start:.0f} s this session\n"
            f"saved {out} (the weights of epoch {epoch}) and {history_path}"
        )
        return 0
    best = max(range(len(history["test_acc"])), key=history["test_acc"].__getitem__)
    print(
        f"best test accuracy {history['test_acc'][best]:.2%} (epoch {history['epoch'][best]}), "
        f"final {history['test_acc'][-1]:.2%}; {time.perf_counter() - start:.0f} s this session\n"
        f"saved {out} and {history_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
