"""MNIST through torchvision, and the same images as one in-memory tensor for fast training."""

from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision import datasets, transforms

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# what the network sees: pixels in [0, 1], then shifted and scaled to mean 0, std 1 over the training set
normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])


def load_mnist(train=True, root=DATA_DIR, subset=None):
    """The torchvision MNIST dataset: item i is (image (1, 28, 28) normalised, label int).

    Downloads into ``root/MNIST/raw/`` when the files are missing. subset=n keeps the first n images.
    """
    raw = Path(root) / "MNIST" / "raw"
    try:
        dataset = datasets.MNIST(root, train=train, transform=normalize, download=True)
    except (RuntimeError, OSError) as error:
        files = "\n".join(f"  {raw / name}" for name in MNIST_FILES)
        raise FileNotFoundError(
            f"MNIST could not be loaded from {raw}/ (missing or damaged files) nor downloaded "
            f"({type(error).__name__}).\nPut the four uncompressed files there:\n{files}\n"
            "from https://ossci-datasets.s3.amazonaws.com/mnist/ (gunzip the .gz files), "
            "or copy a folder that holds them: cp -r <somewhere>/MNIST data/"
        ) from None
    if subset is not None:
        if not 0 < subset <= len(dataset):
            raise ValueError(f"subset must be between 1 and {len(dataset)}, got {subset}")
        dataset = Subset(dataset, range(subset))
    return dataset


def mnist_tensors(train=True, root=DATA_DIR, subset=None):
    """All of MNIST as two tensors: images (N, 1, 28, 28) normalised exactly as ``load_mnist``, labels (N,).

    One vectorised normalisation instead of a PIL transform per image: an epoch then spends
    its time in the network, not in Python.
    """
    dataset = load_mnist(train, root, subset)
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    n = len(dataset)
    images = (base.data[:n].unsqueeze(1).float() / 255 - MNIST_MEAN) / MNIST_STD
    return images, base.targets[:n].clone()


def split_validation(train, size=5000, seed=0):
    """Hold out ``size`` training images for validation: (images, labels) -> (train, val), two such pairs.

    Choices (which epoch to keep, which learning rate) are made on the validation images, so that the
    test set stays unseen until one final measurement. The held-out images are a random choice fixed by
    ``seed`` (not by the training run's seed); both parts keep the original order.
    train: (images (N, 1, 28, 28), labels (N,)), e.g. from ``mnist_tensors``.
    """
    images, labels = train
    if not 0 < size < len(images):
        raise ValueError(
            f"the validation split must hold between 1 and {len(images) - 1} of the {len(images):,} "
            f"training images, got {size}"
        )
    held_out = torch.zeros(len(images), dtype=torch.bool)
    held_out[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size]] = True
    return (images[~held_out], labels[~held_out]), (images[held_out], labels[held_out])


def batches(images, labels, batch_size, shuffle=False, generator=None):
    """Yield (images, labels) mini-batches: (B, 1, 28, 28), (B,); the last one may be smaller."""
    order = torch.randperm(len(images), generator=generator) if shuffle else torch.arange(len(images))
    for idx in order.split(batch_size):
        yield images[idx], labels[idx]


def shift_images(images, dx, dy):
    """Move digits dx pixels right and dy pixels down (negative: left/up), filling with background.

    images: (N, 1, H, W) normalised -> same shape. Pixels pushed over the edge are lost.
    """
    h, w = images.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        raise ValueError(f"a shift of ({dx}, {dy}) moves a {h}x{w} image out of the frame")
    out = torch.full_like(images, -MNIST_MEAN / MNIST_STD)  # the normalised value of a black pixel
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out
