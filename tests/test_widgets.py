"""The explorers redraw when a control moves, and the figures show what they claim."""

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

import helpers  # noqa: E402
from helpers import widgets  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    model = helpers.SimpleCNN()
    ckpt = helpers.load_checkpoint(helpers.CHECKPOINT, model)
    images, labels = helpers.mnist_tensors(train=False, subset=20)
    return model, ckpt["history"], images, labels


def pixels(fig):
    canvas = FigureCanvasAgg(fig)  # the explorer closed the figure in pyplot; render it ourselves
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def controls(box):
    return {c.description: c for c in box.children[0].children}


def test_feature_map_explorer_redraws_on_every_control(trained):
    model, _, images, labels = trained
    box = widgets.feature_map_explorer(model, images, labels)
    ctl = controls(box)
    assert box.figure is not None  # drawn once on creation: the default view
    seen = [pixels(box.figure)]
    for name, value in [("test image", 3), ("layer", "conv2"), ("channel", 40)]:
        ctl[name].value = value
        seen.append(pixels(box.figure))
        assert not np.array_equal(seen[-1], seen[-2]), f"moving {name!r} did not redraw the figure"
    assert box.figure.axes[1].get_title().startswith("conv2, channel 40")
    assert f"test image 3: a {labels[3]}" == box.figure.axes[0].get_title()


def test_channel_slider_follows_the_layer(trained):
    model, _, images, labels = trained
    ctl = controls(widgets.feature_map_explorer(model, images, labels))
    assert ctl["channel"].max == 31
    ctl["layer"].value = "relu2"
    assert ctl["channel"].max == 63
    ctl["channel"].value = 60
    ctl["layer"].value = "pool1"  # 32 channels: the slider shrinks and its value follows
    assert ctl["channel"].max == 31 and ctl["channel"].value == 31


def test_channel_grid_shows_every_channel(trained):
    model, _, images, labels = trained
    box = widgets.channel_grid_explorer(model, images, labels)

    def shown():
        return sum(1 for ax in box.figure.axes if ax.images)

    assert shown() == 32
    controls(box)["layer"].value = "pool2"
    assert shown() == 64


def test_filter_evolution_steps_through_the_epochs(trained):
    _, history, _, _ = trained
    box = widgets.filter_evolution(history)
    slider = controls(box)["epoch"]
    assert (slider.min, slider.max, slider.value) == (0, 10, 10)
    last = pixels(box.figure)
    slider.value = 0
    assert "before training" in box.figure.axes[0].get_title()
    assert not np.array_equal(pixels(box.figure), last)


def test_shift_explorer_predictions_follow_the_shift(trained):
    model, _, images, labels = trained
    box = widgets.shift_explorer({"SimpleCNN": model}, images, labels)
    readout = box.children[1]
    assert readout.value.startswith(f"<b>SimpleCNN</b>: {labels[0]} (")  # the trained net reads digit 0 right
    before = pixels(box.figure)
    controls(box)["shift →"].value = 8
    assert not np.array_equal(pixels(box.figure), before)
    assert "shifted (8, 0)" in box.figure.axes[0].get_title()


def test_explorers_keep_one_figure_alive(trained):
    import matplotlib.pyplot as plt

    model, _, images, labels = trained
    box = widgets.feature_map_explorer(model, images, labels)
    for i in range(10):
        controls(box)["test image"].value = i
    assert len(plt.get_fignums()) == 0  # every drawn figure was shown once and closed


def test_describe_filters_recognises_the_hand_made_kernels():
    edges = ["vertical edge", "horizontal edge", "diagonal edge \\", "diagonal edge /"]
    kernels = torch.stack([helpers.viz.HAND_KERNELS[k] for k in edges]).unsqueeze(1)
    labels, measures = helpers.describe_filters(torch.cat([kernels, -kernels]))
    assert labels == edges + edges  # either polarity is the same detector
    assert torch.allclose(measures["angle"], torch.tensor([90.0, 0, 135, 45] * 2))
    assert helpers.describe_filters(helpers.viz.PATTERNS["spot"].view(1, 1, 3, 3))[0] == ["spot"]
    blur = helpers.viz.HAND_KERNELS["blur"].view(1, 1, 3, 3)
    assert helpers.describe_filters(torch.cat([blur, -blur]))[0] == ["ink", "background"]


def test_shift_images_moves_pixels_and_fills_background():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    moved = helpers.shift_images(x, 2, -1)
    assert moved[0, 0, 1, 4] == 1.0 and (moved == 1.0).sum() == 1
    assert moved[0, 0, 4, 0] == pytest.approx(-helpers.MNIST_MEAN / helpers.MNIST_STD)
    with pytest.raises(ValueError, match="out of the frame"):
        helpers.shift_images(x, 5, 0)


def test_signed_maps_get_a_scale_symmetric_about_zero():
    maps = torch.tensor([[[-1.0, 3.0], [0, 0]], [[0.5, 0.2], [0, 0]]])  # (2, 2, 2)
    fig = helpers.show_images(maps, signed=True)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert [im.get_clim() for im in images] == [(-3.0, 3.0), (-0.5, 0.5)]  # white is 0 in every panel
    assert len(fig.axes) == 4  # two panels, two colour bars


def test_top_patches_are_the_strongest_units_cut_to_their_field(trained):
    model, _, images, _ = trained
    model.eval()
    patches, values, index = helpers.top_patches(model, images, "relu2", k=3)
    assert patches.shape == (64, 3, 8, 8) and values.shape == index.shape == (64, 3)
    assert (values[:, :-1] >= values[:, 1:]).all()  # strongest first
    with torch.no_grad():
        acts = model.activations(images)["relu2"]
    for c in (0, 17, 63):
        for value, i in zip(values[c], index[c]):
            assert value == acts[i, c].max()  # each value is the image's strongest unit of that channel
        position = acts[index[c, 0], c].flatten().argmax().item()
        r, q = -3 + (position // 14) * 2, -3 + (position % 14) * 2
        framed = torch.nn.functional.pad(images[index[c, 0], 0], (8, 8, 8, 8), value=images.min().item())
        assert torch.equal(patches[c, 0], framed[r + 8 : r + 16, q + 8 : q + 16])


def test_describe_filters_calls_an_all_negative_filter_with_positive_bias_a_background_detector(trained):
    like_conv1_3 = -torch.full((1, 1, 3, 3), 0.25)  # all nine weights negative ...
    labels, measures = helpers.describe_filters(like_conv1_3, torch.tensor([0.19]))  # ... and a positive bias
    assert labels == ["background"]
    assert measures["ink"].item() == 0 and measures["blank"].item() == pytest.approx(0.19 + 2.25 * 0.4242, abs=1e-3)
    assert helpers.describe_filters(like_conv1_3, torch.tensor([-1.0]))[0] == ["silent"]  # nothing switches it on
    model = trained[0]
    labels, _ = helpers.describe_filters(model.conv1.weight, model.conv1.bias)
    assert labels[3] == "background"  # the committed network's conv1 #3: zero on ink, about 1 on blank paper


def test_describe_filters_reads_the_angle_of_an_edge_at_any_orientation():
    sobel_x, sobel_y = helpers.viz.HAND_KERNELS["vertical edge"], helpers.viz.HAND_KERNELS["horizontal edge"]
    for angle in range(0, 180, 5):
        across = math.radians(angle - 90)  # the gradient is perpendicular to the edge
        kernel = math.cos(across) * -sobel_x + math.sin(across) * sobel_y
        labels, measures = helpers.describe_filters(kernel.view(1, 1, 3, 3))
        assert measures["angle"].item() == pytest.approx(angle, abs=1e-3)
        assert measures["edge"].item() == pytest.approx(1.0)
        bins = helpers.EDGE_ORIENTATIONS
        nearest = min(bins, key=lambda n: abs((angle - bins[n] + 90) % 180 - 90))
        if angle % 45 != 22.5:
            assert labels == [nearest]


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, (1, 1, 3, 3), elements=st.floats(-1, 1, width=32)), st.floats(-0.5, 0.5), st.floats(0.1, 10))
def test_describe_filters_turns_with_the_filter_and_ignores_its_scale(weight, bias, scale):
    w, b = torch.from_numpy(weight), torch.tensor([bias])
    labels, measures = helpers.describe_filters(w, b)
    _, turned = helpers.describe_filters(torch.rot90(w, 1, (-2, -1)), b)  # a quarter turn anticlockwise
    assert turned["edge"].item() == pytest.approx(measures["edge"].item(), abs=1e-4)
    if measures["edge"].item() > 0.01:  # an edge turned a quarter turn runs 90 degrees further round
        assert (turned["angle"] - measures["angle"]).remainder(180).item() == pytest.approx(90, abs=1e-2)
    assert helpers.describe_filters(w * scale, b * scale)[0] == labels  # a unit and its scaled copy detect the same


def test_background_and_ink_detectors_behave_so_on_real_digits(trained):
    model, _, images, _ = trained
    labels, _ = helpers.describe_filters(model.conv1.weight, model.conv1.bias)
    with torch.no_grad():
        maps = model.relu1(model.conv1(images))  # (20, 32, 28, 28)
    ink = (images > 1.0).expand_as(maps)  # raw pixel value above 0.44
    near_ink = torch.nn.functional.max_pool2d((images > -0.4).float(), 5, 1, 2).bool().expand_as(maps)
    blank = ~near_ink  # at least two pixels away from any ink
    blank[..., :1, :] = blank[..., -1:, :] = blank[..., :, :1] = blank[..., :, -1:] = False  # not the padded border
    for c, label in enumerate(labels):
        on_ink, on_blank = maps[:, c][ink[:, c]].mean(), maps[:, c][blank[:, c]].mean()
        if label == "background":
            assert on_blank > 0.5 and on_ink < 0.05 * on_blank, c
        if label == "ink":
            assert on_ink > 0.3 and on_blank < 0.05 * on_ink, c


def test_signed_feature_maps_and_filters_are_centred_on_zero(trained):
    import matplotlib.pyplot as plt

    model, _, images, _ = trained
    with torch.no_grad():
        acts = model.activations(images[:1])
    conv = helpers.plot_feature_map(acts, images[0], "conv1", 3).axes[1].images[0].get_clim()
    assert conv == pytest.approx((-acts["conv1"][0, 3].abs().max().item(), acts["conv1"][0, 3].abs().max().item()))
    relu = helpers.plot_feature_map(acts, images[0], "relu1", 3).axes[1].images[0].get_clim()
    assert relu[0] >= 0  # a map without negative values keeps its own scale
    fig = helpers.plot_filters(model.conv1.weight)
    limit = model.conv1.weight.abs().max().item()
    assert fig.axes[0].images[0].get_clim() == pytest.approx((-limit, limit)) and len(fig.axes) == 2  # and a colour bar
    grid = helpers.plot_all_channels(acts, "conv1")
    assert all(lo == -hi for lo, hi in (ax.images[0].get_clim() for ax in grid.axes if ax.images))
    plt.close("all")


def test_explanation_explorer_redraws_for_every_image_and_class(trained):
    model, _, images, labels = trained
    box = widgets.explanation_explorer(model, images[:3], labels[:3])
    ctl = controls(box)

    def titles():
        return [ax.get_title() for ax in box.figure.axes]

    assert titles()[:5] == [f"test image 0: a {labels[0]}\nexplaining {labels[0]} (p = 100.0%)", *widgets.EXPLORER_METHODS]
    seen = [pixels(box.figure)]
    for name, value in [("test image", 2), ("explain", 3)]:
        ctl[name].value = value
        seen.append(pixels(box.figure))
        assert not np.array_equal(seen[-1], seen[-2]), f"moving {name!r} did not redraw the figure"
    assert titles()[0] == f"test image 2: a {labels[2]}\nexplaining 3 (p = 2e-14)"  # tiny: not "0.0%"
