"""What defines a training run, without importing torch (so `elunet --help` stays fast and torch-free).

The name lists here are the choices the CLI offers; the registries that
implement them (models.ARCHITECTURES, activations.ACTIVATIONS, data.DATASETS,
schedules.SCHEDULES) are checked against them by the tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ARCHITECTURE_NAMES = ("fashion-cnn", "elu-cifar11", "elu-cifar18", "mlp-8x128")
ACTIVATION_NAMES = ("elu", "relu", "lrelu", "srelu", "celu", "selu")
DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
OPTIMIZER_NAMES = ("sgd", "adamw")
DEVICE_NAMES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in each checkpoint so --resume continues the same run.

    The defaults are the default recipe: fashion-cnn with ELU on Fashion-MNIST.
    """

    arch: str = "fashion-cnn"
    activation: str = "elu"
    alpha: float | None = None
    bn: bool = False
    dataset: str = "fashion-mnist"
    image_size: int = 32  # imagefolder only
    channels: int = 3  # imagefolder only
    limit_train: int | None = None  # train on a seeded random subset of this many images
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: bool = True
    seed: int = 0
    name: str | None = None
    # These change the numerics, so they define the run too: a resumed run must keep them to be bit-identical.
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    # How to run, not what is trained: may change between a run and its resumption.
    data_dir: str | None = None  # the dataset is named by --dataset; a resumed run finds it wherever it is now
    out: str = "runs/train"
    device: str = "auto"
    keep: int = 2

    @property
    def model_name(self) -> str:
        """The name in the card, and so the model's name in a repository unless `elunet export --name`."""
        return self.name or f"{self.arch}-{self.activation}"


RUNTIME_FIELDS = frozenset({"data_dir", "out", "device", "keep"})


def wait_passively_for_openmp() -> None:
    """Make OpenMP's idle threads sleep instead of spin (unless the user chose otherwise).

    On a CPU shared with other processes a spinning thread takes the core its busy sibling
    needs and every step stalls (measured on this 2-core machine under load: 64 images/s
    spinning vs 195 passive). Takes effect only before torch starts its thread pool.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
