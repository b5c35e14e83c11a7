"""The same picture in 8-bit, 16-bit and float encodings gets the same answer from the trained model.

50 real Fashion-MNIST test images, each sent to /v1/.../classify as an 8-bit PNG, a 16-bit PNG and TIFF
(value x 257: the same picture at 16 bits) and a float TIFF (value / 255): the top-1 label agrees on all 50.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fixtures_serve import http
from PIL import Image
from test_serve_classify import multipart

pytestmark = pytest.mark.slow

IMAGES = 50


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def test_8_bit_16_bit_and_float_encodings_of_a_picture_get_the_same_top_1(start_server, exported_repository):
    from elunet.repository import ModelRepository
    from elunet.train.data import load_dataset

    (name,) = ModelRepository(exported_repository).models()
    server = start_server(exported_repository)
    images = load_dataset("fashion-mnist", "test").images[:IMAGES].numpy()[:, 0]
    encodings = {
        "8-bit PNG": lambda p: encoded(p, "PNG"),
        "16-bit PNG": lambda p: encoded(p.astype(np.uint16) * 257, "PNG"),
        "16-bit TIFF": lambda p: encoded(p.astype(np.uint16) * 257, "TIFF"),
        "float TIFF": lambda p: encoded(p.astype(np.float32) / 255, "TIFF"),
    }
    top1 = {}
    for label, encode in encodings.items():
        body, headers = multipart([(f"{i}.img", encode(p)) for i, p in enumerate(images)], {"top_k": "1"})
        status, _, answer = http("POST", f"{server.url}/v1/models/{name}/classify", body, headers)
        assert status == 200, answer
        top1[label] = [p["top"][0]["label"] for p in json.loads(answer)["predictions"]]
    reference = top1.pop("8-bit PNG")
    assert len(reference) == IMAGES
    for label, labels in top1.items():
        differ = [i for i, (a, b) in enumerate(zip(reference, labels)) if a != b]
        assert not differ, f"{label}: top-1 differs from the 8-bit PNG on images {differ}"
    server.stop()
