"""Real images of a model's own dataset, for the checks that need them.

Parity and the int8 accuracy gate use the test split; int8 calibration uses
the train split (never test images: the gate would then judge the model on
the data its ranges were fitted to). Pixels come out as the graph takes them:
float32 in [0, 1], NCHW.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elunet.card import ModelCard
from elunet.errors import ElunetError


def load_split(card: ModelCard, split: str, data_dir: Path | None, purpose: str):
    """The card's dataset, ``split``, loaded by the train stage's loader; errors say what needed it."""
    from elunet.train.data import load_dataset

    p = card.preprocessing
    try:
        data = load_dataset(card.dataset, split, data_dir, image_size=p.height, channels=p.channels)
    except ElunetError as exc:
        raise ElunetError(
            f"{purpose} needs real {split} images of {card.dataset!r}, the model's dataset: {exc.message}",
            hint=f"{exc.hint + '; ' if exc.hint else ''}or point --data-dir at it (`elunet export` also takes --skip-verify, recorded in the card)",
        ) from None
    if data.labels != card.labels:  # the targets would index another class list
        raise ElunetError(
            f"{purpose} needs the {split} images of the model's own classes, but {data.source} has classes {data.labels}; "
            f"the model was trained on {card.labels}",
            hint="point --data-dir at the dataset the model was trained on",
        )
    return data


def to_pixels(images) -> np.ndarray:
    """uint8 images (a torch tensor or array) -> float32 pixels in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / 255.0


def real_test_pixels(card: ModelCard, count: int | None, data_dir: Path | None, purpose: str = "parity") -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` (None: all) test images of the card's dataset, and their targets."""
    data = load_split(card, "test", data_dir, purpose)
    return to_pixels(data.images[:count].numpy()), data.targets[:count].numpy()


def random_train_pixels(card: ModelCard, count: int, seed: int, data_dir: Path | None, purpose: str) -> np.ndarray:
    """``count`` training images drawn without replacement by ``seed`` (all of them if the split is smaller)."""
    data = load_split(card, "train", data_dir, purpose)
    order = np.random.default_rng(seed).permutation(len(data.images))[:count]
    return to_pixels(data.images.numpy()[np.sort(order)])
