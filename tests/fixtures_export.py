"""Export-stage fixtures: real exports of the trained fashion-cnn checkpoint (fixture ``trained_checkpoint``).

- ``exported_repository``: a model repository holding the trained fashion-cnn,
  exported natively in fp32 with parity passed (used by the serving tests too).
- ``fashion_export``: (elu_mode, dtype) -> an ``elunet export --out`` result of
  the same checkpoint, each exported once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Fewer real test images than the CLI default keep the suite fast; the demo uses the default.
TEST_PARITY_IMAGES = 256


@pytest.fixture(scope="session")
def exported_repository(trained_checkpoint, tmp_path_factory) -> Path:
    """ROOT/<card name>/1/{model.onnx, card.json, parity.json, model.safetensors}, config.pbtxt, labels.txt."""
    from elunet.export.pipeline import export_checkpoint
    from elunet.export.settings import ExportSettings

    root = tmp_path_factory.mktemp("export") / "repository"
    result = export_checkpoint(Path(trained_checkpoint), ExportSettings(), repository=root, images=TEST_PARITY_IMAGES)
    assert result.passed, "\n".join(result.report.lines())
    return root


@pytest.fixture(scope="session")
def fashion_export(trained_checkpoint, tmp_path_factory):
    """Export on first use, per (elu_mode, dtype); returns the ExportResult (model at .model_path)."""
    from elunet.export.pipeline import export_checkpoint
    from elunet.export.settings import ExportSettings

    done = {}

    def get(elu_mode: str, dtype: str):
        if (elu_mode, dtype) not in done:
            out = tmp_path_factory.mktemp(f"export-{elu_mode}-{dtype}") / "model.onnx"
            settings = ExportSettings(elu_mode=elu_mode, dtype=dtype)
            done[elu_mode, dtype] = export_checkpoint(Path(trained_checkpoint), settings, out=out, images=TEST_PARITY_IMAGES)
        return done[elu_mode, dtype]

    return get
