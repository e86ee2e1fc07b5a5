"""The explanation methods of helpers.explain, run through the from-scratch layers, against captum's
reference implementations on SimpleCNNBuiltin carrying the same weights (float64)."""

import pytest
import torch
from captum.attr import InputXGradient, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency
from captum.robust import FGSM, PGD

import helpers
from helpers import explain
from helpers.data import MNIST_STD

TOL = 1e-9


@pytest.fixture(scope="module")
def twins():
    """The committed SimpleCNN (from scratch) and its built-in twin with the same weights, in float64,
    left in training mode (the methods must switch dropout off themselves), and 4 real test digits."""
    ours = helpers.SimpleCNN()
    helpers.load_checkpoint(helpers.CHECKPOINT, ours)
    builtin = helpers.SimpleCNNBuiltin()
    builtin.load_state_dict(ours.state_dict())
    images, labels = helpers.mnist_tensors(train=False, subset=4)
    return ours.double(), builtin.double().eval(), images.double(), labels


def close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() < tol * max(1.0, b.abs().max().item())


def test_saliency_is_the_input_gradient_of_the_builtin_twin(twins):
    ours, builtin, images, labels = twins
    x = images.clone().requires_grad_()
    logits = builtin(x)
    (expected,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
    close(explain.saliency(ours, images), expected)
    assert ours.training, "saliency must restore the model's training mode"
    assert all(p.requires_grad for p in ours.parameters()), "saliency must unfreeze the weights again"


def test_saliency_matches_captum(twins):
    ours, builtin, images, labels = twins
    expected = Saliency(builtin).attribute(images, target=labels, abs=False)
    close(explain.saliency(ours, images, labels), expected)
    close(explain.saliency(ours, images, 3), Saliency(builtin).attribute(images, target=3, abs=False))


def test_gradient_x_input_matches_captum(twins):
    ours, builtin, images, labels = twins
    close(explain.gradient_x_input(ours, images, labels, baseline=0.0), InputXGradient(builtin).attribute(images, target=labels))
    # against a black baseline: x * gradient of the network fed (x + black), at x - black
    shifted = InputXGradient(lambda z: builtin(z + explain.BLACK)).attribute(images - explain.BLACK, target=labels)
    close(explain.gradient_x_input(ours, images, labels), shifted)


def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_noise(twins):
    ours, builtin, images, labels = twins
    torch.manual_seed(7)  # captum draws its noise from the global generator: the same numbers as ours
    expected = NoiseTunnel(Saliency(builtin)).attribute(
        images, nt_type="smoothgrad", nt_samples=4, stdevs=0.15 / MNIST_STD, target=labels, abs=False
    )
    close(explain.smoothgrad(ours, images, labels, samples=4, sigma=0.15, seed=7), expected)


def test_occlusion_matches_captum(twins):
    """The drop of the logit (captum's Occlusion explains whatever forward function it is given: here
    the logits), averaged over the squares that cover each pixel."""
    ours, builtin, images, labels = twins
    expected = Occlusion(builtin).attribute(
        images[:2], sliding_window_shapes=(1, 6, 6), strides=(1, 2, 2), baselines=explain.BLACK, target=labels[:2],
        perturbations_per_eval=144,
    )
    close(explain.occlusion(ours, images[:2], labels[:2], patch=6, stride=2), expected.double(), tol=1e-6)  # captum sums in float32
    other = Occlusion(builtin).attribute(images[:2], sliding_window_shapes=(1, 4, 4), strides=(1, 4, 4),
                                         baselines=explain.BLACK, target=3)  # fmt: skip
    close(explain.occlusion(ours, images[:2], 3, patch=4, stride=4), other.double(), tol=1e-6)


@pytest.mark.parametrize("layer", ["relu2", "pool2"])
def test_grad_cam_matches_captum(twins, layer):
    ours, builtin, images, labels = twins
    cam = LayerGradCam(builtin, getattr(builtin, layer)).attribute(images, target=labels, relu_attributions=True)
    expected = LayerAttribution.interpolate(cam, (28, 28), interpolate_mode="bilinear")
    close(explain.grad_cam(ours, images, labels, layer=layer), expected)


def _cross_entropy(logits, target):
    return torch.nn.functional.cross_entropy(logits, target, reduction="none")


def test_fgsm_matches_captum(twins):
    ours, builtin, images, labels = twins
    attack = FGSM(builtin, _cross_entropy, lower_bound=explain.BLACK, upper_bound=explain.WHITE)
    attack.zero_thresh = 0.0  # captum leaves pixels with |gradient| <= 1e-6 alone; sign(0) = 0 does the same at 0
    eps = 0.1
    close(explain.fgsm(ours, images, labels, eps), attack.perturb(images, eps / MNIST_STD, labels))
    targeted = attack.perturb(images, eps / MNIST_STD, torch.full_like(labels, 3), targeted=True)
    close(explain.fgsm(ours, images, labels, eps, target=3), targeted)


def test_pgd_matches_captum(twins):
    """Each PGD step starts from a digit with saturated pixels, where max-pooling windows hold exact
    ties that the two implementations' rounding (1e-16) breaks differently: the gradients then differ
    legitimately. So the attack's steps, projection and clamping are checked against captum's PGD
    driving the same from-scratch network; its gradients are the twin's (the tests above)."""
    ours, builtin, images, labels = twins
    eps, steps = 0.1, 3
    ours.eval()
    try:
        attack = PGD(ours, _cross_entropy, lower_bound=explain.BLACK, upper_bound=explain.WHITE)
        attack.fgsm.zero_thresh = 0.0
        expected = attack.perturb(images, eps / MNIST_STD, 2.5 * eps / steps / MNIST_STD, steps, labels)
    finally:
        ours.train()
    adversarial = explain.pgd(ours, images, labels, eps, steps=steps)
    close(adversarial, expected)
    assert (adversarial - images).abs().max() <= eps / MNIST_STD + TOL

    def loss(x):
        return _cross_entropy(helpers.predict(builtin, x), labels)

    assert (loss(adversarial) > loss(images)).all()  # and the twin's loss rose on every digit


def test_randomising_the_weights_changes_the_saliency_map(twins):
    """The sanity check of Adebayo et al.: a map that survives the destruction of the model is not
    about the model. The same model gives rank correlation 1; a fully randomised one, far less."""
    ours, _, images, labels = twins
    trained = explain.saliency(ours, images, labels)
    assert torch.allclose(explain.spearman(trained, explain.saliency(ours, images, labels)), torch.ones(len(images)).double())
    random = explain.randomised(ours, ["fc2", "fc1", "conv2", "conv1"])
    assert explain.spearman(trained.abs(), explain.saliency(random, images, labels).abs()).mean() < 0.5
    top_only = explain.randomised(ours, ["fc2"])
    assert not torch.allclose(explain.saliency(top_only, images, labels), trained)
    assert torch.equal(ours.fc2.weight, helpers.load_checkpoint(helpers.CHECKPOINT)["model"]["fc2.weight"].double())


def test_spearman_uses_average_ranks_for_ties():
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 3.0, 2.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    ranks_a = torch.tensor([[1.0, 2.5, 2.5, 4.0], [2.0, 2.0, 2.0, 4.0]])
    ranks_b = torch.tensor([[1.0, 3.0, 2.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    expected = torch.stack([torch.corrcoef(torch.stack([ra, rb]))[0, 1] for ra, rb in zip(ranks_a, ranks_b)])
    assert torch.allclose(explain.spearman(a, b).float(), expected)
    assert torch.allclose(explain.spearman(b, b.flip(1)), torch.tensor([-1.0, -1.0]).double())
    constant = explain.spearman(torch.zeros(2, 4), b)  # an all-zero map has no order
    assert constant.isnan().all(), constant


def test_deletion_curve_starts_at_the_prediction_and_ends_at_a_black_image(twins):
    ours, _, images, labels = twins
    images, ours = images.float(), helpers.SimpleCNN()
    helpers.load_checkpoint(helpers.CHECKPOINT, ours)
    counts, curve, order = explain.deletion_curve(ours, images, None, labels, step=196)
    assert counts.tolist() == [0, 196, 392, 588, 784]
    assert torch.equal(order.sort(1).values, torch.arange(784).expand(len(images), -1))  # each pixel once
    probabilities = helpers.predict(ours, images).softmax(1)
    black = helpers.predict(ours, torch.full_like(images[:1], explain.BLACK)).softmax(1)[0]
    assert torch.allclose(curve[:, 0], probabilities.gather(1, labels[:, None])[:, 0])
    assert torch.allclose(curve[:, -1], black[labels])
    _, ink_first, bright_order = explain.deletion_curve(ours, images, images, labels, step=196)
    assert (ink_first[:, 1] < curve[:, 1]).float().mean() > 0.5  # the brightest pixels matter more than random ones
    brightness = images.flatten(1).gather(1, bright_order)
    assert (brightness[:, :-1] >= brightness[:, 1:]).all()  # the order used: brightest first
    # the curve is the probability after deleting the first k pixels of that order
    k = 196
    deleted = images.flatten(1).scatter(1, bright_order[:, :k], explain.BLACK).view_as(images)
    assert torch.allclose(ink_first[:, 1], helpers.predict(ours, deleted).softmax(1).gather(1, labels[:, None])[:, 0])
    assert torch.equal(explain.deletion_curve(ours, images, None, labels, step=196)[2], order)  # seeded: repeatable


def test_maximise_raises_its_objective_and_is_repeatable(twins):
    model = helpers.SimpleCNN()
    helpers.load_checkpoint(helpers.CHECKPOINT, model)
    images, reached = explain.maximise(model, "conv2", [0, 5, 9], steps=8)
    start = explain.maximise(model, "conv2", [0, 5, 9], steps=0)[1]
    assert images.shape == (3, 1, 28, 28) and (reached > start).all()
    assert images.min() >= explain.BLACK and images.max() <= explain.WHITE
    assert torch.equal(images, explain.maximise(model, "conv2", [0, 5, 9], steps=8)[0])
    _, logits = explain.maximise(model, "fc2", [3], steps=8)
    assert logits.shape == (1,)


def test_bad_input_is_explained(twins):
    ours, _, images, labels = twins
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\).*unsqueeze"):
        explain.saliency(ours, images[0])
    with pytest.raises(ValueError, match="multiple of stride"):
        explain.occlusion(ours, images, patch=5, stride=2)
    with pytest.raises(ValueError, match="no stage 'relu9'.*relu2"):
        explain.grad_cam(ours, images, layer="relu9")
    with pytest.raises(ValueError, match="one class index per image"):
        explain.saliency(ours, images, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="not a stage with weights.*conv1"):
        explain.randomised(ours, ["relu1"])
    with pytest.raises(ValueError, match=r"stride must be between 1 and patch \(4\).*, got 8"):
        explain.occlusion(ours, images, patch=4, stride=8)  # (28 - 4) % 8 == 0, but 8 > 4 left pixels uncovered: NaN
    stages = "conv1, relu1, pool1, conv2, relu2, pool2"
    with pytest.raises(ValueError, match=rf"Grad-CAM needs .* 'fc1' gives \(4, 128\): use one of {stages}$"):
        explain.grad_cam(ours, images, layer="fc1")
    with pytest.raises(ValueError, match=r"target must be class indices from 0 to 9, got 10"):
        explain.saliency(ours, images, 10)
    with pytest.raises(ValueError, match=r"target must be class indices from 0 to 9, got \[1, 2, -1, 3\]"):
        explain.grad_cam(ours, images, torch.tensor([1, 2, -1, 3]))
    with pytest.raises(TypeError, match="target must hold integer class indices, got dtype torch.float32"):
        explain.occlusion(ours, images, 3.0)
    with pytest.raises(ValueError, match=r"channels must be conv2 channel indices from 0 to 63, got \[0, 64\]"):
        explain.maximise(helpers.SimpleCNN(), "conv2", [0, 64], steps=1)


def test_maximise_takes_one_int_channel(twins):
    model = helpers.SimpleCNN()
    helpers.load_checkpoint(helpers.CHECKPOINT, model)
    images, reached = explain.maximise(model, "conv2", 5, steps=2)
    assert images.shape == (1, 1, 28, 28) and reached.shape == (1,)
    assert torch.equal(images, explain.maximise(model, "conv2", [5], steps=2)[0])


@pytest.mark.parametrize(
    "method", [explain.saliency, explain.gradient_x_input, explain.smoothgrad, explain.occlusion, explain.grad_cam]
)
def test_an_empty_batch_gives_no_maps(twins, method):
    ours, _, images, _ = twins
    maps = method(ours, images[:0])
    assert maps.shape == (0, 1, 28, 28) and maps.dtype == images.dtype
