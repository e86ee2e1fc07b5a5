"""Slider widgets for looking inside a trained network (ipywidgets + the figures of ``viz``), and the
drawing pad of notebook 09 (ipycanvas).

Each function returns a widget box; display it as the last line of a cell. The box's ``figure``
attribute is the figure currently shown, so a test (or a curious reader) can look at it.
"""

import contextlib
import io
import time

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from ipycanvas import Canvas, hold_canvas

from . import explain
from .data import MNIST_MEAN, MNIST_STD, mnist_style, render_strokes, shift_images, squeeze_to_frame
from .train import evaluating, predict
from .viz import plot_all_channels, plot_answer, plot_attributions, plot_feature_map, plot_filters, plot_predictions

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


@contextlib.contextmanager
def _one_thread():
    """One image is too small to share between threads; on a busy CPU, waiting for the second thread
    at every layer costs more than it saves. The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_first_is_a_cnn(models):
    """The pad explains the first of models and shows its feature maps: it must make maps (a CNN)."""
    if not models:
        raise ValueError("DrawingPad needs at least one model, e.g. {'SimpleCNN': cnn}")
    name, model = next(iter(models.items()))
    blank = torch.full((1, 28, 28), -MNIST_MEAN / MNIST_STD)
    maps = [stage for stage, out in _activations(model, blank).items() if stage in FEATURE_LAYERS and out.dim() == 4]
    if "relu1" not in maps:
        raise ValueError(f"the first model is explained and its feature maps shown, so it must be a CNN; "
                         f"{name!r} ({type(model).__name__}) makes no feature maps: put a CNN (e.g. SimpleCNN) "
                         f"first, as in {{'SimpleCNN': cnn, {name!r}: ...}}")  # fmt: skip


class DrawingPad(W.VBox):
    """Draw a digit with the mouse (or a finger); after every stroke the networks answer.

    models: {name: trained model}; the first one is explained and its feature maps shown.
    explain: {name: f(model, images, target=None) -> (N, 1, 28, 28)}, e.g. ``helpers.explain``'s
    grad_cam and saliency. size: the pad's side in pixels (on screen too); width: the pen's width.
    drawing: one of ``load_drawings()`` to start with (its strokes and pen width).

    The pad keeps what is drawn as strokes, lists of (x, y) points (``strokes``), the format of
    ``load_drawings``; after each stroke ``render_strokes`` turns them into pixels and ``mnist_style``
    (or, with the preprocessing box unticked, ``squeeze_to_frame``) into the networks' input.
    After each answer: ``image`` (1, 28, 28) that input, ``probabilities`` {name: (10,)}, ``figure``
    the answer's figure, ``features`` the feature-map explorer (its ``figure`` too), and ``timings``,
    the seconds from pen-up to each part of the answer (in the kernel).
    """

    def __init__(self, models, explain=None, size=280, width=20, drawing=None):
        super().__init__()
        self.models, self.explain, self.size = dict(models), dict(explain or {}), size
        _check_first_is_a_cnn(self.models)
        self.strokes, self.image, self.probabilities, self.figure, self.timings = [], None, {}, None, {}
        self._pen_is_down = False
        self.canvas = Canvas(width=size, height=size, layout=W.Layout(width=f"{size}px", height=f"{size}px"))
        self.pen = W.IntSlider(value=width, min=2, max=100, description="pen width", continuous_update=False,
                               layout=W.Layout(width=f"{size}px"))  # fmt: skip
        clear = W.Button(description="Clear", icon="eraser", layout=W.Layout(width="80px"))
        self.preprocess = W.Checkbox(value=True, description="MNIST-style preprocessing", indent=False,
                                     layout=W.Layout(width="auto", margin="0 0 0 12px"))  # fmt: skip
        self.caption = W.HTML()
        self.picture = W.Image(format="png")  # the answer's figure, as PNG: no flicker, no double drawing
        self.features = self._feature_explorer(next(iter(self.models.values())))
        pad = W.VBox([self.canvas, self.pen, W.HBox([clear, self.preprocess])], layout=W.Layout(margin="0 16px 0 0"))
        self.children = [W.HBox([pad, W.VBox([self.caption, self.picture])], layout=W.Layout(flex_flow="row wrap")),
                         self.features]  # fmt: skip

        self.canvas.on_mouse_down(self.pen_down)
        self.canvas.on_mouse_move(self.pen_move)
        self.canvas.on_mouse_up(self.pen_up)
        self.canvas.on_mouse_out(self.pen_up)  # leaving the pad lifts the pen
        self.canvas.on_touch_start(lambda touches: self.pen_down(*touches[0]))  # the first finger draws
        self.canvas.on_touch_move(lambda touches: self.pen_move(*touches[0]))
        self.canvas.on_touch_end(self._touch_end)
        self.canvas.on_client_ready(self._paint)  # a new view of the pad starts blank: paint it
        clear.on_click(lambda _: self.clear())
        self.pen.observe(lambda _: self._redraw(), names="value")
        self.preprocess.observe(lambda _: self.answer(), names="value")
        if drawing is not None:
            self.load(drawing)
        else:
            self.clear()

    # --- the pen: ipycanvas calls these with canvas coordinates (pixels of the pad)
    def pen_down(self, x, y):
        self._pen_is_down = True
        self.strokes.append([self._on_pad(x, y)])
        self.canvas.fill_style = "white"
        self.canvas.fill_circle(*self.strokes[-1][0], self.pen.value / 2)

    def pen_move(self, x, y):
        if self._pen_is_down:
            point = self._on_pad(x, y)
            self.canvas.stroke_line(*self.strokes[-1][-1], *point)
            self.strokes[-1].append(point)

    def pen_up(self, x, y):
        if self._pen_is_down:
            if self._on_pad(x, y) != self.strokes[-1][-1]:
                self.pen_move(x, y)
            self._pen_is_down = False
            self.answer()

    def _touch_end(self, touches):
        """touches: the fingers still down (none once the last one is lifted)."""
        if touches:
            self.pen_up(*touches[0])
        elif self._pen_is_down:
            self.pen_up(*self.strokes[-1][-1])

    def _on_pad(self, x, y):
        return (min(max(float(x), 0.0), self.size), min(max(float(y), 0.0), self.size))

    # --- the drawing
    def clear(self):
        """Wipe the pad and the answer."""
        self.strokes, self._pen_is_down = [], False
        self.image, self.probabilities, self.figure, self.timings = None, {}, None, {}
        self._paint()
        self.caption.value = "Draw a digit on the black square (white ink, any size, anywhere)."
        self.picture.layout.display = "none"
        self._answers.value += 1  # the feature maps of a blank input

    def load(self, drawing):
        """Show one of ``load_drawings()`` on the pad (scaled to its size) and answer it."""
        scale = self.size / drawing.get("size", self.size)
        self.strokes = [[(x * scale, y * scale) for x, y in stroke] for stroke in drawing["strokes"]]
        # clamped here, as the slider would: a clamped value equal to the current one fires no observer
        width = min(max(round(drawing.get("width", self.pen.value) * scale), self.pen.min), self.pen.max)
        if width != self.pen.value:
            self.pen.value = width  # its observer redraws
        else:
            self._redraw()

    def _redraw(self):
        self._paint()
        self.answer()

    def _paint(self):
        """Draw the background and every stroke again (after Clear, a new pen width, a new view)."""
        c, r = self.canvas, self.pen.value / 2
        with hold_canvas():
            c.clear()
            c.fill_style, c.stroke_style = "black", "white"
            c.fill_rect(0, 0, self.size, self.size)
            c.line_width, c.line_cap, c.line_join = self.pen.value, "round", "round"
            c.fill_style = "white"
            for stroke in self.strokes:
                if len(stroke) > 1:
                    c.stroke_lines(stroke)
                c.fill_circle(*stroke[0], r)

    # --- the answer
    def answer(self):
        """Run the drawing through the networks and show their answer (called after every stroke).

        Fills ``timings``: seconds from the call to the caption (the answer in words), to the figure,
        and to the feature maps.
        """
        if not self.strokes:
            return
        start = time.perf_counter()
        with _one_thread():
            drawing = render_strokes(self.strokes, self.size, self.pen.value)
            self.image = (mnist_style if self.preprocess.value else squeeze_to_frame)(drawing)
            batch = self.image.unsqueeze(0)
            self.probabilities = {name: predict(m, batch).softmax(1)[0] for name, m in self.models.items()}
            model, guess = next(iter(self.models.values())), int(next(iter(self.probabilities.values())).argmax())
            maps = {f"{method} for {guess}": explain(model, batch)[0] for method, explain in self.explain.items()}
        self.caption.value = " · ".join(
            f"<b>{name}</b>: {int(p.argmax())} ({float(p.max()):.0%})" for name, p in self.probabilities.items()
        )
        self.timings = {"caption": time.perf_counter() - start}
        self.figure = plot_answer(self.image, self.probabilities, maps)
        plt.close(self.figure)
        png = io.BytesIO()
        self.figure.savefig(png, format="png", dpi=90)  # about 600 pixels wide: fits beside the pad
        self.picture.value, self.picture.layout.display = png.getvalue(), None
        self.timings["figure"] = time.perf_counter() - start
        self._answers.value += 1  # redraw the feature maps of the new input
        self.timings["feature maps"] = time.perf_counter() - start

    def _feature_explorer(self, model):
        """Notebook 06's explorer, on the drawing: a layer and a channel of ``model``'s feature maps."""
        blank = torch.full((1, 28, 28), -MNIST_MEAN / MNIST_STD)
        channels = {name: out.shape[1] for name, out in _activations(model, blank).items() if name in FEATURE_LAYERS}
        layer = W.Dropdown(options=list(channels), value="relu1", description="layer")
        channel = W.IntSlider(value=0, min=0, max=channels["relu1"] - 1, description="channel")
        layer.observe(lambda change: setattr(channel, "max", channels[change["new"]] - 1), names="value")
        self._answers = W.IntText(value=0, layout=W.Layout(display="none"))  # counts answers: each one redraws

        def draw(layer, channel, answers):
            image = blank if self.image is None else self.image
            title = "blank pad" if self.image is None else "your drawing, as the network gets it"
            return plot_feature_map(_activations(model, image), image, layer, channel, title=title)

        return _explorer({"layer": layer, "channel": channel, "answers": self._answers}, draw)
