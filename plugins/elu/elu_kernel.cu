// The host side of the ELU kernel: picks a grid and launches elu_kernel.cuh.
#include "elu_kernel.cuh"
#include "elu_kernel.h"

#include <cuda_runtime_api.h>

namespace
{

constexpr int kThreads = 256;
// Enough resident blocks per SM to hide memory latency; the grid-stride loop
// covers the rest, so the grid stays small for huge tensors.
constexpr int kBlocksPerSm = 8;

template <typename T>
cudaError_t launch(void const* x, void* y, int64_t n, float alpha, cudaStream_t stream)
{
    if (n == 0)
    {
        return cudaSuccess;
    }
    int device = 0;
    int sms = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (status != cudaSuccess)
    {
        return status;
    }
    constexpr int64_t kPerThread = elunet::Vector<T>::kSize;
    int64_t const wanted = (n + kThreads * kPerThread - 1) / (kThreads * kPerThread);
    int64_t const cap = static_cast<int64_t>(sms) * kBlocksPerSm;
    int const blocks = static_cast<int>(wanted < cap ? wanted : cap);
    elunet::eluKernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<T const*>(x), static_cast<T*>(y), n, alpha);
    return cudaGetLastError();
}

} // namespace

extern "C" int elunet_elu_launch(void const* x, void* y, int64_t n, int32_t dtype, float alpha, void* stream)
{
    if (n < 0)
    {
        return cudaErrorInvalidValue;
    }
    cudaStream_t const s = static_cast<cudaStream_t>(stream);
    switch (dtype)
    {
    case ELUNET_ELU_FLOAT32: return launch<float>(x, y, n, alpha, s);
    case ELUNET_ELU_FLOAT16: return launch<__half>(x, y, n, alpha, s);
    case ELUNET_ELU_BFLOAT16: return launch<__nv_bfloat16>(x, y, n, alpha, s);
    default: return cudaErrorInvalidValue;
    }
}
