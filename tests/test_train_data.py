"""Dataset loading: the real Fashion-MNIST, and clear errors for missing or damaged data."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from elunet.errors import ElunetError
from elunet.train.data import DATA_ENV, FASHION_MNIST_LABELS, SYSTEM_DATA_ROOT, find_dataset, load_dataset

FASHION = SYSTEM_DATA_ROOT / "fashion-mnist"
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")


@needs_fashion
def test_real_fashion_mnist_loads_with_class_names(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.targets.dtype == torch.int64 and torch.bincount(train.targets).tolist() == [6000] * 10
    assert train.labels == FASHION_MNIST_LABELS and train.source == FASHION
    norm = train.fit_normalization()
    assert 0.2 < norm.mean.item() < 0.4 and 0.3 < norm.std.item() < 0.4  # Fashion-MNIST: ~0.286 / ~0.353
    with pytest.raises(ValueError):
        test.fit_normalization()


def test_missing_dataset_names_the_paths_searched_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    with pytest.raises(ElunetError) as err:
        load_dataset("cifar10", "train")
    text = str(err.value)
    assert str(tmp_path / "env" / "cifar-10-batches-py") in text and "data_batch_1" in text and "cifar-10-python.tar.gz" in text
    with pytest.raises(ElunetError) as err:
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)
    searched = str(err.value).split("expected files")[0]
    assert str(SYSTEM_DATA_ROOT) not in searched  # an explicit --data-dir is the only place searched


def _write_idx(path, array, ndim):
    header = b"\x00\x00\x08" + bytes([ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_idx_dataset(folder, n=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 3)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 1)


def test_env_folder_is_searched_and_damaged_idx_is_reported(tmp_path, monkeypatch):
    # Synthetic IDX files: this test is about the file format checks, not the data.
    _fake_idx_dataset(tmp_path / "mnist")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert find_dataset("mnist") == tmp_path / "mnist"
    ds = load_dataset("mnist", "test")
    assert len(ds) == 20 and ds.labels == [str(d) for d in range(10)] and not ds.augmentation.flip
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    _write_idx(labels, np.arange(19) % 10, 1)
    with pytest.raises(ElunetError, match="20 images but 19 labels"):
        load_dataset("mnist", "test")
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x14" + bytes(5)))
    with pytest.raises(ElunetError, match="truncated"):
        load_dataset("mnist", "test")
    labels.write_bytes(b"not gzip")
    with pytest.raises(ElunetError, match="cannot read"):
        load_dataset("mnist", "test")


def test_imagefolder_loads_resized_images_with_folder_labels(tmp_path):
    from PIL import Image

    # Synthetic images: one flat colour per class.
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (40, 30), colour).save(tmp_path / name / f"{i}.png")
    train = load_dataset("imagefolder", "train", tmp_path, image_size=16, channels=3)
    test = load_dataset("imagefolder", "test", tmp_path, image_size=16, channels=3)
    assert train.labels == ["cat", "dog"] and len(train) == 18 and len(test) == 2
    assert train.images.shape == (18, 3, 16, 16) and train.images[0, 0, 0, 0] == 255
    shutil.rmtree(tmp_path / "dog")
    with pytest.raises(ElunetError, match="needs >= 2 class sub-folders"):
        load_dataset("imagefolder", "train", tmp_path)


def _synthetic_class_folders(root, classes, colours={"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255), "wolf": (9, 9, 9)}):
    """Synthetic images: two of one flat colour per class."""
    from PIL import Image

    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), colours[name]).save(root / name / f"{i}.png")


def test_a_test_folder_missing_a_class_keeps_the_train_splits_targets(tmp_path):
    _synthetic_class_folders(tmp_path / "train", ("cat", "dog", "fox"))
    _synthetic_class_folders(tmp_path / "test", ("cat", "fox"))
    test = load_dataset("imagefolder", "test", tmp_path, image_size=8)
    assert test.labels == load_dataset("imagefolder", "train", tmp_path, image_size=8).labels == ["cat", "dog", "fox"]
    blue = test.images[:, 2, 0, 0] == 255
    assert test.targets[blue].tolist() == [2, 2], "the fox images must keep the target 'fox', not take 'dog'"
    _synthetic_class_folders(tmp_path / "test", ("wolf",))
    with pytest.raises(ElunetError, match="lacks: wolf"):
        load_dataset("imagefolder", "test", tmp_path, image_size=8)


def test_augmentation_shifts_and_mirrors_whole_images():
    import torch.nn.functional as F

    from elunet.train.augment import augment
    from elunet.train.data import Augmentation

    # Synthetic images with distinct pixels, so every shift and mirror is recognisable.
    images = (torch.arange(64 * 36) % 251).to(torch.uint8).view(64, 1, 6, 6) + 1
    gen = torch.Generator().manual_seed(0)
    shifted = augment(images, Augmentation(pad=2), gen)
    padded = F.pad(images, (2, 2, 2, 2))
    windows = {(dy, dx) for dy in range(5) for dx in range(5)}
    seen = set()
    for i in range(64):
        match = [(dy, dx) for dy, dx in windows if torch.equal(shifted[i], padded[i, :, dy : dy + 6, dx : dx + 6])]
        assert match, f"image {i} is not a shifted window of its padded original"
        seen.update(match)
    assert len(seen) > 10
    mirrored = augment(images, Augmentation(flip=True), gen)
    same = [torch.equal(mirrored[i], images[i]) for i in range(64)]
    flipped = [torch.equal(mirrored[i], images[i].flip(2)) for i in range(64)]
    assert all(a or b for a, b in zip(same, flipped)) and 10 < sum(flipped) < 54
