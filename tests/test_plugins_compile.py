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


def headers_or_skip() -> tuple[Path, Path]:
    """TensorRT's and CUDA's include folders; the test skips, saying why, without them."""
    trt_include = tensorrt_include_dir()
    if trt_include is None:
        pytest.skip("TensorRT headers not found: set TENSORRT_INCLUDE_DIR to a folder with NvInferRuntime.h "
                    "(TensorRT is not installable on this machine)")
    cuda_include = cuda_include_dir()
    if cuda_include is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found next to nvcc")
    return trt_include, cuda_include


@needs_cmake
@needs_cxx
@pytest.mark.parametrize("source", ["elu_plugin.cpp", "plugin_entry_dynamic.cpp", "plugin_entry_static.cpp"])
def test_plugin_compiles_against_tensorrt_headers(source: str, tmp_path: Path) -> None:
    trt_include, cuda_include = headers_or_skip()
    header = generate_contract_header(tmp_path)
    run([CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
         f"-I{ELU_DIR}", f"-I{header.parent}", "-isystem", str(trt_include), "-isystem", str(cuda_include), str(ELU_DIR / source)])


EXCEPTION_PROBE = r"""
// Makes operator new throw on demand and checks that every entry point that
// allocates catches the bad_alloc, reports it and returns its failure value
// (an escaping exception would std::terminate this program).
#include "elu_plugin.h"
#include "elu_plugin_contract.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

namespace
{
bool gFailAllocations = false;
}

void* operator new(std::size_t size)
{
    void* p = gFailAllocations ? nullptr : std::malloc(size != 0 ? size : 1);
    if (p == nullptr)
    {
        throw std::bad_alloc();
    }
    return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

// What libnvinfer and the kernel library would provide.
extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept { return nullptr; }
extern "C" int elunet_elu_launch(void const*, void*, int64_t, int32_t, float, void*) { return 700; }
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept;

// Stores without allocating: it is called while operator new throws.
class Recorder : public nvinfer1::IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override { return mNbErrors; }
    nvinfer1::ErrorCode getErrorCode(int32_t) const noexcept override { return mCode; }
    ErrorDesc getErrorDesc(int32_t) const noexcept override { return mDesc; }
    bool hasOverflowed() const noexcept override { return false; }
    void clear() noexcept override { mNbErrors = 0; }
    bool reportError(nvinfer1::ErrorCode code, ErrorDesc desc) noexcept override
    {
        mCode = code;
        std::snprintf(mDesc, sizeof(mDesc), "%s", desc);
        ++mNbErrors;
        return false;
    }
    RefCount incRefCount() noexcept override { return ++mRefs; }
    RefCount decRefCount() noexcept override { return --mRefs; }

    int32_t mNbErrors{0};
    nvinfer1::ErrorCode mCode{nvinfer1::ErrorCode::kSUCCESS};
    char mDesc[1024]{};
    RefCount mRefs{0};
};

class Context : public nvinfer1::IPluginResourceContext
{
public:
    explicit Context(nvinfer1::IErrorRecorder* recorder) : mRecorder(recorder) {}
    nvinfer1::IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return mRecorder; }

private:
    nvinfer1::IErrorRecorder* mRecorder;
};

#define CHECK(condition)                                                                                               \
    if (!(condition))                                                                                                  \
    {                                                                                                                  \
        std::printf("FAILED line %d: %s\n", __LINE__, #condition);                                                    \
        return 1;                                                                                                      \
    }

int main()
{
    int32_t nbCreators = -1;
    gFailAllocations = true;
    CHECK(getCreators(nbCreators) == nullptr && nbCreators == 0);
    gFailAllocations = false;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    CHECK(creators != nullptr && nbCreators == 1);
    auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[0]);

    float alpha = 0.5f;
    nvinfer1::PluginField field(elunet::contract::kAlphaField, &alpha, nvinfer1::PluginFieldType::kFLOAT32, 1);
    nvinfer1::PluginFieldCollection fc{1, &field};
    gFailAllocations = true;
    CHECK(creator->createPlugin("elu", &fc, nvinfer1::TensorRTPhase::kBUILD) == nullptr);
    gFailAllocations = false;
    nvinfer1::IPluginV3* plugin = creator->createPlugin("elu", &fc, nvinfer1::TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    auto* core = static_cast<elunet::EluPlugin*>(plugin);

    gFailAllocations = true;
    CHECK(core->clone() == nullptr);
    gFailAllocations = false;

    Recorder recorder;
    Context context(&recorder);
    auto* attached = static_cast<elunet::EluPlugin*>(core->attachToContext(&context));
    CHECK(attached != nullptr && recorder.mRefs == 1);

    gFailAllocations = true;
    CHECK(attached->getFieldsToSerialize() == nullptr);
    gFailAllocations = false;
    CHECK(recorder.mNbErrors == 1 && recorder.mCode == nvinfer1::ErrorCode::kFAILED_ALLOCATION);
    CHECK(std::strstr(recorder.mDesc, "EluPlugin::getFieldsToSerialize") != nullptr);
    nvinfer1::PluginFieldCollection const* serialized = attached->getFieldsToSerialize();
    CHECK(serialized != nullptr && serialized->nbFields == 1
        && std::strcmp(serialized->fields[0].name, elunet::contract::kAlphaField) == 0);

    // The stub launcher fails, so enqueue builds its message in a std::string.
    nvinfer1::PluginTensorDesc desc{};
    desc.dims.nbDims = 1;
    desc.dims.d[0] = 4;
    desc.type = nvinfer1::DataType::kFLOAT;
    desc.format = nvinfer1::TensorFormat::kLINEAR;
    float data[4]{};
    void const* inputs[] = {data};
    void* outputs[] = {data};
    CHECK(attached->enqueue(&desc, &desc, inputs, outputs, nullptr, nullptr) == -1 && recorder.mNbErrors == 1);
    gFailAllocations = true;
    CHECK(attached->enqueue(&desc, &desc, inputs, outputs, nullptr, nullptr) == -1);
    gFailAllocations = false;
    CHECK(recorder.mNbErrors == 2 && std::strstr(recorder.mDesc, "EluPlugin::enqueue") != nullptr);

    delete attached;
    CHECK(recorder.mRefs == 0);
    delete plugin;
    std::printf("OK\n");
    return 0;
}
"""


@needs_cmake
@needs_cxx
def test_plugin_entry_points_catch_exceptions(tmp_path: Path) -> None:
    trt_include, cuda_include = headers_or_skip()
    header = generate_contract_header(tmp_path)
    probe = tmp_path / "exception_probe.cpp"
    probe.write_text(EXCEPTION_PROBE)
    exe = tmp_path / "exception_probe"
    # Stubs stand in for libnvinfer and the kernel, so this links and runs without either.
    run([CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations", f"-I{ELU_DIR}",
         f"-I{header.parent}", "-isystem", str(trt_include), "-isystem", str(cuda_include), str(probe),
         str(ELU_DIR / "elu_plugin.cpp"), str(ELU_DIR / "plugin_entry_dynamic.cpp"), "-o", str(exe)])
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "OK", f"{done.stdout}\n{done.stderr}"
    assert "caught exception: std::bad_alloc" in done.stderr, done.stderr
