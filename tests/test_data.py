"""MNIST from the real files: sizes, normalisation, subsets, and the error when the files are missing."""

import urllib.error
import urllib.request

import pytest
import torch

from helpers import MNIST_MEAN, MNIST_STD, batches, load_mnist, mnist_tensors


def test_real_mnist_sizes_and_normalisation():
    train = mnist_tensors(train=True)
    test_images, test_labels = mnist_tensors(train=False)
    assert train[0].shape == (60_000, 1, 28, 28) and test_images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # normalised with the training set's own mean and std: mean 0, std 1 over the training images
    assert abs(train[0].mean().item()) < 1e-3 and abs(train[0].std().item() - 1) < 1e-3
    assert train[0].min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD)


def test_tensors_equal_the_torchvision_dataset():
    dataset = load_mnist(train=False, subset=100)
    images, labels = mnist_tensors(train=False, subset=100)
    assert len(dataset) == len(images) == 100
    for i in (0, 7, 99):
        image, label = dataset[i]
        assert torch.equal(images[i], image) and labels[i].item() == label


def test_bad_subset_is_refused():
    with pytest.raises(ValueError, match="subset must be between 1 and 10000, got 0"):
        load_mnist(train=False, subset=0)


def test_missing_files_name_the_folder_and_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_mnist(root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message


def test_batches_cover_every_image_once():
    images, labels = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    seen = [y for _, ys in batches(images, labels, 4, shuffle=True, generator=torch.Generator().manual_seed(0)) for y in ys.tolist()]
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    assert [len(y) for _, y in batches(images, labels, 4)] == [4, 4, 2]
