"""SimpleCNN, its twin built from PyTorch's own layers, and a fully connected baseline.

All three are ``nn.Sequential`` with named stages, so ``print(model)`` shows the architecture,
``model.conv1`` is the first convolution, and ``model.activations(x)`` returns every
intermediate result by name for the visualisation notebooks.
"""

from collections import OrderedDict

from torch import nn

from .layers import Conv2D, LocallyConnected2D, MaxPool2D


class _Network(nn.Sequential):
    def activations(self, x):
        """Run x through the network and keep every stage's output: {name: tensor}, in order.

        For SimpleCNN and x: (N, 1, 28, 28): conv1/relu1 (N, 32, 28, 28), pool1 (N, 32, 14, 14),
        conv2/relu2 (N, 64, 14, 14), pool2 (N, 64, 7, 7), flatten (N, 3136), fc1/relu3/dropout (N, 128),
        fc2 (N, 10) = the logits.
        """
        outputs = {}
        for name, stage in self.named_children():
            x = stage(x)
            outputs[name] = x
        return outputs

    def receptive_field(self, layer):
        """(size, jump, start): the square of input pixels one unit of ``layer`` sees.

        Unit (i, j) of that layer's map sees input rows start + i*jump ... start + i*jump + size - 1 (and
        the same for columns); a negative start reaches into the padding. The rule, stage by stage: a
        k x k window with stride s and padding p grows the field by (k - 1) * jump, moves its start by
        -p * jump, and multiplies the jump by s. For SimpleCNN: conv1 (3, 1, -1), pool1 (4, 2, -1),
        conv2 (8, 2, -3), pool2 (10, 4, -3).
        """
        size, jump, start = 1, 1, 0
        for name, stage in self.named_children():
            if hasattr(stage, "kernel_size"):
                k, s, p = (_first(getattr(stage, a, 0)) for a in ("kernel_size", "stride", "padding"))
                size, start, jump = size + (k - 1) * jump, start - p * jump, jump * s
            if name == layer:
                return size, jump, start
        raise ValueError(f"{type(self).__name__} has no stage {layer!r}; its stages: {', '.join(n for n, _ in self.named_children())}")

    def param_counts(self):
        """{stage name: number of parameters} for every stage that has any."""
        counts = {}
        for name, stage in self.named_children():
            n = sum(p.numel() for p in stage.parameters())
            if n:
                counts[name] = n
        return counts


def _first(value):
    """nn.Conv2d keeps sizes as pairs (k, k); our layers keep one int."""
    return value[0] if isinstance(value, tuple) else value


def simple_cnn_stages(conv=Conv2D, pool=MaxPool2D, channels=(32, 64)):
    """SimpleCNN's stages, in order, as {name: layer}: build variants from it.

    conv(in_channels, out_channels, kernel_size, padding=...) and pool(kernel_size) make the layers
    (``nn.Conv2d`` / ``nn.MaxPool2d`` give the built-in twin); channels sets the widths of conv1 and conv2.
    ``nn.Sequential(simple_cnn_stages(channels=(8, 64)))`` is a SimpleCNN with 8 first-layer filters.
    """
    c1, c2 = channels
    return OrderedDict(
        conv1=conv(1, c1, 3, padding=1),  # (N, 1, 28, 28) -> (N, c1, 28, 28)
        relu1=nn.ReLU(),
        pool1=pool(2),  # -> (N, c1, 14, 14)
        conv2=conv(c1, c2, 3, padding=1),  # -> (N, c2, 14, 14)
        relu2=nn.ReLU(),
        pool2=pool(2),  # -> (N, c2, 7, 7)
        flatten=nn.Flatten(),  # -> (N, c2 * 49)
        fc1=nn.Linear(c2 * 7 * 7, 128),
        relu3=nn.ReLU(),
        dropout=nn.Dropout(0.5),
        fc2=nn.Linear(128, 10),  # -> (N, 10) logits
    )


class SimpleCNN(_Network):
    """The series' network, on the from-scratch ``Conv2D`` and ``MaxPool2D``: 421,642 parameters.

    x: (N, 1, 28, 28) normalised MNIST digits -> (N, 10) logits. channels: the widths of conv1 and
    conv2 (the published network: 32 and 64).
    """

    def __init__(self, channels=(32, 64)):
        super().__init__(simple_cnn_stages(Conv2D, MaxPool2D, channels))


class SimpleCNNBuiltin(_Network):
    """The same network on PyTorch's ``nn.Conv2d`` / ``nn.MaxPool2d``: same state_dict keys and shapes.

    The reference the tests compare against and the benchmark races. Note its convolutions start
    from PyTorch's default initialisation, not Xavier; load a SimpleCNN's state_dict to compare outputs.
    """

    def __init__(self, channels=(32, 64)):
        super().__init__(simple_cnn_stages(nn.Conv2d, nn.MaxPool2d, channels))


class MLP(_Network):
    """A fully connected network on the 784 raw pixels: 784 -> hidden -> ReLU -> Dropout(0.5) -> 10.

    With hidden=512 it has 407,050 parameters, about as many as SimpleCNN.
    x: (N, 1, 28, 28) -> (N, 10) logits.
    """

    def __init__(self, hidden=512):
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(28 * 28, hidden),
                relu1=nn.ReLU(),
                dropout=nn.Dropout(0.5),
                fc2=nn.Linear(hidden, 10),
            )
        )


class LocallyConnectedCNN(_Network):
    """SimpleCNN without weight sharing: conv1 and conv2 become ``LocallyConnected2D`` layers.

    The same stages, shapes and receptive fields as SimpleCNN, but every output position of conv1 and
    conv2 has its own 3x3 filter bank and bias: 4,278,922 parameters, ten times SimpleCNN's. The
    ablation that isolates weight sharing. x: (N, 1, 28, 28) -> (N, 10) logits (the size is fixed:
    one filter bank per position, and fc1 takes pool2's 7x7 maps, as in SimpleCNN).
    """

    def __init__(self, channels=(32, 64)):
        sizes = iter((28, 14))  # conv1 sees the image, conv2 the maps pool1 halved

        def local(in_channels, out_channels, kernel_size, padding):
            return LocallyConnected2D(in_channels, out_channels, kernel_size, next(sizes), padding=padding)

        super().__init__(simple_cnn_stages(local, MaxPool2D, channels))
