"""Convolutional networks from scratch: the code the notebooks import.

One module per concept: layers (Conv2D, MaxPool2D), model (SimpleCNN), data (MNIST), train (fit and
the command line), checkpoint, viz (figures), widgets (sliders and the drawing pad), check (compare
your answer to an exercise with a reference) and explain (why the network answered
as it did: attribution maps, adversarial digits, activation maximisation).
"""

import warnings

# `python -m helpers.train` imports this package (and with it helpers.train) before running train.py
# as __main__; runpy warns about that, but nothing here depends on module identity.
warnings.filterwarnings("ignore", message="'helpers.train' found in sys.modules", category=RuntimeWarning)

from . import viz, widgets  # noqa: E402
from .check import check, random_inputs, rel_error  # noqa: E402
from .checkpoint import (  # noqa: E402
    CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    remove_orphaned_temporaries,
    save_checkpoint,
    save_json,
)
from .data import (  # noqa: E402
    DATA_DIR,
    MNIST_MEAN,
    MNIST_STD,
    batches,
    center_by_mass,
    fit_to_box,
    ink_box,
    load_drawings,
    load_mnist,
    mnist_style,
    mnist_tensors,
    normalize,
    permute_pixels,
    place_digits,
    render_strokes,
    shift_images,
    split_validation,
    squeeze_to_frame,
    zoom_images,
)
from .explain import (  # noqa: E402
    deletion_curve,
    fgsm,
    grad_cam,
    gradient_x_input,
    maximise,
    occlusion,
    pgd,
    randomised,
    saliency,
    smoothgrad,
    spearman,
)
from .layers import (  # noqa: E402
    Conv2D,
    LocallyConnected2D,
    MaxPool2D,
    conv2d,
    conv2d_naive,
    im2col,
    locally_connected2d,
    maxpool2d,
    maxpool2d_naive,
    output_size,
    xavier_uniform_,
)
from .model import MLP, LocallyConnectedCNN, SimpleCNN, SimpleCNNBuiltin, simple_cnn_stages  # noqa: E402
from .train import RECIPE, evaluate, fit, pick_device, predict, quick_mode, set_seed, train_epoch  # noqa: E402
from .viz import (  # noqa: E402
    HAND_KERNELS,
    describe_filters,
    EDGE_ORIENTATIONS,
    filter_kinds,
    PATTERNS,
    plot_all_channels,
    plot_answer,
    plot_attributions,
    plot_confusion,
    plot_feature_map,
    plot_filters,
    plot_history,
    plot_predictions,
    show_images,
    top_patches,
)
from .widgets import (  # noqa: E402
    DrawingPad,
    channel_grid_explorer,
    explanation_explorer,
    feature_map_explorer,
    filter_evolution,
    shift_explorer,
)
