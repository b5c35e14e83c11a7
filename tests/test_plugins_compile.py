"""The ELU plugin's C++/CUDA, checked without a GPU and without TensorRT.

- nvcc compiles the kernel for sm_80 and sm_90, with 16-byte vector loads;
- the strings compiled into the plugin are the contract (elunet/elu_plugin.json),
  through the same header generation that CMake runs;
- CMake configures and builds the kernel library (-DELUNET_KERNEL_ONLY=ON);
- the plugin sources compile against real TensorRT headers when some are
  available (TENSORRT_INCLUDE_DIR or TENSORRT_ROOT), and skip saying so otherwise.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from elunet.contracts import ELU_PLUGIN_CONTRACT_FILE, elu_plugin_contract

ELU_DIR = Path(__file__).resolve().parents[1] / "plugins" / "elu"
NVCC = shutil.which("nvcc")
CMAKE = shutil.which("cmake")
CXX = shutil.which("g++") or shutil.which("c++")

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH (install the CUDA toolkit)")
needs_cmake = pytest.mark.skipif(CMAKE is None, reason="cmake not found on PATH (apt-get install cmake)")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (apt-get install g++)")


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def generate_contract_header(out_dir: Path) -> Path:
    header = out_dir / "elu_plugin_contract.h"
    run([CMAKE, f"-DELUNET_CONTRACT_JSON={ELU_PLUGIN_CONTRACT_FILE}", f"-DELUNET_CONTRACT_HEADER={header}",
         "-P", str(ELU_DIR / "generate_contract_header.cmake")])
    return header


@needs_nvcc
@pytest.mark.parametrize("arch", ["80", "90"])
def test_kernel_compiles_for_sm(arch: str, tmp_path: Path) -> None:
    obj = tmp_path / f"elu_kernel_sm{arch}.o"
    run([NVCC, "-c", "-O3", "-Xcompiler", "-fPIC", "--generate-code", f"arch=compute_{arch},code=sm_{arch}",
         str(ELU_DIR / "elu_kernel.cu"), "-o", str(obj)])
    assert obj.stat().st_size > 0


@needs_nvcc
def test_kernel_vector_path_uses_16_byte_accesses(tmp_path: Path) -> None:
    ptx = tmp_path / "elu_kernel.ptx"
    run([NVCC, "--ptx", "-arch=compute_90", str(ELU_DIR / "elu_kernel.cu"), "-o", str(ptx)])
    text = ptx.read_text()
    assert text.count(".entry") == 3, "one kernel per dtype: fp32, fp16, bf16"
    assert "ld.global.v4" in text and "st.global.v4" in text, "the vector body must load/store 16 bytes at a time"


@needs_nvcc
@pytest.mark.parametrize("dtype", ["FLOAT32", "FLOAT16", "BFLOAT16"])
def test_nvrtc_entry_source_compiles(dtype: str, tmp_path: Path) -> None:
    # The GPU test compiles these with NVRTC; here nvcc checks the same source.
    from elunet.plugins.kernel_loader import nvrtc_source

    entry, source = nvrtc_source(dtype)
    src = tmp_path / f"{entry}.cu"
    src.write_text(source)
    run([NVCC, "--ptx", "-arch=compute_80", f"-I{ELU_DIR}", str(src), "-o", str(tmp_path / f"{entry}.ptx")])
    assert f".entry {entry}" in (tmp_path / f"{entry}.ptx").read_text()


def compiled_contract(tmp_path: Path) -> dict:
    """The contract as a C++ program that includes the generated header prints it."""
    header = generate_contract_header(tmp_path)
    program = tmp_path / "print_contract.cpp"
    program.write_text(
        '#include <cstdio>\n#include "elu_plugin_contract.h"\n'
        "using namespace elunet::contract;\n"
        "int main() {\n"
        '  std::printf("{\\"op_type\\": \\"%s\\", \\"onnx_domain\\": \\"%s\\", \\"plugin_name\\": \\"%s\\", "\n'
        '              "\\"plugin_version\\": \\"%s\\", \\"plugin_namespace\\": \\"%s\\", \\"fields\\": {\\"%s\\": \\"%s\\"}}",\n'
        "              kOnnxOpType, kOnnxDomain, kPluginName, kPluginVersion, kPluginNamespace, kAlphaField,"
        " kAlphaFieldType);\n}\n"
    )
    exe = tmp_path / "print_contract"
    run([CXX, "-std=c++17", f"-I{header.parent}", str(program), "-o", str(exe)])
    return json.loads(run([str(exe)]).stdout)


@needs_cmake
@needs_cxx
def test_plugin_strings_are_the_contract(tmp_path: Path) -> None:
    compiled = compiled_contract(tmp_path)
    contract = elu_plugin_contract()
    assert compiled == {
        "op_type": contract.op_type,
        "onnx_domain": contract.onnx_domain,
        "plugin_name": contract.plugin_name,
        "plugin_version": contract.plugin_version,
        "plugin_namespace": contract.plugin_namespace,
        "fields": contract.fields,
    }


@needs_cmake
@needs_cxx
def test_exporter_writes_what_the_plugin_compiles(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    plugin_pass = pytest.importorskip("elunet.export.elu_plugin_pass", reason="the export stage is not installed")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Elu", ["x"], ["y"], alpha=0.25)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert plugin_pass.rewrite_elu_as_plugin(model) == 1
    (node,) = model.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    compiled = compiled_contract(tmp_path)
    assert (node.op_type, node.domain) == (compiled["op_type"], compiled["onnx_domain"])
    assert attrs.pop("plugin_version").decode() == compiled["plugin_version"]
    assert attrs.pop("plugin_namespace").decode() == compiled["plugin_namespace"]
    assert set(attrs) == set(compiled["fields"]) and attrs[next(iter(compiled["fields"]))] == pytest.approx(0.25)


@needs_cmake
def test_contract_with_unimplemented_fields_fails_at_generation(tmp_path: Path) -> None:
    raw = json.loads(ELU_PLUGIN_CONTRACT_FILE.read_text())
    raw["fields"]["beta"] = "float32"
    changed = tmp_path / "elu_plugin.json"
    changed.write_text(json.dumps(raw))
    done = subprocess.run(
        [CMAKE, f"-DELUNET_CONTRACT_JSON={changed}", f"-DELUNET_CONTRACT_HEADER={tmp_path / 'h.h'}",
         "-P", str(ELU_DIR / "generate_contract_header.cmake")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and "one field" in done.stderr


@needs_cmake
@needs_nvcc
def test_cmake_builds_the_kernel_library(tmp_path: Path) -> None:
    build = tmp_path / "build"
    run([CMAKE, "-S", str(ELU_DIR), "-B", str(build), "-DELUNET_KERNEL_ONLY=ON"])
    run([CMAKE, "--build", str(build), "-j2"])
    assert (build / "generated" / "elu_plugin_contract.h").is_file()
    lib = build / "libelunet_elu_kernel.so"
    assert "elunet_elu_launch" in run(["nm", "-D", "--defined-only", str(lib)]).stdout
    # It loads without a GPU (the CUDA runtime is lazy); launching needs one.
    assert hasattr(ctypes.CDLL(str(lib)), "elunet_elu_launch")


def tensorrt_include_dir() -> Path | None:
    for candidate in (os.environ.get("TENSORRT_INCLUDE_DIR"),
                      os.environ.get("TENSORRT_ROOT") and os.path.join(os.environ["TENSORRT_ROOT"], "include"),
                      "/usr/include/x86_64-linux-gnu", "/usr/include"):
        if candidate and (Path(candidate) / "NvInferRuntime.h").is_file():
            return Path(candidate)
    return None


def cuda_include_dir() -> Path | None:
    if NVCC is None:
        return None
    for root in (Path(os.path.realpath(NVCC)).parents[1], Path("/usr/local/cuda")):
        for candidate in (root / "include", *root.glob("targets/*/include")):
            if (candidate / "cuda_runtime_api.h").is_file():
                return candidate
    return None


@needs_cmake
@needs_cxx
@pytest.mark.parametrize("source", ["elu_plugin.cpp", "plugin_entry_dynamic.cpp", "plugin_entry_static.cpp"])
def test_plugin_compiles_against_tensorrt_headers(source: str, tmp_path: Path) -> None:
    trt_include = tensorrt_include_dir()
    if trt_include is None:
        pytest.skip("TensorRT headers not found: set TENSORRT_INCLUDE_DIR to a folder with NvInferRuntime.h "
                    "(TensorRT is not installable on this machine)")
    cuda_include = cuda_include_dir()
    if cuda_include is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found next to nvcc")
    header = generate_contract_header(tmp_path)
    run([CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
         f"-I{ELU_DIR}", f"-I{header.parent}", f"-I{trt_include}", f"-I{cuda_include}", str(ELU_DIR / source)])
