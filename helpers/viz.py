"""Figures for the notebooks (matplotlib), and the small measurements they show."""

import math

import matplotlib.pyplot as plt
import torch
from torch import nn
from torchvision.utils import make_grid

from .data import MNIST_MEAN, MNIST_STD


# hand-made 3x3 kernels: Sobel edge detectors (named by the direction of the edge they find), and a box blur
HAND_KERNELS = {
    "vertical edge": torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]),
    "horizontal edge": torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]]),
    "diagonal edge \\": torch.tensor([[0.0, -1, -2], [1, 0, -1], [2, 1, 0]]),
    "diagonal edge /": torch.tensor([[-2.0, -1, 0], [-1, 0, 1], [0, 1, 2]]),
    "blur": torch.full((3, 3), 1 / 9),
}
# What a first-layer filter is tested for (describe_filters). Edges: named by the direction the edge runs,
# in degrees counter-clockwise from horizontal. PATTERNS: other shapes (add your own, a name and a 3x3 tensor).
EDGE_ORIENTATIONS = {"horizontal edge": 0, "diagonal edge /": 45, "vertical edge": 90, "diagonal edge \\": 135}
PATTERNS = {"spot": torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]])}  # a bright spot on a dark surround
# the two levels of an MNIST pixel after normalisation: blank paper (raw 0) and full ink (raw 1)
BLANK = -MNIST_MEAN / MNIST_STD  # -0.4242
INK = (1 - MNIST_MEAN) / MNIST_STD  # 2.8215


def show_images(images, titles=None, ncols=8, cmap="gray", suptitle=None, size=1.3, colorbar=False, signed=False):
    """A grid of 2-D images, each with an optional title. images: (N, H, W) or (N, 1, H, W). Returns the figure.

    signed=True is for maps with a sign (filters, edge responses, gradients): each panel gets a red/blue
    scale symmetric about 0 (white = 0, red = positive, blue = negative) and its own colour bar, since
    panels differ in range.
    """
    images = [torch.as_tensor(im).detach().cpu().squeeze().numpy() for im in images]
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, im) in enumerate(zip(axes.flat, images)):
        if signed:
            limit = float(abs(im).max()) or 1.0
            shown = ax.imshow(im, cmap="RdBu_r", vmin=-limit, vmax=limit)
        else:
            shown = ax.imshow(im, cmap=cmap)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        if colorbar or signed:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_history(history, published=None):
    """Loss and accuracy per epoch, train and test. published: {epoch: test accuracy in %} drawn as crosses."""
    epochs = history["epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_loss.plot(epochs, history["train_loss"], "o-", label="train (dropout on)")
    ax_loss.plot(epochs, history["test_loss"], "o-", label="test")
    ax_loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss", yscale="log")
    ax_acc.plot(epochs, [100 * a for a in history["train_acc"]], "o-", label="train (dropout on)")
    ax_acc.plot(epochs, [100 * a for a in history["test_acc"]], "o-", label="test")
    if published:
        ax_acc.plot(list(published), list(published.values()), "kx", markersize=9, label="published (test)")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def filter_grid(weight, nrow=8):
    """Filters (F, 1, k, k) -> one (H, W) image of them side by side, values unchanged, NaN in the gaps."""
    grid = make_grid(weight.detach().cpu().float(), nrow=nrow, padding=1, pad_value=float("nan"))
    return grid[0]


def _signed_style(limit):
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.75")  # the gaps between filters: grey, so white still means 0
    return dict(cmap=cmap, vmin=-limit, vmax=limit)


def plot_filters(weight, titles=None, title="conv1 filters (red: positive weight, blue: negative, white: 0)",
                 ax=None, limit=None, nrow=8):  # fmt: skip
    """conv1's filters, weight: (F, 1, k, k), on one red/blue scale symmetric about 0, with a colour bar.

    One scale for all filters shows the strong and the weak ones; ``limit`` fixes it (for example the
    largest |weight| over several snapshots, to compare them). With titles, one labelled panel per filter.
    """
    weight = torch.as_tensor(weight).detach().cpu().float()
    limit = limit or float(weight.abs().max()) or 1.0
    if titles is not None:
        nrows = math.ceil(len(weight) / nrow)
        fig, axes = plt.subplots(nrows, nrow, figsize=(1.3 * nrow + 0.9, 1.3 * nrows + 0.5), squeeze=False,
                                 layout="constrained")  # fmt: skip
        for a in axes.flat:
            a.axis("off")
        for a, w, t in zip(axes.flat, weight, titles):
            shown = a.imshow(w[0].numpy(), **_signed_style(limit))
            a.set_title(t, fontsize=8)
        fig.suptitle(title)
        fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
        return fig
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.6, 3.2))
    shown = ax.imshow(filter_grid(weight, nrow).numpy(), **_signed_style(limit))
    ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    return ax.figure


def filter_kinds():
    """The names describe_filters gives, in the order the notebooks count them."""
    return ["silent", "background", "ink", *EDGE_ORIENTATIONS, *PATTERNS, "other"]


def describe_filters(weight, bias=None, share=0.5, plain=1 / 3):
    """What each 3x3 first-layer unit relu(w . patch + b) detects, measured from its weights and bias.

    weight: (F, 1, 3, 3), bias: (F,) or None -> (labels: F names, measures: {name: (F,) tensor}).
    The unit's output for three patches (pixels at BLANK = -0.42 or INK = 2.82, as in a normalised digit):
    ``blank`` (a patch of blank paper), ``ink`` (all ink) and ``best``, the largest output any patch of
    an MNIST image can give (ink where w > 0, blank where w < 0: a linear function peaks at a corner).
    Then the filter's *pattern*, its weights minus their mean: ``edge`` is the share of the pattern's
    energy (sum of squares) that is an edge, i.e. lies in the span of the two Sobel kernels, which are
    orthogonal and together make an edge at any angle; ``angle`` is the direction that edge runs
    (0-180 degrees, perpendicular to the filter's gradient); one share per ``PATTERNS`` entry likewise.
    The label is the first that applies:
      "silent"        best == 0: no input switches the unit on;
      "background"    blank >= plain * best: blank paper drives it at least a third as hard as its best patch;
      "ink"           ink >= plain * best: likewise for a patch of ink;
      an edge         edge >= share: the pattern is mostly an edge; named by the nearest of EDGE_ORIENTATIONS;
      a PATTERNS name that pattern holds at least ``share`` of the energy (the largest share wins);
      "other"         none of these.
    Edges and the spot are orthogonal (cos 0), so at most one of them can hold half the energy.
    """
    w = torch.as_tensor(weight).detach().cpu().flatten(1).float()
    b = torch.zeros(len(w)) if bias is None else torch.as_tensor(bias).detach().cpu().float()
    total = w.sum(1)
    measures = {
        "blank": (b + total * BLANK).clamp(min=0),
        "ink": (b + total * INK).clamp(min=0),
        "best": (b + torch.where(w > 0, w * INK, w * BLANK).sum(1)).clamp(min=0),
    }
    pattern = w - w.mean(1, keepdim=True)
    energy = pattern.pow(2).sum(1).clamp(min=1e-12)
    sobel_x, sobel_y = HAND_KERNELS["vertical edge"].flatten(), HAND_KERNELS["horizontal edge"].flatten()
    right, up = -(pattern @ sobel_x), pattern @ sobel_y  # the gradient: how the weights grow rightwards, upwards
    measures["edge"] = (right**2 + up**2) / sobel_x.pow(2).sum() / energy
    measures["angle"] = (torch.rad2deg(torch.atan2(up, right)) + 90) % 180
    for name, p in PATTERNS.items():
        p = p.flatten().float() - p.float().mean()
        measures[name] = (pattern @ p) ** 2 / p.pow(2).sum() / energy
    labels = []
    for f in range(len(w)):
        blank, ink, best = (measures[k][f].item() for k in ("blank", "ink", "best"))
        shapes = {"edge": measures["edge"][f].item(), **{n: measures[n][f].item() for n in PATTERNS}}
        shape, strongest = max(shapes.items(), key=lambda kv: kv[1])
        if best == 0:
            labels.append("silent")
        elif blank >= plain * best and blank >= ink:
            labels.append("background")
        elif ink >= plain * best:
            labels.append("ink")
        elif strongest < share:
            labels.append("other")
        elif shape == "edge":
            angle = measures["angle"][f].item()
            labels.append(min(EDGE_ORIENTATIONS, key=lambda n: abs((angle - EDGE_ORIENTATIONS[n] + 90) % 180 - 90)))
        else:
            labels.append(shape)
    return labels, measures


def top_patches(model, images, layer, k=8, batch_size=256):
    """The k images that drive each channel of ``layer`` hardest, cut to what the winning unit sees.

    images: (N, 1, 28, 28) normalised -> (patches (C, k, r, r), values (C, k), index (C, k)): for each
    channel, the k largest activations anywhere in its map (at most one per image), the images they
    came from, and the r x r receptive field of the winning unit (``model.receptive_field``), with
    background where the field reaches past the border. Distill calls these "dataset examples".
    """
    size, jump, start = model.receptive_field(layer)
    values, where = [], []
    with torch.no_grad():
        for x in images.split(batch_size):
            out = model.activations(x)[layer].flatten(2)  # (B, C, H'*W')
            best, position = out.max(2)  # each image's strongest unit, per channel
            values.append(best)
            where.append(position)
    values, where = torch.cat(values), torch.cat(where)  # (N, C)
    width = model.activations(images[:1])[layer].shape[-1]
    top_values, index = values.t().topk(k, dim=1)  # (C, k)
    position = where.t().gather(1, index)
    rows, cols = start + (position // width) * jump, start + (position % width) * jump
    pad = max(size, -start)
    framed = nn.functional.pad(images[:, 0], (pad, pad, pad, pad), value=-MNIST_MEAN / MNIST_STD)  # black
    patches = torch.stack([
        torch.stack([framed[i, r + pad : r + pad + size, c + pad : c + pad + size] for i, r, c in zip(*row)])
        for row in zip(index.tolist(), rows.tolist(), cols.tolist())
    ])  # fmt: skip
    return patches, top_values, index


def plot_confusion(labels, predictions, classes=range(10)):
    """Confusion matrix as a heat map: rows = true digit, columns = predicted. Returns (figure, matrix)."""
    n = len(classes)
    matrix = torch.bincount(labels * n + predictions, minlength=n * n).view(n, n)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    shown = ax.imshow(matrix.float().log1p().numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > matrix.max() / 3 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted digit", ylabel="true digit",
           title="Confusion matrix (test set, colour: log count)")  # fmt: skip
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig, matrix


def plot_feature_map(acts, image, layer, channel, title=None):
    """The input digit beside one channel of one layer. acts: model.activations(x) for a batch of one image.

    A map with negative values (a convolution before its ReLU) is drawn red/blue, symmetric about 0.
    """
    fmap = acts[layer][0, channel].detach().cpu().numpy()
    fig, (ax_in, ax_map) = plt.subplots(1, 2, figsize=(6.4, 3.2))
    ax_in.imshow(image.squeeze().cpu().numpy(), cmap="gray")
    ax_in.set_title(title or "input", fontsize=10)
    if fmap.min() < 0:  # a convolution's output before ReLU: signed, red/blue symmetric about 0
        limit = float(abs(fmap).max())
        shown = ax_map.imshow(fmap, cmap="RdBu_r", vmin=-limit, vmax=limit)
    else:
        shown = ax_map.imshow(fmap, cmap="viridis")
    zeros = (fmap == 0).mean()
    ax_map.set_title(f"{layer}, channel {channel}: {tuple(fmap.shape)}, {zeros:.0%} zeros", fontsize=10)
    fig.colorbar(shown, ax=ax_map, fraction=0.046, pad=0.04)
    for ax in (ax_in, ax_map):
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_all_channels(acts, layer, ncols=16, title=None):
    """Every channel of one layer for one image, in a grid (each channel on its own colour scale; a layer
    with negative values, a convolution before its ReLU, in red/blue symmetric about 0)."""
    maps = acts[layer][0].detach().cpu()
    titles = [str(c) for c in range(len(maps))]
    signed, size = bool(maps.min() < 0), 0.9
    if signed:  # room for the colour bar beside every panel
        ncols, size = min(ncols, 8), 1.5
    return show_images(maps, titles, ncols=ncols, cmap="viridis", size=size, signed=signed,
                       suptitle=title or f"{layer}: all {len(maps)} channels {tuple(maps.shape[1:])}")  # fmt: skip


def plot_predictions(image, probabilities, title="input"):
    """A digit beside bar charts of class probabilities. probabilities: {model name: (10,) tensor}."""
    fig, axes = plt.subplots(1, 1 + len(probabilities), figsize=(3.2 * (1 + len(probabilities)), 2.9))
    axes[0].imshow(image.squeeze().cpu().numpy(), cmap="gray")
    axes[0].set_title(title, fontsize=10)
    axes[0].axis("off")
    for ax, (name, p) in zip(axes[1:], probabilities.items()):
        p = p.detach().cpu().numpy()
        best = int(p.argmax())
        ax.bar(range(10), p, color=["tab:orange" if d == best else "tab:blue" for d in range(10)])
        ax.set(ylim=(0, 1), xticks=range(10), xlabel="digit", ylabel="probability")
        ax.set_title(f"{name}: {best} ({p[best]:.0%})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_attributions(images, maps, titles=None, probabilities=None, overlay=("Grad-CAM",), size=1.9):
    """Each digit beside its attribution maps, one row per digit. Returns the figure.

    images: (N, 1, 28, 28); maps: {method name: (N, 1, 28, 28)}; titles: one per digit; probabilities:
    optional (N, 10), drawn as a bar chart at the end of each row. Signed maps get the scale of
    ``show_images(signed=True)`` (red/blue symmetric about 0, own colour bar); the maps named in
    ``overlay``, never negative by construction (Grad-CAM), are laid over the digit in heat colours,
    transparent where they are 0.
    """
    images = torch.as_tensor(images).detach().cpu()
    ncols = 1 + len(maps) + (probabilities is not None)
    fig, axes = plt.subplots(len(images), ncols, figsize=(size * ncols, size * len(images)), squeeze=False)
    for row, image in enumerate(images):
        digit = image.squeeze().numpy()
        axes[row, 0].imshow(digit, cmap="gray")
        axes[row, 0].set_title(titles[row] if titles is not None else "input", fontsize=8)
        for ax, (name, m) in zip(axes[row, 1:], maps.items()):
            m = torch.as_tensor(m[row]).detach().cpu().squeeze().double().numpy()
            if name in overlay:
                top = float(m.max()) or 1.0
                ax.imshow(digit, cmap="gray", vmin=digit.min(), vmax=2 * digit.max() - digit.min())  # dimmed: ink is grey
                shown = ax.imshow(m, cmap="inferno", alpha=0.85 * m / top, vmin=0, vmax=top)
            else:
                limit = float(abs(m).max()) or 1.0
                shown = ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(name, fontsize=8)
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, format="%.2g")  # no offset text over the titles
            bar.ax.tick_params(labelsize=7)
        for ax in axes[row, : ncols - (probabilities is not None)]:
            ax.axis("off")
        if probabilities is not None:
            p = torch.as_tensor(probabilities[row]).detach().cpu().numpy()
            ax = axes[row, -1]
            ax.bar(range(10), p, color=["tab:orange" if d == p.argmax() else "tab:blue" for d in range(10)])
            ax.set(ylim=(0, 1), xticks=range(10))
            ax.tick_params(labelsize=7)
            ax.set_title("probabilities", fontsize=8)
    fig.tight_layout()
    return fig


def plot_answer(image, probabilities, maps=None, drawing=None, title=None):
    """A drawn digit's answer: what the networks receive, why the first one answered, and their probabilities.

    image: (1, 28, 28) normalised, the networks' input; probabilities: {model name: (10,)};
    maps: {title: (1, 28, 28)} explanation maps of that input: a signed one (saliency) in red/blue
    symmetric about 0 with a colour bar, a non-negative one (Grad-CAM) in yellow over the digit; both
    with the digit's outline. drawing: (H, W) in [0, 1], the pad as drawn, shown first when given.
    A plain grid, no automatic layout: the pad redraws this after every stroke, so it must be quick.
    """
    maps = maps or {}
    top = ([drawing] if drawing is not None else []) + [image] + list(maps.values())
    n_top, n_bars = len(top), len(probabilities)
    fig = plt.figure(figsize=(max(2.2 * n_top, 3.3 * n_bars), 4.6))
    upper = fig.add_gridspec(1, n_top, left=0.04, right=0.9, top=0.86 if title else 0.92, bottom=0.56, wspace=0.35)
    lower = fig.add_gridspec(1, n_bars, left=0.09, right=0.93, top=0.44, bottom=0.1, wspace=0.3)
    axes = [fig.add_subplot(upper[0, i]) for i in range(n_top)]
    bars = [fig.add_subplot(lower[0, j]) for j in range(n_bars)]
    digit = image.squeeze().detach().cpu().numpy()
    outline = (0.3 - MNIST_MEAN) / MNIST_STD  # where the ink reaches 30% white
    for ax in axes:
        ax.axis("off")
    if drawing is not None:
        axes[0].imshow(torch.as_tensor(drawing).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"the drawing ({drawing.shape[-1]}×{drawing.shape[-2]})", fontsize=9)
    ax_in = axes[n_top - len(maps) - 1]
    ax_in.imshow(digit, cmap="gray")
    ax_in.set_title("the networks' input (28×28)", fontsize=9)
    for ax, (name, m) in zip(axes[n_top - len(maps) :], maps.items()):
        m = m.squeeze().detach().cpu().numpy()
        if m.min() < 0:
            limit = float(abs(m).max()) or 1.0
            shown = ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit)
            bar = fig.colorbar(shown, cax=ax.inset_axes([1.04, 0, 0.06, 1]))  # beside it: the panel keeps its size
            bar.ax.tick_params(labelsize=7)
        else:
            ax.imshow(digit, cmap="gray")
            ax.imshow(m, cmap="inferno", alpha=0.6, vmin=0, vmax=float(m.max()) or 1.0)
        ax.contour(digit, levels=[outline], colors="k" if m.min() < 0 else "w", linewidths=0.6)
        ax.set_title(name, fontsize=9)
    for ax, (name, p) in zip(bars, probabilities.items()):
        p = p.detach().cpu().numpy()
        best = int(p.argmax())
        ax.bar(range(10), p, color=["tab:orange" if d == best else "tab:blue" for d in range(10)])
        ax.set(ylim=(0, 1), xticks=range(10), xlabel="digit", ylabel="probability")
        ax.set_title(f"{name}: {best} ({p[best]:.0%})", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
