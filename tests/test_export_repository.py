"""The model repository export writes: Triton layout, config.pbtxt as Triton's ModelConfig, the parity gate, atomicity."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2

from elunet.card import CARD_FILE, ModelCard
from elunet.certificate import RunsOn, certificate_problem
from elunet.contracts import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME, WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.export.pipeline import export_checkpoint
from elunet.export.repository_writer import stage_version
from elunet.export.settings import ExportSettings
from elunet.model_config import build_config, config_text
from elunet.export.verify import ParityReport
from elunet.repository import CONFIG_FILE, LABELS_FILE, PARITY_FILE, ModelRepository, image_model_name
from elunet.train.checkpoint import load_checkpoint, sha256_file
from fixtures_export import TEST_PARITY_IMAGES

pytestmark = pytest.mark.slow  # every test here builds on a real export of the trained checkpoint


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def repository(exported_repository, tmp_path) -> Path:
    """A private copy of the session's exported repository, for tests that add to it."""
    return Path(shutil.copytree(exported_repository, tmp_path / "repository"))


def only_model(root: Path) -> str:
    (name,) = ModelRepository(root).models()
    return name


def test_repository_layout_and_config_parse_as_triton_model_config(exported_repository, trained_checkpoint):
    name = only_model(exported_repository)
    version = ModelRepository(exported_repository).get(name)
    assert version.version == 1
    files = sorted(p.name for p in version.path.iterdir())
    assert files == sorted(["model.onnx", CARD_FILE, PARITY_FILE, WEIGHTS_FILE])
    card = version.card
    config = parse_config(exported_repository / name / CONFIG_FILE)
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    (inp,) = config.input
    (out,) = config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == (INPUT_NAME, model_config_pb2.TYPE_FP32, list(card.input_shape))
    assert (out.name, out.data_type, list(out.dims)) == (OUTPUT_NAME, model_config_pb2.TYPE_FP32, [card.num_classes])
    assert out.label_filename == LABELS_FILE
    assert config.HasField("dynamic_batching") and config.version_policy.HasField("all")
    assert (exported_repository / name / LABELS_FILE).read_text().splitlines() == card.labels
    # No staging leftovers: every entry of the model folder is a version or a model-level file.
    assert sorted(p.name for p in (exported_repository / name).iterdir()) == ["1", CONFIG_FILE, LABELS_FILE]


def test_the_version_folder_loads_as_a_checkpoint(exported_repository, trained_checkpoint):
    """The serving stage's torch backend loads the version folder itself."""
    version = ModelRepository(exported_repository).get(only_model(exported_repository))
    loaded = load_checkpoint(version.path)
    source = load_checkpoint(trained_checkpoint)
    assert loaded.sha256 == source.sha256 == version.card.export.source_checkpoint_sha256
    report = ParityReport.load(version.path / PARITY_FILE)
    assert report.passed and report.model_sha256 == sha256_file(version.path / "model.onnx")


def test_several_models_and_versions_side_by_side(repository, trained_checkpoint):
    name = only_model(repository)
    v2 = export_checkpoint(trained_checkpoint, ExportSettings(dtype="fp16"), repository=repository, skip_verify=True)
    other = export_checkpoint(trained_checkpoint, ExportSettings(elu_mode="plugin"), repository=repository, name="fashion-plugin", skip_verify=True)
    repo = ModelRepository(repository)
    assert repo.models() == sorted([name, "fashion-plugin"])
    assert [v.version for v in repo.versions(name)] == [1, 2] and v2.model_path == repository / name / "2" / "model.onnx"
    assert other.model_path == repository / "fashion-plugin" / "1" / "model.onnx"
    # --skip-verify is explicit in the card, and there is no certificate to mistake for one.
    skipped = repo.get(name, 2)
    assert skipped.card.export.parity == "skipped" and skipped.card.export.dtype == "fp16"
    assert not (skipped.path / PARITY_FILE).exists()
    assert repo.get(name, 1).card.export.parity == "passed"
    assert parse_config(repository / "fashion-plugin" / CONFIG_FILE).name == "fashion-plugin"


def test_an_existing_version_is_kept_without_force_and_replaced_with_it(repository, trained_checkpoint):
    name = only_model(repository)
    model = repository / name / "1" / "model.onnx"
    before = sha256_file(model)
    with pytest.raises(ElunetError, match="already exists"):
        export_checkpoint(trained_checkpoint, ExportSettings(dtype="fp16"), repository=repository, version=1, skip_verify=True)
    assert sha256_file(model) == before
    export_checkpoint(trained_checkpoint, ExportSettings(dtype="fp16"), repository=repository, version=1, force=True, skip_verify=True)
    assert sha256_file(model) != before and ModelCard.load(model.with_name(CARD_FILE)).export.dtype == "fp16"
    assert sorted(p.name for p in (repository / name).iterdir()) == ["1", CONFIG_FILE, LABELS_FILE]


def test_a_config_change_for_existing_versions_needs_force(repository, trained_checkpoint):
    name = only_model(repository)
    config = (repository / name / CONFIG_FILE).read_text()
    with pytest.raises(ElunetError, match="differs from what this version needs"):
        export_checkpoint(trained_checkpoint, ExportSettings(), repository=repository, max_batch_size=8, skip_verify=True)
    assert (repository / name / CONFIG_FILE).read_text() == config and [v.version for v in ModelRepository(repository).versions(name)] == [1]


def test_the_gate_refuses_a_model_changed_after_verification(exported_repository, tmp_path):
    """A certificate vouches for exact bytes: one changed weight and the version is not published."""
    source = ModelRepository(exported_repository).get(only_model(exported_repository))
    root = tmp_path / "repository"
    with pytest.raises(ElunetError, match="changed after it was verified"):
        with stage_version(root, source.name) as staged:
            proto = onnx.load(str(source.path / "model.onnx"))
            init = proto.graph.initializer[0]
            weights = numpy_helper.to_array(init).copy()
            weights.flat[0] += np.float32(0.01)
            init.CopyFrom(numpy_helper.from_array(weights, init.name))
            onnx.save(proto, str(staged.path / "model.onnx"))
            shutil.copy(source.path / PARITY_FILE, staged.path)
            staged.publish(source.card)
    assert not root.exists() or not any(root.rglob("*")), "a refused version left files behind"


def test_tensorrt_plan_config_parses(exported_repository):
    card = ModelRepository(exported_repository).get(only_model(exported_repository)).card
    text = config_text(build_config(card, name="fashion-trt", platform="tensorrt_plan", max_batch_size=32, io_dtype="fp16"))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32
    assert config.input[0].data_type == config.output[0].data_type == model_config_pb2.TYPE_FP16
    with pytest.raises(ElunetError, match="unknown Triton platform"):
        build_config(card, name="x", platform="pytorch_libtorch")


def test_the_certificate_binds_where_it_was_earned_the_card_and_the_labels(repository):
    version = ModelRepository(repository).get(only_model(repository))
    model, labels, cpu = version.model_file(), version.path.parent / LABELS_FILE, RunsOn("onnxruntime", "cpu")
    assert certificate_problem(model, cpu, labels_file=labels) is None
    assert "earned with onnxruntime on cpu, but this runs model.onnx with onnxruntime on cuda" in certificate_problem(model, RunsOn.of("onnxruntime", "cuda:0"))
    labels.write_text(labels.read_text().replace("Dress", "Frock"))
    assert f"{LABELS_FILE} is not the labels model.onnx was verified with" in certificate_problem(model, cpu, labels_file=labels)
    card = version.card
    ModelCard.model_validate({**card.model_dump(), "labels": [*card.labels[:-1], "Boot"]}).save(version.path / CARD_FILE)
    assert "card.json's labels or preprocessing changed" in certificate_problem(model, cpu)


def test_the_image_model_is_published_beside_the_version_with_the_same_verified_file(repository, trained_checkpoint):
    name = only_model(repository)
    image_name = image_model_name(name)
    result = export_checkpoint(trained_checkpoint, ExportSettings(), repository=repository, image_model=True, images=TEST_PARITY_IMAGES)
    assert result.passed and result.model_path == repository / name / "2" / "model.onnx"
    repo = ModelRepository(repository)
    assert repo.models() == sorted([name, image_name])
    tensor, image = repo.get(name, 2), repo.get(image_name, 2)
    assert sorted(p.name for p in image.path.iterdir()) == sorted(["model.onnx", CARD_FILE, PARITY_FILE])
    assert (image.path / "model.onnx").stat().st_ino == (tensor.path / "model.onnx").stat().st_ino, "one file on disk, hard-linked"
    assert (image.path / PARITY_FILE).read_bytes() == (tensor.path / PARITY_FILE).read_bytes()
    assert image.card.name == image_name and image.card.model_dump(exclude={"name"}) == tensor.card.model_dump(exclude={"name"})
    labels = repository / image_name / LABELS_FILE
    assert labels.read_text() == (repository / name / LABELS_FILE).read_text()
    assert certificate_problem(image.path / "model.onnx", RunsOn("onnxruntime", "cpu"), labels_file=labels) is None
    config, tensor_config = parse_config(repository / image_name / CONFIG_FILE), parse_config(repository / name / CONFIG_FILE)
    (inp,) = config.input
    assert (inp.name, model_config_pb2.DataType.Name(inp.data_type), list(inp.dims)) == (IMAGE_INPUT_NAME, "TYPE_STRING", [1])
    assert inp.format == model_config_pb2.ModelInput.FORMAT_NONE, "Triton allows no image format on a TYPE_STRING input"
    assert config.name == image_name and config.max_batch_size == tensor_config.max_batch_size
    assert list(config.output) == list(tensor_config.output) and config.platform == tensor_config.platform


def test_an_image_model_that_cannot_be_published_stops_the_export_before_anything_is_written(repository, trained_checkpoint):
    name = only_model(repository)
    (repository / image_model_name(name)).mkdir()
    (repository / image_model_name(name) / "1").mkdir()
    (repository / image_model_name(name) / CONFIG_FILE).write_text("# someone's own config\n")
    with pytest.raises(ElunetError, match="differs from what this version needs"):
        export_checkpoint(trained_checkpoint, ExportSettings(), repository=repository, image_model=True, skip_verify=True)
    assert [v.version for v in ModelRepository(repository).versions(name)] == [1], "the tensor model's version is not published alone"
    with pytest.raises(ElunetError, match="cannot have an image model") as refused:
        export_checkpoint(trained_checkpoint, ExportSettings(), repository=repository, name="n" * 60, image_model=True, skip_verify=True)
    assert "shorter --name" in refused.value.hint and not (repository / ("n" * 60)).exists()
    with pytest.raises(ElunetError, match="--image-model needs --repository"):
        export_checkpoint(trained_checkpoint, ExportSettings(), out=repository.parent / "m.onnx", image_model=True)
