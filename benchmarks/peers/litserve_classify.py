"""LitServe classifying image files: the same decode as elunet's (elunet/images.py, Pillow with JPEG draft mode and early
reduce: the fastest decode we know, so the peer's fastest configuration) and elunet's ONNX export, with LitServe's batching.

Runs in the peers' virtual environment (benchmarks/image_classify.py):

    python litserve_classify.py --model FILE --labels LABELS.json --color-mode RGB --width 32 --height 32 --port P \
        --max-batch-size 64 --batch-timeout 0.002 --threads 2 --workers 1

POST /v1/models/NAME/classify takes multipart/form-data with one image file (elunet's classify request) and answers
the top 5 labels with their probabilities. Each inference worker decodes the requests of its batch, then runs them
as one batch: LitServe calls decode_request in the worker process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import litserve as ls
import numpy as np
from peer_session import open_session

# elunet/images.py needs only Pillow and numpy (and elunet/errors.py): the peers' environment imports it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from elunet.images import decode_image  # noqa: E402

TOP_K = 5


class ClassifyApi(ls.LitAPI):
    def __init__(self, args: argparse.Namespace, **kwargs):
        super().__init__(**kwargs)
        self._args = args
        with open(args.labels) as f:
            self._labels = json.load(f)

    def setup(self, device):
        self._session = open_session(self._args.model, self._args.threads)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def decode_request(self, request):
        # Unannotated, so that LitServe hands over the parsed form (an annotation, a string under postponed
        # evaluation, would not compare equal to its Request and it would try to pickle the request itself);
        # LitServe keeps form files in memory, so the upload reaches the worker process.
        (upload,) = [value for _, value in request.multi_items() if hasattr(value, "filename")]
        a = self._args
        return decode_image(upload.file.read(), a.color_mode, a.width, a.height, len(a.color_mode))  # L or RGB: a letter per channel

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, pixels):
        (logits,) = self._session.run([self._output], {self._input: pixels})
        z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probabilities):
        top = np.argsort(probabilities)[::-1][:TOP_K]
        return {"predictions": [{"top": [{"index": int(i), "label": self._labels[i], "probability": float(probabilities[i])} for i in top]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--labels", required=True, help="JSON list of the class labels")
    parser.add_argument("--color-mode", required=True, choices=["L", "RGB"])
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--batch-timeout", type=float, required=True, help="seconds")
    parser.add_argument("--threads", type=int, required=True, help="ONNX Runtime intra-op threads per worker")
    parser.add_argument("--workers", type=int, required=True, help="inference worker processes (LitServe's workers_per_device)")
    args = parser.parse_args()
    api = ClassifyApi(args, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, api_path=f"/v1/models/{args.name}/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
