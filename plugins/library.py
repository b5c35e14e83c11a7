"""Finding and loading the compiled ELU plugin library into TensorRT.

Search order (the first that exists wins):
1. the path given explicitly (``--plugin-lib``),
2. ``$ELUNET_TRT_PLUGIN_LIB``,
3. the CMake build folder of a source checkout, ``build/plugins/`` (what
   ``cmake -S plugins/elu -B build/plugins && cmake --build build/plugins``
   produces),
4. beside this package (a wheel or container that ships the library).

The library exports ``getCreators``; TensorRT's registry opens it with
``load_library`` and registers the creator. Loading twice, or after the
creator was registered some other way (the static library preloaded, the
Python plugin), is a no-op rather than TensorRT's duplicate-plugin error.
"""

from __future__ import annotations

import os
from pathlib import Path

from elunet.contracts import elu_plugin_contract
from elunet.errors import ElunetError
from elunet.plugins.tensorrt_import import import_tensorrt

LIBRARY_FILE = "libelunet_trt_plugins.so"
LIBRARY_ENV = "ELUNET_TRT_PLUGIN_LIB"
PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_BUILD_DIR = PACKAGE_DIR.parent / "build" / "plugins"
BUILD_COMMAND = "cmake -S plugins/elu -B build/plugins -DTENSORRT_ROOT=<TensorRT folder> && cmake --build build/plugins -j"


def candidate_paths(explicit: Path | None = None) -> list[Path]:
    candidates = []
    if explicit is not None:
        candidates.append(Path(explicit))
    if os.environ.get(LIBRARY_ENV):
        candidates.append(Path(os.environ[LIBRARY_ENV]))
    candidates += [SOURCE_BUILD_DIR / LIBRARY_FILE, PACKAGE_DIR / LIBRARY_FILE]
    return candidates


def find_plugin_library(explicit: Path | None = None) -> Path:
    """The plugin library's path, or an ElunetError listing where it looked."""
    candidates = candidate_paths(explicit)
    if explicit is not None and not Path(explicit).is_file():
        raise ElunetError(f"plugin library {explicit} does not exist", hint=f"build it with: {BUILD_COMMAND}")
    for path in candidates:
        if path.is_file():
            return path.resolve()
    looked = "\n".join(f"    {p}" for p in candidates)
    raise ElunetError(
        f"the ELU TensorRT plugin library ({LIBRARY_FILE}) was not found; looked in:\n{looked}",
        hint=f"build it with: {BUILD_COMMAND}; or point ${LIBRARY_ENV} at it; "
        "or use the Python plugin (elunet.plugins.python_plugin), which needs no compiler",
    )


def elu_creator_registered(trt) -> bool:
    contract = elu_plugin_contract()
    registry = trt.get_plugin_registry()
    return registry.get_creator(contract.plugin_name, contract.plugin_version, contract.plugin_namespace) is not None


def load_plugin_library(explicit: Path | None = None) -> Path | None:
    """Register the ELU plugin with TensorRT from its library.

    Returns the library loaded, or None when the creator was already registered.
    """
    trt = import_tensorrt()
    if elu_creator_registered(trt):
        return None
    path = find_plugin_library(explicit)
    if trt.get_plugin_registry().load_library(str(path)) is None or not elu_creator_registered(trt):
        contract = elu_plugin_contract()
        raise ElunetError(
            f"TensorRT could not load the plugin library {path} (see TensorRT's log above), or it did not register "
            f"{contract.plugin_namespace}::{contract.plugin_name} version {contract.plugin_version}",
            hint=f"rebuild it against this TensorRT ({trt.__version__}) with: {BUILD_COMMAND}",
        )
    return path
