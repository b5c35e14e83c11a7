// ELU on the GPU: y = x > 0 ? x : alpha * expm1(x), computed in float for
// every storage type (as PyTorch does), so fp16/bf16 round once, at the store.
//
// Device code only. It is compiled by nvcc (elu_kernel.cu) and, unchanged, by
// NVRTC (the GPU kernel test and elunet.plugins' Python plugin), so it includes
// nothing NVRTC lacks.
//
// Memory-bound by design: one 16-byte load and store per thread per step when
// the input and output share their alignment, a scalar head/tail otherwise.
// Every element is read and written by the same thread, so x == y (in place)
// is safe; there is no __restrict__ and no read-only-cache load for that reason.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace elunet
{

__device__ __forceinline__ float toFloat(float v) { return v; }
__device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float toFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// PyTorch's special values follow from the formula: NaN > 0 is false and
// expm1(NaN) is NaN; expm1(-inf) is -1, so -inf -> -alpha; +inf stays +inf.
template <typename T>
__device__ __forceinline__ T eluScalar(T in, float alpha)
{
    float const v = toFloat(in);
    return fromFloat<T>(v > 0.0f ? v : alpha * expm1f(v));
}

constexpr int kVectorBytes = 16;

// One 16-byte vector of T, for loads and stores that move a whole vector.
template <typename T>
union Vector
{
    static constexpr int kSize = kVectorBytes / sizeof(T);
    uint4 raw;
    T lane[kSize];
};

// Grid-stride ELU over n elements, for any grid and any alignment of x and y.
// Elements before the first 16-byte boundary (the head) and after the last
// whole vector (the tail) go through the scalar loop; when x and y are not
// aligned alike, all of them do.
template <typename T>
__device__ __forceinline__ void eluGridStride(T const* x, T* y, long long n, float alpha)
{
    constexpr int kSize = Vector<T>::kSize;
    long long const thread = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    long long const stride = static_cast<long long>(gridDim.x) * blockDim.x;

    unsigned long long const xMis = reinterpret_cast<unsigned long long>(x) % kVectorBytes;
    unsigned long long const yMis = reinterpret_cast<unsigned long long>(y) % kVectorBytes;
    long long head = n;
    long long vectors = 0;
    if (xMis == yMis && xMis % sizeof(T) == 0)
    {
        long long const toBoundary = static_cast<long long>(((kVectorBytes - xMis) % kVectorBytes) / sizeof(T));
        head = toBoundary < n ? toBoundary : n;
        vectors = (n - head) / kSize;
    }
    long long const tailStart = head + vectors * kSize;
    long long const scalars = head + (n - tailStart);

    Vector<T> const* xv = reinterpret_cast<Vector<T> const*>(x + head);
    Vector<T>* yv = reinterpret_cast<Vector<T>*>(y + head);
    for (long long i = thread; i < vectors; i += stride)
    {
        Vector<T> v;
        v.raw = xv[i].raw;
#pragma unroll
        for (int k = 0; k < kSize; ++k)
        {
            v.lane[k] = eluScalar(v.lane[k], alpha);
        }
        yv[i].raw = v.raw;
    }
    for (long long s = thread; s < scalars; s += stride)
    {
        long long const i = s < head ? s : tailStart + (s - head);
        y[i] = eluScalar(x[i], alpha);
    }
}

template <typename T>
__global__ void eluKernel(T const* x, T* y, long long n, float alpha)
{
    eluGridStride(x, y, n, alpha);
}

} // namespace elunet
