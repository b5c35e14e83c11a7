"""The ELU CUDA kernel on a real GPU, without TensorRT, against torch.nn.functional.elu.

Runs through both loaders (nvcc -> the C ABI launcher, NVRTC -> the same
device code); each skips when its tool is missing, and everything skips
without a CUDA GPU. scripts/gpu_check.sh runs this file.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to PyTorch (this test runs on a GPU machine: scripts/gpu_check.sh)",
                allow_module_level=True)

from elunet.plugins.kernel_loader import LOADERS, load_kernel  # noqa: E402

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Element counts around the vector widths (4 for fp32, 8 for fp16/bf16) and a large odd one.
SIZES = [1, 3, 4, 7, 8, 9, 31, 1000, 4097, (1 << 20) + 5]


@pytest.fixture(scope="module", params=LOADERS)
def elu(request):
    try:
        return load_kernel(request.param)
    except Exception as exc:  # a loader's tool missing on this GPU machine
        pytest.skip(f"{request.param} loader unavailable: {exc}")


def test_at_least_one_loader_works():
    # Both loaders skipping would turn the GPU check into a silent pass.
    errors = {}
    for loader in LOADERS:
        try:
            load_kernel(loader)
            return
        except Exception as exc:
            errors[loader] = str(exc)
    pytest.fail(f"no way to get the kernel onto this GPU: {errors}")


def reference(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.nn.functional.elu(x, alpha=alpha)


def check(y: torch.Tensor, expected: torch.Tensor) -> None:
    torch.cuda.synchronize()
    torch.testing.assert_close(y, expected, equal_nan=True, rtol=1e-6 if y.dtype == torch.float32 else None,
                               atol=1e-6 if y.dtype == torch.float32 else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_matches_torch_for_sizes_and_offsets(elu, dtype, n, offset):
    # Slicing at an element offset moves the start off the 16-byte boundary (x and y alike).
    base = torch.randn(n + offset, device="cuda", dtype=torch.float32).mul_(4).to(dtype)
    x = base[offset:]
    y = torch.empty(n + offset, device="cuda", dtype=dtype)[offset:]
    elu(x, y, 1.0)
    check(y, reference(x, 1.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_differently_aligned_input_and_output(elu, dtype):
    x = torch.randn(1001, device="cuda", dtype=dtype)[1:]
    y = torch.empty(1000, device="cuda", dtype=dtype)
    elu(x, y, 0.7)
    check(y, reference(x, 0.7))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_special_values_as_pytorch(elu, dtype, alpha):
    values = [float("nan"), float("-inf"), float("inf"), -0.0, 0.0, 1e-8, -1e-8, -1e-3, 1e-3, -100.0, 100.0,
              torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).tiny, -torch.finfo(dtype).tiny]
    x = torch.tensor(values * 3, device="cuda", dtype=dtype)  # *3: some land in the vector body
    y = torch.empty_like(x)
    elu(x, y, alpha)
    check(y, reference(x, alpha))
    assert y[1].item() == pytest.approx(-alpha, rel=1e-2)  # -inf -> -alpha
    assert torch.signbit(y[3]).item()  # -0.0 stays -0.0, as in PyTorch


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [0, 1])
def test_in_place(elu, dtype, offset):
    x = torch.randn(12345 + offset, device="cuda", dtype=dtype)[offset:]
    expected = reference(x, 1.3)
    elu(x, x, 1.3)
    check(x, expected)


def test_empty_tensor_is_a_no_op(elu):
    x = torch.empty(0, device="cuda")
    elu(x, x, 1.0)
    torch.cuda.synchronize()
