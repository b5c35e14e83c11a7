// C ABI of the ELU kernel launcher: usable from the TensorRT plugin, from
// ctypes (the GPU kernel test) and from any C or C++ program, without TensorRT.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Storage types the kernel supports; values are elunet's own, not TensorRT's.
enum ElunetEluDtype
{
    ELUNET_ELU_FLOAT32 = 0,
    ELUNET_ELU_FLOAT16 = 1,
    ELUNET_ELU_BFLOAT16 = 2
};

// y[i] = ELU_alpha(x[i]) for i < n, enqueued on `stream` (a cudaStream_t; 0 is
// the legacy default stream). x == y is allowed. Returns a cudaError_t value:
// 0 on success, cudaErrorInvalidValue for a bad dtype or negative n.
int elunet_elu_launch(void const* x, void* y, int64_t n, int32_t dtype, float alpha, void* stream);

#ifdef __cplusplus
}
#endif
