"""Fixtures of the train stage that other stages' tests use too."""

from __future__ import annotations

from pathlib import Path

import pytest

# A brief real training run: enough to be clearly better than chance, quick on two CPU cores.
QUICK_RUN = dict(limit_train=4000, epochs=2, batch_size=64, lr=0.03, seed=0)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A fashion-cnn/ELU checkpoint folder (model.safetensors + card.json) trained on real Fashion-MNIST."""
    from elunet.train.config import TrainConfig
    from elunet.train.data import DATA_ENV, find_dataset
    from elunet.train.loop import train

    if find_dataset("fashion-mnist") is None:
        pytest.skip(f"Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or set ${DATA_ENV}")
    run = tmp_path_factory.mktemp("trained_run")
    return train(TrainConfig(out=str(run), **QUICK_RUN), log=lambda _: None)
