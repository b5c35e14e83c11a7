"""An MLServer runtime for elunet's ONNX export (MLServer ships no maintained ONNX Runtime runtime).

Runs in the peers' virtual environment (benchmarks/serve_peers.py), not elunet's: it imports only
MLServer, numpy and onnxruntime. The model file and the ONNX Runtime session settings come from the
model-settings.json ``parameters`` the benchmark writes, so that every server runs the same session.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from peer_session import open_session


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self._session = open_session(self.settings.parameters.uri, int(extra["intra_op_threads"]))
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # With adaptive batching on, ``payload`` is the requests of one batch, concatenated.
        pixels = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (logits,) = self._session.run([self._output], {self._input: pixels})
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=[NumpyCodec.encode_output(self._output, logits)])

