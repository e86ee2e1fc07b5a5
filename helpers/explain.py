"""Why did the network give that answer? Attribution maps, their checks, adversarial digits, and
activation maximisation.

Every map function takes normalised digits ``images: (N, 1, 28, 28)`` and a ``target``: the class whose
score is explained (None: each image's predicted class; an int: that class for every image; a tensor
(N,): one class per image), and returns one map per image, (N, 1, 28, 28). The model runs with dropout
off, its weights frozen for the duration (only the image's gradient is wanted), and its train/eval mode
and ``requires_grad`` flags restored. Where a method needs the gradient of the image, autograd gets it
from the layers' own backward passes: for SimpleCNN, ``Conv2DFunction``'s hand-written input gradient.
"""

import contextlib
import copy
from collections import OrderedDict

import torch
from torch import nn

from .data import MNIST_MEAN, MNIST_STD
from .train import evaluating, predict

# a black pixel (the background) and a white one, normalised exactly as ``mnist_tensors`` computes them
# (in float32), so that ``images == BLACK`` finds the background
BLACK = ((torch.tensor(0.0) - MNIST_MEAN) / MNIST_STD).item()
WHITE = ((torch.tensor(1.0) - MNIST_MEAN) / MNIST_STD).item()
CLASSES = 10  # the models explained here answer with the ten digits' logits


@contextlib.contextmanager
def _differentiable(model):
    """Dropout off, gradients on (``evaluating`` switches them off), the weights frozen; all restored.
    Yields the model's device."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    with evaluating(model) as device, torch.enable_grad():
        try:
            for p in frozen:
                p.requires_grad_(False)  # the layers then skip their weight gradients
            yield device
        finally:
            for p in frozen:
                p.requires_grad_(True)


def _classes(target, n):
    """target as (n,) class indices (an int is repeated), or None: each image's predicted class."""
    if target is None:
        return None
    target = torch.as_tensor(target)
    if target.dim() > 1 or (target.dim() == 1 and len(target) != n):
        raise ValueError(f"target must be None, a class index, or one class index per image ({n}), got shape {tuple(target.shape)}")
    _check_indices("target", target, CLASSES, "class")
    return target.expand(n)


def _check_indices(name, indices, n, what):
    """indices: a tensor of integers, each in 0..n-1 (indexing with anything else fails deep in PyTorch)."""
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer {what} indices, got dtype {indices.dtype}")
    if indices.numel() and not (0 <= indices.min() and indices.max() < n):
        raise ValueError(f"{name} must be {what} indices from 0 to {n - 1}, got {indices.tolist()}")


def _chunks(images, target, batch_size, device):
    """(images, target) in pieces of batch_size, on the model's device; target: (N,) or None."""
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].detach().to(device)
        yield x, None if target is None else target[start : start + batch_size].to(device)


def _scores(logits, target):
    """The logit of each image's target class (its predicted class when target is None): (N,)."""
    target = logits.argmax(1) if target is None else target
    return logits.gather(1, target[:, None])[:, 0]


def _stages(model, layer):
    """Split a model into (the stages up to and including ``layer``, the stages after it)."""
    stages = list(model.named_children())
    names = [name for name, _ in stages]
    if layer not in names:
        raise ValueError(f"{type(model).__name__} has no stage {layer!r}; its stages: {', '.join(names)}")
    cut = names.index(layer) + 1
    return nn.Sequential(OrderedDict(stages[:cut])), nn.Sequential(OrderedDict(stages[cut:]))


def _check_images(images):
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        hint = " (for one image use image.unsqueeze(0))" if isinstance(images, torch.Tensor) and images.dim() == 3 else ""
        raise ValueError(f"expected normalised images of shape (N, 1, 28, 28), got {shape}{hint}")


# ----------------------------------------------------------------------------- gradients


def saliency(model, images, target=None, batch_size=128):
    """The gradient of the target class's logit with respect to every pixel: d logit / d x.

    images: (N, 1, 28, 28) -> (N, 1, 28, 28), signed. A large |value| marks a pixel whose small change
    moves the score most; the sign says which way (brighter raises the score where it is positive).
    """
    _check_images(images)
    grads = []
    with _differentiable(model) as device:
        for x, t in _chunks(images, _classes(target, len(images)), batch_size, device):
            x.requires_grad_()  # the one input whose gradient we ask for
            # each image's logit depends only on that image: one backward of the sum gives every gradient
            (grad,) = torch.autograd.grad(_scores(model(x), t).sum(), x)
            grads.append(grad.to(images.device))
    return torch.cat(grads) if grads else torch.zeros_like(images)  # an empty batch: no chunks, no gradients


def gradient_x_input(model, images, target=None, baseline=BLACK):
    """Gradient times input: saliency * (images - baseline), each pixel's first-order share of
    logit(x) - logit(baseline image). With the default baseline, a black pixel gets exactly 0.

    images: (N, 1, 28, 28) -> (N, 1, 28, 28), signed. baseline=0 gives the textbook x * gradient
    (captum's ``InputXGradient``), which for normalised digits also lights up the black background.
    """
    return saliency(model, images, target) * (images - baseline)


def smoothgrad(model, images, target=None, samples=25, sigma=0.15, seed=0):
    """SmoothGrad (Smilkov et al., 2017): the saliency averaged over ``samples`` noisy copies of each image.

    images: (N, 1, 28, 28) -> (N, 1, 28, 28), signed. The noise is Gaussian with standard deviation
    ``sigma`` in pixel units (0.15 = 15% of black-to-white), drawn from a generator seeded with ``seed``,
    so a call is repeatable. target=None explains the class predicted for the clean image.
    """
    _check_images(images)
    target = predict(model, images).argmax(1) if target is None else _classes(target, len(images))
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise whatever the device
    noise = torch.normal(0.0, sigma / MNIST_STD, (len(images) * samples, *images.shape[1:]), generator=generator)
    noise = noise.to(images.device)
    noisy = images.repeat_interleave(samples, 0) + noise  # image 0's copies first, then image 1's, ...
    grads = saliency(model, noisy, target.repeat_interleave(samples))
    return grads.view(len(images), samples, *images.shape[1:]).mean(1)


# ----------------------------------------------------------------------------- perturbations


def _probabilities(model, images, target):
    """The probability of each image's target class, (N,), computed in float64 from the logits.
    (``deletion_curve`` stores its curve in the images' dtype, float32, whose steps near 1 are 6e-8:
    a smaller drop from a confident start does not show in the curve it returns.)"""
    if len(images) == 0:
        return torch.zeros(0, dtype=torch.float64)
    return predict(model, images).double().softmax(1).gather(1, target[:, None])[:, 0]


def occlusion(model, images, target=None, patch=6, stride=2, value=BLACK, batch_size=1024):
    """Occlusion (Zeiler and Fergus, 2014): how much the target class's logit drops when a
    patch x patch square is painted ``value`` (black), averaged over all squares covering each pixel.

    images: (N, 1, 28, 28) -> (N, 1, 28, 28), signed (negative: covering it *raised* the logit).
    The logit, as for saliency and Grad-CAM, not the probability: for a confident network the
    probability sits so close to 1 that most squares cannot move it visibly (softmax saturates),
    while the logit still says how much each square matters. Each digit's ((28 - patch) / stride + 1)**2
    covered copies go through the network together, in batches; a square that covers only
    background changes nothing and scores 0 without a forward pass.
    """
    _check_images(images)
    size = images.shape[-1]
    if not 1 <= stride <= patch:  # a wider step would leave pixels no square covers: their mean drop is 0 / 0
        raise ValueError(f"stride must be between 1 and patch ({patch}), so that every pixel is covered, got {stride}")
    if patch > size or (size - patch) % stride:
        raise ValueError(f"patch {patch} with stride {stride} does not tile a {size}x{size} image: "
                         f"(size - patch) must be a multiple of stride, e.g. patch 6, stride 2")  # fmt: skip
    corners = range(0, size - patch + 1, stride)
    masks = torch.zeros(len(corners) ** 2, 1, size, size, dtype=torch.bool, device=images.device)  # (P, 1, H, W)
    for i, (r, c) in enumerate((r, c) for r in corners for c in corners):
        masks[i, :, r : r + patch, c : c + patch] = True
    logits = predict(model, images).to(images.device)  # predict answers on the CPU; the masks are on images'
    target = logits.argmax(1) if target is None else _classes(target, len(images)).to(images.device)
    before = logits.gather(1, target[:, None])[:, 0]
    changes = (masks & (images[:, None] != value)).flatten(2).any(2)  # (N, P): the square covers some ink
    digit, square = changes.nonzero(as_tuple=True)
    drop = torch.zeros(changes.shape, dtype=before.dtype, device=images.device)
    for start in range(0, len(digit), batch_size):
        d, q = digit[start : start + batch_size], square[start : start + batch_size]
        covered = torch.where(masks[q], torch.as_tensor(value, dtype=images.dtype), images[d])
        drop[d, q] = before[d] - predict(model, covered).to(images.device).gather(1, target[d][:, None])[:, 0]
    cover = masks.flatten(1).to(drop.dtype)  # (P, H*W): which pixels each square covers
    return ((drop @ cover) / cover.sum(0)).view_as(images).to(images.dtype)  # each pixel: the mean drop of its squares


def deletion_curve(model, images, maps, target=None, step=28, value=BLACK, seed=0):
    """Delete pixels in the order ``maps`` ranks them (highest first), ``step`` at a time, painting
    them ``value`` (black), and record the target class's probability after each step.

    images, maps: (N, 1, 28, 28) -> (counts (S,), probabilities (N, S), order (N, 784)): counts = 0,
    step, ..., 784 pixels deleted; order, each digit's pixel indices (flattened) in the order deleted.
    maps=None deletes them in a random order (seeded with ``seed``), the baseline a faithful map must
    beat; pixels a map ranks equal are deleted in that random order too. The curve
    of a faithful map falls fast: a small area under it. All digits go through the network together at
    each step, except those whose step deleted only pixels that were already black (nothing changed).
    """
    _check_images(images)
    n, pixels = len(images), images[0].numel()
    target = predict(model, images).argmax(1) if target is None else _classes(target, n)
    generator = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(pixels, generator=generator) for _ in range(n)])  # random order
    if maps is not None:  # the map's order; pixels with equal values (all the zeros, say) in the random order
        order = order.gather(1, maps.flatten(1).gather(1, order).argsort(dim=1, descending=True, stable=True))
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels).expand(n, -1))  # rank of each pixel
    counts = torch.arange(0, pixels + 1, step)
    if counts[-1] != pixels:
        counts = torch.cat([counts, torch.tensor([pixels])])
    flat, ink = images.flatten(1), images.flatten(1) != value
    probability = _probabilities(model, images, target)
    curve = [probability]
    for done, k in zip(counts[:-1], counts[1:]):
        changed = ((rank >= done) & (rank < k) & ink).any(1)  # (N,): this step deleted some ink
        deleted = torch.where(rank[changed] < k, torch.as_tensor(value, dtype=flat.dtype), flat[changed])
        probability = probability.clone()
        probability[changed] = _probabilities(model, deleted.view(-1, *images.shape[1:]), target[changed])
        curve.append(probability)
    return counts, torch.stack(curve, 1).to(images.dtype), order


# ----------------------------------------------------------------------------- class activation maps


def grad_cam(model, images, target=None, layer="relu2", batch_size=128):
    """Grad-CAM (Selvaraju et al., 2017): the channels of ``layer`` weighted by how much the logit gains
    from them, summed, ReLU'd, and upsampled (bilinear) to the input size.

    images: (N, 1, 28, 28) -> (N, 1, 28, 28), non-negative. The weight of channel c is the mean over
    positions of d logit / d A_c, where A = the output of ``layer`` (for relu2: (N, 64, 14, 14)).
    """
    _check_images(images)
    head, tail = _stages(model, layer)
    if len(images) == 0:  # no chunks, no maps
        return images.new_zeros(0, 1, *images.shape[-2:])
    cams = []
    with _differentiable(model) as device:
        for x, t in _chunks(images, _classes(target, len(images)), batch_size, device):
            acts = head(x).detach().requires_grad_()  # the gradient stops here: no image gradient needed
            if acts.dim() != 4:  # a vector (fc1, say) has no positions to weight and upsample
                maps = ", ".join(_map_stages(model, x[:1]))
                raise ValueError(f"Grad-CAM needs a stage whose output is a stack of maps (N, C, h, w); {layer!r} "
                                 f"gives {tuple(acts.shape)}: use one of {maps}")  # fmt: skip
            (grad,) = torch.autograd.grad(_scores(tail(acts), t).sum(), acts)
            weights = grad.mean(dim=(2, 3), keepdim=True)  # (n, C, 1, 1): one number per channel
            cams.append(torch.relu((weights * acts.detach()).sum(1, keepdim=True)).to(images.device))  # (n, 1, h, w)
    return nn.functional.interpolate(torch.cat(cams), size=images.shape[-2:], mode="bilinear", align_corners=False)


def _map_stages(model, x):
    """The names of the stages whose output, for images x, is a stack of maps (N, C, h, w)."""
    names = []
    for name, stage in model.named_children():
        x = stage(x)
        if x.dim() == 4:
            names.append(name)
    return names


METHODS = {
    "gradient": saliency,
    "gradient × input": gradient_x_input,
    "SmoothGrad": smoothgrad,
    "occlusion": occlusion,
    "Grad-CAM": grad_cam,
}


# ----------------------------------------------------------------------------- sanity checks


def randomised(model, stages, seed=0):
    """A copy of ``model`` whose ``stages`` (names, e.g. ["fc2", "fc1"]) are re-initialised at random
    (each layer's own ``reset_parameters``, from a generator seeded with ``seed``); the rest keeps its
    trained weights. The model itself is untouched."""
    copied = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        for name in stages:
            layer = getattr(copied, name, None)
            if not hasattr(layer, "reset_parameters"):
                learnable = [n for n, m in copied.named_children() if hasattr(m, "reset_parameters")]
                raise ValueError(f"{name!r} is not a stage with weights; those are: {', '.join(learnable)}")
            layer.reset_parameters()
    return copied


def spearman(a, b):
    """Spearman rank correlation of each pair of maps: the Pearson correlation of their ranks, with
    tied values sharing their average rank. a, b: (N, ...) -> (N,), in [-1, 1]; 1 = the same order.
    A constant map (all zero, say) has no order: its correlation is undefined, nan (average with
    ``nanmean`` and count the nans, rather than let a 0 stand for "unrelated")."""

    def ranks(x):
        x = x.flatten(1).double()
        out = torch.empty_like(x)
        for i, row in enumerate(x):
            values, inverse, counts = torch.unique(row, return_inverse=True, return_counts=True)
            last = counts.cumsum(0).double()  # 1-based rank of the last of each group of equal values
            out[i] = (last - (counts - 1) / 2)[inverse]  # the group's average rank
        return out

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    norms = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(norms > 0, (ra * rb).sum(1) / norms.clamp_min(1e-300), torch.nan)


# ----------------------------------------------------------------------------- adversarial digits


def _loss_gradient(model, images, labels):
    """d cross-entropy(model(x), labels) / d x, for each image. images: (N, 1, 28, 28), labels: (N,)."""
    with _differentiable(model) as device:
        x = images.detach().to(device).requires_grad_()
        loss = nn.functional.cross_entropy(model(x), labels.to(device), reduction="sum")  # per-image losses, summed
        (grad,) = torch.autograd.grad(loss, x)
    return grad.to(images.device)


def fgsm(model, images, labels, epsilon, target=None):
    """The fast gradient sign method (Goodfellow et al., 2015): every pixel moves by ``epsilon`` (pixel
    units: 0.1 = a tenth of black-to-white) in the direction that raises the loss of the true ``labels``,
    or, with a ``target`` class, lowers the loss of that class. Pixels stay between black and white.

    images: (N, 1, 28, 28) normalised, labels: (N,) -> perturbed images (N, 1, 28, 28), normalised.
    """
    _check_images(images)
    step = epsilon / MNIST_STD  # in normalised units
    if target is None:
        moved = images + step * _loss_gradient(model, images, labels).sign()
    else:
        moved = images - step * _loss_gradient(model, images, _classes(target, len(images))).sign()
    return moved.clamp(BLACK, WHITE).detach()


def pgd(model, images, labels, epsilon, steps=10, step_size=None, target=None):
    """Projected gradient descent (Madry et al., 2018): ``steps`` small FGSM steps, each followed by
    a projection back to at most ``epsilon`` (pixel units) from the original, and into black..white.

    images: (N, 1, 28, 28), labels: (N,) -> perturbed images (N, 1, 28, 28). step_size (pixel units)
    defaults to 2.5 * epsilon / steps. Starts at the image itself (no random start): repeatable.
    """
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    radius = epsilon / MNIST_STD
    x = images.detach()
    for _ in range(steps):
        x = fgsm(model, x, labels, step_size, target)
        x = (images + (x - images).clamp(-radius, radius)).clamp(BLACK, WHITE)
    return x


# ----------------------------------------------------------------------------- what a unit wants to see


def _blur(x):
    """A 3x3 Gaussian blur (weights 1-2-1), border pixels repeated. x: (N, 1, H, W)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
    return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)


def maximise(model, layer, channels, steps=128, lr=0.1, l2=1e-3, jitter=1, blur_every=4, seed=0):
    """Activation maximisation: one image per entry of ``channels``, grown by gradient ascent on the
    input so that it drives that channel of ``layer`` as hard as it can. A map's objective is its centre
    unit (so the image only matters inside that unit's receptive field); a vector's (fc2: the logits)
    is the entry itself.

    Regularised as Distill's "Feature Visualization" explains, so the images stay digit-like rather
    than noise: an L2 penalty pulling pixels to black (``l2``), a random shift of up to ``jitter``
    pixels before every step, a 3x3 blur every ``blur_every`` steps in the first half of them (later
    on it would undo the sharp strokes the units answer to), pixels kept between black and white.
    Adam takes the steps (learning rate ``lr``), the noise it starts from is seeded with ``seed``. All images are optimised together as one batch (each image's objective depends only on it).
    channels: a list of channel indices, or one int (then one image).
    Returns (images (len(channels), 1, 28, 28), the objective reached (len(channels),)).
    """
    head, _ = _stages(model, layer)
    device = next(model.parameters()).device
    channels = torch.as_tensor(channels, device=device)
    if channels.dim() > 1:
        raise ValueError(f"channels must be a list of channel indices or one int, got shape {tuple(channels.shape)}")
    channels = channels.reshape(-1)  # one int: a list of one
    with evaluating(model):
        n = head(torch.full((1, 1, 28, 28), BLACK, device=device)).shape[1]  # the layer's channels (or entries)
    _check_indices("channels", channels, n, f"{layer} channel")
    generator = torch.Generator().manual_seed(seed)
    x = (BLACK + 0.1 * torch.randn(len(channels), 1, 28, 28, generator=generator)).to(device).requires_grad_()
    optimiser = torch.optim.Adam([x], lr=lr)

    def objective(images):
        out = head(images)
        if out.dim() == 4:  # (N, C, h, w): the centre unit of each image's own channel
            out = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
        return out.gather(1, channels[:, None])[:, 0]

    with _differentiable(model):
        for step in range(steps):
            dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            value = objective(torch.roll(x, (dy, dx), dims=(2, 3)))
            loss = -value.sum() + l2 * ((x - BLACK) ** 2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0 and step < steps // 2:
                    x.copy_(_blur(x))
                x.clamp_(BLACK, WHITE)
        final = objective(x).detach()
    return x.detach().cpu(), final.cpu()
