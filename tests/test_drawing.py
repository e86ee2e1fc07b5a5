"""Notebook 09's pipeline: strokes -> pixels -> MNIST-style 28x28 -> the networks, and the drawing pad
driven by the messages its canvas sends (no browser; tests/test_browser.py draws in a real one)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import helpers  # noqa: E402
from helpers.data import (  # noqa: E402
    MNIST_MEAN,
    MNIST_STD,
    center_by_mass,
    fit_to_box,
    ink_box,
    load_drawings,
    mnist_style,
    place_digits,
    render_strokes,
    squeeze_to_frame,
    zoom_images,
)
from helpers.explain import grad_cam, saliency  # noqa: E402
from helpers.viz import plot_answer, plot_attributions  # noqa: E402
from helpers.widgets import DrawingPad  # noqa: E402

BLACK = -MNIST_MEAN / MNIST_STD  # a black pixel, normalised


@pytest.fixture(scope="module")
def nets():
    cnn, mlp = helpers.SimpleCNN(), helpers.MLP()
    helpers.load_checkpoint(helpers.CHECKPOINT, cnn)
    helpers.load_checkpoint(helpers.CHECKPOINT.with_name("mlp.pt"), mlp)
    return {"SimpleCNN": cnn.eval(), "MLP": mlp.eval()}


@pytest.fixture(scope="module")
def test_digits():
    return helpers.mnist_tensors(train=False, subset=200)


def ink(images):
    """Normalised -> [0, 1], white ink on black."""
    return (images * MNIST_STD + MNIST_MEAN).clamp(0, 1)


def center_of_mass(image):
    """(row, column) of an image (H, W) in [0, 1], in pixel indices."""
    mass = image.sum()
    rows, cols = torch.arange(image.shape[0]).float(), torch.arange(image.shape[1]).float()
    return ((image.sum(1) * rows).sum() / mass).item(), ((image.sum(0) * cols).sum() / mass).item()


def correlation(a, b):
    """Pixel correlation of each pair of images: (N, ...) x (N, ...) -> (N,)."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def box_size(image):
    top, bottom, left, right = ink_box(image, threshold=0)  # every non-black pixel, as MNIST's 20-pixel box
    return bottom - top + 1, right - left + 1


# ----------------------------------------------------------------------------- strokes to pixels


def test_render_strokes_draws_round_pen_lines():
    image = render_strokes([[(40, 100), (240, 100)]], size=280, width=20)
    assert image.shape == (280, 280) and image.min() == 0 and image.max() == 1
    assert ink_box(image) == (90, 110, 30, 250)  # the pen's radius beyond both ends: round caps
    dot = render_strokes([[(50, 60)]], size=100, width=10)  # a single click leaves a dot
    assert ink_box(dot) == (55, 65, 45, 55)
    assert render_strokes([], size=50).sum() == 0


def test_example_drawings_are_strokes_on_a_pad():
    drawings = load_drawings()
    assert [d["label"] for d in drawings[:10]] == list(range(10))  # one of each digit first
    for d in drawings:
        assert {"name", "label", "note", "size", "width", "strokes"} <= set(d)
        points = torch.tensor([p for stroke in d["strokes"] for p in stroke], dtype=torch.float)
        assert points.shape[1] == 2 and 0 <= points.min() and points.max() <= d["size"]


# ----------------------------------------------------------------------------- MNIST-style preprocessing


@pytest.mark.parametrize("strokes", [[[(140, 40), (140, 240)]], [[(20, 140), (260, 150)]], [[(60, 200), (100, 230)]]],
                         ids=["tall", "wide", "small and off-centre"])  # fmt: skip
def test_preprocessing_fits_a_20_pixel_box_and_centres_the_mass(strokes):
    x = mnist_style(render_strokes(strokes, size=280, width=20))
    assert x.shape == (1, 28, 28)
    digit = ink(x[0])
    assert max(box_size(digit)) == 20  # the long side, whichever it is
    cy, cx = center_of_mass(digit)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert x.min().item() == pytest.approx(BLACK)  # normalised like the training images


def test_fit_to_box_keeps_the_aspect_ratio():
    image = torch.zeros(100, 100)
    image[10:70, 40:55] = 1.0  # 60 x 15
    assert tuple(fit_to_box(image).shape) == (20, 5)


def test_center_by_mass_keeps_the_digit_whole():
    digit = torch.zeros(20, 20)
    digit[:, 0] = 1.0  # the mass in the first column: centring it would push the box's right part out
    digit[:, 19] = 1e-3
    framed = center_by_mass(digit)
    assert framed.sum() == digit.sum() and framed[:, 8].sum() == 20 and framed[:, 27].sum() > 0  # at the border


def test_a_blank_pad_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="no ink.*draw something first"):
        mnist_style(torch.zeros(280, 280))
    with pytest.raises(ValueError, match="no ink.*draw something first"):
        center_by_mass(torch.zeros(20, 20))  # it had divided by the zero mass: "cannot convert float NaN to integer"


def test_mnist_digits_are_already_in_mnist_style(test_digits):
    images, _ = test_digits
    again = torch.stack([mnist_style(ink(x[0])) for x in images])
    assert correlation(again, images).min() > 0.999  # the same 20-pixel box, the same centre


def test_enlarged_moved_digit_comes_back(test_digits, nets):
    """A real test digit, enlarged 1.6 times and moved off-centre in a 56x56 frame (a bigger pad),
    comes back close to the original and is classified the same."""
    images, labels = test_digits
    big = torch.nn.functional.pad(images, (14, 14, 14, 14), value=BLACK)
    moved = helpers.shift_images(zoom_images(big, 1.6), 8, -6)
    back = torch.stack([mnist_style(ink(x[0])) for x in moved])
    r = correlation(back, images)
    assert r.median() > 0.9
    # The centre of mass is rounded to a whole pixel, in MNIST as here: a digit whose centre lies near
    # half a pixel can come back one pixel off (test digit 0, a 7, does: 0.82). Up to that pixel:
    aligned = torch.stack([correlation(helpers.shift_images(back, dx, dy), images)
                           for dx in (-1, 0, 1) for dy in (-1, 0, 1)]).max(0).values  # fmt: skip
    assert aligned[0] > 0.9 and aligned.min() > 0.8
    cnn = nets["SimpleCNN"]
    same = (helpers.predict(cnn, back).argmax(1) == helpers.predict(cnn, images).argmax(1)).float().mean()
    assert same >= 0.97
    assert (helpers.predict(cnn, moved[..., 14:42, 14:42]).argmax(1) == labels).float().mean() < 0.5  # not without it


def test_zoom_images_scales_about_the_centre(test_digits):
    images, _ = test_digits
    assert torch.allclose(zoom_images(images[:5], 1.0), images[:5], atol=1e-5)
    h, w = box_size(ink(zoom_images(images[:1], 0.5)[0, 0]))
    assert max(h, w) in (10, 11)  # a 20-pixel digit at half size
    assert squeeze_to_frame(torch.ones(280, 280)).shape == (1, 28, 28)


def test_ink_box_threshold_matters_only_for_grey_images(test_digits):
    drawing = render_strokes(load_drawings()[3]["strokes"])
    assert set(drawing.unique().tolist()) == {0.0, 1.0}  # the pen paints pure black and white
    assert torch.equal(mnist_style(drawing), mnist_style(drawing, threshold=0.5))
    grey = ink(zoom_images(test_digits[0][:1], 0.9)[0, 0])
    assert ink_box(grey, 0.5) != ink_box(grey, 0.01)  # a grey edge: the box depends on what counts as ink


def long_sides(images):
    return torch.tensor([max(box_size(ink(x[0]))) for x in images])


def test_place_digits_keeps_every_digit_whole(test_digits):
    images, _ = test_digits
    images = images[:50]
    moved = place_digits(images, 1.0, generator=torch.Generator().manual_seed(1))
    assert moved.shape == images.shape and moved.min().item() == pytest.approx(BLACK)
    # scale 1: a pure move, every pixel of ink kept, and most digits do move
    assert torch.allclose(ink(moved).sum((1, 2, 3)), ink(images).sum((1, 2, 3)), rtol=1e-4)
    assert torch.allclose(ink(moved).flatten(1).sort(1).values, ink(images).flatten(1).sort(1).values, atol=1e-5)
    assert (correlation(moved, images) < 0.9).float().mean() > 0.5
    # resized: the long side of the non-black box follows the scale, whole in the frame (26 px fits in 28)
    assert torch.equal(long_sides(place_digits(images, 1.3, generator=torch.Generator().manual_seed(2))),
                       (long_sides(images) * 1.3).round().long())  # fmt: skip
    assert long_sides(place_digits(images, 0.6)).tolist() == (long_sides(images) * 0.6).round().long().tolist()
    sides = long_sides(place_digits(images, (0.6, 1.3), generator=torch.Generator().manual_seed(3)))
    assert sides.min() >= 12 and sides.max() <= 26 and len(sides.unique()) > 5  # each digit its own size
    assert long_sides(place_digits(images[:3], 2.0)).max() == 28  # too big for the frame: as big as it fits


def test_place_digits_centre_and_randomness(test_digits):
    images, _ = test_digits
    images = images[:20]
    small = place_digits(images, 0.6, at="centre")
    for x in small:
        cy, cx = center_of_mass(ink(x[0]))
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert torch.allclose(place_digits(images, 1.0, at="centre"), images, atol=1e-5)  # MNIST's own place
    a, b, c = (place_digits(images, 0.8, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="'random', or 'centre'"):
        place_digits(images, 1.0, at="middle")


def test_place_digits_as_training_augmentation(test_digits):
    images, labels = test_digits
    model = helpers.SimpleCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []

    def augment(x):
        seen.append(x)
        return place_digits(x, (0.6, 1.3))

    helpers.train_epoch(model, optimizer, images[:128], labels[:128], progress=False, augment=augment)
    assert len(seen) == 2 and seen[0].shape == (64, 1, 28, 28)


# ----------------------------------------------------------------------------- the whole path


def test_example_digits_are_read_by_simplecnn(nets):
    drawings = load_drawings()[:10]
    batch = torch.stack([mnist_style(render_strokes(d["strokes"], d["size"], d["width"])) for d in drawings])
    assert helpers.predict(nets["SimpleCNN"], batch).argmax(1).tolist() == list(range(10))


def test_the_answer_draws_its_maps_as_notebook_08_does(nets):
    """One way to draw an explanation map: plot_answer (notebook 09) and plot_attributions (08) agree."""
    cnn = nets["SimpleCNN"]
    x = mnist_style(render_strokes(load_drawings()[2]["strokes"]))
    cam, grad = grad_cam(cnn, x[None]), saliency(cnn, x[None])
    fig08 = plot_attributions(x[None], {"Grad-CAM": cam, "saliency": grad})
    fig09 = plot_answer(x, {"SimpleCNN": helpers.predict(cnn, x[None])[0].softmax(0)},
                        {"Grad-CAM for 2": cam[0], "saliency for 2": grad[0]})  # fmt: skip
    for ax08, ax09 in zip(fig08.axes[1:3], fig09.axes[1:3]):
        assert len(ax08.get_images()) == len(ax09.get_images())
        for a, b in zip(ax08.get_images(), ax09.get_images()):
            assert a.get_cmap().name == b.get_cmap().name and a.get_clim() == pytest.approx(b.get_clim())
            assert (a.get_alpha() is None) == (b.get_alpha() is None)
            if a.get_alpha() is not None:
                assert a.get_alpha() == pytest.approx(b.get_alpha())
        assert ax08.get_images()[-1].colorbar is not None and ax09.get_images()[-1].colorbar is not None
    overlay, signed = fig09.axes[1].get_images(), fig09.axes[2].get_images()
    assert overlay[-1].get_cmap().name == "inferno" and overlay[-1].get_alpha().max() == pytest.approx(0.85)
    limit = grad.abs().max().item()
    assert signed[0].get_cmap().name == "RdBu_r" and signed[0].get_clim() == pytest.approx((-limit, limit))
    plt.close(fig08)  # figures left open leak into later tests (test_explorers_keep_one_figure_alive counts them)
    plt.close(fig09)


def event(pad, name, **values):
    """The message the canvas's front end sends to the kernel when the mouse (or a finger) acts."""
    pad.canvas._handle_frontend_event(None, dict(event=name, **values), [])


def draw(pad, points, touch=False):
    (x, y), *rest = points
    if touch:
        event(pad, "touch_start", touches=[dict(x=x, y=y)])
        for x, y in rest:
            event(pad, "touch_move", touches=[dict(x=x, y=y)])
        event(pad, "touch_end", touches=[])
    else:
        event(pad, "mouse_down", x=x, y=y)
        for x, y in rest:
            event(pad, "mouse_move", x=x, y=y)
        event(pad, "mouse_up", x=x, y=y)


def test_pad_records_strokes_from_mouse_events(nets):
    pad = DrawingPad(nets)
    assert pad.strokes == [] and pad.probabilities == {} and "Draw a digit" in pad.caption.value
    event(pad, "mouse_move", x=10, y=10)  # moving with the button up draws nothing
    event(pad, "mouse_up", x=10, y=10)
    assert pad.strokes == []
    line = [(140, y) for y in range(40, 250, 10)]
    draw(pad, line)
    assert pad.strokes == [[(float(x), float(y)) for x, y in line]]
    assert pad.caption.value.startswith("<b>SimpleCNN</b>: 1 (") and "<b>MLP</b>: 1 (" in pad.caption.value
    assert bytes(pad.picture.value).startswith(b"\x89PNG")  # the answer's figure, shown
    # a second stroke, which leaves the pad: the pen lifts at its edge
    event(pad, "mouse_down", x=100, y=60)
    event(pad, "mouse_move", x=-30, y=60)
    event(pad, "mouse_out", x=-30, y=60)
    event(pad, "mouse_move", x=50, y=50)
    assert pad.strokes[1] == [(100.0, 60.0), (0.0, 60.0)] and len(pad.strokes) == 2
    pad.clear()
    assert pad.strokes == [] and pad.image is None and pad.picture.layout.display == "none"
    assert "Draw a digit" in pad.caption.value


def test_pad_answers_what_the_pipeline_computes(nets):
    pad = DrawingPad(nets, {"Grad-CAM": grad_cam, "saliency": saliency})
    oval = [(140 + 55 * torch.cos(t).item(), 140 + 90 * torch.sin(t).item()) for t in torch.linspace(0, 6.4, 40)]
    event(pad, "touch_end", touches=[])  # a lifted finger with nothing drawn: nothing happens
    assert pad.strokes == []
    draw(pad, oval, touch=True)  # with a finger
    x = mnist_style(render_strokes(pad.strokes, 280, pad.pen.value))
    assert torch.equal(pad.image, x)
    for name, model in nets.items():
        assert torch.allclose(pad.probabilities[name], helpers.predict(model, x[None]).softmax(1)[0])
    assert pad.probabilities["SimpleCNN"].argmax() == 0
    assert [ax.get_title() for ax in pad.figure.axes[:3]] == ["the networks' input (28×28)", "Grad-CAM for 0", "saliency for 0"]
    assert set(pad.timings) == {"caption", "figure", "feature maps"}
    assert pad.features.figure.axes[0].get_title() == "your drawing, as the network gets it"


def test_pad_controls_redo_the_answer(nets):
    threads = torch.get_num_threads()
    seven = load_drawings()[7]
    pad = DrawingPad(nets, drawing=seven)
    assert pad.pen.value == seven["width"] and pad.probabilities["SimpleCNN"].argmax() == 7
    assert pad._answers.value == 1  # loading a drawing answers it once
    assert torch.get_num_threads() == threads  # the answer runs on one thread and restores the count
    before = pad.image.clone()
    pad.pen.value = 50  # a thicker pen: the same strokes, redrawn and answered again
    assert not torch.equal(pad.image, before) and pad._answers.value == 2
    pad.preprocess.value = False  # no preprocessing: the whole pad squeezed to 28 x 28
    assert torch.equal(pad.image, squeeze_to_frame(render_strokes(pad.strokes, 280, 50)))
    layer, channel = pad.features.children[0].children[:2]
    layer.value = "conv2"
    assert channel.max == 63 and pad.features.figure.axes[1].get_title().startswith("conv2, channel")
    answers = pad._answers.value
    pad.load(dict(seven, width=10, size=140))  # a drawing from a smaller pad is scaled to this one
    assert pad.pen.value == 20 and pad.strokes[0][0] == tuple(2.0 * v for v in seven["strokes"][0][0])
    assert pad._answers.value == answers + 1
    # a width past the slider's end is clamped to it; equal to the pen's width already, it must still redraw
    pad.pen.value = 100
    answers, three = pad._answers.value, load_drawings()[3]
    pad.load(dict(three, width=150))  # wider than the slider goes: clamped to 100
    assert pad.pen.value == 100 and pad._answers.value == answers + 1
    assert torch.equal(pad.image, squeeze_to_frame(render_strokes(pad.strokes, 280, 100)))


def test_pad_refuses_a_first_model_without_feature_maps(nets):
    with pytest.raises(ValueError, match=r"'MLP' \(MLP\) makes no feature maps: put a CNN \(e.g. SimpleCNN\) first"):
        DrawingPad({"MLP": nets["MLP"], "SimpleCNN": nets["SimpleCNN"]})
    with pytest.raises(ValueError, match="at least one model"):
        DrawingPad({})


def test_pad_benchmark_runs(capsys):
    from benchmarks import pad

    pad.main(["--repeats", "1", "--digits", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("pen-up to ..., median seconds over 2 answers") and lines[-1].startswith("ratio")
    assert helpers.widgets._one_thread is pad.ONE_THREAD  # the pad's own choice is put back
