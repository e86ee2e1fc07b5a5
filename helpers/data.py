"""MNIST through torchvision, and the same images as one in-memory tensor for fast training; drawn digits
turned into MNIST-style images (notebook 09)."""

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import nn
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


def permute_pixels(images, seed=0):
    """Shuffle the pixel positions of every image with one fixed random permutation (the same for all).

    images: (N, C, H, W) -> same shape; pixel p of every output image is pixel order[p] of its input,
    with order = a random permutation of the H*W positions drawn from ``seed``. Apply it with the same
    seed to the training and the test images: the digits become unrecognisable to a person, but no
    information is lost, only which pixels are neighbours (the ablation that removes locality).
    """
    if images.dim() != 4:
        raise ValueError(f"permute_pixels expects images of shape (N, C, H, W), got {tuple(images.shape)}")
    order = torch.randperm(images.shape[-2] * images.shape[-1], generator=torch.Generator().manual_seed(seed))
    return images.flatten(2)[..., order.to(images.device)].view_as(images)


# ----------------------------------------------------------------------------- your own digits

DRAWINGS = Path(__file__).resolve().parent / "drawings.json"
MNIST_BOX, MNIST_FRAME, MNIST_CENTER = 20, 28, 14  # measured on MNIST itself in notebook 09


def load_drawings(path=DRAWINGS):
    """The example drawings of notebook 09, as the drawing pad records them.

    Returns a list of dicts: name, label (the digit meant), note, size (the square pad's side in pixels),
    width (the pen's width in pixels) and strokes: a list of strokes, each a list of [x, y] points.
    """
    with open(path) as f:
        return json.load(f)["drawings"]


def render_strokes(strokes, size=280, width=20):
    """Strokes -> a grey image (size, size) in [0, 1]: white ink (1) on black (0), as the pad shows them.

    strokes: a list of strokes, each a list of (x, y) points in pixels of a size x size pad. Each stroke
    is a line ``width`` pixels wide with round ends and joints, like the canvas's pen.
    """
    canvas = Image.new("L", (size, size))
    draw = ImageDraw.Draw(canvas)
    r = width / 2
    for stroke in strokes:
        points = [tuple(map(float, p)) for p in stroke]
        if len(points) > 1:
            draw.line(points, fill=255, width=round(width))
        for x, y in points:  # round caps and joints
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(size, size).float() / 255


def ink_box(image, threshold=0.05):
    """The rows and columns that hold ink: (top, bottom, left, right), inclusive, or None for a blank image.

    image: (H, W) in [0, 1]. Ink is any pixel above ``threshold`` times the brightest one, so the faint
    fringe that resizing leaves around a stroke does not count (threshold=0: every pixel that is not black).
    A drawing from ``render_strokes`` is pure black and white, so any threshold below 1 gives its box.
    """
    ink = image > threshold * image.max()
    if not ink.any():
        return None
    rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
    return rows[0].item(), rows[-1].item(), cols[0].item(), cols[-1].item()


def fit_to_box(image, box=MNIST_BOX, threshold=0.05):
    """Crop to the ink (``ink_box(image, threshold)``) and resize so its longer side is ``box`` pixels,
    keeping the aspect ratio.

    image: (H, W) in [0, 1] -> (h, w) with max(h, w) == box. Anti-aliased: when shrinking, each output
    pixel is a weighted average of all the input pixels around it (``antialias=True``), so a thin
    stroke turns grey instead of falling between two samples and vanishing.
    """
    found = ink_box(image, threshold)
    if found is None:
        raise ValueError("the image holds no ink (all pixels are black): draw something first")
    top, bottom, left, right = found
    crop = image[top : bottom + 1, left : right + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = nn.functional.interpolate(crop[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0, 0].clamp(0, 1)


def center_by_mass(digit, frame=MNIST_FRAME, center=MNIST_CENTER):
    """Paste a digit (h, w) into a black (frame, frame) image so that its centre of mass (the mean
    position of the ink, weighted by brightness) falls on pixel (center, center), to the nearest pixel.

    The digit is kept whole: if its centre of mass lies so far off-centre that centring it would push
    ink out of the frame, it stops at the border.
    """
    h, w = digit.shape
    if h > frame or w > frame:
        raise ValueError(f"a {h}x{w} digit does not fit a {frame}x{frame} frame: fit_to_box it first")
    mass = digit.sum()
    if mass <= 0:  # a blank image has no centre of mass (0 / 0)
        raise ValueError("the digit holds no ink (all pixels are black): draw something first")
    cy = (digit.sum(1) * torch.arange(h)).sum() / mass
    cx = (digit.sum(0) * torch.arange(w)).sum() / mass
    top = min(max(round(center - cy.item()), 0), frame - h)
    left = min(max(round(center - cx.item()), 0), frame - w)
    out = torch.zeros(frame, frame)
    out[top : top + h, left : left + w] = digit
    return out


def mnist_style(image, threshold=0.05):
    """Prepare any grey image of one digit the way MNIST's digits were made, for the network.

    image: (H, W) in [0, 1], white ink on black -> (1, 28, 28) normalised like ``normalize``.
    The steps of LeCun, Cortes and Burges: size-normalise into a 20x20 box keeping the aspect ratio,
    anti-aliased (``fit_to_box``), then centre by the centre of mass in 28x28 (``center_by_mass``).
    threshold: what counts as ink for the box (``ink_box``); it matters only for grey images.
    """
    return ((center_by_mass(fit_to_box(image, threshold=threshold)) - MNIST_MEAN) / MNIST_STD).unsqueeze(0)


def squeeze_to_frame(image, frame=MNIST_FRAME):
    """No preprocessing: the whole image shrunk to (1, frame, frame), anti-aliased, and normalised.

    What the network gets when the digit's size and position on the pad are taken as they are.
    """
    small = nn.functional.interpolate(image[None, None], size=(frame, frame), mode="bilinear", antialias=True,
                                      align_corners=False)  # fmt: skip
    return ((small[0].clamp(0, 1) - MNIST_MEAN) / MNIST_STD)


def zoom_images(images, scale):
    """Enlarge (scale > 1) or shrink (scale < 1) digits about the centre of their frame, anti-aliased.

    images: (N, 1, H, W) normalised -> same shape; what grows past the frame is cut off, what shrinks
    is surrounded by background.
    """
    h, w = images.shape[-2:]
    ink = images * MNIST_STD + MNIST_MEAN  # back to [0, 1], black = 0
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    zoomed = nn.functional.interpolate(ink, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    framed = nn.functional.pad(zoomed, (left, w - size[1] - left, top, h - size[0] - top))  # negative: cut
    return (framed.clamp(0, 1) - MNIST_MEAN) / MNIST_STD


def place_digits(images, scale=1.0, at="random", generator=None):
    """Resize each digit and put it somewhere in its frame, keeping all its ink inside.

    images: (N, 1, H, W) normalised -> same shape. Each digit is cropped to its non-black pixels and
    resized (anti-aliased, aspect ratio kept) so that its long side is ``scale`` times what it was, at most
    the frame; scale: one number for all, or a pair (low, high) from which each digit draws its own,
    uniformly. at="random": pasted at a position drawn uniformly among those where it fits whole (the
    farthest a digit of that size can move); at="centre": centred by its centre of mass, as in MNIST.
    Strokes are resized with the digit, unlike a pen's. Data augmentation: ``fit(..., augment=lambda x:
    place_digits(x, (0.6, 1.3)))``.
    """
    h, w = images.shape[-2:]
    if at not in ("random", "centre") or (at == "centre" and h != w):
        raise ValueError(f"at must be 'random', or 'centre' for a square frame; got {at!r} for {h}x{w} images")
    low, high = (scale, scale) if isinstance(scale, (int, float)) else scale
    out = torch.empty_like(images)
    for i, x in enumerate(images):
        ink = (x[0] * MNIST_STD + MNIST_MEAN).clamp(0, 1).cpu()
        found = ink_box(ink, threshold=1e-3)  # every pixel that is not black (MNIST's faintest ink is 1/255)
        if found is None:  # a blank image has nothing to move
            out[i] = x
            continue
        s = low + (high - low) * torch.rand(1, generator=generator).item() if high > low else low
        long_side = max(found[1] - found[0], found[3] - found[2]) + 1
        digit = fit_to_box(ink, box=min(max(1, round(long_side * s)), h, w), threshold=1e-3)
        if at == "centre":
            framed = center_by_mass(digit, frame=h, center=h // 2)
        else:
            (dh, dw), framed = digit.shape, torch.zeros(h, w)
            top = torch.randint(0, h - dh + 1, (1,), generator=generator).item()
            left = torch.randint(0, w - dw + 1, (1,), generator=generator).item()
            framed[top : top + dh, left : left + dw] = digit
        out[i, 0] = (framed.to(out.device) - MNIST_MEAN) / MNIST_STD
    return out
