"""The shared image decode (elunet/images.py): fidelity of the reduced decode, and training = serving."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fixtures_serve import http
from PIL import Image, ImageOps
from test_serve_classify import multipart

from elunet.images import REDUCING_GAP, decode_image

PHOTO = (1920, 1080)
PHOTOS = 36
# The largest difference in any class probability between the served (DCT-scaled) decode and a full decode,
# over the PHOTOS images: the test prints what it measures; the bound leaves room for other libjpeg builds.
MAX_PROBABILITY_DIFFERENCE = 0.02


def _encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def _jpeg(image: Image.Image, **save) -> bytes:
    return _encoded(image, "JPEG", quality=90, **save)


def full_decode(data: bytes, color_mode: str, size: tuple[int, int]) -> np.ndarray:
    """The decode before issue 29: every pixel of the file, then orientation, conversion and resize."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert(color_mode))
    pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP), np.float32) / np.float32(255)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@pytest.mark.slow
def test_photo_sized_jpegs_served_from_a_reduced_decode_get_the_top_1_of_a_full_decode(start_server, exported_repository):
    import onnxruntime as ort

    from elunet.repository import ModelRepository
    from elunet.train.data import load_dataset

    (name,) = ModelRepository(exported_repository).models()
    model = next(exported_repository.glob(f"{name}/*/model.onnx"))
    images = load_dataset("fashion-mnist", "test").images[:PHOTOS].numpy()[:, 0]
    # Real pictures as a camera would store them: colour, 1080p, JPEG.
    photos = [_jpeg(Image.fromarray(p).convert("RGB").resize(PHOTO, Image.Resampling.BICUBIC)) for p in images]

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    height, width = session.get_inputs()[0].shape[2:]
    full = np.stack([full_decode(p, "L", (width, height)) for p in photos])
    logits = session.run(None, {session.get_inputs()[0].name: full})[0].astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)

    server = start_server(exported_repository)
    body, headers = multipart([(f"{i}.jpg", p) for i, p in enumerate(photos)], {"top_k": str(expected.shape[1])})
    status, _, answer = http("POST", f"{server.url}/v1/models/{name}/classify", body, headers)
    server.stop()
    assert status == 200, answer
    served = np.zeros_like(expected)
    for i, prediction in enumerate(json.loads(answer)["predictions"]):
        for top in prediction["top"]:
            served[i, top["index"]] = top["probability"]
    differ = np.flatnonzero(served.argmax(1) != expected.argmax(1))
    assert not differ.size, f"top-1 differs from a full decode on images {differ.tolist()}"
    largest = float(np.abs(served - expected).max())
    print(f"largest probability difference over {PHOTOS} {PHOTO[0]}x{PHOTO[1]} JPEGs: {largest:.6f}")
    assert largest <= MAX_PROBABILITY_DIFFERENCE


def test_a_training_image_and_the_same_file_served_give_the_same_tensor(tmp_path):
    """What issue 29 found apart: EXIF orientation, reducing_gap, 16-bit scaling. The training tensor is
    the loop's input (uint8 / 255); the served one is what the server's decoding workers compute."""
    from elunet.card import Preprocessing
    from elunet.serve.images import image_pixels
    from elunet.train.data import load_dataset

    rng = np.random.default_rng(0)
    size = 16
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: a viewer turns it by 90 degrees
    gradient = np.linspace(0, 65535, 300 * 200, dtype=np.float64).reshape(200, 300).astype(np.uint16)
    files = {
        "a/turned.jpg": _jpeg(Image.fromarray(rng.integers(0, 256, (400, 640, 3), np.uint8)), exif=exif),
        "a/plain.png": _encoded(Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8)), "PNG"),
        "b/sixteen.png": _encoded(Image.fromarray(gradient), "PNG"),
        "b/big.jpg": _jpeg(Image.fromarray(rng.integers(0, 256, (1080, 1920, 3), np.uint8))),
    }
    for split in ("train", "test"):  # the test split is only there because a folder needs one
        for path, data in files.items():
            (tmp_path / split / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / split / path).write_bytes(data)

    pre = Preprocessing(channels=3, height=size, width=size, color_mode="RGB", normalization="meanstd")
    dataset = load_dataset("imagefolder", "train", tmp_path, image_size=size, channels=3)
    order = sorted(files)  # load_imagefolder's: by class, then by name
    assert len(dataset) == len(order)
    for path, trained in zip(order, dataset.images):
        x = trained.float().div_(255.0).numpy()  # train/loop.py's conversion
        served = image_pixels(files[path], pre, path, 10**8)
        # 8-bit files: the same float32 values; 16-bit: training stores 8 bits, so within half a step.
        tolerance = 0.5 / 255 + 1e-7 if path == "b/sixteen.png" else 0.0
        assert np.abs(x - served).max() <= tolerance, path
    # 16-bit is scaled by its range: the gradient from black to white averages mid-grey (clipped at 255, white).
    assert 120 < dataset.images[order.index("b/sixteen.png")].float().mean() < 135


def test_a_reduced_decode_of_a_photo_sized_jpeg_and_png_stays_within_a_few_steps_of_a_full_decode():
    """Both reduced to no less than REDUCING_GAP times the target (the orientation taken into account), then
    resized: the result stays within a few 8-bit steps of a resize of every decoded pixel."""
    # A smooth picture (a camera's, not noise), so that a reduction's averages stand for its pixels.
    y, x = np.mgrid[0:1080, 0:1920]
    picture = np.stack([(x / 1920 * 255), (y / 1080 * 255), ((x + y) % 256)], -1).astype(np.uint8)
    turned = Image.Exif()
    turned[0x0112] = 6  # stored on its side: the target's width lies along the file's height
    for fmt, save in (("JPEG", {}), ("PNG", {}), ("JPEG", {"exif": turned})):
        data = _encoded(Image.fromarray(picture), fmt, **save)
        reduced = decode_image(data, "RGB", 32, 24, 3)
        full = full_decode(data, "RGB", (32, 24))
        assert reduced.shape == full.shape == (3, 24, 32)
        assert np.abs(reduced - full).mean() < 2 / 255, (fmt, save)


def test_the_guides_example_runs_as_shown(tmp_path, monkeypatch):
    """docs/guides/image-decode.md's Python block, run on a photo named as it names one."""
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "image-decode.md").read_text()
    (example,) = [block.split("```", 1)[0] for block in guide.split("```python\n")[1:]]
    rng = np.random.default_rng(2)
    (tmp_path / "shirt.jpg").write_bytes(_jpeg(Image.fromarray(rng.integers(0, 256, (1080, 1920, 3), np.uint8))))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(example, scope)  # noqa: S102 - the guide's own code, kept honest
    assert scope["pixels"].shape == (3, 32, 32) and scope["pixels"].dtype == np.float32
