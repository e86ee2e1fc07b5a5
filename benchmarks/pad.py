"""How quickly the drawing pad of notebook 09 answers, and why its answer runs PyTorch on one thread.

    python -m benchmarks.pad                # a minute or two on a busy 2-core CPU
    python -m benchmarks.pad --repeats 5 --digits 3

Replays the ten example digits on a ``DrawingPad`` (not displayed) through the handlers the mouse
calls, and times each answer from pen-up to the caption (the networks' answers in words) and to the
figure (drawn and encoded as PNG). The answer runs with PyTorch on one thread, as the pad does, and
with all threads, in turns, so that machine noise hits both alike; the last line is their ratio of
medians (all threads / one thread: above 1, one thread is faster). Outside a notebook the feature maps
are not rendered, so they are not timed here; notebook 09 times all three parts.
"""

import argparse
import contextlib
import io
import statistics

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

import helpers  # noqa: E402
from helpers import widgets  # noqa: E402
from helpers.explain import grad_cam, saliency  # noqa: E402

ONE_THREAD = widgets._one_thread


def replay(pad, drawing):
    """Draw one example on the pad as a mouse would; return the pad's timings for its last stroke."""
    pad.clear()
    for stroke in drawing["strokes"]:
        pad.pen_down(*stroke[0])
        for point in stroke[1:]:
            pad.pen_move(*point)
        pad.pen_up(*stroke[-1])
    return pad.timings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="replays of the digits per thread setting")
    p.add_argument("--digits", type=int, default=10, help="how many of the ten example digits to replay")
    args = p.parse_args(argv)
    cnn, mlp = helpers.SimpleCNN(), helpers.MLP()
    helpers.load_checkpoint(helpers.CHECKPOINT, cnn)
    helpers.load_checkpoint(helpers.CHECKPOINT.with_name("mlp.pt"), mlp)
    digits = helpers.load_drawings()[: args.digits]
    settings = {"one thread": ONE_THREAD, f"all threads ({torch.get_num_threads()})": contextlib.nullcontext}
    times = {name: [] for name in settings}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the feature explorer's display() outside a notebook
            pad = widgets.DrawingPad({"SimpleCNN": cnn, "MLP": mlp}, {"Grad-CAM": grad_cam, "saliency": saliency})
            for i in range(args.repeats):
                for name in settings if i % 2 else reversed(settings):
                    widgets._one_thread = settings[name]
                    times[name] += [replay(pad, d) for d in digits]
    finally:
        widgets._one_thread = ONE_THREAD
    print(f"pen-up to ..., median seconds over {len(times['one thread'])} answers of {len(digits)} example digits")
    print(f"{'':<18} {'caption':>8} {'figure':>8}")
    for name, timings in times.items():
        print(f"{name:<18}" + "".join(f" {statistics.median(t[part] for t in timings):>8.3f}" for part in ("caption", "figure")))
    median = {name: statistics.median(t["caption"] for t in timings) for name, timings in times.items()}
    print(f"ratio (all threads / one thread) for the caption: {median[list(settings)[1]] / median['one thread']:.1f}x")


if __name__ == "__main__":
    main()
