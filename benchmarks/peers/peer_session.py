"""The ONNX Runtime session every peer server opens: the settings of elunet's own engine
(elunet/runtime/onnxruntime_engine.py), so that the servers differ in serving, not in the session."""

from __future__ import annotations

import onnxruntime as ort


def open_session(path: str, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
