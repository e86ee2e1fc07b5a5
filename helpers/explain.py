"""Why did the network give that answer? Attribution maps for one prediction.

Every function takes normalised digits ``images: (N, 1, 28, 28)`` and a ``target``: the class whose
score is explained (None: each image's predicted class; an int: that class for every image; a tensor
(N,): one class per image). The model runs with dropout off and its train/eval mode is restored.
Where a method needs the gradient of the image, autograd gets it from the layers' own backward passes
(for SimpleCNN: ``Conv2DFunction``'s hand-written input gradient).
"""

import contextlib
from collections import OrderedDict

import torch
from torch import nn

from .train import evaluating


@contextlib.contextmanager
def _differentiable(model):
    """Dropout off, gradients on (``evaluating`` switches them off), the model's mode restored."""
    with evaluating(model), torch.enable_grad():
        yield


def _targets(logits, target):
    """The class to explain for each image: (N,) class indices."""
    if target is None:
        return logits.argmax(1)
    target = torch.as_tensor(target, device=logits.device)
    return target.expand(len(logits)) if target.dim() == 0 else target


def _stages(model, layer):
    """Split a model into (the stages up to and including ``layer``, the stages after it)."""
    names = [name for name, _ in model.named_children()]
    if layer not in names:
        raise ValueError(f"{type(model).__name__} has no stage {layer!r}; its stages: {', '.join(names)}")
    stages = list(model.named_children())
    cut = names.index(layer) + 1
    return nn.Sequential(OrderedDict(stages[:cut])), nn.Sequential(OrderedDict(stages[cut:]))


def saliency(model, images, target=None):
    """The gradient of the target class's logit with respect to every pixel: d logit / d x.

    images: (N, 1, 28, 28) -> (N, 1, 28, 28), signed. A large |value| marks a pixel whose small change
    moves the score most; the sign says which way.
    """
    x = images.detach().clone().requires_grad_()
    with _differentiable(model):
        logits = model(x)
        score = logits.gather(1, _targets(logits, target)[:, None]).sum()  # images are independent: one backward
        (grad,) = torch.autograd.grad(score, x)
    return grad


def grad_cam(model, images, target=None, layer="relu2"):
    """Grad-CAM (Selvaraju et al., 2017): the channels of ``layer`` weighted by how much the logit gains
    from them, summed, ReLU'd, and upsampled (bilinear) to the input size.

    images: (N, 1, 28, 28) -> (N, 1, 28, 28), non-negative. The weight of channel c is the mean over
    positions of d logit / d A_c, where A = the output of ``layer`` (for relu2: (N, 64, 14, 14)).
    """
    head, tail = _stages(model, layer)
    with _differentiable(model):
        acts = head(images).detach().requires_grad_()  # the image's own gradient is not needed here
        logits = tail(acts)
        score = logits.gather(1, _targets(logits, target)[:, None]).sum()
        (grad,) = torch.autograd.grad(score, acts)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = torch.relu((weights * acts.detach()).sum(1, keepdim=True))  # (N, 1, h, w)
    return nn.functional.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
