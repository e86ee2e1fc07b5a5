"""Slider widgets for looking inside a trained network (ipywidgets + the figures of ``viz``).

Each function returns a widget box; display it as the last line of a cell. The box's ``figure``
attribute is the figure currently shown, so a test (or a curious reader) can look at it.
"""

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from . import explain
from .data import shift_images
from .train import evaluating, predict
from .viz import plot_all_channels, plot_feature_map, plot_filters, plot_predictions
from .viz import plot_attributions

FEATURE_LAYERS = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2")


def _explorer(controls, draw, caption=None):
    """Lay out controls above an output area that ``draw(**values)`` redraws whenever a control moves.

    caption: an optional widget shown between the controls and the figure (draw may update it).
    """
    box = W.VBox()
    box.figure = None

    def redraw(**values):
        box.figure = draw(**values)
        plt.close(box.figure)  # shown once, below; pyplot need not keep every figure the reader drew
        display(box.figure)

    output = W.interactive_output(redraw, controls)
    box.children = [W.HBox(list(controls.values())), *([caption] if caption else []), output]
    return box


def _activations(model, image):
    """{stage: output} for one image (1, 28, 28), dropout off, on the CPU; the model's mode is restored."""
    with evaluating(model) as device:
        acts = model.activations(image.unsqueeze(0).to(device))
    return {name: out.cpu() for name, out in acts.items()}


def _image_slider(images, description="test image"):
    return W.IntSlider(value=0, min=0, max=len(images) - 1, description=description, continuous_update=False)


def feature_map_explorer(model, images, labels, layers=FEATURE_LAYERS):
    """Pick a test image, a layer and a channel; see the digit beside that feature map.

    images: (N, 1, 28, 28) normalised, labels: (N,).
    """
    channels = {name: out.shape[1] for name, out in _activations(model, images[0]).items() if name in layers}
    index = _image_slider(images)
    layer = W.Dropdown(options=list(layers), value=layers[1], description="layer")
    channel = W.IntSlider(value=0, min=0, max=channels[layer.value] - 1, description="channel")

    def fit_channel_slider(change):
        channel.max = channels[change["new"]] - 1

    layer.observe(fit_channel_slider, names="value")

    def draw(index, layer, channel):
        image = images[index]
        title = f"test image {index}: a {int(labels[index])}"
        return plot_feature_map(_activations(model, image), image, layer, channel, title=title)

    return _explorer({"index": index, "layer": layer, "channel": channel}, draw)


def channel_grid_explorer(model, images, labels, layers=FEATURE_LAYERS):
    """Pick a test image and a layer; see all of that layer's channels at once."""
    index = _image_slider(images)
    layer = W.Dropdown(options=list(layers), value=layers[1], description="layer")

    def draw(index, layer):
        title = f"{layer}, all channels, for test image {index} (a {int(labels[index])})"
        return plot_all_channels(_activations(model, images[index]), layer, title=title)

    return _explorer({"index": index, "layer": layer}, draw)


def filter_evolution(history):
    """An epoch slider over conv1's filters as they were after each epoch (0 = before training)."""
    snapshots = [history["conv1_init"], *history["conv1"]]
    limit = max(torch.tensor(w).abs().max().item() for w in snapshots)  # one colour scale for every epoch
    epoch = W.IntSlider(value=len(snapshots) - 1, min=0, max=len(snapshots) - 1, description="epoch")

    def draw(epoch):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        when = "before training" if epoch == 0 else f"after epoch {epoch}"
        return plot_filters(torch.tensor(snapshots[epoch]), title=f"conv1 filters {when}", ax=ax, limit=limit)

    return _explorer({"epoch": epoch}, draw)


def shift_explorer(models, images, labels, max_shift=8):
    """Slide a test digit left/right and up/down; see every model's prediction and confidence.

    models: {name: trained model}. Above the figure a line of text repeats the predictions.
    """
    index = _image_slider(images)
    dx = W.IntSlider(value=0, min=-max_shift, max=max_shift, description="shift →")
    dy = W.IntSlider(value=0, min=-max_shift, max=max_shift, description="shift ↓")
    predictions = W.HTML()

    def draw(index, dx, dy):
        image = shift_images(images[index : index + 1], dx, dy)
        probabilities = {name: predict(m, image).softmax(1)[0] for name, m in models.items()}
        predictions.value = " · ".join(
            f"<b>{name}</b>: {int(p.argmax())} ({float(p.max()):.0%})" for name, p in probabilities.items()
        )
        title = f"test image {index} (a {int(labels[index])}), shifted ({dx}, {dy})"
        return plot_predictions(image[0], probabilities, title=title)

    return _explorer({"index": index, "dx": dx, "dy": dy}, draw, caption=predictions)


EXPLORER_METHODS = ("gradient", "SmoothGrad", "occlusion", "Grad-CAM")


def explanation_explorer(model, images, labels, methods=EXPLORER_METHODS):
    """Pick a test image and the class to explain (its predicted class, or any digit); see the maps of
    ``methods`` (names in ``helpers.explain.METHODS``) side by side, and the network's probabilities.

    images: (N, 1, 28, 28) normalised, labels: (N,).
    """
    index = _image_slider(images)
    target = W.Dropdown(options=[("predicted", -1)] + [(str(d), d) for d in range(10)], value=-1, description="explain")

    def draw(index, target):
        image = images[index : index + 1]
        probabilities = predict(model, image).softmax(1)
        explained = int(probabilities.argmax()) if target == -1 else target
        maps = {name: explain.METHODS[name](model, image, explained) for name in methods}
        p = float(probabilities[0, explained])
        shown = f"{p:.1%}" if p >= 1e-3 else f"{p:.0e}"  # "0.0%" would hide how unlikely the class is
        title = f"test image {index}: a {int(labels[index])}\nexplaining {explained} (p = {shown})"
        return plot_attributions(image, maps, [title], probabilities)

    return _explorer({"index": index, "target": target}, draw)
