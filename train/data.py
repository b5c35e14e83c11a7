"""Datasets as uint8 tensors in memory: Fashion-MNIST, MNIST, CIFAR-10/100 and image folders.

Every dataset is loaded whole (the largest, CIFAR, is 150 MB as uint8), so
batches are sliced from one tensor with no worker processes. Images stay
uint8 N x C x H x W; the network's own normalization module (fitted on the
training split, see normalize.py) does the rest.

Where data is looked for, in order: ``--data-dir``, ``$ELUNET_DATA``, then
``/usr/share/datasets`` (where the Debian package ``dataset-fashion-mnist``
installs). A dataset that is not found is an error naming every folder
searched: never a silent fallback to synthetic data.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from elunet.errors import ElunetError
from elunet.train.config import DATASET_NAMES

DATA_ENV = "ELUNET_DATA"
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGEFOLDER = "imagefolder"
# An image folder without train/ and test/ sub-folders: every TEST_EVERY-th file of each class is test data.
TEST_EVERY = 10


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation, done on batches (see augment.py)."""

    pad: int = 0  # zero padding, then a random crop back to the original size
    flip: bool = False  # random horizontal flips


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folders: tuple[str, ...]  # sub-folders of a data root that may hold the files ("" = the root itself)
    files: dict[str, tuple[str, ...]]  # split -> files that must be there
    normalization: str
    augmentation: Augmentation
    how_to_get: str


def _idx_files(prefix: str) -> tuple[str, str]:
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "fashion-mnist",
            ("", "fashion-mnist", "FashionMNIST/raw"),
            {"train": _idx_files("train"), "test": _idx_files("t10k")},
            "meanstd",
            Augmentation(pad=0, flip=True),
            "sudo apt-get install dataset-fashion-mnist  (installs /usr/share/datasets/fashion-mnist), "
            "or download the four IDX .gz files from https://github.com/zalandoresearch/fashion-mnist",
        ),
        DatasetInfo(
            "mnist",
            ("", "mnist", "MNIST/raw"),
            {"train": _idx_files("train"), "test": _idx_files("t10k")},
            "meanstd",
            Augmentation(pad=2, flip=False),  # digits are not mirror-symmetric
            "download the four IDX .gz files from https://yann.lecun.com/exdb/mnist/ into a folder named mnist/",
        ),
        DatasetInfo(
            "cifar10",
            ("", "cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
            {"train": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("batches.meta",), "test": ("test_batch", "batches.meta")},
            "gcn+zca",
            Augmentation(pad=4, flip=True),  # the paper's: 4-pixel zero padding, random 32x32 crops, flips
            "download and unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        ),
        DatasetInfo(
            "cifar100",
            ("", "cifar-100-python", "cifar100/cifar-100-python"),
            {"train": ("train", "meta"), "test": ("test", "meta")},
            "gcn+zca",
            Augmentation(pad=4, flip=True),
            "download and unpack https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        ),
    )
}


@dataclass
class ImageDataset:
    """A split of a dataset, in memory."""

    name: str
    split: str
    images: torch.Tensor  # uint8 [N, C, H, W]
    targets: torch.Tensor  # int64 [N], indices into `labels`
    labels: list[str]  # class names
    source: Path
    normalization: str  # the normalization kind the recipe uses for this dataset
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    @property
    def color_mode(self) -> str:
        return "L" if self.shape[0] == 1 else "RGB"

    def fit_normalization(self):
        """The normalization module for this dataset, fitted on this split (call it on the train split)."""
        from elunet.train.normalize import fit_normalization

        if self.split != "train":
            raise ValueError("fit the normalization on the train split, never on test data")
        return fit_normalization(self.normalization, self.images)


# ---------------------------------------------------------------- finding the files


def data_roots(data_dir: Path | str | None = None) -> list[Path]:
    """Where datasets are looked for. An explicit --data-dir is the only place searched."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    roots.append(SYSTEM_DATA_ROOT)
    return roots


def candidate_folders(name: str, data_dir: Path | str | None = None) -> list[Path]:
    info = DATASETS[name]
    return [root / sub if sub else root for root in data_roots(data_dir) for sub in info.folders]


def _present(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def find_dataset(name: str, data_dir: Path | str | None = None) -> Path | None:
    """The first folder that holds every file of every split, or None."""
    info = DATASETS[name]
    needed = {f for files in info.files.values() for f in files}
    for folder in candidate_folders(name, data_dir):
        if folder.is_dir() and all(_present(folder, f) for f in needed):
            return folder
    return None


def _not_found(name: str, data_dir) -> ElunetError:
    info = DATASETS[name]
    searched = "\n".join(f"    {p}" for p in candidate_folders(name, data_dir))
    files = sorted({f for fs in info.files.values() for f in fs})
    return ElunetError(
        f"dataset {name!r} not found. Searched:\n{searched}\n  expected files (optionally .gz): {', '.join(files)}",
        hint=f"{info.how_to_get}; then pass --data-dir DIR or set ${DATA_ENV}",
    )


# ---------------------------------------------------------------- readers


def _read_bytes(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ElunetError(f"cannot read {path}: {exc}", hint="the file is damaged; download it again") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format): magic 0x0000 0x08 ndim, sizes, data."""
    raw = _read_bytes(path)
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ElunetError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (header {raw[:4].hex()})",
            hint="the file is damaged or not from the dataset; download it again",
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise ElunetError(
            f"{path} is truncated: header says {dims} = {int(np.prod(dims))} bytes, file has {len(raw) - offset}",
            hint="download it again",
        )
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _load_idx(name: str, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    image_file, label_file = DATASETS[name].files[split]
    images = read_idx(_present(folder, image_file), 3)
    targets = read_idx(_present(folder, label_file), 1)
    if len(images) != len(targets):
        raise ElunetError(f"{folder}: {len(images)} images but {len(targets)} labels in the {split} split", hint="download the files again")
    labels = FASHION_MNIST_LABELS if name == "fashion-mnist" else [str(d) for d in range(10)]
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(targets.astype(np.int64)), labels


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles; allow only what they contain (numpy arrays, builtins)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(_read_bytes(path)), encoding="bytes").load()
    except Exception as exc:  # any failure to parse means the file is not a CIFAR batch
        raise ElunetError(f"{path} is not a CIFAR python batch ({exc})", hint="download and unpack the archive again") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _load_cifar(name: str, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    meta_file, label_key, names_key = ("batches.meta", "labels", "label_names") if name == "cifar10" else ("meta", "fine_labels", "fine_label_names")
    batches = [_unpickle(_present(folder, f)) for f in DATASETS[name].files[split] if f != meta_file]
    labels = [n.decode() if isinstance(n, bytes) else n for n in _unpickle(_present(folder, meta_file))[names_key]]
    data = np.concatenate([np.asarray(b["data"], np.uint8) for b in batches])
    targets = np.concatenate([np.asarray(b[label_key], np.int64) for b in batches])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(targets):
        raise ElunetError(f"{folder}: unexpected CIFAR array shapes {data.shape}, {targets.shape}", hint="download and unpack the archive again")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(targets), labels


def _image_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {c.name: sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}


def load_imagefolder(root: Path | str, split: str, image_size: int = 32, channels: int = 3) -> ImageDataset:
    """One sub-folder per class. ``root/train`` and ``root/test`` (or ``root/val``) are used when present;
    otherwise every TEST_EVERY-th image of each class (sorted by name) is the test split."""
    from elunet.images import ImageError, decode_image

    root = Path(root).expanduser()
    if channels not in (1, 3):
        raise ElunetError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if not root.is_dir():
        raise ElunetError(f"image folder {root} does not exist", hint="pass --data-dir DIR with one sub-folder of images per class")
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        # The class list is the train split's for both splits: a test folder lacking a class must not
        # shift the targets of the classes after it.
        classes = _image_files(root / "train")
        by_class = classes if split == "train" else _image_files(test_dir)
        stray = sorted(set(by_class) - set(classes))
        if stray:
            raise ElunetError(
                f"{test_dir} has classes that {root / 'train'} lacks: {', '.join(stray)}",
                hint="a model can only be tested on classes it was trained on; add their training images or remove those folders",
            )
    else:
        classes = _image_files(root)
        by_class = {c: [f for i, f in enumerate(fs) if (i % TEST_EVERY == TEST_EVERY - 1) == (split == "test")] for c, fs in classes.items()}
    labels = sorted(classes)
    if len(labels) < 2 or not all(classes.values()):
        raise ElunetError(
            f"image folder {root} needs >= 2 class sub-folders with training images; found "
            + (", ".join(f"{c}: {len(fs)}" for c, fs in classes.items()) or "none"),
            hint=f"layout: DIR/<class>/<image> (or DIR/train/<class>/..., DIR/test/<class>/...); image types: {', '.join(sorted(IMAGE_SUFFIXES))}",
        )
    mode = "L" if channels == 1 else "RGB"
    images, targets = [], []
    for t, label in enumerate(labels):
        for f in by_class.get(label, []):
            try:
                pixels = decode_image(f.read_bytes(), mode, image_size, image_size, channels, name=str(f))
            except ImageError as exc:
                raise ElunetError(exc.message, hint="remove or replace the file") from None
            except OSError as exc:
                raise ElunetError(f"cannot read image {f}: {exc}", hint="remove or replace the file") from None
            # Stored as 8 bits like every dataset here; the loop divides by 255 again, which gives back the
            # served pixels exactly for 8-bit files and within half a step for 16-bit ones.
            images.append(np.rint(pixels * 255.0).astype(np.uint8))
            targets.append(t)
    return ImageDataset(
        IMAGEFOLDER, split, torch.from_numpy(np.stack(images)), torch.tensor(targets, dtype=torch.int64), labels, root,
        "meanstd", Augmentation(pad=max(1, image_size // 8), flip=True),
    )


def load_dataset(name: str, split: str, data_dir: Path | str | None = None, *, image_size: int = 32, channels: int = 3) -> ImageDataset:
    """Load ``split`` ("train" or "test") of a dataset by name; ``imagefolder`` reads ``data_dir``."""
    if split not in SPLITS:
        raise ElunetError(f"unknown split {split!r}", hint=f"choose one of: {', '.join(SPLITS)}")
    if name == IMAGEFOLDER:
        if data_dir is None:
            raise ElunetError("--dataset imagefolder needs --data-dir DIR", hint="DIR holds one sub-folder of images per class")
        return load_imagefolder(data_dir, split, image_size, channels)
    if name not in DATASETS:
        raise ElunetError(f"unknown dataset {name!r}", hint=f"choose one of: {', '.join(DATASET_NAMES)}")
    folder = find_dataset(name, data_dir)
    if folder is None:
        raise _not_found(name, data_dir)
    loader = _load_cifar if name.startswith("cifar") else _load_idx
    images, targets, labels = loader(name, folder, split)
    info = DATASETS[name]
    if int(targets.min()) < 0 or int(targets.max()) >= len(labels):
        raise ElunetError(f"{folder}: labels outside 0..{len(labels) - 1} in the {split} split", hint="download the files again")
    return ImageDataset(name, split, images, targets, labels, folder, info.normalization, info.augmentation)
