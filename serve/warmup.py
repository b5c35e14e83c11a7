"""Triton's ``model_warmup`` (config.pbtxt): the samples a model version runs on each instance before it is ready.

Each ModelWarmup gives a batch size, a count (0 or absent: once) and, for the model's input, its
data type and dims with the data: ``zero_data``, ``random_data`` or ``input_data_file`` (a file of
raw tensor bytes in the model folder's ``warmup/``, as in Triton). A sample that does not fit the model
(another input name, data type or dims, a file of the wrong size) stops the load with what was
expected and what came, as Triton's load fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elunet.dtypes import BY_TRITON, BY_V2
from elunet.errors import ElunetError
from elunet.model_config import TensorSignature

WARMUP_FOLDER = "warmup"


def warmup_samples(config, model_dir: Path, tensor: TensorSignature) -> list[tuple[str, np.ndarray, int]]:
    """(name, batch, times) of every model_warmup of ``config`` for a model whose input is ``tensor``."""
    if config is None:
        return []
    samples = []
    for warmup in config.model_warmup:
        what = f"model_warmup {warmup.name or '(unnamed)'}"
        if set(warmup.inputs) != {tensor.name}:
            raise ElunetError(f"{what} gives inputs {sorted(warmup.inputs)}, the model's only input is {tensor.name!r}")
        given = warmup.inputs[tensor.name]
        dtype_name = type(given).DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[given.data_type].name
        if dtype_name not in BY_TRITON or BY_TRITON[dtype_name].v2 != tensor.datatype:
            raise ElunetError(f"{what}: data_type {dtype_name}, the model's input is TYPE_{tensor.datatype}")
        if tuple(given.dims) != tuple(tensor.dims):
            raise ElunetError(f"{what}: dims {list(given.dims)}, the model's input has dims {list(tensor.dims)}")
        shape = (max(1, warmup.batch_size), *tensor.dims)
        dtype = BY_V2[tensor.datatype].np
        source = given.WhichOneof("input_data_type")
        if source == "zero_data":
            batch = np.zeros(shape, dtype)
        elif source == "random_data":
            batch = np.random.default_rng().random(shape).astype(dtype)
        elif source == "input_data_file":
            path = model_dir / WARMUP_FOLDER / given.input_data_file
            if not path.is_file():
                raise ElunetError(f"{what}: input_data_file {path} does not exist")
            data = path.read_bytes()
            one = int(np.prod(tensor.dims)) * dtype.itemsize
            if len(data) != one:
                raise ElunetError(f"{what}: {path} has {len(data)} bytes, one {dtype_name} sample of dims {list(tensor.dims)} has {one}")
            batch = np.broadcast_to(np.frombuffer(data, dtype).reshape(tensor.dims), shape).copy()
        else:
            raise ElunetError(f"{what} gives no data for {tensor.name!r}: set zero_data, random_data or input_data_file")
        samples.append((warmup.name, batch, max(1, warmup.count)))
    return samples
