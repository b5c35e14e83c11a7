"""Publishing a version into the model repository (layout: elunet/repository.py).

A version is assembled in a hidden staging folder inside the model's folder
(``ROOT/<name>/.<version>.staging-XXXX``: same file system, not a version
because its name is not an integer), checked there, and renamed into place
in one step. Readers (elunet serve, Triton) see either no version or a
complete one. On any error the staging folder is removed, and so are the
model and repository folders created for it, when empty.

The parity gate: a version whose card says ``parity: passed`` is published
only with a passed ``parity.json`` that covers the staged model file, its
card and its labels (elunet/certificate.py); ``parity: skipped``
(``--skip-verify``) is published as such.

Python API, shared with the plugins stage (TensorRT engines)::

    with stage_version(root, name, version=None, force=False) as staged:
        ...write staged.path / MODEL_FILES[platform], parity.json...
        staged.publish(card, platform="tensorrt_plan", max_batch_size=64, io_dtype="fp16")

The image model (``elunet export --image-model``): staged beside the tensor
model's version, under image_model_name and the same version number, and
published after it by ``publish_image_model``: the same model file, so the
certificate that binds its hash holds for both.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from elunet.card import CARD_FILE, ModelCard
from elunet.certificate import certificate_problem
from elunet.files import write_atomic
from elunet.errors import ElunetError
from elunet.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILES, PARITY_FILE, ModelRepository, ModelVersion, image_model_name
from elunet.model_config import DEFAULT_MAX_BATCH_SIZE, build_config, config_text, labels_text


@dataclass
class StagedVersion:
    repository: ModelRepository
    name: str
    version: int
    path: Path  # the staging folder: write the version's files here
    force: bool
    published: ModelVersion | None = None

    @property
    def target(self) -> Path:
        return self.repository.version_dir(self.name, self.version)

    def model_files(self, card: ModelCard, *, platform: str, max_batch_size: int, io_dtype: str, encoded_images: bool = False) -> tuple[str, str]:
        """config.pbtxt and labels.txt for this version (``encoded_images``: an image model's); raises if they would
        change those of existing versions.

        Call it early (before a long export) to fail fast; publish calls it again.
        """
        config = config_text(build_config(card, name=self.name, platform=platform, max_batch_size=max_batch_size, io_dtype=io_dtype,
                                          encoded_images=encoded_images))
        labels = labels_text(card)
        # Both hold for every version of the model: never let a new version silently change
        # them under the versions already there.
        if self.repository.versions(self.name) and not self.force:
            model_dir = self.repository.model_dir(self.name)
            for file, text in ((CONFIG_FILE, config), (LABELS_FILE, labels)):
                existing = model_dir / file
                if existing.is_file() and existing.read_text() != text:
                    raise ElunetError(
                        f"{existing} differs from what this version needs (other platform, input shape, labels or batch size)",
                        hint="publish under another --name, or pass --force to rewrite it for all versions",
                    )
        return config, labels

    def publish(
        self,
        card: ModelCard,
        *,
        platform: str = "onnxruntime_onnx",
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        io_dtype: str = "fp32",
        encoded_images: bool = False,
    ) -> ModelVersion:
        """Check the staged files, write card.json, config.pbtxt and labels.txt, and rename the version into place."""
        if card.name != self.name or card.version != self.version:
            raise ElunetError(f"card says {card.name} v{card.version}, the repository slot is {self.name} v{self.version}", hint="set the card's name and version before publishing")
        model_file = self.path / MODEL_FILES.get(platform, "?")
        if platform not in MODEL_FILES or not model_file.is_file():
            raise ElunetError(f"nothing to publish: no {model_file.name} staged for platform {platform!r}", hint=f"platforms: {', '.join(MODEL_FILES)}")
        card.save(self.path / CARD_FILE)  # first: the certificate binds what the server takes from it
        check_parity_gate(card, model_file)
        config, labels = self.model_files(card, platform=platform, max_batch_size=max_batch_size, io_dtype=io_dtype, encoded_images=encoded_images)
        model_dir = self.repository.model_dir(self.name)
        write_atomic(model_dir / LABELS_FILE, labels)
        write_atomic(model_dir / CONFIG_FILE, config)
        target = self.target
        if target.exists():
            if not self.force:
                raise ElunetError(f"{target} already exists", hint="choose another --version, or pass --force to replace it")
            old = model_dir / f".{self.version}.replaced-{secrets.token_hex(4)}"
            target.rename(old)
            self.path.rename(target)
            shutil.rmtree(old)
        else:
            self.path.rename(target)
        self.published = ModelVersion(self.name, self.version, target)
        return self.published


def image_model_card(card: ModelCard) -> ModelCard:
    """The card of ``card``'s image model: only the name differs (the certificate binds labels and preprocessing, not names)."""
    return card.model_copy(update={"name": image_model_name(card.name)})


def publish_image_model(staged: StagedVersion, tensor: ModelVersion, *, platform: str, max_batch_size: int, io_dtype: str) -> ModelVersion:
    """Publish into ``staged`` (image_model_name's folder, ``tensor``'s version number) the image model of the published
    version ``tensor``: its model file, its parity.json, its card renamed, and a config.pbtxt whose input is encoded images."""
    model_file = MODEL_FILES[platform]
    try:
        os.link(tensor.path / model_file, staged.path / model_file)  # one file on disk for both models
    except OSError:  # a file system without hard links: a copy has the same hash
        shutil.copyfile(tensor.path / model_file, staged.path / model_file)
    if (tensor.path / PARITY_FILE).is_file():
        shutil.copyfile(tensor.path / PARITY_FILE, staged.path / PARITY_FILE)
    return staged.publish(image_model_card(tensor.card), platform=platform, max_batch_size=max_batch_size, io_dtype=io_dtype, encoded_images=True)


def check_parity_gate(card: ModelCard, model_file: Path) -> None:
    """Refuse a model whose card claims a parity it has no valid certificate for."""
    claim = card.export.parity if card.export else None
    if claim == "skipped":
        return
    if claim != "passed":
        raise ElunetError(f"the card of {card.name} v{card.version} has no export section with a parity result", hint="publish models written by `elunet export`")
    problem = certificate_problem(model_file, None)  # served wherever the certificate was earned
    if problem:
        raise ElunetError(f"not publishing {card.name} v{card.version}: {problem}",
                          hint="verify the file you publish: run `elunet verify` on it (or export with --skip-verify)")


def next_version(repository: ModelRepository, name: str) -> int:
    versions = repository.versions(name)
    return versions[-1].version + 1 if versions else 1


@contextlib.contextmanager
def stage_version(root: Path, name: str, version: int | None = None, force: bool = False):
    """A staging folder for ``name`` v``version`` (default: the next free version); removed unless published."""
    repository = ModelRepository(root)
    model_dir = repository.model_dir(name)  # validates the name
    version = next_version(repository, name) if version is None else int(version)
    if version < 1:
        raise ElunetError(f"version must be >= 1, got {version}", hint="Triton versions are positive integers")
    if repository.version_dir(name, version).exists() and not force:
        raise ElunetError(
            f"{repository.version_dir(name, version)} already exists",
            hint="omit --version to publish the next free one, or pass --force to replace it",
        )
    created = [p for p in (model_dir, *model_dir.parents) if not p.exists()]  # deepest first
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = StagedVersion(repository, name, version, model_dir / f".{version}.staging-{secrets.token_hex(4)}", force)
    staged.path.mkdir()
    try:
        yield staged
    finally:
        if staged.published is None:
            shutil.rmtree(staged.path, ignore_errors=True)
            for folder in created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
