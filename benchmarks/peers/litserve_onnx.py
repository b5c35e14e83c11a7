"""LitServe serving elunet's ONNX export with LitServe's batching, answering V2 JSON infer requests.

Runs in the peers' virtual environment (benchmarks/serve_peers.py):

    python litserve_onnx.py --model FILE --name NAME --port P --max-batch-size 64 --batch-timeout 0.002 --threads 2

POST /v2/models/NAME/infer takes the V2 JSON request of one image and answers V2 JSON logits.
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np

from peer_session import open_session


class OnnxApi(ls.LitAPI):
    def __init__(self, model: str, name: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self._model, self._name, self._threads = model, name, threads

    def setup(self, device):
        self._session = open_session(self._model, self._threads)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def decode_request(self, request):
        tensor = request["inputs"][0]
        # One image per request: LitServe's batch() stacks these into [n, C, H, W].
        return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"][1:])

    def predict(self, pixels):
        (logits,) = self._session.run([self._output], {self._input: pixels})
        return list(logits)

    def encode_response(self, logits):
        return {
            "model_name": self._name,
            "outputs": [{"name": self._output, "datatype": "FP32", "shape": [1, len(logits)], "data": logits.tolist()}],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--batch-timeout", type=float, required=True, help="seconds")
    parser.add_argument("--threads", type=int, required=True, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    api = OnnxApi(args.model, args.name, args.threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                  api_path=f"/v2/models/{args.name}/infer")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
